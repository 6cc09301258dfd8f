"""Decoder blocks and their hidden outputs, found generically; hooks that always remove themselves.

Vaccine-style methods act on the hidden output `h_l` of every decoder block `l`: they record
`dL/dh_l` in one pass and add a constant perturbation to `h_l` in the next. Nothing here knows a
model family by name:

- the decoder blocks are the `nn.ModuleList` of identical modules holding the most parameters
  (`model.layers` in Llama/Qwen2/Mistral/Gemma, `decoder.layers` in OPT, `transformer.h` in GPT-2,
  `gpt_neox.layers` in GPT-NeoX), also through PEFT and DDP wrappers;
- the hook point of a block is its attention module (the direct child whose name mentions
  "attn"/"attention" and is not a norm or dropout; the Vaccine reference perturbs the output of
  each self-attention module) or, with `point="block"`, the block itself.

Module outputs may be a tensor or a tuple whose element 0 is the hidden state; only that tensor is
read or changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

HOOK_POINTS = ("attention", "block")


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks of a causal LM: the largest ModuleList of same-class modules."""
    best: nn.ModuleList | None = None
    best_size = -1
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 1:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        size = _param_count(module)
        # `>` keeps the outermost list on ties (model.modules() visits parents first).
        if size > best_size:
            best, best_size = module, size
    if best is None:
        raise ValueError(
            f"found no nn.ModuleList of decoder blocks in {type(model).__name__}; "
            "safeft needs a model whose transformer blocks live in an nn.ModuleList (every Hugging Face causal LM does)"
        )
    return best


def find_attention(block: nn.Module) -> nn.Module:
    """The self-attention submodule of one decoder block (a direct child named like *attn*/*attention*)."""
    candidates = [
        (name, child)
        for name, child in block.named_children()
        if ("attn" in name.lower() or "attention" in name.lower())
        and not any(w in name.lower() for w in ("norm", "dropout", "drop"))
    ]
    if not candidates:
        names = ", ".join(name for name, _ in block.named_children())
        raise ValueError(
            f"{type(block).__name__} has no child module named like 'attn' or 'attention' (children: {names}); "
            "use hook point 'block' instead"
        )
    return max(candidates, key=lambda item: _param_count(item[1]))[1]


def find_mlp(block: nn.Module) -> nn.Module:
    """The feed-forward submodule of one decoder block (a direct child named like *mlp*/*feed_forward*/*ffn*)."""
    for name, child in block.named_children():
        if any(w in name.lower() for w in ("mlp", "feed_forward", "ffn")):
            return child
    names = ", ".join(name for name, _ in block.named_children())
    raise ValueError(
        f"{type(block).__name__} has no child module named like 'mlp', 'feed_forward' or 'ffn' (children: {names}); "
        "RepNoise needs each block's MLP output"
    )


def find_final_norm(model: nn.Module) -> nn.Module:
    """The normalisation applied after the last decoder block: the norm beside the blocks' list.

    `model.norm` in Llama/Qwen2/Mistral/Gemma, `transformer.ln_f` in GPT-2, `gpt_neox.final_layer_norm`.
    """
    blocks = find_decoder_blocks(model)
    for module in model.modules():
        if any(child is blocks for child in module.children()):
            norms = [c for c in module.children() if "norm" in type(c).__name__.lower()]
            if len(norms) == 1:
                return norms[0]
            break
    raise ValueError(
        f"found no single normalisation module beside the decoder blocks of {type(model).__name__}; "
        "RepNoise applies it to every hidden state"
    )


def hook_points(model: nn.Module, point: str = "attention") -> list[nn.Module]:
    """One module per decoder block whose output is `h_l`: the attention module or the whole block."""
    if point not in HOOK_POINTS:
        raise ValueError(f"hook point: got {point!r}, expected one of {', '.join(HOOK_POINTS)}")
    blocks = list(find_decoder_blocks(model))
    return blocks if point == "block" else [find_attention(b) for b in blocks]


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (the tensor itself, or element 0 of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"expected a module output that is a tensor or a tuple starting with one, got {type(output).__name__}"
    )


def replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """`output` with its hidden-state tensor replaced (other tuple elements untouched)."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:])


@contextlib.contextmanager
def forward_hooks(modules: Sequence[nn.Module], make_hook: Any) -> Iterator[None]:
    """Register `make_hook(i)` as a forward hook on `modules[i]`; removed on exit, also after an error."""
    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture_output_grads(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Record `dL/dh` for the hidden output of each module during the next backward.

    Yields a list filled in place by the backward pass (`None` where no gradient reached the
    output, e.g. when nothing before it is trainable).
    """
    grads: list[torch.Tensor | None] = [None] * len(modules)

    def make_hook(i: int) -> Any:
        def store(grad: torch.Tensor) -> None:
            grads[i] = grad.detach()

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            hidden = hidden_of(output)
            if hidden.requires_grad:
                hidden.register_hook(store)

        return hook

    with forward_hooks(modules, make_hook):
        yield grads


@contextlib.contextmanager
def capture_outputs(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Keep the hidden output tensor of each module (in the graph) for `torch.autograd.grad`."""
    outputs: list[torch.Tensor | None] = [None] * len(modules)

    def make_hook(i: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            outputs[i] = hidden_of(output)

        return hook

    with forward_hooks(modules, make_hook):
        yield outputs


@contextlib.contextmanager
def capture_gradient_edges(modules: Sequence[nn.Module]) -> Iterator[list[Any]]:
    """For `torch.autograd.grad(loss, edges)`: the gradient edge of each module's hidden output.

    An edge names the output's place in the graph without keeping the tensor itself alive, so
    asking autograd for dL/dh costs no extra memory. `None` where the output has no graph.
    """
    edges: list[Any] = [None] * len(modules)

    def make_hook(i: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            hidden = hidden_of(output)
            if hidden.requires_grad:
                edges[i] = torch.autograd.graph.get_gradient_edge(hidden)

        return hook

    with forward_hooks(modules, make_hook):
        yield edges


@contextlib.contextmanager
def add_to_outputs(
    modules: Sequence[nn.Module], perturbations: Sequence[torch.Tensor | None]
) -> Iterator[None]:
    """Add a constant (detached) tensor to the hidden output of each module; `None` leaves it alone."""

    def make_hook(i: int) -> Any:
        eps = perturbations[i]

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if eps is None:
                return None
            hidden = hidden_of(output)
            return replace_hidden(output, hidden + eps.detach().to(hidden.dtype))

        return hook

    with forward_hooks(modules, make_hook):
        yield


# ----- whether safeft checkpoints where it could -----------------------------------------------------

CHECKPOINTING = ("auto", "on", "off")
CHECKPOINTED = "the deferred output layer's chunks and the blocks a method runs but does not train"


@dataclass(frozen=True)
class CheckpointingChoice:
    """Whether safeft runs under activation checkpointing what it may (`CHECKPOINTED`), and why.

    Logged, and written to the run's manifest and metrics. Either way the step computes the same
    numbers (a recomputed forward is the original one); `on` keeps fewer activations, `off` spares
    the forward recomputed in every backward.
    """

    taken: str  # "on" or "off"
    requested: str
    reason: str

    @property
    def on(self) -> bool:
        return self.taken == "on"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_checkpointing(requested: str, memory_budget_mib: float | None) -> CheckpointingChoice:
    """`requested` (on/off), or under `auto` the faster way unless a memory budget says memory is the limit."""
    if requested not in CHECKPOINTING:
        raise ValueError(f"checkpointing: got {requested!r}, expected one of {', '.join(CHECKPOINTING)}")
    if requested != "auto":
        return CheckpointingChoice(requested, requested, "requested")
    if memory_budget_mib is not None:
        return CheckpointingChoice(
            "on", requested, f"memory_budget_mib {memory_budget_mib:,.0f} is set: memory is the limit"
        )
    return CheckpointingChoice(
        "off", requested, "no memory_budget_mib set: the faster way (no forward recomputed in backward)"
    )


@contextlib.contextmanager
def checkpointed(blocks: Sequence[nn.Module]) -> Iterator[None]:
    """Run `blocks` under activation checkpointing: their activations are recomputed in backward.

    Each wrapped call increments `block.safeft_checkpointed_calls` (tests read it). The original
    forward is restored on exit, also after an error.
    """

    def wrap(block: nn.Module) -> Any:
        original = block.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return original(*args, **kwargs)
            block.safeft_checkpointed_calls = getattr(block, "safeft_checkpointed_calls", 0) + 1
            return checkpoint(original, *args, use_reentrant=False, **kwargs)

        return forward

    wrapped = []
    try:
        for block in blocks:
            block.forward = wrap(block)  # an instance attribute shadows the class's forward
            wrapped.append(block)
        yield
    finally:
        for block in wrapped:
            del block.forward
