"""Dispatched operators and host synchronisations of a block of code, counted.

On a GPU every dispatched aten operator is at least one kernel launch, and every host
synchronisation (a value read back to decide something on the host) stalls the launch queue
until the device catches up: the two numbers that decide how fast a step of small operations
runs there, and which a CPU can count deterministically. :class:`DispatchCounter` is a
``TorchDispatchMode`` that counts both, by operator and by the qshampoo function that called it
(:func:`caller`):

    with DispatchCounter() as count:
        opt.step()
    count.ops, count.syncs, count.where_syncs

Host synchronisations counted: ``.item()``, ``bool(t)``, ``float(t)``, ``nonzero``, the other
operators whose output shape depends on the data (boolean-mask indexing, ``masked_select``,
``unique``...), and ``Tensor.tolist()``, which on the CPU reads the memory without dispatching
anything, so it is counted by wrapping it while the mode is on. :func:`count_syncs` gives the
synchronisations alone, by where qshampoo makes them::

    with count_syncs() as where:
        opt.step()
    # Counter({("Tensor.tolist", "qshampoo/optimizer.py:_finite_flags"): 1, ...})

A Triton kernel launch (``qshampoo.kernels``) counts as one operator, ``triton.<kernel>``: the
launch sites mark it with :func:`kernel_launch`, and what runs inside is not counted (on a GPU
it is one launch; Triton's interpreter, which runs the kernels on the CPU, emulates them with
torch operators of its own).
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

#: operators that read a device value on the host (a synchronisation on an accelerator)
SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.is_nonzero.default,
}


def caller() -> str:
    """``qshampoo/<file>.py:<function>`` of the innermost qshampoo frame of the stack outside
    this module (the counters' own)."""
    for frame in reversed(traceback.extract_stack()):
        parts = frame.filename.split(os.sep)
        if "qshampoo" in parts[:-1] and frame.filename != __file__:
            inner = parts[len(parts) - 1 - parts[::-1].index("qshampoo") :]
            return f"{'/'.join(inner)}:{frame.name}"
    return "?"


#: operators whose output shape is decided by the data: the host must wait for the values
_DATA_DEPENDENT = {
    "aten.nonzero_static.default",
    "aten.masked_select.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
    "aten.repeat_interleave.Tensor",
}


def is_view(func) -> bool:
    """Whether ``func`` only makes a view (no data moved, no kernel launched on a GPU): its
    output aliases an input without writing it."""
    returns = func._schema.returns
    return bool(returns) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in returns
    )


def is_sync(func, args, kwargs) -> bool:
    """Whether the operator ``func`` on ``args`` makes the host wait for the device."""
    if func in SYNC_OPS:
        return True
    name = str(func)
    if name in _DATA_DEPENDENT:
        return True
    if name.startswith("aten.index.Tensor") or name.startswith("aten.index_put"):
        # boolean-mask indexing: the mask's nonzero decides the shape
        return any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool
            for t in tree_leaves((args, kwargs))[1:]
        )
    return False


class DispatchCounter(TorchDispatchMode):
    """Count the aten operators dispatched, and the host synchronisations, inside a block.

    ``where=True`` also attributes every operator to the qshampoo function that called it
    (slower: a stack walk per operator). Attributes after the block: ``ops`` (total), ``syncs``
    (total), ``by_op`` (Counter over operator names), ``where_syncs`` (Counter over ``"op at
    qshampoo/<file>.py:<function>"``), ``views`` (operators that only make views), ``kernels``
    (the others) and, with ``where``, ``by_line`` and ``by_module``.
    """

    def __init__(self, where: bool = False):
        super().__init__()
        self.where = where
        self.by_op: Counter[str] = Counter()
        self.by_line: Counter[str] = Counter()
        self.by_module: Counter[str] = Counter()
        self.where_syncs: Counter[str] = Counter()
        self.views = 0

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())

    @property
    def kernels(self) -> int:
        """Operators that compute or move data (views left out): on a GPU, launches."""
        return self.ops - self.views

    @property
    def syncs(self) -> int:
        return sum(self.where_syncs.values())

    def _record_sync(self, name: str) -> None:
        self.where_syncs[f"{name} at {caller()}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        self.by_op[name] += 1
        self.views += is_view(func)
        if self.where:
            line = caller()
            self.by_line[line] += 1
            self.by_module[line.split(":")[0]] += 1
        if is_sync(func, args, kwargs):
            self._record_sync(name)
        return func(*args, **kwargs)

    def _record_launch(self, name: str) -> None:
        self.by_op[f"triton.{name}"] += 1
        if self.where:
            line = caller()
            self.by_line[line] += 1
            self.by_module[line.split(":")[0]] += 1

    def __enter__(self):
        counter = self
        original = self._tolist = torch.Tensor.tolist

        def tolist(t):
            if t.numel() and not _LAUNCHING:
                counter._record_sync("Tensor.tolist")
            return original(t)

        torch.Tensor.tolist = tolist
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def syncs_outside(self, *files: str) -> int:
        """Synchronisations not called from the qshampoo files ``files`` (e.g.
        ``"qshampoo/optimizer.py"``)."""
        return sum(
            n
            for key, n in self.where_syncs.items()
            if key.split(" at ", 1)[1].split(":")[0] not in files
        )


#: the counters whose block is running, and the Triton launches running (at most one)
_ACTIVE: list[DispatchCounter] = []
_LAUNCHING: list[str] = []


@contextlib.contextmanager
def kernel_launch(name: str) -> Iterator[None]:
    """Around a Triton kernel's launch: the active :class:`DispatchCounter` s count it as one
    operator, ``triton.<name>``, and nothing that runs inside it."""
    if not _ACTIVE:
        yield
        return
    for counter in _ACTIVE:
        counter._record_launch(name)
    _LAUNCHING.append(name)
    try:
        with _disable_current_modes():
            yield
    finally:
        _LAUNCHING.pop()


@contextlib.contextmanager
def count_syncs() -> Iterator[Counter]:
    """The host synchronisations made inside the block (what :class:`DispatchCounter`
    counts), filled in when it ends: a Counter of ``(operator, "qshampoo/<file>.py:<function>")``.
    Not thread-safe: ``torch.Tensor.tolist`` is replaced while the block runs."""
    where: Counter = Counter()
    counter = DispatchCounter()
    try:
        with counter:
            yield where
    finally:
        for key, n in counter.where_syncs.items():
            where[tuple(key.split(" at ", 1))] += n
