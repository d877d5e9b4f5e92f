"""Dispatched operators and host synchronisations of a block of code, counted.

On a GPU every dispatched aten operator is at least one kernel launch, and every host
synchronisation (a value read back to decide something on the host) stalls the launch queue
until the device catches up: the two numbers that decide how fast a step of small operations
runs there, and which a CPU can count deterministically. :class:`DispatchCounter` is a
``TorchDispatchMode`` that counts both, by operator and by the line of qshampoo that called it:

    with DispatchCounter() as count:
        opt.step()
    count.ops, count.syncs, count.where_syncs

Host synchronisations counted: ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``,
``float(t)``), operators whose output shape depends on the data (``nonzero``, boolean-mask
indexing, ``masked_select``, ``unique``...) and ``Tensor.tolist()`` (which on the CPU reads the
memory without dispatching anything, so it is counted by wrapping it while the mode is on).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_PACKAGE = os.path.dirname(os.path.abspath(__file__))

#: operators whose output shape is decided by the data: the host must wait for the values
_DATA_DEPENDENT = {
    "aten.nonzero.default",
    "aten.nonzero_static.default",
    "aten.masked_select.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
    "aten.repeat_interleave.Tensor",
}


def _caller() -> str:
    """``path:line (function)`` of the innermost qshampoo frame outside this module (or of
    the innermost frame outside torch when none)."""
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(_PACKAGE) and path != os.path.abspath(__file__):
            rel = os.path.relpath(path, os.path.dirname(_PACKAGE))
            return f"{rel}:{frame.f_lineno} ({frame.f_code.co_name})"
        if fallback is None and f"{os.sep}torch{os.sep}" not in path and path != __file__:
            fallback = f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return fallback or "?"


def is_view(func) -> bool:
    """Whether ``func`` only makes a view (no data moved, no kernel launched on a GPU): its
    output aliases an input without writing it."""
    returns = func._schema.returns
    return bool(returns) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in returns
    )


def is_sync(func, args, kwargs) -> bool:
    """Whether the operator ``func`` on ``args`` makes the host wait for the device."""
    name = str(func)
    if name == "aten._local_scalar_dense.default" or name in _DATA_DEPENDENT:
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

        ``where=True`` also attributes every operator to the line of qshampoo that called it
        (slower: a stack walk per operator). Attributes after the block: ``ops`` (total),
        ``syncs`` (total), ``by_op`` (Counter over operator names), ``where_syncs`` (Counter over
        ``"op at path:line (function)"``), ``views`` (operators that only make views), ``kernels``
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
        self.where_syncs[f"{name} at {_caller()}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        self.by_op[name] += 1
        self.views += is_view(func)
        if self.where:
            line = _caller()
            self.by_line[line] += 1
            self.by_module[line.split(":")[0]] += 1
        if is_sync(func, args, kwargs):
            self._record_sync(name)
        return func(*args, **kwargs)

    def __enter__(self):
        counter = self
        original = self._tolist = torch.Tensor.tolist

        def tolist(t):
            if t.numel():
                counter._record_sync("Tensor.tolist")
            return original(t)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
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
