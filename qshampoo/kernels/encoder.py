"""The one-pass quantizer: fp32 values to chunk absmax scales and nearest-codebook codes.

One program loads a tile of chunks, takes each chunk's absmax, divides by it (IEEE division,
as torch's) and rounds to the nearest codebook entry by binary search over the midpoints, then
stores the codes (one byte each, unpacked: what ``qshampoo.quant.encode`` returns) and the
scales at their places in the layout. The torch path takes a dozen passes for the same
(gathering the tiles, the absmax, the division, the rounding table's lookups, concatenation);
both give the same codes and scales.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..dispatch import kernel_launch
from .codes import nearest_code
from .tril import tril_position

#: entries one program loads at most (a power of two): rows of chunks, ``ELEMENTS // block``
#: of them (at least one)
ELEMENTS = 4096


@triton.jit
def _encode_tril(
    x_ptr, x_batch, x_row, x_col,
    codes_ptr, code_row, scales_ptr, scale_row, mids_ptr,
    n, s, k, t, groups,
    BITS: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    # program (b, p * groups + g, q): rows g*ROWS .. of tile (p, q) of matrix b, each row of
    # the tile one chunk; tiles above the diagonal do nothing
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1).to(tl.int64) // groups
    g = tl.program_id(1).to(tl.int64) % groups
    q = tl.program_id(2).to(tl.int64)
    if q <= p:
        ii = g * ROWS + tl.arange(0, ROWS).to(tl.int64)  # rows in the tile
        jj = tl.arange(0, BLOCK).to(tl.int64)  # columns in the tile
        i = p * s + ii
        j = q * s + jj
        valid = (ii[:, None] < s) & (jj[None, :] < s) & (i[:, None] < n) & (j[None, :] < i[:, None])
        x = tl.load(
            x_ptr + b * x_batch + i[:, None] * x_row + j[None, :] * x_col, mask=valid, other=0.0
        )
        scale = tl.max(tl.abs(x), axis=1)
        y = tl.math.div_rn(x, tl.where(scale > 0, scale, 1.0)[:, None])
        code = nearest_code(y, mids_ptr, BITS)
        off, _ = tril_position(i[:, None], j[None, :], s, k, t)
        tl.store(codes_ptr + b * code_row + off, code.to(tl.uint8), mask=valid)
        # a row with entries is one chunk; its first entry (column q*s) names it
        has_chunk = (ii < s) & (i < n) & (q * s < i)
        _, chunk = tril_position(i, q * s + 0 * i, s, k, t)
        tl.store(scales_ptr + b * scale_row + chunk, scale, mask=has_chunk)


@triton.jit
def _encode_full(
    x_ptr, x_row, codes_ptr, scales_ptr, mids_ptr,
    cols, s, chunks_per_row,
    BITS: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    # program (r, g): chunks g*ROWS .. of row r, one row of the block each
    r = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    e = tl.arange(0, BLOCK)[None, :]
    c = chunk[:, None] * s + e
    valid = (e < s) & (c < cols) & (chunk[:, None] < chunks_per_row)
    x = tl.load(x_ptr + r * x_row + c, mask=valid, other=0.0)
    scale = tl.max(tl.abs(x), axis=1)
    y = tl.math.div_rn(x, tl.where(scale > 0, scale, 1.0)[:, None])
    code = nearest_code(y, mids_ptr, BITS)
    tl.store(codes_ptr + r * cols + c, code.to(tl.uint8), mask=valid)
    tl.store(scales_ptr + r * chunks_per_row + chunk, scale, mask=chunk < chunks_per_row)


def encode(
    x: torch.Tensor, *, layout: str, block_size: int, midpoints: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``qshampoo.quant.encode``'s ``(codes, scales)`` of ``x``: unpacked uint8 codes and fp32
    chunk scales, ``(..., N)`` and ``(..., chunks)`` for a batch ``(..., n, n)`` of "tril"
    matrices, 1-D for "full". ``midpoints``: the ``2**bits - 1`` fp32 midpoints between the
    codebook's levels, on ``x``'s device. Checks of the arguments are the caller's."""
    from ..quant.blockwise import num_chunks  # the kernels are loaded from there

    s = block_size
    block = triton.next_power_of_2(s)
    rows_per_program = max(1, ELEMENTS // block)
    X = x.to(torch.float32)
    dev = x.device
    if layout == "tril":
        n = x.shape[-1]
        batch = x.shape[:-2]
        B = math.prod(batch)
        X = X.reshape(B, n, n)
        N, chunks = n * (n - 1) // 2, num_chunks((n, n), layout="tril", block_size=s)
        codes = torch.empty(B, N, dtype=torch.uint8, device=dev)
        scales = torch.empty(B, chunks, dtype=torch.float32, device=dev)
        k = max(1, -(-n // s))
        rows = min(block, rows_per_program)
        groups = triton.cdiv(s, rows)
        if B and N:
            with kernel_launch("encode_tril"):
                _encode_tril[(B, k * groups, k)](
                    X, X.stride(0), X.stride(1), X.stride(2),
                    codes, N, scales, chunks, midpoints, n, s, k, n - (k - 1) * s, groups,
                    BITS=bits, BLOCK=block, ROWS=rows,
                )  # fmt: skip
        return codes.view(*batch, N), scales.view(*batch, chunks)
    rows, cols = (1, x.numel()) if x.dim() <= 1 else (x.shape[0], math.prod(x.shape[1:]))
    X = X.reshape(rows, cols)
    if X.stride(-1) != 1:
        X = X.contiguous()
    per_row = -(-cols // s)
    codes = torch.empty(rows * cols, dtype=torch.uint8, device=dev)
    scales = torch.empty(rows * per_row, dtype=torch.float32, device=dev)
    if codes.numel():
        with kernel_launch("encode_full"):
            _encode_full[(rows, triton.cdiv(per_row, rows_per_program))](
                X, X.stride(0), codes, scales, midpoints, cols, s, per_row,
                BITS=bits, BLOCK=block, ROWS=rows_per_program,
            )  # fmt: skip
    return codes, scales
