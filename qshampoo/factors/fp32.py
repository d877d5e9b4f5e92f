"""32-bit Shampoo's factor: fp32 statistics and fp32 inverse root (``quant="none"``)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Factor, StepHyper


class Fp32Factor(Factor):
    kind = "none"

    def init_state(self, eps: float, device: torch.device) -> None:
        self.state["stat"] = torch.eye(self.order, device=device).mul_(eps)
        self.state["root"] = torch.eye(self.order, device=device)

    #: the gram is all a statistics update allocates; a batch of dense roots is a stacked copy
    #: (measured: benchmarks/temporaries.py)
    TEMPORARIES = {"statistics": 1.0, "roots": 4.25, "precondition": 1.0}

    @classmethod
    def update_statistics_batch(cls, factors: list[Factor], grams: Tensor, hp: StepHyper) -> None:
        torch._foreach_lerp_(
            [f.state["stat"] for f in factors], list(grams.unbind()), 1.0 - hp.stat_decay
        )

    def statistics(self) -> Tensor:
        return self.state["stat"]

    def root(self) -> Tensor:
        return self.state["root"]

    def store_root(self, root: Tensor) -> None:
        self.state["root"].copy_(root)

    def nbytes(self) -> dict[str, int]:
        return {"statistics": self.state["stat"].nbytes, "roots": self.state["root"].nbytes}
