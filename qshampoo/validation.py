"""Hyperparameter checks of a param group: each invalid value is refused by name.

``Shampoo.add_param_group`` (so the constructor too) calls :func:`validate_group` on every
group, and ``load_state_dict`` on the groups a checkpoint brings; the first invalid value
raises ``ValueError("invalid <name>=<value>: <what it must be>")``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from torch import Tensor

from .base import BASES
from .factors import FACTORS
from .quant import CODEBOOK_NAMES, SUPPORTED_BITS
from .roots import ROOT_METHODS


def _check(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}={value!r}: {what}")


def _real(name: str, value: Any, what: str = "must be a finite real number") -> float:
    """``value`` as a float, or ValueError naming ``name`` (bools and non-finite refused)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
        value_f = value.item()
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        value_f = float(value)
    else:
        raise ValueError(f"invalid {name}={value!r}: {what}")
    _check(math.isfinite(value_f), name, value, what)
    return value_f


def _integer(name: str, value: Any, low: int) -> None:
    _check(
        isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low,
        name,
        value,
        f"must be an integer >= {low}",
    )


def validate_group(g: dict[str, Any]) -> None:
    """Raise ValueError naming the first invalid hyperparameter of a param group."""
    for name, options in (
        ("base", tuple(BASES)),
        ("quant", tuple(FACTORS)),
        ("root_method", ROOT_METHODS),
        ("codebook", tuple(CODEBOOK_NAMES)),
        ("nonfinite", ("skip", "raise")),
        ("cholesky_damping", ("carry", "subtract")),
    ):
        v = g[name]
        _check(isinstance(v, str) and v in options, name, v, f"must be one of {options}")
    for name in ("nesterov", "maximize", "precondition", "compile"):
        _check(isinstance(g[name], bool), name, g[name], "must be True or False")
    _check(_real("lr", g["lr"]) >= 0, "lr", g["lr"], "must be >= 0")
    betas = g["betas"]
    _check(
        isinstance(betas, (tuple, list)) and len(betas) == 2,
        "betas",
        betas,
        "must be a pair (beta1, beta2)",
    )
    for b in betas:
        _check(0 <= _real("betas", b) < 1, "betas", betas, "each must be in [0, 1)")
    eps = _real("eps", g["eps"])
    _check(eps >= 0, "eps", eps, "must be >= 0")
    _check(
        eps > 0 or g["base"] != "adamw",
        "eps",
        eps,
        "must be > 0 with base='adamw' (a gradient entry that stays zero would give 0/0 = NaN)",
    )
    _check(
        _real("weight_decay", g["weight_decay"]) >= 0,
        "weight_decay",
        g["weight_decay"],
        "must be >= 0",
    )
    for name in ("momentum", "stat_decay", "ef_decay"):
        _check(0 <= _real(name, g[name]) < 1, name, g[name], "must be in [0, 1)")
    _check(
        not (g["nesterov"] and g["momentum"] == 0),
        "nesterov",
        g["nesterov"],
        "Nesterov momentum needs momentum > 0",
    )
    _check(_real("matrix_eps", g["matrix_eps"]) > 0, "matrix_eps", g["matrix_eps"], "must be > 0")
    for name in ("stat_interval", "root_interval", "max_preconditioner_dim", "block_size"):
        _integer(name, g[name], 1)
    _integer("min_quant_numel", g["min_quant_numel"], 0)
    ratio = g["max_factor_ratio"]
    if ratio is not None:
        _check(
            _real("max_factor_ratio", ratio, "must be None or a number >= 1") >= 1,
            "max_factor_ratio",
            ratio,
            "must be None or a number >= 1",
        )
    _integer("max_consecutive_failures", g["max_consecutive_failures"], 0)
    if isinstance(g["bits"], str) and g["bits"] == "auto":
        _check(
            g["quant"] != "none",
            "bits",
            g["bits"],
            "'auto' (4 or 8 bits per factor) needs a quantized variant: pass quant='cholesky_ef' "
            "(or 'cholesky', 'naive', 'eigen'), not quant='none'",
        )
    else:
        _check(
            g["bits"] in SUPPORTED_BITS and not isinstance(g["bits"], bool),
            "bits",
            g["bits"],
            f"must be one of {SUPPORTED_BITS} or 'auto'",
        )


def validate_params(params: Iterable[Tensor]) -> None:
    """Raise TypeError unless every parameter is a real floating-point tensor."""
    for p in params:
        if p.is_complex():
            raise TypeError(
                "Shampoo does not support complex parameters; pass "
                "torch.view_as_real(p) as a real parameter instead"
            )
        if not p.is_floating_point():
            raise TypeError(f"Shampoo needs floating-point parameters, got {p.dtype}")
