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
    def update_statistics_batch(
        cls, factors: list[Factor], grams: Tensor, hp: StepHyper, finite: Tensor | None = None
    ) -> None:
        stats = [f.state["stat"] for f in factors]
        if finite is None:
            torch._foreach_lerp_(stats, list(grams.unbind()), 1.0 - hp.stat_decay)
            return
        # a left-out factor's gram is selected to 0 and its weight to 0: lerp(L, 0, 0) =
        # L + 0 * (0 - L) = L exactly for a finite L, in place and with no stacked copy of the
        # statistics (the others get the same bits as with the scalar weight)
        grams.masked_fill_(~finite[:, None, None], 0.0)
        weights = torch.where(finite, 1.0 - hp.stat_decay, 0.0)
        torch._foreach_lerp_(stats, list(grams.unbind()), list(weights.unbind()))

    def statistics(self) -> Tensor:
        return self.state["stat"]

    def root(self) -> Tensor:
        return self.state["root"]

    def store_root(self, root: Tensor) -> None:
        self.state["root"].copy_(root)

    def nbytes(self) -> dict[str, int]:
        return {"statistics": self.state["stat"].nbytes, "roots": self.state["root"].nbytes}
