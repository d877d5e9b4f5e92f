"""Where an entry of the ``"tril"`` layout is stored, in closed form (Triton device code).

``qshampoo.quant.triangle`` stores the strict lower triangle of an ``n x n`` matrix tile by tile
(tiles of ``s x s``, ``s`` the block size; ``k`` tile rows, the last one ``t`` rows high) in
four parts: A the off-diagonal tiles of tile rows 1..k-2, B the last tile row, C the strict
lower parts of the diagonal tiles 0..k-2, D that of the last diagonal tile. The torch code
moves whole parts with gathers over the tile grid; a kernel instead computes, for each entry
``(i, j)``, its offset among the stored codes and its chunk (scale) index.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tril_position(i, j, s, k, t):
    """Storage offset and chunk index (int64) of entries ``(i, j)``, ``j < i`` (int64 tensors of
    one shape; the result elsewhere is meaningless and must be masked)."""
    p = i // s
    q = j // s
    ii = i - p * s
    jj = j - q * s
    k1 = k - 1
    tiles_a = k1 * (k1 - 1) // 2
    half_tile = s * (s - 1) // 2  # entries of a diagonal tile's strict lower part
    size_ab = tiles_a * s * s + t * k1 * s
    chunks_ab = tiles_a * s + t * k1
    tri = ii * (ii - 1) // 2 + jj
    in_diagonal_tile = p == q
    last_row = p == k1
    tile = p * (p - 1) // 2 + q  # index of tile (p, q) in part A (row-major)
    off = tl.where(
        in_diagonal_tile,
        tl.where(last_row, size_ab + k1 * half_tile, size_ab + p * half_tile) + tri,
        tl.where(last_row, tiles_a * s * s + ii * (k1 * s) + j, tile * s * s + ii * s + jj),
    )
    chunk = tl.where(
        in_diagonal_tile,
        chunks_ab + tl.where(last_row, k1 * (s - 1), p * (s - 1)) + ii - 1,
        tl.where(last_row, tiles_a * s + ii * k1 + q, tile * s + ii),
    )
    return off, chunk
