"""Peak memory, measured: of the process, of the CUDA allocator, and of the tensors one call makes.

What decides whether training fits is the *peak* of a step, not the bytes the optimizer state
holds. Three ways to see it:

- :func:`process_peak` / :func:`reset_process_peak`: the process's high-water mark of resident
  memory (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``,
  which cannot be reset). What the operating system sees, allocator slack included.
- On CUDA, ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``.
- :class:`TensorPeak`: the most bytes held at once by tensors created inside a block of code
  (every operator's outputs, counted by storage and released when the storage is freed),
  deterministic and device-independent. It does not see memory a library allocates inside one
  operator (a LAPACK workspace), which the optimizer's ``memory_report()["workspace"]`` adds.
"""

from __future__ import annotations

import ctypes
import resource
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def process_rss() -> int | None:
    """The process's resident memory now, in bytes (None where ``/proc`` is unavailable)."""
    return _status_bytes("VmRSS")


def process_memory() -> dict[str, int | None]:
    """The process's resident memory now, split (Linux ``/proc/self/status``, bytes; None
    elsewhere): ``rss`` (``VmRSS``), ``anon`` (``RssAnon``: heap, tensors and other private
    memory) and ``file`` (``RssFile``: mapped files, mostly the code pages of the shared
    libraries, which grow as kernels are first used); and, under glibc, ``heap_in_use`` /
    ``heap_free`` (``mallinfo2``: bytes malloc has handed out, and free bytes it keeps in its
    heaps, resident or not)."""
    out = {
        "rss": _status_bytes("VmRSS"),
        "anon": _status_bytes("RssAnon"),
        "file": _status_bytes("RssFile"),
    }
    out.update(_mallinfo())
    return out


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mallinfo() -> dict[str, int | None]:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return {"heap_in_use": None, "heap_free": None}
    fn.restype = _MallInfo2
    info = fn()
    # in use: small blocks from the heaps plus large ones mapped on their own
    return {"heap_in_use": info.uordblks + info.hblkhd, "heap_free": info.fordblks}


def process_peak() -> int:
    """The process's peak resident memory (since the last :func:`reset_process_peak`), bytes."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def reset_process_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux); returns whether that was possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class TensorPeak(TorchDispatchMode):
    """Count the bytes of tensors created inside the ``with`` block; ``peak`` is the most held
    at once, ``live`` what is held at the end, both relative to the start.

    Each storage is counted once (views and in-place results add nothing) from the first
    operator that returns it until it is freed. Storages that existed before the block are not
    counted, even if written to; those of ``existing`` tensors (an optimizer's state, say)
    count negatively once freed inside the block, so a state tensor replaced by a new one of
    the same size nets to zero, as it does in the process's memory.

        with TensorPeak(existing=state_tensors(opt)) as tp:  # no other reference kept
            opt.step()
        tp.peak  # bytes

    Pass ``existing`` as a temporary: a reference held elsewhere keeps a replaced tensor
    alive, and it is then (rightly) still counted.
    """

    def __init__(self, existing=()):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()
        self._watch: dict[int, weakref.finalize] = {}
        for t in existing:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in self._watch:
                self._watch[ptr] = weakref.finalize(storage, self._release, None, storage.nbytes())

    def __exit__(self, *exc):
        for fin in self._watch.values():  # frees after the block do not count
            fin.detach()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # storages that the inputs already own are not new, whatever the operator returns
        known = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs or {}))
            if isinstance(t, torch.Tensor) and not t.is_meta
        }
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self._count(t, known)
        return out

    def _count(self, t: torch.Tensor, known: set[int]) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in known or ptr in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen.add(ptr)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, ptr, nbytes)

    def _release(self, ptr: int | None, nbytes: int) -> None:
        if ptr is None:  # an existing storage
            self.live -= nbytes
        elif ptr in self._seen:
            self._seen.discard(ptr)
            self.live -= nbytes
