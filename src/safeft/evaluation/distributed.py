"""Split per-sample work (generation) across the launched processes and gather it back in order.

With one process this is just `fn(items)`. Under `torchrun` / `accelerate launch`, process r gets a
contiguous slice of `items` (`PartialState.split_between_processes`: the first `len % n` processes
get one extra item), runs `fn` on it, and every process receives the full list of results,
reassembled by original index, so the output is the same list, in the same order, as with one
process. Contiguous slices keep the batches of a batched `fn` identical to the one-process run
whenever each slice is a multiple of the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def distributed_state() -> Any:
    """Accelerate's process state: joins the torchrun / accelerate process group if there is one."""
    import torch
    from accelerate import PartialState

    # Without cpu=True, Accelerate ignores a CPU-only torchrun group and reports one process.
    return PartialState(cpu=not torch.cuda.is_available())


def split_and_gather(items: Sequence[T], fn: Callable[[list[T]], Sequence[R]]) -> list[R]:
    """`fn(items)` computed in slices across processes; every process gets all results in input order.

    `fn` must return one result per input item, in order, and its results must be picklable.
    """
    state = distributed_state()
    if state.num_processes == 1:
        return list(fn(list(items)))
    from accelerate.utils import gather_object

    indexed = list(enumerate(items))
    with state.split_between_processes(indexed) as mine:
        results = list(fn([item for _, item in mine]))
        if len(results) != len(mine):
            raise RuntimeError(
                f"split_and_gather: fn returned {len(results)} results for {len(mine)} items on process {state.process_index}"
            )
        local = [(i, r) for (i, _), r in zip(mine, results, strict=True)]
    gathered = gather_object(local)  # every process's (index, result) pairs, rank order
    gathered.sort(key=lambda pair: pair[0])
    if [i for i, _ in gathered] != list(range(len(items))):
        raise RuntimeError(f"split_and_gather: gathered {len(gathered)} results for {len(items)} items")
    return [r for _, r in gathered]
