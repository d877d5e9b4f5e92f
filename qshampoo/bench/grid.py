"""The grid of a sweep: ``--grid KEY=V1,V2,...`` parsed into axes, and the points (settings) of
their product, each with every hyperparameter written out.

Values are parsed to the key's type here; their range is the optimizer's to judge (the plan
builds it with every point's settings before any run). Intervals may be relative to the run
length (``steps/50``). The point equal to the defaults is marked: the sweep's report compares
every other point with it.
"""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Any

from . import optimizers as optim_mod
from .summary import fmt_value
from .tasks import Task

#: settings a grid may vary, and the type of their values
SWEEP_KEYS: dict[str, type] = {
    "stat_interval": int,
    "root_interval": int,
    "block_size": int,
    "bits": int,
    "codebook": str,
    "ef_decay": float,
    "max_preconditioner_dim": int,
    "lr": float,
}
INTERVALS = ("stat_interval", "root_interval")
MAX_AXES = 2
GRID_HELP = (
    "KEY=V1,V2,... with KEY one of " + ", ".join(SWEEP_KEYS) + "; intervals also take steps/K "
    "(the run length divided by K, e.g. stat_interval=steps/50); at most two --grid"
)
DEFAULT_REFERENCES = ("adamw", "shampoo")


class GridError(ValueError):
    """A malformed ``--grid``; its message is one line naming the fix."""


@dataclass(frozen=True)
class Relative:
    """An interval given relative to the run length: ``steps/K`` -> ``max(1, steps // K)``."""

    divisor: float

    def resolve(self, steps: int) -> int:
        return max(1, int(steps // self.divisor))

    def __str__(self) -> str:
        return f"steps/{self.divisor:g}"


@dataclass
class Axis:
    key: str
    values: list[Any]  # as given: int, float, str or Relative

    def resolved(self, steps: int) -> list[Any]:
        out = []
        for v in self.values:
            r = v.resolve(steps) if isinstance(v, Relative) else v
            if r not in out:  # steps/100 and steps/50 can meet on a short run
                out.append(r)
        return out

    def meta(self, steps: int) -> dict[str, Any]:
        """The axis as a report's meta records it (with how relative values were written)."""
        given = {v.resolve(steps): str(v) for v in self.values if isinstance(v, Relative)}
        values = self.resolved(steps)
        relative = {fmt_value(v): given.get(v) for v in values}
        return {"key": self.key, "values": values, "relative": relative}


def _parse_value(key: str, text: str, item: str) -> Any:
    """A grid value of ``key``'s type; the optimizer judges its range when the plan is checked."""
    if key in INTERVALS and text.startswith("steps/"):
        try:
            k = float(text[len("steps/") :])
        except ValueError:
            k = math.nan
        if not (math.isfinite(k) and k > 0):
            raise GridError(f"--grid {item!r}: {text!r} needs a positive number after 'steps/'")
        return Relative(k)
    try:
        return SWEEP_KEYS[key](text)
    except ValueError:
        kind = {int: "integers", float: "numbers"}[SWEEP_KEYS[key]]
        extra = " or steps/K" if key in INTERVALS else ""
        raise GridError(f"--grid {item!r}: {key} takes {kind}{extra}, got {text!r}") from None


def parse_grid(items: list[str] | None) -> list[Axis]:
    """``["ef_decay=0,0.5,0.9", "bits=4,8"]`` -> two :class:`Axis`. Raises :class:`GridError`
    (a one-line message) for anything malformed."""
    if not items:
        raise GridError(f"give at least one --grid {GRID_HELP.split(';')[0]}")
    if len(items) > MAX_AXES:
        raise GridError(f"at most {MAX_AXES} --grid settings per sweep, got {len(items)}")
    axes: list[Axis] = []
    for item in items:
        if item.count("=") != 1:
            raise GridError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. ef_decay=0,0.5,0.9)")
        key, rest = (s.strip() for s in item.split("="))
        if key not in SWEEP_KEYS:
            raise GridError(
                f"--grid {item!r}: unknown setting {key!r}; sweepable: {', '.join(SWEEP_KEYS)}"
            )
        if any(a.key == key for a in axes):
            raise GridError(f"--grid {key} is given twice; list all its values in one --grid")
        texts = [t.strip() for t in rest.split(",")]
        if not all(texts):
            raise GridError(f"--grid {item!r}: empty value; expected {key}=V1,V2,...")
        values = [_parse_value(key, t, item) for t in texts]
        if len(set(map(str, values))) != len(values):
            raise GridError(f"--grid {item!r}: a value is listed twice")
        axes.append(Axis(key, values))
    return axes


@dataclass
class Setting:
    """One point of the grid."""

    values: dict[str, Any]  # key -> resolved value
    hparams: dict[str, Any]  # everything the optimizer gets at this point
    default: bool  # every swept key is at its default value

    @property
    def label(self) -> str:
        """``"ef_decay=0.9, bits=4"``: the point's name in the report."""
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in self.values.items())

    @property
    def slug(self) -> str:
        """``"ef_decay=0.9,bits=4"``: its run folder."""
        return self.label.replace(", ", ",")


def constructor_defaults(optimizer: str) -> dict[str, Any]:
    """The default of every sweepable key in the qshampoo optimizer's signature (empty for the
    optimizers that are not qshampoo's)."""
    if not optim_mod.is_shampoo(optimizer):
        return {}
    from ..optimizer import Shampoo

    params = inspect.signature(Shampoo.__init__).parameters.items()
    return {k: p.default for k, p in params if k in SWEEP_KEYS and p.default is not p.empty}


def base_hparams(task: Task, optimizer: str, steps: int, overrides: dict) -> dict[str, Any]:
    """The swept optimizer's hyperparameters before the grid: the task's (tuned lr, interval
    rule), the ``--hp`` overrides, and the constructor's defaults of the other sweepable keys,
    all written out."""
    return task.hyperparameters(optimizer, steps, overrides, constructor_defaults(optimizer))


def settings(axes: list[Axis], base: dict[str, Any], steps: int) -> list[Setting]:
    out = []
    for combo in itertools.product(*(a.resolved(steps) for a in axes)):
        values = {a.key: v for a, v in zip(axes, combo, strict=True)}
        default = all(base.get(k) == v for k, v in values.items())
        out.append(Setting(values, {**base, **values}, default))
    return out


def default_references(optimizer: str) -> list[str]:
    return [r for r in DEFAULT_REFERENCES if r != optimizer]


def check_grid(axes: list[Axis], optimizer: str, overrides: dict) -> None:
    accepts = optim_mod.spec(optimizer).accepts
    for a in axes:
        if a.key not in accepts:
            raise GridError(f"--grid {a.key}: optimizer {optimizer!r} does not take {a.key!r}")
        for name in ("*", optimizer):
            if a.key in overrides.get(name, {}):
                raise GridError(f"{a.key} is set by both --grid and --hp {name}.{a.key}")
