"""Reading packed codes and rounding to the nearest codebook entry (Triton device code)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_codes(row_ptr, pos, nbytes, mask, BITS: tl.constexpr):
    """Codes number ``pos`` (int64) of the bit stream at ``row_ptr`` (``nbytes`` uint8), each
    ``BITS`` wide, packed as ``qshampoo.quant.packing`` does (code ``m`` in bits
    ``[m*BITS, (m+1)*BITS)``, little-endian); int32, 0 where ``mask`` is False."""
    if BITS == 8:
        code = tl.load(row_ptr + pos, mask=mask, other=0).to(tl.int32)
    elif BITS == 4:
        byte = tl.load(row_ptr + (pos >> 1), mask=mask, other=0).to(tl.int32)
        code = (byte >> ((pos & 1) * 4).to(tl.int32)) & 15
    else:  # a code may straddle two bytes: read both as one 16-bit word
        bit = pos * BITS
        first = bit >> 3
        lo = tl.load(row_ptr + first, mask=mask, other=0).to(tl.int32)
        hi = tl.load(row_ptr + first + 1, mask=mask & (first + 1 < nbytes), other=0).to(tl.int32)
        code = ((lo | (hi << 8)) >> (bit & 7).to(tl.int32)) & ((1 << BITS) - 1)
    return code


@triton.jit
def nearest_code(y, mids_ptr, BITS: tl.constexpr):
    """Index (int32) of the codebook entry nearest to each ``y``: the number of the ``2**BITS -
    1`` sorted midpoints at ``mids_ptr`` that are strictly below it, found by binary search
    (ties go to the lower entry, as ``torch.bucketize`` and ``nearest_codes`` do)."""
    lo = tl.zeros(y.shape, dtype=tl.int32)
    for step in tl.static_range(BITS):
        half = 1 << (BITS - 1 - step)
        mid = tl.load(mids_ptr + lo + (half - 1))
        lo = tl.where(y > mid, lo + half, lo)
    return lo
