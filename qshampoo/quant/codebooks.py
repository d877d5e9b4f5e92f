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
# Tables are built on the CPU, whatever the default device (torch.set_default_device), then
# copied to the device asked for.
_CPU = torch.device("cpu")

_CACHE: dict[tuple[str, int, torch.device], torch.Tensor] = {}
_BYTE_TABLE_CACHE: dict[tuple[str, torch.device], torch.Tensor] = {}
_NIBBLE_TABLE_CACHE: dict[tuple[str, bool, torch.device], torch.Tensor] = {}
_MIDPOINT_CACHE: dict[tuple[str, int, torch.device], torch.Tensor] = {}
_LUT_CACHE: dict[tuple[str, int, torch.device], tuple | None] = {}

#: the largest lookup table ``nearest_codes`` builds (bins); beyond it, a binary search
LUT_MAX_BINS = 1 << 16


def _check(name: str, bits: int) -> None:
    if name not in CODEBOOK_NAMES:
        raise ValueError(f"codebook must be one of {list(CODEBOOK_NAMES)}, got {name!r}")
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {list(SUPPORTED_BITS)}, got {bits!r}")


def _linear2(bits: int) -> torch.Tensor:
    v = torch.linspace(-1.0, 1.0, 2**bits, dtype=torch.float64, device=_CPU)
    v[2 ** (bits - 1) - 1] = 0.0
    return torch.sign(v) * v * v


def _dynamic_tree(bits: int) -> torch.Tensor:
    levels = [torch.zeros(1, dtype=torch.float64, device=_CPU)]
    levels.append(torch.ones(1, dtype=torch.float64, device=_CPU))
    for i in range(bits - 1):
        bounds = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float64, device=_CPU)
        mids = (bounds[:-1] + bounds[1:]) / 2 * 10.0 ** (i - (bits - 2))
        levels += [mids, -mids]
    return torch.cat(levels).sort().values


def _normalize_device(device) -> torch.device:
    return _CPU if device is None else torch.device(device)


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


def nearest_codes(y: torch.Tensor, name: str, bits: int) -> torch.Tensor:
    """Index (uint8) of the entry of codebook ``name`` nearest to each element of ``y``.

    ``y`` holds normalised values in [-1, 1] (fp32). Ties go to the lower entry, as
    ``torch.bucketize(y, midpoints)`` does, and the result equals it exactly.

    Rather than a binary search per element, [-1, 1] is cut into ``R`` equal bins, fine enough
    that each holds at most one midpoint; a table gives the code at each bin's left edge and the
    midpoint inside the bin, so a code is one multiply, two gathers and a compare (4-6x faster
    than ``bucketize`` on a CPU, ``benchmarks/kernels.py``). Codebooks whose midpoints are too
    close for ``LUT_MAX_BINS`` bins (8-bit dynamic tree) use ``bucketize``.
    """
    y = y.contiguous()
    lut = _lut(name, bits, y.device)
    if lut is None:
        mids = codebook_midpoints(name, bits, y.device)
        return torch.bucketize(y, mids, out_int32=True).to(torch.uint8)
    R, lo, mid_in = lut
    b = (y + 1.0).mul_(R / 2).to(torch.int32).clamp_(0, R - 1).view(-1)
    codes = lo.index_select(0, b) + torch.gt(y.view(-1), mid_in.index_select(0, b))
    return codes.view(y.shape)


def _lut(name: str, bits: int, dev: torch.device) -> tuple | None:
    key = (name, bits, dev)
    if key not in _LUT_CACHE:
        _LUT_CACHE[key] = _build_lut(codebook_midpoints(name, bits, dev).double().cpu(), dev)
    return _LUT_CACHE[key]


def _build_lut(mids: torch.Tensor, dev: torch.device) -> tuple | None:
    """``(R, lo, mid_in)``: bin ``b`` covers ``[-1 + 2b/R, -1 + 2(b+1)/R)``; ``lo[b]`` counts the
    midpoints below its left edge, ``mid_in[b]`` is the midpoint inside it (``+inf`` if none).

    ``y + 1`` rounds in fp32 by up to ~1.2e-7, which can move a value to a neighbouring bin;
    the table is used only when no midpoint lies that close to a bin edge, so the neighbour
    gives the same code.
    """
    gap = (mids[1:] - mids[:-1]).min().item()
    R = 2
    while 2.0 / R >= gap:
        R *= 2
    while R <= LUT_MAX_BINS:
        width = 2.0 / R
        pos = (mids + 1.0) / width
        if ((pos - pos.round()).abs() * width).min().item() > 1e-6:
            edges = -1.0 + width * torch.arange(R, dtype=torch.float64, device=_CPU)
            lo = torch.searchsorted(mids, edges)
            inside = torch.searchsorted(mids, edges + width) > lo
            mid_in = torch.where(inside, mids[lo.clamp(max=len(mids) - 1)], float("inf"))
            return R, lo.to(torch.uint8).to(dev), mid_in.float().to(dev)
        R *= 2  # a midpoint sits on an edge: a finer grid moves the edges
    return None


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


def codebook_nibble_table(name: str, high: bool, device=None) -> torch.Tensor:
    """(256,) fp32 table: entry ``b`` is the 4-bit codebook value of ``b``'s high nibble
    (``high``) or low one; a column of ``codebook_byte_table`` (cached, do not modify)."""
    dev = _normalize_device(device)
    key = (name, high, dev)
    table = _NIBBLE_TABLE_CACHE.get(key)
    if table is None:
        table = _NIBBLE_TABLE_CACHE[key] = codebook_byte_table(name, dev)[:, int(high)].contiguous()
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
