"""Cholesky-quantized Shampoo (Paper A): store the Cholesky factor of L, not L itself.

Stored: the strict lower triangle of ``C`` in low bits (row-wise chunks: rows of a Cholesky
factor differ in norm by orders of magnitude, so a chunk never spans two rows), its diagonal in
fp32, and the low-bit root. ``D(C_bar) D(C_bar)^T`` is positive semi-definite by construction,
which is why CQ keeps the small eigenvalues (those that dominate ``L^(-1/4)``) far better than
quantizing ``L`` directly.

Statistics step:

    L_prev = D(C_bar) D(C_bar)^T
    L      = beta L_prev + (1 - beta) gram
    C      = cholesky(L + delta I)          delta = eps * max(diag L), retried at 10x on failure
    C_bar  = Q(C)

With error feedback (``cholesky_ef``), the quantizer sees the compensated factor and the
residual is carried forward in a second low-bit triangle ``E`` with its own chunk scales
(E is orders of magnitude smaller than C; shared scales would crush it to zero):

    X = C + E;   C_bar = Q(X);   E <- beta_e E + (1 - beta_e) (X - D(C_bar))

C's and E's codes are interleaved one pair per byte, so C+EF costs what one n x n 4-bit matrix
costs (Paper A stores E in the upper triangle of the same matrix).

Under ``bits="auto"`` a CQ+EF factor keeps its error state only while it is in 4 bits: at 8 bits
it is stored as CQ (the error state would double its statistics bytes, and 8-bit CQ trains like
8-bit CQ+EF and 32-bit Shampoo, docs/adaptive_precision.md). A promotion folds ``E`` into the
factor; a demotion starts ``E`` from what the 4-bit rounding loses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..linalg import lower_gram
from ..quant import decode, encode, pack, unpack
from ..roots import DAMPING_RETRIES
from .base import StepHyper, cholesky_with_retry
from .quantized import QuantizedFactor

_TINY = torch.finfo(torch.float32).tiny

#: damping is multiplied by 10 this many times before a factor keeps its previous value
CHOLESKY_RETRIES = DAMPING_RETRIES


def damped_cholesky(L: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Cholesky factors of ``L + delta I`` for a batch ``(B, n, n)``.

    ``delta = eps * max(diag L)`` (floored at ``eps**2``). The matrices that fail are retried
    by the shared failure policy (``factors.base.cholesky_with_retry``): in float64, then with
    10x the damping up to ``CHOLESKY_RETRIES`` times. Returns ``(C, ok, delta)`` with ``ok``
    False where every attempt failed (that C is undefined) and ``delta`` the damping used.
    """
    delta = (eps * L.diagonal(dim1=-2, dim2=-1).amax(-1)).clamp_min(eps * eps)
    C, ok, used = cholesky_with_retry(L, delta)
    return C, ok, torch.tensor(used, dtype=L.dtype, device=L.device)


class CholeskyFactor(QuantizedFactor):
    """``quant="cholesky"`` (CQ): low-bit strict lower triangle + fp32 diagonal."""

    kind = "cholesky"
    #: whether the quantization residual is fed back (CQ+EF)
    error_feedback = False

    def init_statistics(self, statistics: Tensor) -> None:
        n = self.order
        self.state["chol_diag"] = statistics.diagonal().sqrt()
        self.state["cholesky_damping"] = torch.zeros((), device=statistics.device)
        zero = torch.zeros(n, n, device=statistics.device)
        self.requantize(zero, zero if self.keeps_error_state() else None, ef_decay=0.0)

    def keeps_error_state(self) -> bool:
        """Whether the factor, at its current width, carries an error-feedback state: CQ+EF
        does, except an adaptive factor in 8 bits (see the module docstring)."""
        return self.error_feedback and not (self.adaptive and self.bits >= 8)

    # -- the stored factor ----------------------------------------------------------------
    def _codes(self) -> Tensor:
        """Unpacked codes, ``(N, 2)`` for C and E with error feedback, else ``(N, 1)``."""
        n, k = self.order, 2 if "e_scales" in self.state else 1
        N = n * (n - 1) // 2
        return unpack(self.state["codes"], self.state["bits"], k * N).view(N, k)

    def _decode(self, codes: Tensor, scales: Tensor, bits: int | None = None) -> Tensor:
        """The strictly lower ``(n, n)`` fp32 matrix that ``codes`` and ``scales`` store
        (at ``bits``; default: this factor's width)."""
        n = self.order
        return decode(
            codes,
            scales,
            (n, n),
            layout="tril",
            block_size=self.config.block_size,
            codebook=self.config.codebook,
            bits=self.state["bits"] if bits is None else bits,
        )

    def _encode(self, x: Tensor, bits: int | None = None) -> tuple[Tensor, Tensor]:
        return encode(
            x,
            layout="tril",
            block_size=self.config.block_size,
            codebook=self.config.codebook,
            bits=self.state["bits"] if bits is None else bits,
        )

    def _stored(self, codes: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(D(C_bar), E)``: the lower-triangular factor (diagonal included) and, with error
        feedback, the strictly lower error state (else None), from one unpacking of the codes."""
        codes = self._codes() if codes is None else codes
        C = self._decode(codes[:, 0], self.state["c_scales"])
        C.diagonal().copy_(self.state["chol_diag"])
        E = None
        if "e_scales" in self.state:
            E = self._decode(codes[:, 1], self.state["e_scales"])
        return C, E

    def factor(self) -> Tensor:
        """``D(C_bar)``: the dense lower-triangular fp32 factor."""
        return self._stored()[0]

    def error_state(self) -> Tensor:
        """``E``: the strictly lower fp32 error-feedback state."""
        return self._stored()[1]

    def requantize(self, X: Tensor, E: Tensor | None, ef_decay: float) -> Tensor:
        """Store the strictly lower ``X`` as ``C_bar``; with EF, fold the residual into ``E``.

        ``X`` is the factor's strict lower part, already compensated by ``E`` when EF is on.
        Returns ``D(C_bar)``'s strict lower part.
        """
        c_codes, c_scales = self._encode(X)
        stored = self._decode(c_codes, c_scales)
        codes = c_codes[:, None]
        if E is not None:
            E = E.mul_(ef_decay).add_(X - stored, alpha=1.0 - ef_decay)
            e_codes, self.state["e_scales"] = self._encode(E)
            codes = torch.stack([c_codes, e_codes], 1)  # one (C, E) pair of codes per byte
        self.state["c_scales"] = c_scales
        self.state["codes"] = pack(codes.reshape(-1), self.state["bits"])
        return stored

    # -- the interface ----------------------------------------------------------------------
    def statistics(self) -> Tensor:
        return lower_gram(self.factor())

    def update_statistics(self, gram: Tensor, hp: StepHyper) -> None:
        C_bar, E = self._stored()
        L = lower_gram(C_bar)
        if hp.cholesky_damping == "subtract":  # the damping the stored factor carries
            L.diagonal().sub_(self.state["cholesky_damping"])
        L.lerp_(gram, 1.0 - hp.stat_decay)
        C, ok, delta = damped_cholesky(L[None], hp.matrix_eps)
        good = bool(ok[0])
        # on failure the previous factor stays, and with it the damping it carries
        self.record_cholesky_result(good, delta[0] if good else None)
        if not good:  # keep the previous factor
            return
        C = C[0]  # lower triangular: its strict part is C with the diagonal zeroed, in place
        diag = self.state["chol_diag"] = C.diagonal().clone()
        c_norm = torch.linalg.vector_norm(C)
        strict = C
        strict.diagonal().zero_()
        X = strict if E is None else strict + E
        stored = self.requantize(X, E, hp.ef_decay)
        if self.adaptive:
            self.record_precision_signal(self.root_error_estimate(strict, diag))
        # the diagonal is exact, so the error lives in the strict lower part
        err = torch.linalg.vector_norm(strict.sub_(stored))
        self.state["quant_error"] = err / c_norm.clamp_min(_TINY)

    # -- precision ---------------------------------------------------------------------------
    def root_error_estimate(self, strict: Tensor, diag: Tensor) -> Tensor:
        """The precision signal: how much 4-bit storage of this factor perturbs its root.

        ``strict``/``diag``: the exact factor ``C`` just computed. With ``dC`` the error of
        ``C``'s strict lower part stored at 4 bits (no error feedback, whatever ``bits`` is
        now), ``L`` is perturbed by about ``C (M + M^T) C^T`` with ``M = C^-1 dC``; its
        diagonal-pivot part ``diag(C)^-1 dC`` measures each row's error against the size of
        the direction it belongs to (small pivots: the small eigenvalues that dominate
        ``L^(-1/4)``). Returns ``||diag(C)^-1 dC||_F / sqrt(n)`` as a 0-d tensor (no sync);
        ``benchmarks/precision_signals.py`` compares it with the true root error.
        """
        dC = strict - self._decode(*self._encode(strict, bits=4), bits=4)
        rel = dC / diag.clamp_min(_TINY)[:, None]
        return torch.linalg.vector_norm(rel) / self.order**0.5

    def dense_statistics(self) -> dict[str, Tensor]:
        C, E = self._stored()
        out = {"strict": C.tril_(-1)}  # the diagonal is fp32 and stays as it is
        if E is not None:
            out["error"] = E
        return out

    def store_statistics(self, dense: dict[str, Tensor]) -> None:
        """Re-quantize ``C`` at the current bits. With error feedback, what this new rounding
        loses is added to the error state, so ``C_bar + E`` (what the next statistics step
        quantizes) changes only by ``E``'s own rounding; a factor that stops carrying an
        error state (an adaptive one promoted to 8 bits) folds it into ``C``."""
        strict, E = dense["strict"], dense.get("error")
        keep = self.keeps_error_state()
        if E is not None and not keep:
            strict, E = strict + E, None
        c_codes, c_scales = self._encode(strict)
        codes = c_codes[:, None]
        self.state.pop("e_scales", None)
        if keep:
            lost = strict - self._decode(c_codes, c_scales)
            E = lost if E is None else E + lost
            e_codes, self.state["e_scales"] = self._encode(E)
            codes = torch.stack([c_codes, e_codes], 1)
        self.state["c_scales"] = c_scales
        self.state["codes"] = pack(codes.reshape(-1), self.state["bits"])

    def statistics_bytes(self) -> int:
        keys = ("codes", "c_scales", "e_scales", "chol_diag")
        return sum(self.state[k].nbytes for k in keys if k in self.state)


class CholeskyEFFactor(CholeskyFactor):
    """``quant="cholesky_ef"`` (CQ+EF): CQ plus a low-bit error-feedback triangle."""

    kind = "cholesky_ef"
    error_feedback = True
