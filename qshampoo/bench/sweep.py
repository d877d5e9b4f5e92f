"""Sweep one or two optimizer settings over a grid, on one task, with seeds.

``qshampoo sweep --task fashion-mnist --grid ef_decay=0,0.5,0.9 --grid bits=4,8`` trains the
swept optimizer (default ``shampoo4bit``) at every point of the grid's product and every seed,
plus reference optimizers (default AdamW and 32-bit Shampoo) at their usual settings, and writes a
report (:mod:`qshampoo.bench.sweep_report`). Every run goes through the harness's runner, so
checkpoints, ``--resume`` and process isolation work as in ``qshampoo bench``.

Layout of an output folder::

    OUT/report.md  results.json  *.png                      the report
    OUT/runs/<optimizer>/<setting>/seed<k>/result.json       one run of the swept optimizer
    OUT/runs/<reference>/seed<k>/result.json                 one run of a reference optimizer

Every point's hyperparameters are written out in full (each sweepable key the optimizer takes,
at its value), so the point that equals the defaults has the same fingerprint in every sweep
and ``--reuse`` can take it from an earlier sweep's folder instead of training it again.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import optimizers as optim_mod
from .runner import RESULT, RunSpec, _jsonable, atomic_write_text, load_result
from .suite import (
    _loadavg,
    _log_stderr,
    check_optimizers,
    check_overrides,
    resolve_device,
    resolve_steps,
    run_hparams,
    run_or_reuse,
    run_spec,
    task_meta,
)
from .summary import fmt_value
from .tasks import Task

#: settings a grid may vary, and the type of their values
SWEEP_KEYS: dict[str, str] = {
    "stat_interval": "interval",
    "root_interval": "interval",
    "block_size": "int",
    "bits": "int",
    "codebook": "choice",
    "ef_decay": "float",
    "max_preconditioner_dim": "int",
    "lr": "float",
}
MAX_AXES = 2
GRID_HELP = (
    "KEY=V1,V2,... with KEY one of " + ", ".join(SWEEP_KEYS) + "; intervals also take steps/K "
    "(the run length divided by K, e.g. stat_interval=steps/50); at most two --grid"
)


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

    def given(self, value: Any, steps: int) -> str | None:
        """How ``value`` was written in the grid when it was relative (``"steps/50"``)."""
        for v in self.values:
            if isinstance(v, Relative) and v.resolve(steps) == value:
                return str(v)
        return None


def _parse_value(key: str, text: str, item: str) -> Any:
    kind = SWEEP_KEYS[key]
    where = f"--grid {item!r}"
    if kind == "interval" and text.startswith("steps/"):
        try:
            k = float(text[len("steps/") :])
        except ValueError:
            k = float("nan")
        if not (math.isfinite(k) and k > 0):
            raise GridError(f"{where}: {text!r} needs a positive number after 'steps/'")
        return Relative(k)
    if kind in ("interval", "int"):
        try:
            v = int(text)
        except ValueError:
            extra = " or steps/K" if kind == "interval" else ""
            raise GridError(f"{where}: {key} takes integers{extra}, got {text!r}") from None
        if v < 1:
            raise GridError(f"{where}: {key} must be >= 1, got {v}")
        if key == "bits":
            from ..quant import SUPPORTED_BITS

            if v not in SUPPORTED_BITS:
                raise GridError(
                    f"{where}: bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {v}"
                )
        return v
    if kind == "float":
        try:
            v = float(text)
        except ValueError:
            raise GridError(f"{where}: {key} takes numbers, got {text!r}") from None
        if key == "ef_decay" and not 0 <= v < 1:
            raise GridError(f"{where}: ef_decay must be in [0, 1), got {text}")
        if key == "lr" and not (math.isfinite(v) and v > 0):
            raise GridError(f"{where}: lr must be > 0, got {text}")
        return v
    from ..quant import CODEBOOK_NAMES

    if text not in CODEBOOK_NAMES:
        raise GridError(
            f"{where}: codebook must be one of {', '.join(CODEBOOK_NAMES)}, got {text!r}"
        )
    return text


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
        if not rest.strip() or any(not t for t in texts):
            raise GridError(f"--grid {item!r}: empty value; expected {key}=V1,V2,...")
        values = [_parse_value(key, t, item) for t in texts]
        if len(set(map(str, values))) != len(values):
            raise GridError(f"--grid {item!r}: a value is listed twice")
        axes.append(Axis(key, values))
    return axes


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass
class Setting:
    """One point of the grid."""

    values: dict[str, Any]  # key -> resolved value
    hparams: dict[str, Any]  # everything the optimizer gets at this point
    default: bool  # every swept key is at its default value

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in self.values.items())

    @property
    def slug(self) -> str:
        return ",".join(f"{k}={fmt_value(v)}" for k, v in self.values.items())


def constructor_defaults(optimizer: str) -> dict[str, Any]:
    """The default of every sweepable key in the qshampoo optimizer's signature (empty for the
    optimizers that are not qshampoo's)."""
    if not optimizer.startswith("shampoo"):
        return {}
    import qshampoo

    sig = inspect.signature(qshampoo.Shampoo.__init__)
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k in SWEEP_KEYS and p.default is not inspect.Parameter.empty
    }


def base_hparams(task: Task, optimizer: str, steps: int, overrides: dict) -> dict[str, Any]:
    """The swept optimizer's hyperparameters before the grid: the task's (tuned lr, interval
    rule), the ``--hp`` overrides, and the constructor's defaults of the other sweepable keys,
    all written out."""
    return run_hparams(task, optimizer, steps, overrides, constructor_defaults(optimizer))


def settings(axes: list[Axis], base: dict[str, Any], steps: int) -> list[Setting]:
    out = []
    for combo in itertools.product(*(a.resolved(steps) for a in axes)):
        values = {a.key: v for a, v in zip(axes, combo, strict=True)}
        hp = {**base, **values}
        default = all(base.get(k) == v for k, v in values.items())
        out.append(Setting(values, hp, default))
    return out


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class SweepConfig:
    grid: list[Axis]
    seeds: list[int]
    out: str
    optimizer: str = "shampoo4bit"
    references: list[str] | None = None  # None: adamw and 32-bit shampoo (when not swept)
    steps: int | None = None
    epochs: float | None = None
    device: str = "cpu"
    resume: bool = False
    reuse: list[str] = field(default_factory=list)  # folders of earlier sweeps / benches
    isolate: bool | str = "auto"
    progress: bool = True
    eval_every: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    validation: bool = False
    threads: int | None = None
    command: str | None = None


DEFAULT_REFERENCES = ("adamw", "shampoo")


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


class _ReuseIndex:
    """Finished runs (``result.json``) under other report folders, by fingerprint."""

    def __init__(self, folders: list[str]):
        self.by_fp: dict[str, Path] = {}
        for folder in folders:
            root = Path(folder)
            if not root.is_dir():
                raise ValueError(f"--reuse {folder}: no such folder")
            for path in sorted(root.rglob(RESULT)):
                try:
                    fp = json.loads(path.read_text()).get("fingerprint")
                except (OSError, ValueError):
                    continue
                if fp:
                    self.by_fp.setdefault(fp, path.parent)

    def take(self, spec: RunSpec, log, what: str) -> dict | None:
        """Copy a matching finished run into ``spec.run_dir`` and return it, or ``None``."""
        src = self.by_fp.get(spec.fingerprint())
        dst = Path(spec.run_dir)
        if src is None or src.resolve() == dst.resolve():
            return None
        result = load_result(src, spec.fingerprint())
        if result is None:
            return None
        dst.mkdir(parents=True, exist_ok=True)
        result["reused_from"] = str(src)
        atomic_write_text(dst / RESULT, json.dumps(_jsonable(result), indent=1))
        if (src / "model.pt").exists():
            shutil.copyfile(src / "model.pt", dst / "model.pt")
        log(f"{what}: same settings finished in {src}, reused")
        return result


def run_sweep(task: Task, config: SweepConfig, log=None) -> Path:
    """Train every (setting, seed) of the grid and every (reference, seed); write the report.
    Returns the output folder."""
    from . import sweep_report

    log = log or _log_stderr
    out = Path(config.out)
    device = resolve_device(config.device)
    optim_mod.spec(config.optimizer)
    references = (
        default_references(config.optimizer)
        if config.references is None
        else [r for r in config.references if r != config.optimizer]
    )
    check_overrides(config.overrides, [config.optimizer, *references])
    check_grid(config.grid, config.optimizer, config.overrides)
    ok, skipped = check_optimizers([config.optimizer, *references], device, log)
    if config.optimizer not in ok:
        raise RuntimeError(f"the swept optimizer cannot run here: {skipped[config.optimizer]}")
    references = [r for r in references if r in ok]
    reuse = _ReuseIndex(config.reuse)
    out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    load_start = _loadavg()
    data = task.data_fn(validation=config.validation)
    steps = resolve_steps(task, data, config.steps, config.epochs)
    base = base_hparams(task, config.optimizer, steps, config.overrides)
    points = settings(config.grid, base, steps)

    def run(spec: RunSpec, what: str) -> dict:
        taken = reuse.take(spec, log, what)
        if taken is not None:
            return taken
        return run_or_reuse(spec, data, config.isolate, config.resume, log, what)

    results: list[dict] = []
    for point in points:
        for seed in config.seeds:
            run_dir = out / "runs" / config.optimizer / point.slug / f"seed{seed}"
            spec = run_spec(
                task, config, config.optimizer, point.hparams, seed, steps, device, run_dir
            )
            result = run(spec, f"{config.optimizer} {point.label} seed {seed}")
            result["setting"] = point.label
            results.append(result)
    for name in references:
        hp = run_hparams(task, name, steps, config.overrides)
        for seed in config.seeds:
            run_dir = out / "runs" / name / f"seed{seed}"
            spec = run_spec(task, config, name, hp, seed, steps, device, run_dir)
            result = run(spec, f"{name} (reference) seed {seed}")
            result["setting"] = None
            results.append(result)

    meta = {
        "kind": "sweep",
        **task_meta(task, data, steps, config.seeds, config.validation),
        "optimizer": config.optimizer,
        "references": references,
        "skipped": skipped,
        "grid": [
            {
                "key": a.key,
                "given": [str(v) for v in a.values],
                "values": a.resolved(steps),
                "relative": {fmt_value(v): a.given(v, steps) for v in a.resolved(steps)},
            }
            for a in config.grid
        ],
        "settings": [
            {"label": p.label, "values": p.values, "default": p.default, "dir": p.slug}
            for p in points
        ],
        "base_hparams": base,
        "device": device,
        "validation": config.validation,
        "eval_every": task.eval_interval(steps, config.eval_every),
        "warmup": task.warmup,
        "final_lr": task.final_lr,
        "lr_source": task.lr_source,
        "overrides": config.overrides,
        "reuse": config.reuse,
        "command": config.command,
        "sweep_wall_s": time.time() - started,
        "load_average": {"start": load_start, "end": _loadavg()},
        "threads": config.threads,
    }
    sweep_report.write_report(out, meta, results)
    log(f"report written to {out / 'report.md'}")
    return out
