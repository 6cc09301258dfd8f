"""T-Vaccine: targeted, layer-wise Vaccine (Liu et al., 2024, arXiv:2410.09760)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from safeft.config import option
from safeft.methods.base import AlignmentTrainer, MethodConfig
from safeft.methods.hooks import (
    HOOK_POINTS,
    capture_output_grads,
    checkpointed,
    find_decoder_blocks,
    hook_points,
)
from safeft.methods.vaccine import perturbation_aware_gradient, squared_norm_reducer

# On models deeper than this the reference also runs block i-1 of each drawn block i without
# activation checkpointing (it is neither trained nor perturbed).
DEEP_MODEL_BLOCKS = 26


@dataclass
class TVaccineConfig(MethodConfig):
    """T-Vaccine (Vaccine on sampled safety-critical blocks only)"""

    perturbation_radius: float = option(
        3.0, "norm of the hidden-state perturbation over the drawn blocks, ρ in the paper", range=(0.0, None)
    )
    probability_steps: int = option(
        200,
        "recompute the sampling probabilities q every K steps (and at step 0), K in the paper",
        range=(1, None),
    )
    resample_steps: int = option(
        20, "draw a new set of blocks every J steps, J in the paper", range=(1, None)
    )
    sampled_blocks: int = option(
        8,
        "blocks drawn without replacement, S in the paper (clamped to the number of blocks)",
        range=(1, None),
    )
    probe_batch_size: int = option(
        1, "harmful rows in the probe that measures n_l = ||G_l||", range=(1, None)
    )
    activate_previous_block: bool = option(
        True,
        f"on models deeper than {DEEP_MODEL_BLOCKS} blocks also run block i-1 of each drawn block i without "
        "activation checkpointing (reference; block i-1 is not trained)",
    )
    hook_point: str = option("attention", "where h_l is taken in each block", choices=HOOK_POINTS)
    perturbation_norm: str = option(
        "local",
        "norm of G over this process's batch (local, as the reference) or summed over all processes (global)",
        choices=("local", "global"),
    )


def sampling_probabilities(hidden_grad_norms: torch.Tensor) -> torch.Tensor:
    """q_l = n_l / sum_l n_l (uniform if every n_l is zero)."""
    n = hidden_grad_norms.float().clamp(min=0)
    total = n.sum()
    return n / total if total > 0 else torch.full_like(n, 1.0 / len(n))


def draw_blocks(q: torch.Tensor, count: int, seed: int, step: int) -> list[int]:
    """`count` distinct block indices drawn with probabilities q; identical for the same (seed, step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    count = min(count, len(q))
    # A tiny floor keeps zero-probability blocks drawable once every positive one is taken.
    weights = q.float().cpu().clamp(min=1e-12)
    return sorted(torch.multinomial(weights, count, replacement=False, generator=generator).tolist())


class TVaccineTrainer(AlignmentTrainer):
    """What changes compared with SFT: Vaccine's perturbed step, but only on a few sampled blocks.

    Liu et al., "Targeted Vaccine: Safety Alignment for Large Language Models against Harmful
    Fine-Tuning via Layer-wise Perturbation", 2024 (arXiv:2410.09760). Blocks whose hidden output
    reacts most to harmful data (gradient norm on a harmful probe) are drawn more often; only their
    adapters train and only their hidden outputs are perturbed. Undrawn blocks keep no
    hidden-gradient buffers; with `checkpointing` on they also run under activation checkpointing,
    which is where the memory saving comes from (on deep models the block before each drawn block
    is not checkpointed either, as in the reference), at the price of recomputing their forward in
    each backward; off (the default when no memory budget is set) is the faster way.
    Trainable tensors outside the blocks (full fine-tuning) are frozen while any blocks are drawn.
    """

    config_cls = TVaccineConfig
    needs_harmful = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.blocks = list(find_decoder_blocks(self.model))
        self.points = hook_points(self.model, self.method_config.hook_point)
        ids = [{id(p) for p in b.parameters()} for b in self.blocks]
        self.block_params = [[p for p in self.trainable if id(p) in s] for s in ids]
        self.q = torch.full((len(self.blocks),), 1.0 / len(self.blocks))
        self.drawn: list[int] = list(range(len(self.blocks)))  # blocks trained and perturbed
        self.uncheckpointed: list[int] = list(
            range(len(self.blocks))
        )  # drawn (+ predecessors on deep models)
        self._planned_step = -1

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        model.train()
        batch = self._prepare_inputs(inputs)
        cfg = self.method_config
        step = self.state.global_step
        if step != self._planned_step:  # once per optimizer step (first micro-batch)
            # The first step of a run measures and draws whatever the step.
            first, self._planned_step = self._planned_step < 0, step
            # 1. Every K steps: q_l = ||G_l|| / sum ||G||, measured on a harmful probe batch.
            if first or step % cfg.probability_steps == 0:
                self.q = sampling_probabilities(self.probe_hidden_grad_norms(model))
                for layer, q in enumerate(self.q.tolist()):
                    self.record(f"tvaccine/q_{layer}", q)
            # 2. Every J steps: draw S blocks without replacement with probabilities q.
            if first or step % cfg.resample_steps == 0:
                draw_step = step - step % cfg.resample_steps
                self.set_drawn(draw_blocks(self.q, cfg.sampled_blocks, self.args.seed, draw_step))
        for layer in range(len(self.blocks)):
            self.record(f"tvaccine/drawn_{layer}", float(layer in self.drawn))

        # 3. Vaccine's two-pass step, perturbing only the drawn blocks (norm over them only);
        #    with checkpointing on, undrawn blocks recompute their activations in backward.
        recomputed = [
            b for i, b in enumerate(self.blocks) if self.checkpointing.on and i not in self.uncheckpointed
        ]
        with self.own_gradient(), checkpointed(recomputed):
            result = perturbation_aware_gradient(
                self,
                model,
                batch,
                [self.points[i] for i in self.drawn],
                cfg.perturbation_radius,
                squared_norm_reducer(self, cfg.perturbation_norm),
            )
        self.record("tvaccine/loss_before", result.loss_before)
        self.record("tvaccine/loss_after", result.loss_after)
        self.record("tvaccine/perturbation_norm", result.perturbation_norm)
        return self.reported(result.loss_after)

    def method_state(self) -> dict[str, Any]:
        return {"q": self.q, "drawn": self.drawn, "planned_step": self._planned_step}

    def load_method_state(self, state: dict[str, Any]) -> None:
        # Resumed, the next step measures and draws only when the uninterrupted run would have.
        self.q, self._planned_step = state["q"], state["planned_step"]
        self.set_drawn(state["drawn"])

    def probe_hidden_grad_norms(self, model: nn.Module) -> torch.Tensor:
        """n_l = ||dL_h/dh_l|| for every block, on one harmful batch (averaged over processes)."""
        probe = self.next_batch("harmful", self.method_config.probe_batch_size)
        with self.all_trainable(), self.own_gradient():
            with capture_output_grads(self.points) as grads:
                loss, _ = self.lm_loss(model, probe)
                self.backward(loss)
            self.zero_grads()  # the probe only measures; it contributes no parameter gradient
        norms = torch.stack([g.float().norm() if g is not None else torch.zeros(()) for g in grads])
        if self.accelerator.num_processes > 1:
            norms = self.accelerator.reduce(norms.to(self.args.device), reduction="mean").cpu()
        self.record("tvaccine/probe_loss", loss)
        return norms.cpu()

    def set_drawn(self, drawn: list[int]) -> None:
        """Make only the drawn blocks' tensors trainable; choose the blocks that skip checkpointing.

        The reference (`unfreeze_activate_layers`) trains the drawn blocks only. On deep models its
        `activate_layers` adds block i-1 of each drawn block i, which only exempts it from
        activation checkpointing (its patched modeling file reads nothing else from that list).
        """
        stored = set(drawn)
        if self.method_config.activate_previous_block and len(self.blocks) > DEEP_MODEL_BLOCKS:
            stored |= {i - 1 for i in drawn if i > 0}
        self.drawn, self.uncheckpointed = sorted(drawn), sorted(stored)
        self._set_requires_grad(set(drawn))

    def _set_requires_grad(self, trained: set[int]) -> None:
        in_blocks = {id(p) for params in self.block_params for p in params}
        for p in self.trainable:
            if id(p) not in in_blocks:
                p.requires_grad_(False)
        for i, params in enumerate(self.block_params):
            for p in params:
                p.requires_grad_(i in trained)
        for p in self.trainable:
            if not p.requires_grad:
                p.grad = None  # None, not zero: AdamW then skips the tensor (no decay, no moment update)

    @contextlib.contextmanager
    def all_trainable(self) -> Any:
        """Temporarily every trainable tensor requires grad (so every block's output has a gradient)."""
        before = [p.requires_grad for p in self.trainable]
        for p in self.trainable:
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p, flag in zip(self.trainable, before, strict=True):
                p.requires_grad_(flag)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            for p in self.trainable:  # leave the model as it came: every adapter trainable
                p.requires_grad_(True)
