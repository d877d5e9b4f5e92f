"""How a param group lays out a parameter's optimizer state.

The step loop, ``load_state_dict``'s checks and the adaptive-precision bookkeeping all need
the same few answers from a group: which of its keys fix the stored layout, how a parameter
is cut into blocks, what factors those blocks get, and how many bytes a stored state holds.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .blocking import Blocking
from .dtensor import local
from .factors import FactorConfig
from .precision import AUTO_BITS

#: group keys that decide the layout of the stored state; they cannot change once it exists
LAYOUT_KEYS = (
    "quant",
    "bits",
    "block_size",
    "codebook",
    "max_preconditioner_dim",
    "max_factor_ratio",
    "min_quant_numel",
    "precondition",
    "base",
)


def layout_of(group: dict) -> dict[str, Any]:
    """The group's ``LAYOUT_KEYS``, as stored in each parameter state (``state["layout"]``)."""
    return {k: group[k] for k in LAYOUT_KEYS}


def param_blocking(p: Tensor, group: dict) -> Blocking | None:
    """The blocks of ``p``'s preconditioner (None: ``p`` is not preconditioned)."""
    if not group["precondition"]:
        return None
    shape = tuple(local(p).shape)  # a DTensor's shard
    return Blocking.of(shape, group["max_preconditioner_dim"], group["max_factor_ratio"])


def factor_config(group: dict) -> FactorConfig:
    """The quantizer settings of the group's factors."""
    if group["bits"] == "auto":  # adaptive factors start at 4 bits
        return FactorConfig(AUTO_BITS[0], group["block_size"], group["codebook"], adaptive=True)
    return FactorConfig(group["bits"], group["block_size"], group["codebook"])


def state_nbytes(obj: Any) -> int:
    """``tensor.nbytes`` summed over a (nested) state; a DTensor counts this rank's shard."""
    if isinstance(obj, Tensor):
        return local(obj).nbytes
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0
