"""Kronecker-factor variants, by their ``quant=`` name."""

from __future__ import annotations

import torch

from .base import (
    Factor,
    FactorConfig,
    PreconditionerError,
    StepHyper,
    check_failures,
    cholesky_with_retry,
    fold_failures,
)
from .cholesky import CholeskyEFFactor, CholeskyFactor
from .eigen import EigenFactor
from .fp32 import Fp32Factor
from .naive import NaiveFactor

FACTORS: dict[str, type[Factor]] = {
    cls.kind: cls
    for cls in (Fp32Factor, NaiveFactor, EigenFactor, CholeskyFactor, CholeskyEFFactor)
}


def make_factor(
    quant: str,
    order: int,
    config: FactorConfig,
    device: torch.device,
    eps: float,
    min_quant_numel: int,
) -> Factor:
    """A new factor of the ``quant`` variant; matrices under ``min_quant_numel`` stay fp32."""
    cls = FACTORS[quant] if order * order >= min_quant_numel else Fp32Factor
    return cls.new(order, config, device, eps)


def factor_view(state: dict, config: FactorConfig) -> Factor:
    """The factor object over a stored state dict (after ``load_state_dict``, say)."""
    return FACTORS[state["kind"]](state, config)


__all__ = [
    "FACTORS",
    "Fp32Factor",
    "Factor",
    "FactorConfig",
    "PreconditionerError",
    "StepHyper",
    "check_failures",
    "cholesky_with_retry",
    "factor_view",
    "fold_failures",
    "make_factor",
]
