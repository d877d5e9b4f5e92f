"""Naive 4-bit Shampoo (Paper B's baseline, Paper A's "VQ"): quantize the statistics matrix.

Stored: ``L`` in low bits (row-wise chunks, exact diagonal) and the low-bit root. Each
statistics update dequantizes ``L``, applies the EMA and re-quantizes it.

Roots: always by the coupled Newton iteration, whatever ``root_method`` says, as Paper B's
VQ code computes them. A dequantized 4-bit ``L`` is indefinite (tens of negative
eigenvalues at order 256); an ``eigh`` root with those clamped to 0 gives the spurious
directions the largest gain (inverse-root error 204-282 % on log-spaced spectra of order 256,
against 23-85 % with Newton, which stops once they make it diverge; ``qshampoo spectral``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..quant import dequantize
from .base import Factor, StepHyper
from .quantized import QuantizedFactor


class NaiveFactor(QuantizedFactor):
    kind = "naive"
    #: the coupled Newton iteration holds about 10 fp32 ``(n, n)`` matrices per factor at once
    #: (the statistics, M, X, T and their products), where an ``eigh`` root holds about 6
    TEMPORARIES = {**QuantizedFactor.TEMPORARIES, "roots": 8.5}

    def init_statistics(self, eps: float, device: torch.device) -> None:
        eps_diag = torch.full((self.order,), eps, device=device)
        self.put("stat", self.zeros((self.order, self.order), "full", eps_diag))

    def statistics(self) -> Tensor:
        n = self.order
        return dequantize(self.get("stat", "full", (n, n)))

    def fold(self, gram: Tensor, hp: StepHyper) -> None:
        L = self.statistics().lerp_(gram, 1.0 - hp.stat_decay)
        q = self.quantize(L, exact_diagonal=True)
        self.put("stat", q)
        self.record_quant_error(L, dequantize(q))
        if self.adaptive:
            self.record_precision_signal(self.precision_probe(L, "full", exact_diagonal=True))

    @classmethod
    def inverse_roots(cls, factors: list[Factor], hp: StepHyper) -> tuple[Tensor, Tensor]:
        """Coupled Newton roots (see the module docstring); failures take the shared retry
        ladder (float64 Newton, then float64 ``eigh`` with more damping)."""
        return super().inverse_roots(factors, replace(hp, root_method="newton"))

    def dense_statistics(self) -> dict[str, Tensor]:
        return {"stat": self.statistics()}

    def store_statistics(self, dense: dict[str, Tensor]) -> None:
        self.put("stat", self.quantize(dense["stat"], exact_diagonal=True))

    def statistics_bytes(self) -> int:
        return self.stored_bytes("stat")
