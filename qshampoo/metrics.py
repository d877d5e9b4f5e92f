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
from .linalg import lower_gram
from .roots import inverse_root


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
    stat_decay: float = 0.0,
    warm_start: bool = False,
    average: int = 0,
    store_root: bool = False,
) -> Tensor:
    """The fp32 ``(n, n)`` inverse root a ``quant`` factor holds after seeing statistics ``A``.

    The factor is fed ``A`` as its gram ``updates`` times with ``stat_decay`` (0: its
    statistics are ``A`` after every update, so what remains is the quantization error of
    ``A``'s stored form; error feedback and the eigenvector iteration still evolve), and its
    root is taken as the variant takes it.

    ``warm_start`` (the eigenvector variant only): start from ``A``'s exact eigenvalues and
    its eigenvectors in low bits, as Paper B's Table 1 measures the variant, instead of from
    ``I`` (one subspace-iteration step per update from ``I`` leaves a convergence error that
    is not the quantizer's).

    ``average`` (the Cholesky variants only): return instead the root of ``C_m C_m^T``, with
    ``C_m`` the mean of the dequantized factors stored after each of the last ``average``
    updates. Error feedback makes that mean, not any one stored factor, track the exact
    Cholesky factor.

    ``store_root=True`` also passes the root through the variant's root storage (low-bit
    triangle + exact diagonal).
    """
    n = A.shape[-1]
    cls = FACTORS[quant]
    factor = cls.new(n, FactorConfig(bits, block_size, codebook), A.device, matrix_eps)
    hp = StepHyper(stat_decay=stat_decay, matrix_eps=matrix_eps, ef_decay=ef_decay)
    if warm_start:
        if quant != "eigen":
            raise ValueError(f"warm_start applies to quant='eigen' only, got {quant!r}")
        lam, V = torch.linalg.eigh(A.double())
        # largest first: the subspace iteration's QR orthogonalizes the columns in order, and
        # a small eigenvector taken first would keep the rounding error of the large ones
        factor.state["eigvals"] = lam.flip(0).float()
        factor.store_statistics({"vecs": V.flip(1).float()})
    if average and not hasattr(factor, "factor"):
        raise ValueError(f"average applies to the Cholesky variants only, got {quant!r}")
    if not 0 <= average <= updates:
        raise ValueError(f"average must be in [0, updates={updates}], got {average}")
    total = None
    for k in range(updates):
        factor.update_statistics(A.float(), hp)
        if average and k >= updates - average:
            C = factor.factor()
            total = C if total is None else total + C
    if average:
        C = total / average
        roots, _ = inverse_root(lower_gram(C), p=4, eps=matrix_eps)
        return roots
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
    ``ef_decay``, ``stat_decay``, ``warm_start``, ``average``, ``store_root``).
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
