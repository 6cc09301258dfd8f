"""TAR: tamper-resistant safeguards by adversarial meta-learning (Tamirisa et al., 2024, arXiv:2408.00761)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from safeft.config import option
from safeft.errors import SafeftError
from safeft.methods.base import AlignmentTrainer, MethodConfig


@dataclass
class TARConfig(MethodConfig):
    """TAR (meta-learn resistance to a simulated fine-tuning attack)"""

    inner_steps: int = option(
        64,
        "steps of each simulated attack, K in the paper (tar_inner_loop_steps, reference 64)",
        range=(1, None),
    )
    adversary_learning_rates: list[float] = option(
        default_factory=lambda: [2e-6, 2e-5, 4e-5],
        help="the attack's AdamW learning rate, drawn uniformly per attack (adversary_lr_samples, reference 2e-6,2e-5,4e-5)",
        range=(0, 1),
    )
    attacks_per_step: int = option(
        1, "simulated attacks per outer step (tar_num_tasks_sampled, reference 1)", range=(1, None)
    )
    tamper_every: int = option(
        4,
        "the tamper-resistance gradient is taken after every this many attack steps (tar_inner_loop_subsample, reference 4)",
        range=(1, None),
    )
    tamper_weight: float = option(
        4.0,
        "scale of the tamper-resistance gradient, λ_TR (tar_tamper_resistance_grad_scale, reference 4)",
        range=(0, None),
    )
    schedule_lambda: float = option(
        0.0625,
        "attack step i's weight is exp(schedule_lambda (i − (K − 1))) (reference 0.0625 with use_weighting_schedule)",
        range=(0, None),
    )
    weighting: str = option(
        "exponential",
        "per-step weights: exponential (the reference's run) or uniform 1/K",
        choices=("exponential", "uniform"),
    )
    tamper_loss_lower_bound: float | None = option(
        None,
        "skip the tamper-resistance gradient when its loss is below this (null: always add it, the reference's --unbounded)",
    )
    retain_weight: float = option(
        1.0, "scale of the retain loss, λ_retain (tar_retain_scale, reference 1)", range=(0, None)
    )
    retain_representations: bool = option(
        True, "retain loss adds the hidden-state distance to the original model (reference: on)"
    )
    adversary_batch_size: int = option(
        4, "harmful rows per attack step (tar_adversary_batch_size, reference 4)", range=(1, None)
    )
    heldout_batch_size: int = option(
        4, "held-out harmful rows of the tamper-resistance loss", range=(1, None)
    )
    adversary_weight_decay: float = option(
        0.01, "the attack's AdamW weight decay (torch default, as the reference)", range=(0, None)
    )

    def check(self) -> list[str]:
        problems = []
        if not self.adversary_learning_rates:
            problems.append(
                "adversary_learning_rates: got an empty list, expected at least one learning rate"
            )
        return problems


def step_weight(step: int, inner_steps: int, schedule_lambda: float, weighting: str) -> float:
    """The reference's weight of attack step `step` (0-based) in the tamper-resistance gradient."""
    if weighting == "uniform":
        return 1.0 / inner_steps
    return math.exp(schedule_lambda * (step - (inner_steps - 1)))


def negative_entropy(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """−(mean entropy of the next-token distribution) over the real tokens: TAR's max-entropy loss."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    if attention_mask is None:
        return -entropy.mean()
    mask = attention_mask.to(entropy.dtype)
    return -(entropy * mask).sum() / mask.sum().clamp(min=1)


class TARTrainer(AlignmentTrainer):
    """What changes compared with SFT: each step also resists a simulated fine-tuning attack.

    Tamirisa et al., "Tamper-Resistant Safeguards for Open-Weight LLMs", 2024 (arXiv:2408.00761);
    reference rishub-tamirisa/tamper-resistance `modules/training.py::tar_training_loop` @19de233.
    Each outer step: (1) keep θ; (2) per simulated attack, a fresh AdamW with a learning rate drawn
    from `adversary_learning_rates` takes K steps on harmful rows, and after every `tamper_every`-th
    step the first-order gradient of the tamper-resistance loss (the negative entropy of the model's
    next-token distribution on a held-out harmful batch, fixed for the attack) at the attacked weights
    is added to a running sum with weight `tamper_weight · w_i / attacks_per_step`; θ is restored
    exactly; (3) the retain gradient: the alignment batch's loss plus, with `retain_representations`,
    the mean over layers of the mean L2 distance of the hidden states to the original model's;
    (4) the optimizer steps with retain + tamper-resistance gradient. The harmful rows are split in
    two: even rows feed the attacks, odd rows the held-out tamper-resistance batches.
    """

    config_cls = TARConfig
    needs_harmful = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if len(self.harmful_dataset) < 2:
            raise SafeftError("TAR needs at least 2 harmful rows: one for the attacks, one held out")
        self.adversary_rows = [self.harmful_dataset[i] for i in range(0, len(self.harmful_dataset), 2)]
        self.heldout_rows = [self.harmful_dataset[i] for i in range(1, len(self.harmful_dataset), 2)]
        # The original model of the retain loss: the adapter switched off, or a frozen copy (full fine-tuning).
        self._original = None if hasattr(self.model, "disable_adapter") else self._frozen_copy(self.model)

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        original = copy.deepcopy(model).eval()
        for p in original.parameters():
            p.requires_grad_(False)
        return original

    def _rows(self, which: str, batch_size: int) -> dict[str, torch.Tensor]:
        """The next batch of attack ("adversary") or held-out ("heldout") harmful rows."""
        rows = self.adversary_rows if which == "adversary" else self.heldout_rows
        stream = self._stream(f"tar-{which}", len(rows), batch_size)  # its position is checkpointed
        return self._prepare_inputs(self.data_collator([rows[i] for i in stream.next()]))

    def _adversary_learning_rate(self, attack: int) -> float:
        # Drawn from a generator seeded by (seed, step, attack): reproducible, the same on every process.
        g = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.global_step * 101 + attack)
        rates = self.method_config.adversary_learning_rates
        return rates[int(torch.randint(len(rates), (1,), generator=g))]

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        model.train()
        cfg = self.method_config
        retain = self._prepare_inputs(inputs)
        params = self.active_params()
        with self.own_gradient():
            # 1. Keep θ; the tamper-resistance gradient is summed here.
            theta = self.copy_into("theta", params)
            tamper_grad = [torch.zeros_like(p) for p in params]
            tamper_loss = 0.0
            for attack in range(cfg.attacks_per_step):
                tamper_loss += self.simulated_attack(model, params, tamper_grad, attack)
                with torch.no_grad():  # 2e. restore θ exactly after every attack
                    torch._foreach_copy_(params, theta)

            # 3. The retain gradient at θ.
            self.zero_grads()
            retain_loss, distance = self.retain_loss(model, retain)
            self.backward(retain_loss * cfg.retain_weight)

            # 4. retain + tamper-resistance gradient (unless below the lower bound).
            bounded = cfg.tamper_loss_lower_bound is not None and tamper_loss < cfg.tamper_loss_lower_bound
            if not bounded:
                torch._foreach_add_(self.grads(params), tamper_grad)
        self.record("tar/retain_loss", retain_loss)
        self.record("tar/hidden_distance", distance)
        self.record("tar/tamper_resistance_loss", tamper_loss)
        return self.reported(retain_loss)

    def simulated_attack(
        self, model: nn.Module, params: list[torch.Tensor], tamper_grad: list[torch.Tensor], attack: int
    ) -> float:
        """2a–2d: K AdamW steps on harmful rows; every `tamper_every` steps, add the weighted TR gradient."""
        cfg = self.method_config
        heldout = self._rows("heldout", cfg.heldout_batch_size)  # x_tr: fixed for this attack
        optimizer = torch.optim.AdamW(
            params, lr=self._adversary_learning_rate(attack), weight_decay=cfg.adversary_weight_decay
        )
        tamper_loss = 0.0
        for step in range(cfg.inner_steps):
            # 2b. One attack step: next-token loss on harmful rows.
            self.zero_grads()
            attack_loss = self.lm_loss(model, self._rows("adversary", cfg.adversary_batch_size))[0]
            self.backward(attack_loss)
            optimizer.step()
            if (step + 1) % cfg.tamper_every != 0:
                continue
            # 2c. First-order TR gradient at the attacked weights, weighted like the reference.
            scale = cfg.tamper_weight * step_weight(step, cfg.inner_steps, cfg.schedule_lambda, cfg.weighting)
            scale /= cfg.attacks_per_step
            self.zero_grads()
            loss = self.tamper_resistance_loss(model, heldout) * scale
            self.backward(loss)
            torch._foreach_add_(tamper_grad, self.grads(params))
            tamper_loss += loss.item()
        self.zero_grads()
        self.record("tar/attack_loss", attack_loss)
        return tamper_loss

    def tamper_resistance_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.compute_loss_context_manager():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
            ).logits
        return negative_entropy(logits, batch.get("attention_mask"))

    def retain_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(NLL + hidden-state distance to the original model, that distance) on a retain batch."""
        nll, outputs = self.lm_loss(
            model, batch, output_hidden_states=self.method_config.retain_representations
        )
        if not self.method_config.retain_representations:
            return nll, torch.zeros(())
        with torch.no_grad(), self._original_model(model) as original, self.compute_loss_context_manager():
            reference = original(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                use_cache=False,
                output_hidden_states=True,
            ).hidden_states
        # mean over layers of the mean over positions of ‖h − h_original‖₂ (the reference's, all positions)
        distance = torch.stack(
            [
                (h.float() - r.float()).norm(dim=-1).mean()
                for h, r in zip(outputs.hidden_states, reference, strict=True)
            ]
        ).mean()
        return nll + distance, distance.detach()

    @contextlib.contextmanager
    def _original_model(self, model: nn.Module) -> Iterator[nn.Module]:
        if self._original is not None:
            yield self._original
            return
        peft_model = self.accelerator.unwrap_model(model)
        with peft_model.disable_adapter():
            yield peft_model
