"""Optional Triton kernels for the low-bit data path, on CUDA tensors.

The torch-operator code of ``qshampoo.quant`` is the reference and the fallback. With the
kernels turned on (``QSHAMPOO_TRITON=auto``) and the ``triton`` package importable,
``qshampoo.quant``'s ``encode``, ``decode``, ``dequantize`` and ``dequantize_symmetric`` hand
CUDA tensors to the kernels here, which give the same codes,
scales and values (tests/test_kernels.py checks it under ``TRITON_INTERPRET=1``):

- ``decode``: packed or unpacked codes and fp32 chunk scales to fp32 values in one pass,
  written straight into the ``"tril"`` matrix (symmetric, with its diagonal, for a root) or the
  ``"full"`` one;
- ``encode``: fp32 values to chunk absmax scales and nearest-codebook codes in one pass;
- ``root_matmul``: ``L_hat @ G`` decoding the root inside the matmul (equal to decoding then
  ``bmm`` up to fp32 rounding); not wired into the optimizer until a GPU shows it pays
  (``benchmarks/kernel_speed.py``).

A kernel that fails (a GPU or Triton install it does not compile for) warns once and turns the
kernels off; the torch operators take over. The switch is ``QSHAMPOO_TRITON`` (read at first
use) or ``set_mode`` / ``using``:

- ``"off"`` (default): never. The kernels are opt-in until they have been compiled and timed
  on a GPU (they are checked only in Triton's interpreter so far);
- ``"auto"``: CUDA tensors, when triton imports and no ``torch.compile`` is tracing (inside a
  compiled graph inductor fuses the torch operators itself);
- ``"on"``: tensors of every device; a CPU tensor then needs ``TRITON_INTERPRET=1`` (Triton's
  interpreter, numpy: for tests, not for speed).

This module does not import triton; the kernels load on first use.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator

import torch

ENV = "QSHAMPOO_TRITON"
MODES: tuple[str, ...] = ("auto", "off", "on")

_state: dict = {"mode": None, "available": None}


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{ENV} / kernel mode must be one of {list(MODES)}, got {mode!r}")
    return mode


def mode() -> str:
    """The current mode: ``set_mode``'s, else ``$QSHAMPOO_TRITON``, else ``"off"``."""
    if _state["mode"] is None:
        _state["mode"] = _check_mode(os.environ.get(ENV, "off") or "off")
    return _state["mode"]


def set_mode(new: str) -> str:
    """Set the mode (``"auto"``, ``"off"``, ``"on"``) for the process; returns the previous."""
    previous = mode()
    _state["mode"] = _check_mode(new)
    return previous


@contextlib.contextmanager
def using(new: str) -> Iterator[None]:
    """``set_mode(new)`` inside a ``with`` block, the previous mode restored after it."""
    previous = set_mode(new)
    try:
        yield
    finally:
        set_mode(previous)


def available() -> bool:
    """Whether triton imports (checked once)."""
    if _state["available"] is None:
        try:
            import triton  # noqa: F401
        except Exception:  # not installed, or installed without what it needs
            _state["available"] = False
        else:
            _state["available"] = True
    return _state["available"]


def enabled(t: torch.Tensor) -> bool:
    """Whether the kernels handle ``t``'s data (see the module docstring for the modes)."""
    if torch.compiler.is_compiling():  # first: nothing else is traced
        return False
    m = mode()
    if m == "off":
        return False
    if m == "auto" and t.device.type != "cuda":
        return False
    return available()


def _on(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it ``t``'s."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _run(module: str, t: torch.Tensor, *args, **kwargs):
    """``qshampoo.kernels.<module>.<module's function>`` on ``t``'s device, or None if it fails
    (a GPU or a Triton install the kernels do not compile for): then it warns, turns the kernels
    off for the process, and the caller goes on with the torch operators."""
    try:
        run = getattr(importlib.import_module(f"{__name__}.{module}"), _ENTRY[module])
        with _on(t):
            return run(t, *args, **kwargs)
    except Exception as e:
        set_mode("off")
        warnings.warn(
            f"qshampoo: a Triton kernel failed ({type(e).__name__}: {e}); continuing with the "
            f"torch operators, kernels off (set {ENV}=off to skip them)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


_ENTRY = {"decoder": "decode", "encoder": "encode"}


def decode(codes: torch.Tensor, *args, **kwargs) -> torch.Tensor | None:
    """``qshampoo.kernels.decoder.decode`` (imports triton), or None if the kernel failed."""
    return _run("decoder", codes, *args, **kwargs)


def encode(x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``qshampoo.kernels.encoder.encode`` (imports triton), or None if the kernel failed."""
    return _run("encoder", x, **kwargs)


def root_matmul(codes: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``qshampoo.kernels.matmul.root_matmul`` (imports triton): not used by the optimizer yet."""
    from .matmul import root_matmul as run

    with _on(codes):
        return run(codes, *args, **kwargs)


__all__ = [
    "ENV",
    "MODES",
    "available",
    "decode",
    "enabled",
    "encode",
    "mode",
    "root_matmul",
    "set_mode",
    "using",
]
