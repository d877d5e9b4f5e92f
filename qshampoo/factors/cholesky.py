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
from ..quant import decode, encode, num_chunks, pack, unpack, zero_codes
from ..quant.blockwise import decode_nibbles
from ..roots import DAMPING_RETRIES
from .base import StepHyper, assign_rows, cholesky_retry_ex, count_cholesky_failures
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
    C, ok, delta, _ = damped_cholesky_ex(L, eps)
    return C, ok, delta


def damped_cholesky_ex(
    L: Tensor, eps: float, retry: bool = True
) -> tuple[Tensor, Tensor, Tensor, bool | None]:
    """``damped_cholesky`` and whether every first attempt succeeded (known without reading
    ``ok`` from the device again, ``cholesky_retry_ex``); ``retry=False``: the first attempt
    only, nothing read back (None for that flag)."""
    delta = (eps * L.diagonal(dim1=-2, dim2=-1).amax(-1)).clamp_min(eps * eps)
    C, ok, used, all_ok = cholesky_retry_ex(L, delta, retry)
    return C, ok, used.to(L.dtype), all_ok


class CholeskyFactor(QuantizedFactor):
    """``quant="cholesky"`` (CQ): low-bit strict lower triangle + fp32 diagonal."""

    kind = "cholesky"
    #: whether the quantization residual is fed back (CQ+EF)
    error_feedback = False
    #: measured by benchmarks/temporaries.py: at most 4.2 and 4.0 at orders 130-1200 (plus
    #: ``OVERHEAD``, which covers the 4.85 at order 64) with torch 2.13; torch 2.6 keeps one more
    #: n^2 alive in the statistics step (4.75 at orders 513-1024)
    TEMPORARIES = {"statistics": 4.9, "roots": 4.1, "precondition": 1.75}

    def init_statistics(self, eps: float, device: torch.device) -> None:
        n, N = self.order, self.order * (self.order - 1) // 2
        self.state["chol_diag"] = torch.full((n,), eps, device=device).sqrt_()
        self.state["cholesky_damping"] = torch.zeros((), device=device)
        # C = sqrt(eps) I: zero strict lower triangle (and error state), codes of zero
        k = 2 if self.keeps_error_state() else 1
        self.state["codes"] = zero_codes(k * N, self.config.codebook, self.state["bits"], device)
        chunks = num_chunks((n, n), layout="tril", block_size=self.config.block_size)
        self.state["c_scales"] = torch.zeros(chunks, device=device)
        if k == 2:
            self.state["e_scales"] = torch.zeros(chunks, device=device)

    def keeps_error_state(self) -> bool:
        """Whether the factor, at its current width, carries an error-feedback state: CQ+EF
        does, except an adaptive factor in 8 bits (see the module docstring)."""
        return self.error_feedback and not (self.adaptive and self.bits >= 8)

    # -- the stored factor ----------------------------------------------------------------
    def _decode(self, codes: Tensor, scales: Tensor, bits: int | None = None) -> Tensor:
        """The strictly lower fp32 matrices ``(..., n, n)`` that ``codes`` ``(..., N)`` and
        ``scales`` store (at ``bits``; default: this factor's width)."""
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
        """Codes ``(..., N)`` and chunk scales of the strict lower triangles of ``x``
        ``(..., n, n)``."""
        return encode(
            x,
            layout="tril",
            block_size=self.config.block_size,
            codebook=self.config.codebook,
            bits=self.state["bits"] if bits is None else bits,
        )

    @classmethod
    def _codes(cls, factors: list[CholeskyFactor], which: int) -> Tensor:
        """The unpacked codes ``(B, N)`` of ``C`` (``which`` 0) or ``E`` (1) of factors of one
        order and format (with error feedback the two are interleaved, one pair per entry)."""
        first = factors[0]
        n, k = first.order, 2 if "e_scales" in first.state else 1
        N = n * (n - 1) // 2
        codes = unpack(_stack(factors, "codes"), first.state["bits"], k * N)
        return codes.view(len(factors), N, k)[..., which]

    @classmethod
    def _decoded(cls, factors: list[CholeskyFactor], which: int) -> Tensor:
        """The strictly lower fp32 matrices ``(B, n, n)`` of ``C`` (``which`` 0) or ``E`` (1)
        of factors of one order and format."""
        first = factors[0]
        scales = _stack(factors, ("c_scales", "e_scales")[which])
        if "e_scales" in first.state and first.state["bits"] == 4:
            # one (C, E) pair per byte: each decoded from its nibble, nothing unpacked
            n = first.order
            return decode_nibbles(
                _stack(factors, "codes"),
                scales,
                (n, n),
                high=bool(which),
                layout="tril",
                block_size=first.config.block_size,
                codebook=first.config.codebook,
            )
        return first._decode(cls._codes(factors, which), scales)

    @classmethod
    def stored_factors(cls, factors: list[CholeskyFactor]) -> Tensor:
        """``D(C_bar)`` of factors of one order and format: the lower-triangular factors
        (diagonal included), ``(B, n, n)`` fp32."""
        C = cls._decoded(factors, 0)
        C.diagonal(dim1=-2, dim2=-1).copy_(_stack(factors, "chol_diag"))
        return C

    @classmethod
    def error_states(cls, factors: list[CholeskyFactor]) -> Tensor | None:
        """``E``: the strictly lower error-feedback states ``(B, n, n)`` fp32 (None without)."""
        if "e_scales" not in factors[0].state:
            return None
        return cls._decoded(factors, 1)

    def _stored(self) -> tuple[Tensor, Tensor | None]:
        """``D(C_bar)`` and ``E`` of this factor alone: ``(n, n)`` matrices."""
        E = self.error_states([self])
        return self.stored_factors([self])[0], None if E is None else E[0]

    def factor(self) -> Tensor:
        """``D(C_bar)``: the dense lower-triangular fp32 factor."""
        return self._stored()[0]

    def error_state(self) -> Tensor | None:
        """``E``: the strictly lower fp32 error-feedback state (None without one)."""
        return self._stored()[1]

    @classmethod
    def requantize_batch(
        cls,
        factors: list[CholeskyFactor],
        strict: Tensor,
        E: Tensor | None,
        ef_decay: float,
        keep: Tensor | None = None,
    ) -> Tensor:
        """Store the strictly lower ``strict`` ``(B, n, n)`` as the factors' ``C_bar``; with
        EF, quantize ``X = strict + E`` instead and fold the residual into ``E`` ``(B, n, n)``,
        in place: ``E <- ef_decay E + (1 - ef_decay) (X - D(C_bar))``.

        ``strict`` is not modified. Returns ``D(C_bar)``'s strict lower parts ``(B, n, n)``.
        Each factor gets tensors of its own (no views into the batch), so its ``nbytes`` is
        what it holds. ``keep`` ``(B,)`` bool: where False, the stored codes stay as they were.
        """
        first = factors[0]
        if E is None:
            c_codes, c_scales = first._encode(strict)
            stored = first._decode(c_codes, c_scales)
            cls.keep_codes(factors, c_codes, c_scales, keep=keep)
            return stored
        # X is formed twice (the same sum, so the same bits) rather than kept while C_bar is
        # decoded: one (B, n, n) temporary fewer at the statistics step's peak
        c_codes, c_scales = first._encode(strict + E)
        stored = first._decode(c_codes, c_scales)
        residual = (strict + E).sub_(stored)
        E.mul_(ef_decay).add_(residual, alpha=1.0 - ef_decay)
        del residual
        cls.keep_codes(factors, c_codes, c_scales, *first._encode(E), keep=keep)
        return stored

    @staticmethod
    def keep_codes(
        factors: list[CholeskyFactor],
        c_codes: Tensor,
        c_scales: Tensor,
        e_codes: Tensor | None = None,
        e_scales: Tensor | None = None,
        keep: Tensor | None = None,
    ) -> None:
        """Keep each factor's codes ``(B, N)`` packed, with error feedback one (C, E) pair per
        byte, and its chunk scales ``(B, chunks)``, as tensors of its own (``keep`` ``(B,)``
        bool: where False, the previous ones)."""
        codes = c_codes[..., None] if e_codes is None else torch.stack([c_codes, e_codes], -1)
        packed = pack(codes.flatten(-2), factors[0].state["bits"])
        states = [f.state for f in factors]
        assign_rows(states, "c_scales", c_scales, keep)
        assign_rows(states, "codes", packed, keep)
        if e_scales is not None:
            assign_rows(states, "e_scales", e_scales, keep)

    def requantize(self, strict: Tensor, E: Tensor | None, ef_decay: float) -> Tensor:
        """``requantize_batch`` for this factor alone: ``strict``, ``E`` and the result
        ``(n, n)``."""
        E = None if E is None else E[None]
        return self.requantize_batch([self], strict[None], E, ef_decay)[0]

    # -- the interface ----------------------------------------------------------------------
    def statistics(self) -> Tensor:
        return lower_gram(self.factor())

    @classmethod
    def stacked_statistics(cls, factors: list[CholeskyFactor]) -> Tensor:
        return lower_gram(cls.stored_factors(factors))

    @classmethod
    def update_statistics_batch(
        cls,
        factors: list[CholeskyFactor],
        grams: Tensor,
        hp: StepHyper,
        finite: Tensor | None = None,
    ) -> None:
        """The statistics step of the module docstring for a batch of factors of one order
        and format: every stage is one batched call, and a factor whose factorisation fails
        keeps its previous state while the others move on. Intermediates are dropped as soon
        as they are used (the temporaries of a factor stay within ``TEMPORARIES``).

        ``finite`` None: a failed factorisation takes the retry ladder (one host read per
        batch). A ``(B,)`` bool device tensor (an accelerator's step; False: the factor's
        gradient was not finite): nothing is read back; the whole batch is computed, and a
        factor whose gradient was not finite or whose first factorisation failed keeps its
        previous state, selected on the device, its failure counted there
        (``count_cholesky_failures``)."""
        L = lower_gram(cls.stored_factors(factors))
        if hp.cholesky_damping == "subtract":  # the damping the stored factors carry
            L.diagonal(dim1=-2, dim2=-1).sub_(_stack(factors, "cholesky_damping")[:, None])
        L.lerp_(grams, 1.0 - hp.stat_decay)
        del grams
        C, ok, delta, all_ok = damped_cholesky_ex(L, hp.matrix_eps, retry=finite is None)
        del L
        keep = None
        if finite is not None:
            count_cholesky_failures(factors, ok, finite)
            keep = ok & finite
        else:
            # one host sync (in the retry ladder) when every factorisation succeeded
            good = [True] * len(factors) if all_ok else ok.tolist()
            # on failure the previous factor stays, and with it the damping it carries
            for f, g in zip(factors, good, strict=True):
                f.record_cholesky_result(g)
            if not all_ok:
                kept = [i for i, g in enumerate(good) if g]
                if not kept:
                    return
                factors = [factors[i] for i in kept]
                index = torch.tensor(kept, device=C.device)
                C, delta = C[index], delta[index]
        states = [f.state for f in factors]
        assign_rows(states, "cholesky_damping", delta, keep)
        # lower triangular: the strict parts are C with the diagonals zeroed, in place
        assign_rows(states, "chol_diag", C.diagonal(dim1=-2, dim2=-1), keep)
        diag = C.diagonal(dim1=-2, dim2=-1).clone() if factors[0].adaptive else None
        c_norm = torch.linalg.vector_norm(C, dim=(-2, -1))
        strict = C
        strict.diagonal(dim1=-2, dim2=-1).zero_()
        E = cls.error_states(factors)
        stored = cls.requantize_batch(factors, strict, E, hp.ef_decay, keep)
        del E
        if factors[0].adaptive:
            signal = factors[0].root_error_estimate(strict, diag)
            cls.record_precision_signals(factors, signal, keep)
        # the diagonal is exact, so the error lives in the strict lower part
        err = torch.linalg.vector_norm(strict.sub_(stored), dim=(-2, -1))
        assign_rows(states, "quant_error", err / c_norm.clamp_min(_TINY), keep)

    # -- precision ---------------------------------------------------------------------------
    def root_error_estimate(self, strict: Tensor, diag: Tensor) -> Tensor:
        """The precision signal: how much 4-bit storage of this factor perturbs its root.

        ``strict`` ``(..., n, n)``/``diag`` ``(..., n)``: the exact factor ``C`` just computed
        (a batch of factors of this one's order and format, or one). With ``dC`` the error of
        ``C``'s strict lower part stored at 4 bits (no error feedback, whatever ``bits`` is
        now), ``L`` is perturbed by about ``C (M + M^T) C^T`` with ``M = C^-1 dC``; its
        diagonal-pivot part ``diag(C)^-1 dC`` measures each row's error against the size of
        the direction it belongs to (small pivots: the small eigenvalues that dominate
        ``L^(-1/4)``). Returns ``||diag(C)^-1 dC||_F / sqrt(n)``, shape ``(...)`` (no sync);
        ``benchmarks/precision_signals.py`` compares it with the true root error.
        """
        # -(D(Q(C)) - C), divided by the pivots, in place: one temporary of C's size
        rel = self._decode(*self._encode(strict, bits=4), bits=4).sub_(strict).neg_()
        rel.div_(diag.clamp_min(_TINY)[..., :, None])
        return torch.linalg.vector_norm(rel, dim=(-2, -1)) / self.order**0.5

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
        c_codes, c_scales = self._encode(strict[None])
        self.state.pop("e_scales", None)
        error = (None, None)
        if keep:
            lost = strict - self._decode(c_codes, c_scales)[0]
            E = lost if E is None else E + lost
            error = self._encode(E[None])
        self.keep_codes([self], c_codes, c_scales, *error)

    def statistics_bytes(self) -> int:
        keys = ("codes", "c_scales", "e_scales", "chol_diag")
        return sum(self.state[k].nbytes for k in keys if k in self.state)


def _stack(factors: list[CholeskyFactor], key: str) -> Tensor:
    return torch.stack([f.state[key] for f in factors])


class CholeskyEFFactor(CholeskyFactor):
    """``quant="cholesky_ef"`` (CQ+EF): CQ plus a low-bit error-feedback triangle."""

    kind = "cholesky_ef"
    error_feedback = True
    #: the error state is decoded too, and ``X = C + E`` formed twice rather than held
    #: (``requantize_batch``): at most 4.13 at orders 128-1200 with torch 2.13 (5.88 at order 64
    #: and 4.53 at 130, within ``OVERHEAD``); torch 2.6 keeps one more n^2 alive (5.13 at orders
    #: 513-1024, 5.53 at 130, 6.88 at 64), benchmarks/temporaries.py
    TEMPORARIES = {"statistics": 5.3, "roots": 4.1, "precondition": 1.75}
