"""32-bit Shampoo's factor: fp32 statistics and fp32 inverse root (``quant="none"``)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Factor, StepHyper


class Fp32Factor(Factor):
    kind = "none"

    def init_state(self, statistics: Tensor, root: Tensor) -> None:
        self.state["stat"] = statistics
        self.state["root"] = root

    def update_statistics(self, gram: Tensor, hp: StepHyper) -> None:
        self.state["stat"].lerp_(gram, 1.0 - hp.stat_decay)

    @classmethod
    def update_statistics_batch(
        cls, factors: list[Factor], grams: list[Tensor], hp: StepHyper
    ) -> None:
        torch._foreach_lerp_([f.state["stat"] for f in factors], grams, 1.0 - hp.stat_decay)

    def statistics(self) -> Tensor:
        return self.state["stat"]

    def root(self) -> Tensor:
        return self.state["root"]

    def store_root(self, root: Tensor) -> None:
        self.state["root"].copy_(root)

    def nbytes(self) -> dict[str, int]:
        return {"statistics": self.state["stat"].nbytes, "roots": self.state["root"].nbytes}
