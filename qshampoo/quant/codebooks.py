"""Codebooks: sorted sets of signed levels in [-1, 1] that block-wise quantization rounds to.

Two constructions are provided, each for 3, 4 and 8 bits (``2**bits`` levels):

``"linear2"`` ("linear square")
    ``2**bits`` evenly spaced points on [-1, 1]; the point just below zero (index
    ``2**(bits-1) - 1``) is replaced by 0; every point ``v`` is mapped to ``sign(v) * v**2``.
    Levels crowd near zero, where most entries of a normalised chunk lie.

``"dynamic_tree"``
    A signed dynamic-exponent map: for ``i = 0 .. bits-2``, the midpoints of
    ``linspace(0.1, 1, 2**i + 1)`` scaled by ``10**(i - (bits-2))``, with both signs, plus 0 and 1.

Both contain 0 (so zero chunks and zeroed diagonals decode to exact zeros) and 1 (so the
largest positive element of a chunk decodes exactly). Only ``"linear2"`` contains -1.
"""

from __future__ import annotations

import torch

CODEBOOK_NAMES: tuple[str, ...] = ("linear2", "dynamic_tree")
SUPPORTED_BITS: tuple[int, ...] = (3, 4, 8)

_CACHE: dict[tuple[str, int, torch.device], torch.Tensor] = {}
_BYTE_TABLE_CACHE: dict[tuple[str, torch.device], torch.Tensor] = {}
_MIDPOINT_CACHE: dict[tuple[str, int, torch.device], torch.Tensor] = {}


def _check(name: str, bits: int) -> None:
    if name not in CODEBOOK_NAMES:
        raise ValueError(f"codebook must be one of {list(CODEBOOK_NAMES)}, got {name!r}")
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {list(SUPPORTED_BITS)}, got {bits!r}")


def _linear2(bits: int) -> torch.Tensor:
    v = torch.linspace(-1.0, 1.0, 2**bits, dtype=torch.float64)
    v[2 ** (bits - 1) - 1] = 0.0
    return torch.sign(v) * v * v


def _dynamic_tree(bits: int) -> torch.Tensor:
    levels = [torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)]
    for i in range(bits - 1):
        bounds = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float64)
        mids = (bounds[:-1] + bounds[1:]) / 2 * 10.0 ** (i - (bits - 2))
        levels += [mids, -mids]
    return torch.cat(levels).sort().values


def _normalize_device(device) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def codebook(name: str, bits: int, device=None) -> torch.Tensor:
    """Return the sorted fp32 codebook ``name`` with ``2**bits`` entries, on ``device``.

    The tensor is cached per (name, bits, device) and shared between callers: do not modify it.
    """
    _check(name, bits)
    dev = _normalize_device(device)
    key = (name, bits, dev)
    cb = _CACHE.get(key)
    if cb is None:
        table = _linear2(bits) if name == "linear2" else _dynamic_tree(bits)
        cb = table.to(dtype=torch.float32, device=dev)
        _CACHE[key] = cb
    return cb


def codebook_midpoints(name: str, bits: int, device=None) -> torch.Tensor:
    """The ``2**bits - 1`` midpoints between adjacent codebook entries (cached, do not modify).

    ``torch.bucketize(y, midpoints)`` is the index of the entry nearest to ``y``.
    """
    dev = _normalize_device(device)
    key = (name, bits, dev)
    mids = _MIDPOINT_CACHE.get(key)
    if mids is None:
        cb = codebook(name, bits, dev)
        mids = (cb[:-1] + cb[1:]) / 2
        _MIDPOINT_CACHE[key] = mids
    return mids


def codebook_byte_table(name: str, device=None) -> torch.Tensor:
    """(256, 2) fp32 table: row ``b`` holds the 4-bit codebook values of ``b``'s low and high
    nibble (cached, do not modify). Gathering it with packed bytes decodes two codes at once.
    """
    dev = _normalize_device(device)
    key = (name, dev)
    table = _BYTE_TABLE_CACHE.get(key)
    if table is None:
        cb = codebook(name, 4, dev)
        byte = torch.arange(256, device=dev)
        table = torch.stack([cb[byte & 15], cb[byte >> 4]], dim=1).contiguous()
        _BYTE_TABLE_CACHE[key] = table
    return table


def max_rounding_error(name: str, bits: int) -> float:
    """Largest distance from a point of [-1, 1] to its nearest codebook entry.

    That is the larger of half the widest gap between adjacent entries and the distance from
    each end of [-1, 1] to the nearest entry. Times a chunk's absmax, it bounds the
    per-element error of block-wise quantization.
    """
    cb = codebook(name, bits).double()
    half_gap = ((cb[1:] - cb[:-1]).max() / 2).item()
    return max(half_gap, (cb[0] + 1).item(), (1 - cb[-1]).item())
