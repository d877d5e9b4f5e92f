"""The step's workspace: how much temporary memory a step may take, and batches that respect it.

Batching same-shaped factors saves per-call overhead (most of the time of small factors), but
a batch's temporaries grow with its size. Every batched stage of a step (statistics updates,
root computations, preconditioning) therefore cuts its work into batches whose temporaries,
estimated by each factor class's ``workspace`` formula, stay within ``max_workspace_bytes``;
a single item larger than that is done alone. ``memory_report()["workspace"]`` is the largest
batch any stage can form for the current parameters: what the step allocates on top of the
state, at most.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

T = TypeVar("T")

#: the default ``max_workspace_bytes``: about what one statistics or root update of the largest
#: factor (order 1200, the default ``max_preconditioner_dim``) needs; smaller factors are
#: batched up to it
DEFAULT_MAX_WORKSPACE = 32 << 20


def batches(
    items: Iterable[T], key: Callable[[T], Hashable], cost: Callable[[T], int], budget: int
) -> list[list[T]]:
    """``items`` grouped by ``key`` (first-seen order), each group cut into consecutive
    batches whose ``cost`` sums to at most ``budget`` (an item costlier than that alone)."""
    groups: dict[Hashable, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    out: list[list[T]] = []
    for group in groups.values():
        batch: list[T] = []
        spent = 0
        for item in group:
            c = cost(item)
            if batch and spent + c > budget:
                out.append(batch)
                batch, spent = [], 0
            batch.append(item)
            spent += c
        out.append(batch)
    return out


def largest(batch_list: list[list[T]], cost: Callable[[T], int]) -> int:
    """The costliest batch's total cost (0 for none)."""
    return max((sum(cost(i) for i in b) for b in batch_list), default=0)


def check_workspace(value) -> int:
    """``max_workspace_bytes`` as an int, or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"invalid max_workspace_bytes={value!r}: must be a number of bytes (an int >= 1); "
            f"the default is {DEFAULT_MAX_WORKSPACE} (32 MiB)"
        )
    return value
