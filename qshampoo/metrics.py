"""Spectral error of an inverse root computed from a quantized representation (Paper B's metrics).

For a PD matrix ``A`` and ``f(A) = (A + eps lambda_max I)^(-1/4)`` computed exactly (float64),
and ``g`` the same root as a ``quant`` variant computes it from what it stores:

    NRE = ||f(A) - g||_F / ||f(A)||_F
    AE  = arccos(<f(A), g>_F / (||f(A)||_F ||g||_F))   in degrees
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .factors import FACTORS, FactorConfig, StepHyper


def exact_inverse_root(A: Tensor, eps: float = 1e-6, p: int = 4) -> Tensor:
    """``(A + eps lambda_max I)^(-1/p)`` in float64 (the reference ``f(A)``)."""
    lam, V = torch.linalg.eigh(A.double())
    lam = lam.clamp_min(0.0)
    lam = lam + eps * lam[-1]
    return (V * lam.pow(-1.0 / p)) @ V.T


def root_errors(reference: Tensor, g: Tensor) -> tuple[float, float]:
    """``(NRE, AE in degrees)`` of ``g`` against ``reference``."""
    f, g = reference.double(), g.double()
    nre = ((f - g).norm() / f.norm()).item()
    cos = ((f * g).sum() / (f.norm() * g.norm())).clamp(-1.0, 1.0).item()
    return nre, math.degrees(math.acos(cos))


def variant_root(
    A: Tensor,
    quant: str,
    *,
    bits: int = 4,
    block_size: int = 64,
    codebook: str = "linear2",
    matrix_eps: float = 1e-6,
    updates: int = 1,
    ef_decay: float = 0.9,
    store_root: bool = False,
) -> Tensor:
    """The fp32 inverse root a ``quant`` factor holds after seeing statistics ``A``.

    The factor is fed ``A`` ``updates`` times with ``stat_decay=0`` (so its statistics are
    ``A`` each time, and error feedback, if any, accumulates). ``store_root=True`` also passes
    the root through the variant's root storage (low-bit triangle + exact diagonal).
    """
    n = A.shape[-1]
    cls = FACTORS[quant]
    factor = cls.new(n, FactorConfig(bits, block_size, codebook), A.device, matrix_eps)
    hp = StepHyper(stat_decay=0.0, matrix_eps=matrix_eps, ef_decay=ef_decay)
    for _ in range(updates):
        factor.update_statistics(A.float(), hp)
    roots, _ = cls.inverse_roots([factor], hp)
    if not store_root:
        return roots[0]
    factor.store_root(roots[0])
    return factor.root()


def inverse_root_error(
    A: Tensor, quant: str = "cholesky", *, matrix_eps: float = 1e-6, **kwargs
) -> tuple[float, float]:
    """``(NRE, AE in degrees)`` of the ``quant`` variant's inverse 4th root of PD ``A``.

    ``kwargs`` go to :func:`variant_root` (``bits``, ``block_size``, ``codebook``, ``updates``,
    ``ef_decay``, ``store_root``).
    """
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
    if quant not in FACTORS:
        raise ValueError(f"quant must be one of {tuple(FACTORS)}, got {quant!r}")
    g = variant_root(A, quant, matrix_eps=matrix_eps, **kwargs)
    return root_errors(exact_inverse_root(A, matrix_eps), g)


def synthetic_pd(n: int, cond: float, seed: int = 0, kind: str = "logspace") -> Tensor:
    """A PD test matrix of order ``n`` and condition number ``cond``.

    ``kind="logspace"``: a Haar-random eigenbasis with eigenvalues log-spaced from 1 to
    ``1/cond``. ``kind="lowrank"``: like a gradient covariance, ``G G^T / m`` with ``G`` Gaussian
    ``(n, m = n/4)`` (rank ``n/4``), plus ``lambda_max / cond`` on the diagonal.
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "lowrank":
        m = max(n // 4, 1)
        G = torch.randn(n, m, generator=g, dtype=torch.float64, device=g.device)
        A = G @ G.T / m
        lam_max = torch.linalg.eigvalsh(A)[-1]
        return (A + lam_max / cond * torch.eye(n, dtype=torch.float64, device=g.device)).float()
    if kind != "logspace":
        raise ValueError(f"kind must be 'logspace' or 'lowrank', got {kind!r}")
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64, device=g.device))
    Q = Q * torch.sign(torch.diagonal(R))  # Haar measure
    lam = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64, device=g.device)
    return ((Q * lam) @ Q.T).float()
