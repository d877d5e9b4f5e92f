"""Naive 4-bit Shampoo (Paper B's baseline, Paper A's "VQ"): quantize the statistics matrix.

Stored: ``L`` in low bits (row-wise chunks, exact diagonal) and the low-bit root. Each
statistics update dequantizes ``L``, applies the EMA and re-quantizes it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant import dequantize
from .base import StepHyper
from .quantized import QuantizedFactor


class NaiveFactor(QuantizedFactor):
    kind = "naive"

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

    def dense_statistics(self) -> dict[str, Tensor]:
        return {"stat": self.statistics()}

    def store_statistics(self, dense: dict[str, Tensor]) -> None:
        self.put("stat", self.quantize(dense["stat"], exact_diagonal=True))

    def statistics_bytes(self) -> int:
        return self.stored_bytes("stat")
