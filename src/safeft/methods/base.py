"""What every method's Trainer shares: extra datasets, seeded batch streams, losses, gradient plumbing.

Gradient accumulation. A multi-pass method forms its combined gradient from one micro-batch's own
passes. `AlignmentTrainer.own_gradient()` therefore sets the gradients accumulated by earlier
micro-batches aside, lets the method compute its gradient from scratch, scales that gradient by
1/gradient_accumulation_steps and adds the earlier gradients back. Each micro-batch's loss is a
token mean over its own response tokens; the optimizer sees the mean over micro-batches of the
per-micro-batch method gradients (methods that only add a loss term get the same scaling from
Trainer itself, see `loss_is_scaled_for_ga = False`).

Mixed precision: every forward pass runs inside `compute_loss_context_manager()` (Trainer's
autocast hook), like Trainer's own step; the loss is computed in float32.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer

from safeft.config import Config
from safeft.errors import SafeftError
from safeft.methods.hooks import CheckpointingChoice, choose_checkpointing
from safeft.methods.loss import (
    LossPath,
    choose_loss_path,
    cross_entropy_sum,
    deferrable_output_layer,
    deferred_output_layer,
    response_cross_entropy_sum,
    shifted_targets,
)

EPS = 1e-7  # the `eps` of ALGORITHMS.md in every normalisation

log = logging.getLogger("safeft")


@dataclass
class MethodConfig(Config):
    """A method without hyper-parameters of its own"""


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all tensors together (float32 scalar)."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(list(tensors))]))


class _IndexStream:
    """An endless, seeded stream of row indices: epoch e is permutation(seed, e) of the rows.

    With several processes, batch k of process r is slice r of global batch k, so processes see
    disjoint rows and together the same sequence a single process would see.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if n_rows < 1:
            raise SafeftError("an extra dataset of the method is empty; give it at least one row")
        self.n, self.batch_size, self.seed, self.rank, self.world = n_rows, batch_size, seed, rank, world
        self.batches_drawn = 0
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def next(self) -> list[int]:
        start = (self.batches_drawn * self.world + self.rank) * self.batch_size
        self.batches_drawn += 1
        return [int(self._perm(pos // self.n)[pos % self.n]) for pos in range(start, start + self.batch_size)]


class AlignmentTrainer(Trainer):
    """Trainer with a method config and optional extra datasets (harmful rows, alignment rows).

    Keyword arguments on top of Trainer's: `method_config` (the method's Config; defaults when
    None), `harmful_dataset` and `alignment_dataset` (indexable datasets of encoded rows, collated
    with the trainer's `data_collator`), `loss_path` (how the loss runs the output layer; default
    `auto`, see `safeft.methods.loss.choose_loss_path`; what was taken is `self.loss_path`) and
    `checkpointing` (`auto`, `on` or `off`: whether the deferred output layer's chunks and the blocks
    a method runs but does not train are checkpointed, see `safeft.methods.hooks.choose_checkpointing`;
    what was taken is `self.checkpointing`).
    """

    config_cls: type[Config] = MethodConfig
    needs_harmful: bool = False
    needs_alignment: bool = False
    loss_is_scaled_for_ga = False  # our losses are per-micro-batch token means

    def __init__(
        self,
        *args: Any,
        method_config: Config | None = None,
        harmful_dataset: Any = None,
        alignment_dataset: Any = None,
        loss_path: LossPath | None = None,
        checkpointing: str = "auto",
        **kwargs: Any,
    ):
        if method_config is None:
            method_config = self.config_cls()
        if not isinstance(method_config, self.config_cls):
            raise SafeftError(
                f"{type(self).__name__}: method_config is a {type(method_config).__name__}, expected {self.config_cls.__name__}"
            )
        name = type(self).__name__
        if self.needs_harmful and harmful_dataset is None:
            raise SafeftError(
                f"{name} needs harmful rows: pass harmful_dataset (the align stage's --harmful-data)"
            )
        if self.needs_alignment and alignment_dataset is None:
            raise SafeftError(
                f"{name} needs alignment rows: pass alignment_dataset (the fine-tune stage's --alignment-data)"
            )
        super().__init__(*args, **kwargs)
        self.method_config = method_config
        self.harmful_dataset = harmful_dataset
        self.alignment_dataset = alignment_dataset
        self._metrics: dict[str, list[Any]] = defaultdict(list)
        self._streams: dict[str, _IndexStream] = {}
        self._buffers: dict[str, list[torch.Tensor]] = {}
        # The trainable tensors, fixed once: methods may toggle requires_grad later (T-Vaccine).
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise SafeftError(
                f"{name}: the model has no trainable parameters; attach a LoRA adapter or use full fine-tuning"
            )
        # Under FSDP / DeepSpeed the output layer's weights are sharded and only gathered inside the
        # model's forward, so it is never deferred there.
        sharded = getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False)
        head = None if sharded else deferrable_output_layer(self.model)
        loss_path = loss_path or LossPath()
        self.checkpointing: CheckpointingChoice = choose_checkpointing(
            checkpointing, loss_path.memory_budget_mib
        )
        log.info("checkpointing: %s (%s)", self.checkpointing.taken, self.checkpointing.reason)
        self.loss_path = choose_loss_path(
            loss_path,
            head,
            self._labelled_rows(),
            self.args.per_device_train_batch_size,
            recompute=self.checkpointing.on,
        )
        log.info("loss: %s output layer (%s)", self.loss_path.taken, self.loss_path.reason)
        # None: the loss uses the full logits.
        self.output_layer = head if self.loss_path.taken == "deferred" else None
        self.loss_chunk_tokens = self.loss_path.chunk_tokens or 0

    def _labelled_rows(self, most: int = 2048) -> list[dict[str, Any]] | None:
        """The first `most` training rows, if they are encoded rows with labels (what `choose_loss_path` reads)."""
        rows = self.train_dataset
        if rows is None or not hasattr(rows, "__len__") or not hasattr(rows, "__getitem__"):
            return None  # no dataset, or a streamed one: not read ahead of training
        sample = [rows[i] for i in range(min(len(rows), most))]
        return [r for r in sample if isinstance(r, dict) and "labels" in r] or None

    # ----- metrics --------------------------------------------------------------------------------
    def record(self, name: str, value: torch.Tensor | float) -> None:
        """Append one value of a method quantity; the mean since the last log is logged."""
        self._metrics[name].append(
            value.detach().float().mean() if isinstance(value, torch.Tensor) else float(value)
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:
            for name, values in self._metrics.items():
                logs[name] = (
                    torch.stack([torch.as_tensor(v, dtype=torch.float32).cpu() for v in values]).mean().item()
                )
            self._metrics.clear()
        super().log(logs, start_time)

    # ----- extra data -----------------------------------------------------------------------------
    def next_batch(self, which: str, batch_size: int) -> dict[str, torch.Tensor]:
        """The next batch of `harmful` or `alignment` rows, collated and on the training device."""
        dataset = self.harmful_dataset if which == "harmful" else self.alignment_dataset
        if dataset is None:
            raise SafeftError(f"{type(self).__name__} needs {which} rows but none were given")
        rows = [dataset[i] for i in self._stream(which, len(dataset), batch_size).next()]
        return self._prepare_inputs(self.data_collator(rows))

    def _stream(self, which: str, n_rows: int, batch_size: int) -> _IndexStream:
        stream = self._streams.get(which)
        if stream is None or stream.batch_size != batch_size:
            seed = self.args.seed + zlib.crc32(which.encode()) % 10_000
            stream = _IndexStream(n_rows, batch_size, seed, self.args.process_index, self.args.world_size)
            self._streams[which] = stream
        return stream

    # ----- exact resume ---------------------------------------------------------------------------
    # Trainer checkpoints the weights, the optimizer, the scheduler, the data order and the RNG
    # states. A method's own state rides along in the same checkpoint, so that a resumed run takes
    # bitwise the steps the uninterrupted run would have taken: the position of each extra batch
    # stream (else Booster's harmful batches restart at batch 0) and what `method_state` returns.

    def method_state(self) -> dict[str, Any]:
        """What the method carries from one step to the next beyond weights and optimizer (override)."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Restore what `method_state` returned (called just before the first resumed step)."""

    def _method_state_file(self, checkpoint: str) -> Path:
        return Path(checkpoint) / f"safeft_method_state_{self.args.process_index}.pt"

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        streams = {
            which: {"rows": s.n, "batch_size": s.batch_size, "batches_drawn": s.batches_drawn}
            for which, s in self._streams.items()
        }
        torch.save({"streams": streams, "method": self.method_state()}, self._method_state_file(output_dir))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        # Trainer calls this once on resuming, right before the first resumed step (after the
        # optimizer exists, so a method may change which tensors train).
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = self._method_state_file(checkpoint)
        if not path.is_file():
            raise SafeftError(
                f"checkpoint {checkpoint} has no {path.name}: it was written by an older safeft or another "
                "program, and resuming from it would not continue the same run. Rerun with --overwrite."
            )
        state = torch.load(path, weights_only=True)
        for which, s in state["streams"].items():
            self._stream(which, s["rows"], s["batch_size"]).batches_drawn = s["batches_drawn"]
        self.load_method_state(state["method"])

    # ----- losses ---------------------------------------------------------------------------------
    def lm_loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
        **forward_kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        """(cross-entropy on the response tokens, model outputs) of one batch.

        The sum over response tokens divided by their number (a token mean), or by
        `num_items_in_batch` when given (Trainer's count over a whole accumulated batch). Where it
        provably gives the same number, the full logits are never formed (see `safeft.methods.loss`);
        `outputs.logits` is then empty.
        """
        head = self.output_layer
        deferred = deferred_output_layer(head) if head is not None else contextlib.nullcontext([])
        with self.compute_loss_context_manager():
            with deferred as final_hidden:
                outputs = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch.get("attention_mask"),
                    use_cache=False,
                    **forward_kwargs,
                )
            if head is not None:  # the output layer runs under the same autocast as the model
                (hidden,) = final_hidden
                total = response_cross_entropy_sum(
                    head, hidden, batch["labels"], self.loss_chunk_tokens, recompute=self.checkpointing.on
                )
        if head is None:
            total = cross_entropy_sum(outputs.logits, batch["labels"])
        if num_items_in_batch is None:
            num_items_in_batch = shifted_targets(batch["labels"]).ne(-100).sum().clamp(min=1)
        return total / num_items_in_batch, outputs

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)
        for p in self.trainable:  # unused tensors get an explicit zero, so gradient lists stay aligned
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)

    # ----- gradients and parameters ---------------------------------------------------------------
    def active_params(self) -> list[torch.Tensor]:
        return [p for p in self.trainable if p.requires_grad]

    def grads(self, params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        params = self.active_params() if params is None else params
        return [p.grad for p in params]  # type: ignore[misc]

    def zero_grads(self) -> None:
        for p in self.trainable:
            p.grad = None

    def copy_into(self, name: str, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """An exact copy of `tensors` in a buffer reused from step to step."""
        buf = self._buffers.get(name)
        if (
            buf is None
            or len(buf) != len(tensors)
            or any(b.shape != t.shape for b, t in zip(buf, tensors, strict=True))
        ):
            buf = [torch.empty_like(t) for t in tensors]
            self._buffers[name] = buf
        with torch.no_grad():
            torch._foreach_copy_(buf, list(tensors))
        return buf

    @contextlib.contextmanager
    def own_gradient(self) -> Iterator[None]:
        """Inside: `.grad` holds only this micro-batch's method gradient. On exit: scaled and accumulated.

        The gradients of earlier micro-batches are set aside, the method computes its gradient from
        its own passes, then `.grad = earlier + method_gradient / gradient_accumulation_steps`.
        """
        stash = [p.grad for p in self.trainable]
        self.zero_grads()
        try:
            yield
        except BaseException:
            for p, s in zip(self.trainable, stash, strict=True):
                p.grad = s
            raise
        scale = 1.0 / self._accumulation_steps()
        own = [p.grad for p in self.trainable if p.grad is not None]
        if own and scale != 1.0:
            torch._foreach_mul_(own, scale)
        earlier = [s for s in stash if s is not None]
        if earlier and self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
            # Earlier micro-batches ran without synchronisation; average them now like DDP would.
            earlier = self.accelerator.reduce(earlier, reduction="mean")
        it = iter(earlier)
        pairs_grad, pairs_stash = [], []
        for p, s in zip(self.trainable, stash, strict=True):
            if s is None:
                continue
            s = next(it)
            if p.grad is None:
                p.grad = s
            else:
                pairs_grad.append(p.grad)
                pairs_stash.append(s)
        if pairs_grad:
            torch._foreach_add_(pairs_grad, pairs_stash)

    def average_unsynchronised(self, tensors: list[torch.Tensor]) -> None:
        """Average `tensors` over processes in place when DDP did not (micro-batches under `no_sync`).

        On the last micro-batch of a step every backward is all-reduced by DDP; before it, a method
        that needs the global value of a gradient (Booster's `g_h`) reduces it here itself.
        """
        if self.accelerator.num_processes == 1 or self.accelerator.sync_gradients:
            return
        for t in tensors:
            dist.all_reduce(t)
        torch._foreach_div_(tensors, float(self.accelerator.num_processes))

    def _accumulation_steps(self) -> int:
        return int(
            getattr(self, "current_gradient_accumulation_steps", None)
            or self.args.gradient_accumulation_steps
        )

    def reported(self, loss: torch.Tensor) -> torch.Tensor:
        """The value Trainer adds to its running loss for one micro-batch (scaled like Trainer does)."""
        return loss.detach().to(self.args.device) / self._accumulation_steps()
