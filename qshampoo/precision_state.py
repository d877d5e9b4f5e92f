"""The adaptive-precision (``bits="auto"``) bookkeeping of one optimizer.

``qshampoo.precision`` holds the policy, a pure function of the factors' signals and bytes.
:class:`AdaptivePrecision` is what ``Shampoo`` keeps around it: the ``memory_budget`` and
``precision_config`` it was given, an inventory of the preconditioner bytes (every adaptive
factor with its bytes at 4 and 8 bits, and everything else), the switches the policy makes
(``Factor.set_bits``) and the log of them. It reads the optimizer's param groups, state and
preconditioner views; the optimizer calls it after each statistics update, after loading a
checkpoint and for its reports.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .layout import param_blocking, state_nbytes
from .memory import factor_bytes
from .precision import AUTO_BITS, Candidate, PrecisionConfig, check_budget, plan, resolve_budget

if TYPE_CHECKING:
    from .optimizer import Shampoo

#: the age of a factor that never switched: it may switch at once
_NEVER = 1 << 30
#: decisions kept in ``diagnostics()["precision"]["log"]``
_LOG_LENGTH = 256
_LOG = logging.getLogger("qshampoo.precision")


def is_adaptive(param_groups: list[dict]) -> bool:
    """Whether any group has ``bits="auto"``."""
    return any(g["bits"] == "auto" for g in param_groups)


class AdaptivePrecision:
    """``memory_budget``, ``precision_config`` and the log of precision switches of one
    optimizer. Idle unless a param group has ``bits="auto"``."""

    def __init__(self, memory_budget: float | int | None, precision_config: PrecisionConfig | None):
        check_budget(memory_budget)
        if precision_config is not None and not isinstance(precision_config, PrecisionConfig):
            raise ValueError(
                f"invalid precision_config={precision_config!r}: must be a "
                "qshampoo.precision.PrecisionConfig or None"
            )
        self.memory_budget = memory_budget
        self.config = precision_config or PrecisionConfig()
        self.log: list[dict] = []
        self.warned = False
        #: the signals of an accelerator's last statistics step, on their way to the host
        self._copy: _HostCopy | None = None
        #: whether this step has planned from that copy already (``begin_step``)
        self._planned = False

    def __getstate__(self) -> dict[str, Any]:
        # a copy or pickle starts without the signals in flight (a CUDA event is neither)
        return {**self.__dict__, "_copy": None}

    def check_setup(self, optimizer: Shampoo, sharded: bool) -> None:
        """``bits="auto"`` and ``memory_budget`` go together, and the budget must hold every
        factor at 4 bits (checked here from shapes unless blocks are split across ranks, where
        each process's share is known only at the first step)."""
        auto = is_adaptive(optimizer.param_groups)
        if auto and self.memory_budget is None:
            raise ValueError(
                "bits='auto' needs memory_budget=...: a fraction of 32-bit Shampoo's "
                "preconditioner bytes (e.g. 1/7) or a number of bytes"
            )
        if not auto and self.memory_budget is not None:
            raise ValueError(
                f"memory_budget={self.memory_budget!r} applies only to bits='auto' (adaptive "
                "precision); pass bits='auto' or drop memory_budget"
            )
        if not auto or sharded:
            return
        inv = self._inventory(optimizer)
        if inv.floor > inv.budget:
            raise ValueError(
                f"memory_budget={self.memory_budget!r} ({inv.budget} bytes) cannot hold the "
                f"preconditioners even with every factor in 4 bits ({inv.floor} bytes, "
                f"{inv.floor / max(inv.reference, 1):.4f} of 32-bit Shampoo's "
                f"{inv.reference} bytes); raise it to at least that"
            )

    def begin_step(self) -> None:
        """A new ``step()``: an accelerator's statistics step plans once, at its first adaptive
        group, from the previous statistics step's copy (``_signals``)."""
        self._planned = False

    def after_statistics(self, optimizer: Shampoo, group: dict, on_host: bool = True) -> None:
        """``group``'s statistics were updated: re-plan if it is adaptive. ``on_host`` False
        (an accelerator's statistics step, which reads nothing back): the signals are copied
        to the host asynchronously, and the plan is made from the previous statistics step's
        copy (``_signals``)."""
        if group["bits"] == "auto":
            self._adapt(optimizer, on_host)

    def fit_loaded(self, optimizer: Shampoo) -> None:
        """After ``load_state_dict``: a checkpoint saved under a larger ``memory_budget`` is
        fitted to this one's at once."""
        if not is_adaptive(optimizer.param_groups):
            return
        inv = self._inventory(optimizer)
        if optimizer.memory_report()["preconditioners"] > inv.budget:
            self._adapt(optimizer)

    def budget_bytes(self, optimizer: Shampoo) -> int | None:
        """``memory_budget`` in bytes."""
        return self._inventory(optimizer).budget

    def summary(self, optimizer: Shampoo, factors: list[dict]) -> dict[str, Any]:
        """``diagnostics()["precision"]``, from ``diagnostics()["factors"]``."""
        inv = self._inventory(optimizer)
        adaptive = [d for d in factors if "precision_signal" in d]
        return {
            "memory_budget": inv.budget,
            "bytes": optimizer.memory_report()["preconditioners"],
            "all_4bit": inv.floor,
            "all_8bit": inv.ceiling,
            "reference_32bit": inv.reference,
            "factors_4bit": sum(d["bits"] == 4 for d in adaptive),
            "factors_8bit": sum(d["bits"] == 8 for d in adaptive),
            "promotions": sum(d["promotions"] for d in adaptive),
            "demotions": sum(d["demotions"] for d in adaptive),
            "log": [dict(e) for e in self.log],
        }

    def _inventory(self, optimizer: Shampoo) -> _Inventory:
        """Every adaptive factor (with where it sits) and the bytes of everything else,
        from the optimizer's preconditioner store."""
        inv = _Inventory()
        store = optimizer.store
        for group in optimizer.param_groups:
            auto = group["bits"] == "auto"
            for p in group["params"]:
                blocking = param_blocking(p, group)
                if blocking is None or store.view(p, group) is not None:
                    continue
                # no state yet: reserve it at the width it will start with
                for orders in blocking.orders:
                    for n in orders:
                        if n is None:
                            continue
                        inv.reference += _bytes(factor_bytes("none", n))
                        start = _bytes(_group_factor_bytes(group, n))
                        inv.fixed += start
                        top = _group_factor_bytes(group, n, AUTO_BITS[1]) if auto else None
                        inv.ceiling += start if top is None else _bytes(top)
        for e in store.entries():
            group, f = optimizer.param_groups[e.group], e.factor
            inv.reference += _bytes(factor_bytes("none", f.order))
            if group["bits"] == "auto" and f.adaptive:
                b4, b8 = (_bytes(_group_factor_bytes(group, f.order, bits)) for bits in AUTO_BITS)
                inv.factors.append(((e.index, e.block, e.side), f, e.group, e.param, b4, b8))
                inv.ceiling += b8
            else:
                nbytes = state_nbytes(f.state)
                inv.fixed += nbytes
                inv.ceiling += nbytes
        inv.floor = inv.fixed + sum(entry[4] for entry in inv.factors)
        inv.budget = (
            resolve_budget(self.memory_budget, inv.reference)
            if self.memory_budget is not None
            else None
        )
        return inv

    def _adapt(self, optimizer: Shampoo, on_host: bool = True) -> None:
        """Choose each adaptive factor's width from its latest signal (``qshampoo.precision``)
        and re-quantize the ones that change; log every change."""
        inv = self._inventory(optimizer)
        if not inv.factors:
            return
        signals = self._signals(inv, on_host)
        if signals is None:
            return
        candidates = []
        for (key, f, _, _, b4, b8), signal in zip(inv.factors, signals, strict=True):
            switched = f.state["promotions"] + f.state["demotions"] > 0
            age = f.state["bits_age"] if switched else _NEVER
            candidates.append(Candidate(key, f.bits, _finite(signal), b4, b8, age))
        room = inv.budget - inv.fixed
        if room < sum(c.bytes4 for c in candidates) and not self.warned:
            self.warned = True
            warnings.warn(
                f"memory_budget={self.memory_budget!r} ({inv.budget} bytes) is below what this "
                f"process's preconditioners need with every factor in 4 bits ({inv.floor} "
                "bytes): every factor stays in 4 bits",
                stacklevel=4,  # a line in step(), or the caller of load_state_dict()
            )
        target = plan(candidates, room, self.config)
        for c, (key, f, g, p, _, _) in zip(candidates, inv.factors, strict=True):
            bits = target[c.key]
            if bits == c.bits:
                continue
            f.set_bits(bits)
            f.state["bits_age"] = 0
            f.state["promotions" if bits > c.bits else "demotions"] += 1
            entry = {
                "step": optimizer.state[p]["step"],
                "param": key[0],
                "group": g,
                "block": key[1],
                "side": key[2],
                "order": f.order,
                "from": c.bits,
                "to": bits,
                "signal": c.signal,
            }
            self.log.append(entry)
            _LOG.info(
                "step %d: parameter #%d block %d (%s, order %d): %d -> %d bits (signal %.4g)",
                entry["step"],
                key[0],
                key[1],
                key[2],
                f.order,
                c.bits,
                bits,
                c.signal,
            )
        del self.log[:-_LOG_LENGTH]

    def _signals(self, inv: _Inventory, on_host: bool) -> list[float] | None:
        """The adaptive factors' signals, as host numbers: read now (one host sync), or, not
        ``on_host``, those of the previous statistics step, copied to the host while the device
        went on (None at the first such step, or when the factors changed since)."""
        stacked = torch.stack(
            [f.state["precision_signal"].float().reshape(()) for _, f, *_ in inv.factors]
        )
        keys = [(entry[0], id(entry[1].state)) for entry in inv.factors]
        if on_host:
            self._copy = None
            return stacked.tolist()  # one host sync per statistics step
        # the copy of the step's last adaptive group is the one the next step plans from
        previous, self._copy = self._copy, _HostCopy(keys, stacked)
        if getattr(self, "_planned", False) or previous is None or previous.keys != keys:
            return None
        self._planned = True
        return previous.values()


class _HostCopy:
    """Values copied from the device to the host without waiting for them: into pinned
    memory behind a CUDA event on CUDA; a plain copy elsewhere. Read with ``values()``."""

    def __init__(self, keys: list, values: Tensor):
        self.keys = keys
        self.event = None
        if values.device.type == "cuda":
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = values.to("cpu", copy=True)

    def values(self) -> list[float]:
        """The copied values (a wait on the copy's event alone, long done one statistics
        interval later; the numbers are then read from host memory, not from the device)."""
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy().tolist()


class _Inventory:
    """What the precision policy needs to know about the preconditioner bytes."""

    def __init__(self):
        #: (key, factor, group index, parameter, bytes at 4 bits, bytes at 8 bits)
        self.factors: list[tuple] = []
        self.fixed = 0  # every other preconditioner byte, reservations for new state included
        self.reference = 0  # what 32-bit Shampoo's preconditioners would take
        self.floor = 0  # everything, adaptive factors at 4 bits
        self.ceiling = 0  # everything, adaptive factors at 8 bits
        self.budget: int | None = None


def _group_factor_bytes(group: dict, n: int, bits: int | None = None) -> dict[str, int]:
    """``memory.factor_bytes`` of a factor of order ``n`` in ``group`` (at ``bits``, if given:
    an adaptive factor at that width)."""
    auto = group["bits"] == "auto"
    return factor_bytes(
        group["quant"],
        n,
        bits=group["bits"] if bits is None else bits,
        block_size=group["block_size"],
        min_quant_numel=group["min_quant_numel"],
        adaptive=auto,
    )


def _bytes(parts: dict[str, int]) -> int:
    return sum(parts.values())


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0
