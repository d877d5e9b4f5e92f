"""Decoding inside the preconditioning matmul: ``L_hat @ G`` straight from the root's codes.

Each program computes a ``(BM, BN)`` tile of ``L_hat G``, decoding the ``(BM, BK)`` tiles of the
symmetric root ``L_hat`` (strict lower triangle in codes, exact diagonal) as it goes, so the
dense fp32 root is never written: the torch path decodes it into an ``n x n`` temporary
(``dequantize_symmetric``) and then calls ``bmm``. The sums run in another order than
cuBLAS's, so the products agree to fp32 rounding, not bit for bit. Not used by the optimizer
yet: ``benchmarks/kernel_speed.py`` times it against decoding then ``bmm`` first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import kernel_launch
from .codes import load_codes
from .tril import tril_position

BM, BN, BK = 64, 64, 32


@triton.jit
def _root_matmul(
    codes_ptr, code_row, nbytes, scales_ptr, scale_row, cb_ptr, diag_ptr, diag_row,
    g_ptr, g_batch, g_row, g_col, out_ptr, o_batch, o_row, o_col,
    n, m, s, k, t,
    BITS: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) * BM + tl.arange(0, BM)).to(tl.int64)[:, None]  # rows of L_hat
    c = (tl.program_id(2) * BN + tl.arange(0, BN)).to(tl.int64)[None, :]  # columns of G
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, n, BK):
        j = (k0 + tl.arange(0, BK)).to(tl.int64)[None, :]  # columns of L_hat
        inside = (i < n) & (j < n)
        r = tl.maximum(i, j)
        col = tl.minimum(i, j)
        stored = inside & (col < r)
        off, chunk = tril_position(r, col, s, k, t)
        code = load_codes(codes_ptr + b * code_row, off, nbytes, stored, BITS)
        scale = tl.load(scales_ptr + b * scale_row + chunk, mask=stored, other=0.0)
        a = tl.where(stored, tl.load(cb_ptr + code) * scale, 0.0)
        d = tl.load(diag_ptr + b * diag_row + i + 0 * j, mask=inside & (i == j), other=0.0)
        a = tl.where(i == j, d, a)
        jg = (k0 + tl.arange(0, BK)).to(tl.int64)[:, None]  # rows of G
        g = tl.load(
            g_ptr + b * g_batch + jg * g_row + c * g_col, mask=(jg < n) & (c < m), other=0.0
        )
        acc = tl.dot(a, g, acc, input_precision=PRECISION)
    tl.store(out_ptr + b * o_batch + i * o_row + c * o_col, acc, mask=(i < n) & (c < m))


def root_matmul(
    codes: torch.Tensor,
    scales: torch.Tensor,
    diag: torch.Tensor,
    G: torch.Tensor,
    *,
    block_size: int,
    codebook: torch.Tensor,
    bits: int,
    right: bool = False,
) -> torch.Tensor:
    """``L_hat @ G`` (or ``G @ L_hat`` with ``right``) for a batch of symmetric roots stored as
    ``dequantize_symmetric`` reads them: packed "tril" ``codes`` ``(B, bytes)``, ``scales``
    ``(B, chunks)``, exact ``diag`` ``(B, n)``; ``G`` ``(B, n, m)`` (``(B, m, n)`` with
    ``right``) fp32, ``codebook`` the fp32 levels. Returns a new fp32 ``(B, n, m)`` (``(B, m,
    n)``). fp32 products as torch's matmul precision says (``"highest"``: IEEE, else TF32)."""
    B, n = diag.shape
    codes = codes.reshape(B, -1).contiguous()
    scales = scales.reshape(B, -1).contiguous()
    diag = diag.reshape(B, n)
    # G @ L_hat = (L_hat @ G^T)^T for a symmetric L_hat: the same kernel on transposed views
    Gv = G.mT if right else G
    m = Gv.shape[-1]
    out = torch.empty(G.shape, dtype=torch.float32, device=G.device)
    ov = out.mT if right else out
    if out.numel() == 0:
        return out
    precision = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    kt = max(1, -(-n // block_size))
    grid = (B, triton.cdiv(n, BM), triton.cdiv(m, BN))
    with kernel_launch("root_matmul"):
        _root_matmul[grid](
            codes, codes.stride(0), codes.shape[-1], scales, scales.stride(0), codebook,
            diag, diag.stride(0), Gv, Gv.stride(0), Gv.stride(1), Gv.stride(2),
            ov, ov.stride(0), ov.stride(1), ov.stride(2), n, m, block_size, kt,
            n - (kt - 1) * block_size, BITS=bits, PRECISION=precision, BM=BM, BN=BN, BK=BK,
        )  # fmt: skip
    return out


__all__ = ["root_matmul"]
