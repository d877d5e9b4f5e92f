"""Inverse p-th roots of symmetric positive semi-definite matrices.

Shampoo preconditions with ``(A + eps * lambda_max(A) * I) ** (-1/p)`` (relative damping).
Two methods, both batched over leading dimensions: ``"eigh"`` (symmetric eigendecomposition,
the default: on a CPU 1.8-2.8x faster than Newton at orders 256-2048,
``benchmarks/kernels.py``) and ``"newton"`` (the coupled Newton iteration, matmul only, which
suits accelerators).

Failure policy (see docs/robustness.md). A root that fails (a LAPACK error or a non-finite
result) is retried in float64 with the same damping, then in float64 with ``DAMPING_GROWTH``
times more damping, ``DAMPING_RETRIES`` times. A matrix whose root still fails is reported
through the returned ``ok`` mask, so the caller keeps its previous root and counts the failure.
An all-zero matrix (statistics that decayed to exactly zero under zero gradients) carries no
information: its root is the identity, which is not a failure.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .linalg import all_finite

ROOT_METHODS = ("eigh", "newton")


#: a root that still fails in float64 is retried this many times, each with more damping
DAMPING_RETRIES = 3
#: the factor by which each retry multiplies the relative damping
DAMPING_GROWTH = 10.0


def inverse_root(
    A: Tensor, p: int = 4, eps: float = 1e-6, method: str = "eigh"
) -> tuple[Tensor, Tensor]:
    """Damped inverse p-th root of symmetric PSD matrices.

    Args:
        A: ``(..., n, n)`` symmetric matrices (any float dtype; computed in fp32, fp64 on retry).
        p: the root order (Shampoo uses 4).
        eps: relative damping; ``eps * lambda_max`` is added to the diagonal.
        method: ``"eigh"`` or ``"newton"``.

    Returns:
        ``(root, ok)``: fp32 roots of A's shape, and a bool mask of shape ``A.shape[:-2]``
        that is False where the root could not be computed (that entry of ``root`` is then
        undefined and must not be used).
    """
    root, ok, _ = inverse_root_ex(A, p, eps, method)
    return root, ok


def inverse_root_ex(
    A: Tensor, p: int = 4, eps: float = 1e-6, method: str = "eigh", overwrite: bool = False
) -> tuple[Tensor, Tensor, list[float]]:
    """``inverse_root`` that also returns the relative damping each matrix ended up with.

    Returns ``(root, ok, damping)`` with ``damping`` a flat list (batch order) of the
    relative damping of the attempt that succeeded, or of the last attempt where none did.
    ``overwrite``: ``A`` (fp32) is the caller's to lose, so it is not copied first.
    """
    if method not in ROOT_METHODS:
        raise ValueError(f"root_method must be one of {ROOT_METHODS}, got {method!r}")
    fn = _eigh_root if method == "eigh" else _newton_root
    shape = A.shape
    A32 = A.float().reshape(-1, *shape[-2:])
    if not overwrite or A32.data_ptr() != A.data_ptr():
        A32 = A32.clone()
    # An all-zero matrix has no root; it means "no information", so precondition with I
    # (reductions rather than an elementwise test: no temporary of A's size).
    zero = (A32.amax((-2, -1)) == 0) & (A32.amin((-2, -1)) == 0)
    A32.diagonal(dim1=-2, dim2=-1).add_(zero.to(A32.dtype)[:, None])
    root, ok = _attempt(fn, A32, p, eps)

    def attempt(idx: Tensor, try_eps: float, first: bool) -> tuple[Tensor, Tensor]:
        # eigh's LAPACK error is batch-wide, so only what failed is redone
        return _attempt(fn if first else _eigh_root, A32[idx].double(), p, try_eps)

    damping = retry_failed(root, ok, eps, attempt)
    return root.reshape(shape), ok.reshape(shape[:-2]), damping


def retry_failed(root: Tensor, ok: Tensor, eps: float, attempt) -> list[float]:
    """The retry ladder shared by every root computation, applied in place to a flat batch.

    ``root`` ``(B, n, n)`` fp32 and ``ok`` ``(B,)`` come from a first attempt at relative
    damping ``eps``. The failed entries are redone by ``attempt(idx, eps, first)`` (which
    returns float64 roots for the batch indices ``idx`` and their ok mask) first at ``eps``
    (``first=True``), then at ``eps * DAMPING_GROWTH**k`` for k = 1..``DAMPING_RETRIES``;
    a result counts only if it is finite in float32. Returns the damping each entry ended with.
    """
    damping = [eps] * root.shape[0]
    if bool(ok.all()):
        return damping
    # one matrix at a time: failures are rare, and this bounds the float64 copies
    for i in (~ok).nonzero().flatten().tolist():
        idx = torch.tensor([i], device=root.device)
        for k in range(1 + DAMPING_RETRIES):
            try_eps = eps * DAMPING_GROWTH**k
            r64, ok64 = attempt(idx, try_eps, k == 0)
            damping[i] = try_eps
            r32 = r64.float()
            if bool((ok64 & all_finite(r32)).all()):
                root[i] = r32[0]
                ok[i] = True
                break
    return damping


def _attempt(fn, A: Tensor, p: int, eps: float) -> tuple[Tensor, Tensor]:
    """Run ``fn`` on a batch; a batch-wide LAPACK error falls back to one matrix at a time."""
    batch = A.shape[:-2]
    try:
        root = fn(A, p, eps)
        ok = all_finite(root)
        return root, ok
    except RuntimeError:  # torch.linalg.LinAlgError is a RuntimeError
        if A.dim() == 2:
            return torch.full_like(A, float("nan")), torch.zeros(
                (), dtype=torch.bool, device=A.device
            )
    flat = A.reshape(-1, *A.shape[-2:])
    results = [_attempt(fn, a, p, eps) for a in flat]
    root = torch.stack([r for r, _ in results]).reshape(A.shape)
    ok = torch.stack([k for _, k in results]).reshape(batch)
    return root, ok


def _eigh_root(A: Tensor, p: int, eps: float) -> Tensor:
    S = A + A.mT  # eigh reads one triangle; symmetrise so both agree
    lam, V = torch.linalg.eigh(S.mul_(0.5))
    del S
    lam = lam.clamp_min(0.0)  # rounding can leave tiny negative eigenvalues of a PSD matrix
    lam_max = lam[..., -1:]
    inv = (lam + eps * lam_max).pow(-1.0 / p)
    return (V * inv.unsqueeze(-2)) @ V.mT


def max_eigenvalue(A: Tensor, iters: int = 20) -> Tensor:
    """Largest eigenvalue of symmetric PSD ``(..., n, n)`` by power iteration, shape ``(...)``."""
    n = A.shape[-1]
    v = torch.ones(*A.shape[:-1], 1, dtype=A.dtype, device=A.device) / n**0.5
    for _ in range(iters):
        w = A @ v
        v = w / w.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    return (v.mT @ A @ v).squeeze(-1).squeeze(-1)


def _newton_root(A: Tensor, p: int, eps: float, max_iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Coupled Newton iteration for ``A ** (-1/p)``.

    With ``M_0 = z A`` and ``X_0 = z^(1/p) I``, iterate ``T = ((p+1) I - M) / p``,
    ``X <- X T``, ``M <- T^p M``; M tends to I and X to A^(-1/p). ``z = (p+1) / (2 lambda_max)``
    puts the spectrum of ``zA`` inside the region where the iteration converges.
    """
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    lam_max = max_eigenvalue(A).clamp_min(0.0)
    A = A + (eps * lam_max)[..., None, None] * eye
    lam_max = lam_max * (1.0 + eps)
    z = (p + 1) / (2.0 * lam_max.clamp_min(torch.finfo(A.dtype).tiny))
    M = z[..., None, None] * A
    X = z.pow(1.0 / p)[..., None, None] * eye.expand_as(A)
    err_prev = torch.full(A.shape[:-2], float("inf"), dtype=A.dtype, device=A.device)
    for _ in range(max_iters):
        T = ((p + 1) * eye - M) / p
        X_new = X @ T
        M_new = torch.linalg.matrix_power(T, p) @ M
        err = (M_new - eye).abs().amax(dim=(-2, -1))
        # Stop each matrix once its error stops falling (rounding noise) or is small enough.
        improving = (err < err_prev)[..., None, None]
        X = torch.where(improving, X_new, X)
        M = torch.where(improving, M_new, M)
        if bool(((err < tol) | ~improving.squeeze(-1).squeeze(-1)).all()):
            break
        err_prev = torch.minimum(err, err_prev)
    return X
