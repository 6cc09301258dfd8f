"""RepNoise: representation noising (Rosati et al., 2024, arXiv:2405.14577), as the Booster reference computes it.

The loss is the reference's `rep_noise_loss` (git-disl/Booster @6421918, `loss_func/repnoise_loss.py`),
called as its `RepNoiseTrainer` calls it: the alignment batch is the "harmless" batch, the harmful
batch is drawn beside it. One departure, a bug the paper does not describe: the reference casts the
mask to bfloat16 and multiplies the labels by it (`repnoise_loss.py:131` and `:70`), which rounds
most token ids to other tokens; safeft keeps the labels exact.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from safeft.config import option
from safeft.errors import SafeftError
from safeft.methods.base import AlignmentTrainer, MethodConfig
from safeft.methods.hooks import capture_outputs, find_decoder_blocks, find_final_norm, find_mlp
from safeft.methods.loss import cross_entropy_sum, deferred_output_layer, response_cross_entropy_sum

HARMFUL_ROWS = ("random", "partners")
MMD_KERNELS = 5  # the reference's MMD_loss(kernel_num=5, kernel_mul=2.0)
MMD_KERNEL_MUL = 2.0


@dataclass
class RepNoiseConfig(MethodConfig):
    """RepNoise (harmful MLP outputs towards Gaussian noise, bounded ascent on every layer's harmful loss)"""

    ascent_weight: float = option(
        0.1,
        "weight of -log(H), the ascent on the harmful loss, α in the Booster comparison (reference --rho 0.1)",
        range=(0.0, None),
    )
    noise_weight: float = option(
        0.001,
        "weight of the MMD between harmful MLP outputs and Gaussian noise, β in the Booster comparison (reference --lamb 0.001)",
        range=(0.0, None),
    )
    harmful_batch_size: int | None = option(
        None,
        "harmful rows per micro-batch with harmful_rows=random; default: the alignment batch size (reference)",
        range=(1, None),
    )
    harmful_rows: str = option(
        "random",
        "the harmful batch: drawn independently of the alignment batch (random, the Booster reference's trainer) "
        "or each alignment row's partner with the same prompt (partners; needs the align stage's pair_by_prompt)",
        choices=HARMFUL_ROWS,
    )

    def check(self) -> list[str]:
        if self.harmful_rows == "partners" and self.harmful_batch_size is not None:
            return [
                "harmful_batch_size: must be unset with harmful_rows=partners (the batch is the alignment batch's partners)"
            ]
        return []


def differing_tokens(input_ids: torch.Tensor, other_ids: torch.Tensor) -> torch.Tensor:
    """The reference's mask: where `input_ids` differs from `other_ids` cut or zero-padded to its shape.

    For paired rows (same prompt, different answers) these are the answer tokens from the first one
    that differs. The attention masks play no part: as in the reference, a padding position counts
    wherever the other row has a different token there.
    """
    rows, length = input_ids.shape
    other = other_ids[:rows, :length].to(input_ids.device)
    other = F.pad(other, (0, length - other.shape[1], 0, rows - other.shape[0]), value=0)
    return input_ids.ne(other)


def masked_cross_entropy(
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    vocabulary: int,
    *,
    logits: torch.Tensor | None = None,
    head: nn.Module | None = None,
    hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference's `masked_token_ce_loss(logits, input_ids, mask)` with exact labels.

    Position t predicts token t+1 where mask[t+1] holds and the token is not 0 (the reference turns
    masked labels into 0 and every 0 into -100); the mean is over those targets. The reference also
    multiplies the logits at t by mask[t]: where mask[t] is False they are all zero, so that target's
    cross-entropy is log V whatever the weights. Give either the full `logits` or `head` and the
    `hidden` states it maps to logits (then no full logits are formed).
    """
    targets = input_ids[:, 1:]
    counted = mask[:, 1:] & targets.ne(0)
    predicted = counted & mask[:, :-1]  # the logits at t survive the mask
    labels = torch.full_like(input_ids, -100)
    labels[:, 1:] = torch.where(predicted, targets, -100)
    if logits is not None:
        total = cross_entropy_sum(logits, labels)
    else:
        total = response_cross_entropy_sum(head, hidden, labels)
    zero_logit_targets = (counted & ~mask[:, :-1]).sum()
    return (total + zero_logit_targets * math.log(vocabulary)) / counted.sum().clamp(min=1)


def mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference's `MMD_loss`: biased MMD² between rows of x and y with 5 Gaussian kernels.

    The bandwidths are b·2^k/4, k = 0..4, where b is the mean squared distance between the distinct
    rows of x and y together (a constant: the reference takes it from `.data`).
    """
    n = x.shape[0] + y.shape[0]
    total = torch.cat([x, y], dim=0)
    squared_distances = ((total.unsqueeze(0) - total.unsqueeze(1)) ** 2).sum(2)
    bandwidth = squared_distances.detach().sum() / (n**2 - n)
    # All rows equal (e.g. nothing left by the mask): the reference divides by zero; MMD² is 0.
    bandwidth = torch.where(bandwidth > 0, bandwidth, torch.ones_like(bandwidth))
    bandwidth = bandwidth / MMD_KERNEL_MUL ** (MMD_KERNELS // 2)
    kernels = sum(torch.exp(-squared_distances / (bandwidth * MMD_KERNEL_MUL**i)) for i in range(MMD_KERNELS))
    k = x.shape[0]
    return torch.mean(kernels[:k, :k] + kernels[k:, k:] - kernels[:k, k:] - kernels[k:, :k])


class RepNoiseTrainer(AlignmentTrainer):
    """What changes compared with SFT: the loss is the reference's representation-noising loss.

    Rosati et al., "Representation Noising: A Defence Mechanism Against Harmful Finetuning",
    NeurIPS 2024 (arXiv:2405.14577), as git-disl/Booster's `rep_noise_loss` computes it, with
    α and β of its script. With a harmful batch beside each alignment batch,

        L = CE_a  +  β · mean_l MMD²(m ⊙ mlp_l(harmful), m ⊙ N(0, I))  -  α · log(H)
        H = (CE_h(output) + Σ_j CE_h(lm_head(norm(h_j)))) / (number of hidden states h_j) + 1

    - the mask m keeps the harmful row's tokens that differ from the alignment row's at the same
      position (`differing_tokens`); CE_a is the alignment rows' cross-entropy on their tokens that
      differ from the harmful rows' (not the response labels): with paired rows, the answers;
    - the MMD compares each harmful row's flattened, masked MLP output (every block) with masked
      standard Gaussian noise; H averages the harmful loss of the output and of every hidden state
      (embeddings included) read out through the final norm and the output layer, so the ascent
      -α log(H) is bounded and reaches every layer.
    """

    config_cls = RepNoiseConfig
    needs_harmful = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        inner = getattr(self.model, "module", self.model)
        self.mlps = [find_mlp(block) for block in find_decoder_blocks(inner)]
        self.final_norm = find_final_norm(inner)
        self.readout = inner.get_output_embeddings()
        self.vocabulary = self.readout.weight.shape[0]

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        cfg = self.method_config
        harmful = self.harmful_batch(inputs)
        ids_h, ids_a = harmful["input_ids"], inputs["input_ids"]
        with self.compute_loss_context_manager():
            # 1. Harmful forward: every block's MLP output, every hidden state, the output.
            with capture_outputs(self.mlps) as mlp_outputs:
                outputs_h, final_h = self.run_model(model, harmful, output_hidden_states=True)
            mask_h = differing_tokens(ids_h, ids_a)

            # 2. β term: MMD between the masked MLP outputs and masked noise, averaged over blocks.
            noise_term = 0
            for hidden in mlp_outputs:
                keep = mask_h.unsqueeze(-1).expand(hidden.shape)
                masked = hidden * keep
                noise = torch.randn_like(masked) * keep  # drawn like the reference: same shape and dtype
                pair = (masked.reshape(len(masked), -1).float(), noise.reshape(len(noise), -1).float())
                noise_term = noise_term + checkpoint(mmd, *pair, use_reentrant=False)  # O(rows² × dims)
            noise_term = noise_term / len(mlp_outputs)

            # 3. α term: H, the harmful loss of the output and of every hidden state through norm + output layer.
            harmful_losses = self.masked_loss(outputs_h, final_h, ids_h, mask_h)
            for h in outputs_h.hidden_states:
                normed = self.final_norm(h.to(torch.bfloat16))  # the reference's cast
                harmful_losses = harmful_losses + masked_cross_entropy(
                    ids_h,
                    mask_h,
                    self.vocabulary,
                    head=self.readout,
                    hidden=normed.to(self.readout.weight.dtype),
                )
            harmful_losses = harmful_losses / len(outputs_h.hidden_states) + 1

            # 4. The alignment ("harmless") loss on its tokens that differ from the harmful rows'.
            outputs_a, final_a = self.run_model(model, inputs)
            loss_a = self.masked_loss(outputs_a, final_a, ids_a, differing_tokens(ids_a, ids_h))

        loss = loss_a + cfg.noise_weight * noise_term - cfg.ascent_weight * torch.log(harmful_losses)
        self.record("repnoise/alignment_loss", loss_a)
        self.record("repnoise/harmful_loss", harmful_losses)
        self.record("repnoise/mmd", noise_term)
        return (loss, outputs_a) if return_outputs else loss

    def harmful_batch(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.method_config
        if cfg.harmful_rows == "random":
            return self.next_batch("harmful", cfg.harmful_batch_size or self.args.per_device_train_batch_size)
        if "pair_index" not in inputs:
            raise SafeftError(
                "repnoise harmful_rows=partners needs alignment rows that know their harmful partner: "
                "run the align stage with pair_by_prompt: true (--pair-by-prompt true)"
            )
        rows = [self.harmful_dataset[int(i)] for i in inputs["pair_index"]]
        return self._prepare_inputs(self.data_collator(rows))

    def run_model(self, model: nn.Module, batch: dict[str, torch.Tensor], **kwargs: Any) -> tuple[Any, Any]:
        """(model outputs, final hidden states or None): the output layer deferred where `lm_loss` defers it."""
        head = self.output_layer
        deferred = deferred_output_layer(head) if head is not None else contextlib.nullcontext([None])
        with deferred as final_hidden:
            outputs = model(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                use_cache=False,
                **kwargs,
            )
        return outputs, final_hidden[0]

    def masked_loss(
        self, outputs: Any, final_hidden: Any, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        if final_hidden is None:
            return masked_cross_entropy(ids, mask, self.vocabulary, logits=outputs.logits)
        return masked_cross_entropy(ids, mask, self.vocabulary, head=self.output_layer, hidden=final_hidden)
