"""4-bit Shampoo of Paper B: fp32 eigenvalues and a low-bit eigenvector matrix.

``L = U diag(lam) U^T`` with ``U``'s columns the eigenvectors. Quantization breaks U's
orthogonality; Bjorck steps ``U <- 1.5 U - 0.5 U U^T U`` repair it before U is used.

Statistics step: one Bjorck step; ``A = U diag(lam) U^T``; ``A <- beta A + (1-beta) gram``;
one subspace-iteration step ``Q, _ = qr(A U)``, ``lam = diag(Q^T A Q)``; store ``Q`` as U.
Root step: four Bjorck steps, then ``U diag((lam + eps max lam)^(-1/4)) U^T``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant import dequantize
from ..roots import retry_failed
from .base import Factor, StepHyper, assign
from .quantized import QuantizedFactor


def bjorck(U: Tensor, steps: int) -> Tensor:
    """``steps`` Bjorck orthonormalisation steps on ``(..., n, n)`` matrices."""
    for _ in range(steps):
        U = 1.5 * U - 0.5 * U @ (U.mT @ U)
    return U


def _eigen_root(U: Tensor, lam: Tensor, eps: float) -> Tensor:
    """``U diag((lam + eps max lam)^(-1/4)) U^T``; all-zero statistics give the identity."""
    lam = lam.clamp_min(0.0)
    lam_max = lam.amax(-1, keepdim=True)
    inv = torch.where(lam_max > 0, (lam + eps * lam_max).pow(-0.25), torch.ones_like(lam))
    return (U * inv.unsqueeze(-2)) @ U.mT


def _ok(roots: Tensor) -> tuple[Tensor, Tensor]:
    return roots, torch.isfinite(roots).flatten(1).all(1)


class EigenFactor(QuantizedFactor):
    kind = "eigen"
    #: one factor at a time, Bjorck steps and a QR (measured at most 10.4 and 5.0 at orders
    #: 64-600, benchmarks/temporaries.py)
    TEMPORARIES = {"statistics": 10.5, "roots": 5.1, "precondition": 1.75}

    def init_statistics(self, eps: float, device: torch.device) -> None:
        # eps * I: eigenvectors I, eigenvalues eps
        self.state["eigvals"] = torch.full((self.order,), eps, device=device)
        self.put("vecs", self.quantize(torch.eye(self.order, device=device)))

    def eigenvectors(self) -> Tensor:
        n = self.order
        return dequantize(self.get("vecs", "full", (n, n)))

    def statistics(self) -> Tensor:
        U = bjorck(self.eigenvectors(), 1)
        return (U * self.state["eigvals"]) @ U.mT

    def fold(self, gram: Tensor, hp: StepHyper) -> None:
        U = bjorck(self.eigenvectors(), 1)
        A = (U * self.state["eigvals"]) @ U.mT
        A.lerp_(gram, 1.0 - hp.stat_decay)
        Q, _ = torch.linalg.qr(A @ U)
        assign(self.state, "eigvals", (Q * (A @ Q)).sum(0))  # diag(Q^T A Q)
        q = self.quantize(Q)
        self.put("vecs", q)
        self.record_quant_error(Q, dequantize(q))
        if self.adaptive:
            self.record_precision_signal(self.precision_probe(Q, "full"))

    @classmethod
    def inverse_roots(cls, factors: list[Factor], hp: StepHyper) -> tuple[Tensor, Tensor]:
        U = bjorck(torch.stack([f.eigenvectors() for f in factors]), 4)
        lam = torch.stack([f.state["eigvals"] for f in factors])
        roots = _eigen_root(U, lam, hp.matrix_eps)
        ok = torch.isfinite(roots).flatten(1).all(1)
        # the shared failure policy: float64, then more damping (see ``roots.retry_failed``)
        damping = retry_failed(
            roots,
            ok,
            hp.matrix_eps,
            lambda i, eps, _: _ok(_eigen_root(U[i].double(), lam[i].double(), eps)),
        )
        for f, d in zip(factors, damping, strict=True):
            assign(f.state, "root_damping", d)
        return roots, ok

    def dense_statistics(self) -> dict[str, Tensor]:
        return {"vecs": self.eigenvectors()}  # the eigenvalues stay fp32

    def store_statistics(self, dense: dict[str, Tensor]) -> None:
        self.put("vecs", self.quantize(dense["vecs"]))

    def statistics_bytes(self) -> int:
        return self.stored_bytes("vecs") + self.state["eigvals"].nbytes
