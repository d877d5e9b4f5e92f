"""Decoding in one pass: codes and chunk scales to the fp32 matrix, written in place.

Every output entry reads its code (unpacking it from its byte), looks it up in the codebook,
multiplies it by its chunk's scale and is stored: one read of the codes and scales and one
write of the result, where the torch path makes a code-value array, scales it, and gathers it
into the matrix (``qshampoo.quant.blockwise``). The arithmetic is the same single fp32 product,
so the values are bit for bit the torch path's.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..dispatch import kernel_launch
from .codes import load_codes
from .tril import tril_position

#: output tile edge of one program (entries)
TILE = 32


@triton.jit
def _decode_tril(
    codes_ptr, code_row, code_stride, nbytes,
    scales_ptr, scale_row, cb_ptr, diag_ptr, diag_row,
    out_ptr, out_batch, out_row, out_col,
    n, s, k, t,
    BITS: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_DIAG: tl.constexpr, TILE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) * TILE + tl.arange(0, TILE)).to(tl.int64)[:, None]
    j = (tl.program_id(2) * TILE + tl.arange(0, TILE)).to(tl.int64)[None, :]
    inside = (i < n) & (j < n)
    if SYMMETRIC:  # an entry above the diagonal is its mirror's
        r = tl.maximum(i, j)
        c = tl.minimum(i, j)
    else:
        r = i
        c = j
    stored = inside & (c < r)
    off, chunk = tril_position(r, c, s, k, t)
    code = load_codes(codes_ptr + b * code_row, off * code_stride, nbytes, stored, BITS)
    scale = tl.load(scales_ptr + b * scale_row + chunk, mask=stored, other=0.0)
    value = tl.where(stored, tl.load(cb_ptr + code) * scale, 0.0)
    if HAS_DIAG:
        d = tl.load(diag_ptr + b * diag_row + i + 0 * j, mask=inside & (i == j), other=0.0)
        value = tl.where(i == j, d, value)
    tl.store(out_ptr + b * out_batch + i * out_row + j * out_col, value, mask=inside)


@triton.jit
def _decode_full(
    codes_ptr, code_row, code_stride, nbytes,
    scales_ptr, scale_row, cb_ptr, diag_ptr, diag_row,
    out_ptr, out_batch, out_row,
    rows, cols, s, chunks_per_row,
    BITS: tl.constexpr, HAS_DIAG: tl.constexpr, TILE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    r = (tl.program_id(1) * TILE + tl.arange(0, TILE)).to(tl.int64)[:, None]
    c = (tl.program_id(2) * TILE + tl.arange(0, TILE)).to(tl.int64)[None, :]
    inside = (r < rows) & (c < cols)
    code = load_codes(codes_ptr + b * code_row, (r * cols + c) * code_stride, nbytes, inside, BITS)
    chunk = r * chunks_per_row + c // s
    scale = tl.load(scales_ptr + b * scale_row + chunk, mask=inside, other=0.0)
    value = tl.load(cb_ptr + code) * scale
    if HAS_DIAG:
        d = tl.load(diag_ptr + b * diag_row + r + 0 * c, mask=inside & (r == c), other=0.0)
        value = tl.where(r == c, d, value)
    tl.store(out_ptr + b * out_batch + r * out_row + c, value, mask=inside)


def decode(
    codes: torch.Tensor,
    scales: torch.Tensor,
    shape: tuple[int, ...],
    *,
    layout: str,
    block_size: int,
    codebook: torch.Tensor,
    bits: int,
    diag: torch.Tensor | None = None,
    symmetric: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fp32 tensors ``(..., *shape)`` that ``codes`` and ``scales`` store.

    ``codes`` ``(..., bytes)`` uint8: the codes as a bit stream of ``bits`` per code (8 for
    unpacked codes, then any stride; below 8, rows must be contiguous). ``scales`` ``(...,
    chunks)`` fp32, ``codebook`` the fp32 levels (on the codes' device), ``diag`` ``(..., n)``
    an exact diagonal that replaces the decoded one. ``layout="tril"`` gives the strict lower
    triangle with zeros above it, or with ``symmetric`` its mirror there too; ``"full"`` a
    matrix of ``(shape[0], prod(shape[1:]))`` (a 1-D shape: one row). ``out``: where to write
    (``(..., *shape)`` fp32, last stride 1 for "full"), else a new tensor. Checks of the
    arguments are the caller's (``qshampoo.quant.blockwise``).
    """
    batch = codes.shape[:-1]
    B = math.prod(batch)
    if bits < 8 and codes.stride(-1) != 1:
        codes = codes.contiguous()
    codes2 = codes.reshape(B, codes.shape[-1])
    scales2 = scales.to(codes.device, torch.float32).reshape(B, scales.shape[-1]).contiguous()
    if out is None:
        out = torch.empty((*batch, *shape), dtype=torch.float32, device=codes.device)
    if out.numel() == 0:
        return out
    code_stride = codes2.stride(-1) if bits == 8 else 1
    diag2 = diag.to(codes.device).reshape(B, -1) if diag is not None else scales2
    common = (
        codes2, codes2.stride(0), code_stride, codes2.shape[-1],
        scales2, scales2.stride(0), codebook, diag2, diag2.stride(0) if diag is not None else 0,
    )  # fmt: skip
    if layout == "tril":
        n, s = shape[0], block_size
        k = max(1, -(-n // s))
        o = out.view(B, n, n)
        grid = (B, triton.cdiv(n, TILE), triton.cdiv(n, TILE))
        with kernel_launch("decode_tril"):
            _decode_tril[grid](
                *common, o, o.stride(0), o.stride(1), o.stride(2), n, s, k, n - (k - 1) * s,
                BITS=bits, SYMMETRIC=symmetric, HAS_DIAG=diag is not None, TILE=TILE,
            )  # fmt: skip
    else:
        rows, cols = (1, math.prod(shape)) if len(shape) <= 1 else (shape[0], math.prod(shape[1:]))
        o = out.view(B, rows, cols)
        grid = (B, triton.cdiv(rows, TILE), triton.cdiv(cols, TILE))
        with kernel_launch("decode_full"):
            _decode_full[grid](
                *common, o, o.stride(0), o.stride(1), rows, cols, block_size,
                -(-cols // block_size), BITS=bits, HAS_DIAG=diag is not None, TILE=TILE,
            )  # fmt: skip
    return out
