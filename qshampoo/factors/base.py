"""The interface every Kronecker-factor variant implements.

A factor is one side (L or R) of one preconditioner block. It owns its state as a dict of
tensors (and plain numbers) that lives inside the optimizer state, so ``state_dict()`` saves it
and ``load_state_dict()`` restores it; the factor object itself is a thin view over that dict.

The optimizer only ever calls this interface, so it never branches on the variant:

    factor.update_statistics(gram, hp)     # L <- beta L + (1 - beta) G G^T, in the variant's form
    update_roots([factors...], hp)         # L_hat <- (L + eps lambda_max I)^(-1/4), batched
    factor.root()                          # dense fp32 L_hat, to multiply the gradient with
    factor.nbytes()                        # bytes the stored state really holds
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from ..roots import inverse_root


@dataclass(frozen=True)
class FactorConfig:
    """How a factor is stored; fixed when its state is created."""

    bits: int = 4
    block_size: int = 64
    codebook: str = "linear2"


@dataclass(frozen=True)
class StepHyper:
    """Hyperparameters a factor reads at each step (from the param group, so schedulable)."""

    stat_decay: float = 0.95
    matrix_eps: float = 1e-6
    ef_decay: float = 0.9
    root_method: str = "eigh"


class Factor:
    """Base class: fp32-exact defaults for everything a variant does not override."""

    #: the ``quant=`` name of the variant
    kind = "base"

    def __init__(self, state: dict, config: FactorConfig):
        self.state = state
        self.config = config

    @property
    def order(self) -> int:
        return int(self.state["order"])

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def new(cls, order: int, config: FactorConfig, device: torch.device, eps: float) -> Factor:
        """A fresh factor of ``order`` with statistics ``eps * I`` and root ``I``."""
        state: dict = {
            "kind": cls.kind,
            "order": order,
            "root_failures": 0,
            "consecutive_failures": 0,
        }
        factor = cls(state, config)
        eye = torch.eye(order, device=device)
        factor.init_state(eps * eye, eye)
        return factor

    def init_state(self, statistics: Tensor, root: Tensor) -> None:
        raise NotImplementedError

    # -- the interface --------------------------------------------------------------------
    def update_statistics(self, gram: Tensor, hp: StepHyper) -> None:
        """EMA update with ``gram`` (``G G^T`` or ``G^T G``, fp32 ``(order, order)``)."""
        raise NotImplementedError

    def statistics(self) -> Tensor:
        """The fp32 ``(order, order)`` statistics matrix this factor represents."""
        raise NotImplementedError

    def root(self) -> Tensor:
        """The fp32 ``(order, order)`` inverse root to precondition with."""
        raise NotImplementedError

    def store_root(self, root: Tensor) -> None:
        raise NotImplementedError

    def nbytes(self) -> dict[str, int]:
        """Bytes held, split into ``"statistics"`` and ``"roots"``."""
        raise NotImplementedError

    # -- roots, batched over factors of the same variant and order ------------------------
    @classmethod
    def inverse_roots(cls, factors: list[Factor], hp: StepHyper) -> tuple[Tensor, Tensor]:
        """Inverse 4th roots of same-order factors of this class, in one batched call.

        Returns ``(roots (B, n, n) fp32, ok (B,) bool)``; nothing is stored.
        """
        A = torch.stack([f.statistics() for f in factors])
        return inverse_root(A, p=4, eps=hp.matrix_eps, method=hp.root_method)

    @classmethod
    def compute_roots(cls, factors: list[Factor], hp: StepHyper) -> None:
        """Recompute and store the roots; a factor whose root fails keeps its previous one."""
        roots, ok = cls.inverse_roots(factors, hp)
        for f, r, good in zip(factors, roots, ok.tolist(), strict=True):
            f.record_root_result(good)
            if good:
                f.store_root(r)

    def diagnostics(self) -> dict:
        """Per-factor health: kind, order, root failures and (4-bit) quantization error."""
        return {
            "kind": self.kind,
            "order": self.order,
            "root_failures": self.state["root_failures"],
            "quant_error": None,
        }

    def record_root_result(self, ok: bool) -> None:
        if ok:
            self.state["consecutive_failures"] = 0
        else:
            self.state["root_failures"] += 1
            self.state["consecutive_failures"] += 1


def update_roots(factors: list[Factor], hp: StepHyper) -> None:
    """Recompute the inverse roots of ``factors``, batching those of one class and order."""
    groups: dict[tuple[type, int], list[Factor]] = defaultdict(list)
    for f in factors:
        groups[type(f), f.order].append(f)
    for (cls, _), fs in groups.items():
        cls.compute_roots(fs, hp)
