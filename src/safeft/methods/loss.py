"""The causal-LM loss every method uses: mean cross-entropy over the response tokens.

Two ways to compute the same number:

- `cross_entropy_sum(logits, labels)`: from the model's full logits. The logits of a batch
  (batch x length x vocabulary, fp32) are the largest tensor of a training step on a small model
  with a large vocabulary: 8 x 128 x 49,152 x 4 bytes = 201 MB for SmolLM2, plus as much again
  for the log-probabilities cross-entropy keeps for its backward.
- `response_cross_entropy_sum`: the model runs with its output layer deferred (it returns an empty slice and
  the final hidden states are kept); then only the positions that have a label go through the
  output layer, a few hundred tokens at a time. The prompt positions cost no output-layer work at
  all. With the run's `checkpointing` on, each chunk runs under activation checkpointing: no
  tensor of the size of the full logits ever exists, and the price is one more output-layer
  forward per response token in backward. With it off (the default without a memory budget) the
  chunks' logits are kept for backward: the response positions' share of the full logits.

Which of the two runs is a trade of time for memory, chosen per run (`choose_loss_path`): the
user's `output_layer` setting, or by default (`auto`) the rule below. Without recomputation the
deferred path runs the output layer twice per response token (forward, input gradient), the full
logits twice per position: never more work, so `auto` takes it. With recomputation (measured on
SmolLM2's 49,152 x 576 output layer, docs/benchmarks.md) the deferred path runs it three times per
response token, so it does less work when response tokens are fewer than 2/3 of the positions, and
more otherwise; `auto` takes the path with less work, unless the full logits would exceed
`memory_budget_mib`: then the deferred one, whose logits never exceed a chunk.

The deferred loss is used only where it provably gives the model's own loss: once per trainer,
`deferrable_output_layer` checks that the model's logits are exactly its output layer applied to the
final hidden states (architectures that post-process logits, e.g. Gemma 2's soft-capping, fail
the check), and it needs an output layer with no trainable parameters (LoRA's default: under DDP a
trainable layer used outside the model's forward would be reported unused). Otherwise the full
logits are used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger("safeft")

# Output-layer rows computed at once: this many bytes of fp32 logits per chunk.
CHUNK_BYTES = 32 * 2**20


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """The label of the next token at every position (-100 at the end): the causal-LM shift."""
    return F.pad(labels, (0, 1), value=-100)[:, 1:]


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy over the tokens whose label is not -100 (next-token shift), from full logits.

    The labels are shifted (padded with -100 at the end), not the logits: slicing the logits would
    copy the largest tensor of the step (batch x length x vocabulary) in forward and in backward.
    """
    targets = shifted_targets(labels.to(logits.device))
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"
    )


def _chunk_cross_entropy_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def default_chunk_tokens(head: nn.Module) -> int:
    """Response tokens per chunk of the deferred loss: CHUNK_BYTES of fp32 logits."""
    vocabulary = head.weight.shape[0] if hasattr(head, "weight") else 50_000
    return max(16, CHUNK_BYTES // (4 * vocabulary))


def response_cross_entropy_sum(
    head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_tokens: int = 0, recompute: bool = True
) -> torch.Tensor:
    """Sum of the cross-entropy over the labelled positions, through `head`, `chunk_tokens` at a time.

    With `recompute`, each chunk's logits are recomputed in backward (checkpointing) instead of
    being kept; without, they are kept (the same numbers, one output-layer forward fewer per token).
    """
    targets = shifted_targets(labels.to(hidden.device))
    keep = targets.ne(-100)
    rows, wanted = hidden[keep], targets[keep]  # (response tokens, hidden size), (response tokens,)
    chunk = chunk_tokens or default_chunk_tokens(head)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, wanted.numel(), chunk):
        part = slice(start, start + chunk)
        if recompute:
            total = total + checkpoint(
                _chunk_cross_entropy_sum, head, rows[part], wanted[part], use_reentrant=False
            )
        else:
            total = total + _chunk_cross_entropy_sum(head, rows[part], wanted[part])
    return total


@contextlib.contextmanager
def deferred_output_layer(head: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside: `head` returns an empty slice of its input and keeps the input (yielded list).

    The empty slice keeps the model's output in the autograd graph (DDP looks for the parameters
    that produced the outputs) while costing nothing. The original forward is restored on exit.
    """
    captured: list[torch.Tensor] = []

    def forward(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        captured.append(hidden)
        return hidden[..., :0]

    head.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield captured
    finally:
        del head.forward


def deferrable_output_layer(model: nn.Module) -> nn.Module | None:
    """The output layer whose work `lm_loss` may defer, or None when the full logits must be used.

    Checked once, on a few token ids (the property does not depend on the input), in fp32 without
    autocast: the model's logits must be exactly its output layer applied to the final hidden states.
    """
    inner = getattr(model, "module", model)  # DDP wraps the model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None or any(p.requires_grad for p in head.parameters()):
        return None
    first = next(inner.parameters())
    vocabulary = getattr(inner.config, "vocab_size", None) or 2
    input_ids = (torch.arange(8, device=first.device) % vocabulary).unsqueeze(0)
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    was_training = inner.training
    inner.eval()  # no dropout: one deterministic forward
    try:
        with torch.no_grad(), torch.autocast(first.device.type, enabled=False):
            logits = inner(input_ids=input_ids, use_cache=False).logits
            ok = len(seen) == 1 and torch.equal(head(seen[0]), logits)
    finally:
        handle.remove()
        inner.train(was_training)
    if not ok:
        log.info(
            "%s: its logits are not its output layer applied to the final hidden states; "
            "using the full logits for the loss",
            type(inner).__name__,
        )
    return head if ok else None


# ----- which path a run takes -----------------------------------------------------------------------

OUTPUT_LAYER_PATHS = ("auto", "deferred", "full")
# Output-layer passes per position: full logits 2 (forward, input gradient) per position, the deferred
# path 3 (forward, recomputed forward, input gradient) per response token (measured: docs/benchmarks.md).
FULL_PASSES, DEFERRED_PASSES = 2, 3
FULL_LOGIT_BYTES = 8  # per logit: the fp32 logits and the gradient (log-probabilities) cross-entropy keeps


@dataclass(frozen=True)
class LossPath:
    """How the loss's output layer runs: the user's setting (`auto` lets `choose_loss_path` decide)."""

    output_layer: str = "auto"  # "auto", "deferred" or "full"
    memory_budget_mib: float | None = None  # auto: the full logits of a batch may take at most this
    chunk_tokens: int = 0  # deferred: response tokens per chunk (0: 32 MiB of fp32 logits)


@dataclass(frozen=True)
class LossPathChoice:
    """What was taken, and why (logged, and written to the run's manifest and metrics)."""

    taken: str  # "deferred" or "full"
    requested: str
    chunk_tokens: int | None  # deferred only
    reason: str
    recomputed: bool | None = None  # deferred only: the chunks' logits recomputed in backward (checkpointing)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def response_fraction(rows: Iterable[Mapping[str, Any]]) -> tuple[float, int]:
    """(share of positions whose next token is trained on, longest row) over encoded rows."""
    positions = responses = longest = 0
    for row in rows:
        labels = row["labels"]
        positions += len(labels)
        responses += sum(1 for label in labels[1:] if label != -100)  # the next-token shift
        longest = max(longest, len(labels))
    return (responses / positions if positions else 0.0), longest


def choose_loss_path(
    setting: LossPath,
    head: nn.Module | None,
    rows: Iterable[Mapping[str, Any]] | None,
    batch_size: int,
    recompute: bool = True,
) -> LossPathChoice:
    """The path of this run's loss: `setting.output_layer`, or under `auto` the rule of the module doc.

    `head` is the deferrable output layer (None: the model's logits must be used); `rows` the
    training rows (their response share decides), `batch_size` the rows per micro-batch (the
    memory estimate); `recompute`: the deferred chunks run under checkpointing (the run's
    `checkpointing` choice). Without recomputation the deferred path runs the output layer twice
    per response token against the full logits' twice per position: never more work, so `auto`
    takes it whatever the rows.
    """
    requested = setting.output_layer
    if head is None:
        why = "the model's logits are not its output layer applied to the final hidden states, or the output layer trains"
        return LossPathChoice("full", requested, None, why if requested != "full" else "requested")
    chunk = setting.chunk_tokens or default_chunk_tokens(head)

    def deferred(reason: str) -> LossPathChoice:
        return LossPathChoice("deferred", requested, chunk, reason, recomputed=recompute)

    if requested == "deferred":
        return deferred("requested")
    if requested == "full":
        return LossPathChoice("full", requested, None, "requested")
    if not recompute:
        return deferred(
            "never more work than the full logits: the output layer runs only on the response tokens, "
            "their logits kept for backward (checkpointing off)"
        )
    if rows is None:  # e.g. a streamed dataset: keep the path that never needs more than a chunk
        return deferred("the training rows' response share is unknown")
    share, longest = response_fraction(rows)
    vocabulary = head.weight.shape[0] if hasattr(head, "weight") else 50_000
    full_mib = batch_size * longest * vocabulary * FULL_LOGIT_BYTES / 2**20
    work = (
        f"response tokens are {share:.0%} of the positions, so the deferred output layer runs "
        f"{DEFERRED_PASSES * share / FULL_PASSES:.2f}x the rows of the full logits"
    )
    if DEFERRED_PASSES * share <= FULL_PASSES:
        return deferred(f"less work and less memory: {work}")
    budget = setting.memory_budget_mib
    if budget is not None and full_mib > budget:
        return deferred(
            f"the full logits of a batch (~{full_mib:,.0f} MiB) exceed memory_budget_mib {budget:,.0f}; {work}"
        )
    limit = f"within memory_budget_mib {budget:,.0f}" if budget is not None else "no memory_budget_mib set"
    return LossPathChoice(
        "full", requested, None, f"faster: {work}; full logits ~{full_mib:,.0f} MiB, {limit}"
    )
