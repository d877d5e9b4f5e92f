"""Counting the host synchronisations of a piece of code, by where qshampoo makes them.

A step that reads a device value on the host (``.item()``, ``bool(t)``, ``.tolist()``, a
``nonzero``) waits for the device to finish its queued work. :func:`count_syncs` records every
such read made inside a ``with`` block, keyed by the innermost ``qshampoo`` frame, so that a
test or a benchmark can tell the optimizer's own reads from the factor code's::

    with count_syncs() as where:
        opt.step()
    # Counter({("tolist", "qshampoo/optimizer.py:_finite_flags"): 1, ...})
"""

from __future__ import annotations

import collections
import contextlib
import os
import traceback
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: operators that read a device value on the host (a synchronisation on an accelerator)
SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.is_nonzero.default,
}


class _SyncCounter(TorchDispatchMode):
    def __init__(self, where: collections.Counter):
        super().__init__()
        self.where = where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS:
            self.where[(func.name(), caller())] += 1
        return func(*args, **(kwargs or {}))


def caller(skip: tuple[str, ...] = ()) -> str:
    """``qshampoo/<file>.py:<function>`` of the innermost qshampoo frame of the stack outside
    this module and the files ``skip`` (the counters' own)."""
    for frame in reversed(traceback.extract_stack()):
        parts = frame.filename.split(os.sep)
        if "qshampoo" in parts[:-1] and frame.filename != __file__ and frame.filename not in skip:
            inner = parts[len(parts) - 1 - parts[::-1].index("qshampoo") :]
            return f"{'/'.join(inner)}:{frame.name}"
    return "?"


@contextlib.contextmanager
def count_syncs() -> Iterator[collections.Counter]:
    """Count the host reads of device values made inside the block: a Counter of
    ``(operator, "qshampoo/<file>.py:<function>")``.

    The operators of ``SYNC_OPS``, and ``Tensor.tolist`` (which reads a CPU tensor without
    dispatching an operator, and copies a device tensor to the host). Not thread-safe: it
    replaces ``torch.Tensor.tolist`` while the block runs."""
    where: collections.Counter = collections.Counter()
    tolist = torch.Tensor.tolist

    def counted(self):
        where[("tolist", caller())] += 1
        return tolist(self)

    torch.Tensor.tolist = counted
    try:
        with _SyncCounter(where):
            yield where
    finally:
        torch.Tensor.tolist = tolist
