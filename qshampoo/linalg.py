"""Triangular linear algebra that skips the zero half: Cholesky factors and their products.

``torch.linalg.cholesky_ex`` is fast up to order ~512 on a CPU, then slows sharply (in a
profile most of its time goes to zeroing the unused triangle of its column-major result;
``benchmarks/kernels.py`` times it against this module). Splitting the matrix in halves recursively
keeps every LAPACK call small and moves the rest of the work into matmuls; the same split
computes ``C C^T`` of a lower-triangular ``C`` without multiplying its zero upper half
(half the flops of a dense product). Results agree with the dense routines to fp32 rounding.
Also here: the cheap finiteness test every factorisation's result goes through.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: orders up to this are handed to LAPACK / a dense matmul whole
BASE_ORDER = 512


def cholesky_lower(A: Tensor) -> tuple[Tensor, Tensor]:
    """Lower Cholesky factors of symmetric PD ``(..., n, n)``, row-major, with LAPACK's info.

    Returns ``(C, info)``: ``info`` is 0 where the factorisation succeeded and > 0 where a
    leading minor was not positive definite (``C`` is then undefined), as ``cholesky_ex``.
    """
    n = A.shape[-1]
    if n <= BASE_ORDER:
        # LAPACK returns column-major factors; the upper factor's transpose is the lower
        # factor in row-major order (no copy).
        U, info = torch.linalg.cholesky_ex(A, upper=True)
        return U.mT, info
    h = n // 2
    C11, info1 = cholesky_lower(A[..., :h, :h])
    # C21 C11^T = A21
    C21 = torch.linalg.solve_triangular(C11.mT, A[..., h:, :h], upper=True, left=False)
    C22, info2 = cholesky_lower(A[..., h:, h:] - C21 @ C21.mT)
    C = torch.zeros_like(A)
    C[..., :h, :h] = C11
    C[..., h:, :h] = C21
    C[..., h:, h:] = C22
    info = torch.where(info1 > 0, info1, torch.where(info2 > 0, info2 + h, info2))
    return C, info


def lower_gram(C: Tensor) -> Tensor:
    """``C C^T`` for lower-triangular ``(..., n, n)`` ``C``, skipping its zero upper half."""
    n = C.shape[-1]
    if n <= BASE_ORDER:
        return C @ C.mT
    h = n // 2
    A, B, D = C[..., :h, :h], C[..., h:, :h], C[..., h:, h:]
    out = torch.empty_like(C)
    out[..., :h, :h] = lower_gram(A)
    AB = A @ B.mT
    out[..., :h, h:] = AB
    out[..., h:, :h] = AB.mT
    out[..., h:, h:] = lower_gram(D).add_(B @ B.mT)
    return out


def all_finite(x: Tensor) -> Tensor:
    """Whether each trailing matrix of ``(..., n, m)`` ``x`` is free of inf and NaN: bool ``(...)``.

    Exactly ``isfinite(x)`` reduced with ``all`` over the last two dims, in two reductions
    instead of four elementwise passes: max and min propagate NaN, and an infinity is the max
    or the min (``benchmarks/kernels.py`` times both).
    """
    return x.amax((-2, -1)).isfinite() & x.amin((-2, -1)).isfinite()
