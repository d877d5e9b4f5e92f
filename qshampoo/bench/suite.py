"""Run a comparison (``qshampoo bench``) or a sweep (``qshampoo sweep``): every run of one task,
then the report. A comparison is a sweep of one point: both go through :func:`_runs`.

Layout of an output folder::

    OUT/report.md  report.html  results.json  *.png       the report (qshampoo.bench.report)
    OUT/runs/<optimizer>/seed<k>/result.json              one finished run (checkpoint.pt while
                                                          running)
    OUT/runs/<optimizer>/budget<pct>/seed<k>/             a shorter full schedule (time to quality)
    OUT/runs/<optimizer>/<setting>/seed<k>/               one point of a sweep's grid

Every point of a sweep has its hyperparameters written out in full (each sweepable key the
optimizer takes, at its value), so the point that equals the defaults has the same fingerprint in
every sweep and ``--reuse`` can take it from an earlier folder instead of training it again.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import optimizers as optim_mod
from .recorder import write_json
from .runner import RESULT, RunSpec, can_isolate, load_result, run_isolated, train_run
from .summary import fmt_value, roles
from .tasks import Task

#: shorter full schedules tried for the time to quality, as fractions of the steps
DEFAULT_BUDGETS = (0.5, 0.7, 0.85)


@dataclass(kw_only=True)
class SuiteConfig:
    optimizers: list[str]
    seeds: list[int]
    out: str
    steps: int | None = None  # default: the task's budget
    epochs: float | None = None  # alternative to steps: passes over the training data
    device: str = "cpu"
    resume: bool = False
    isolate: bool | str = "auto"  # True, False or "auto" (isolate when the task pickles)
    progress: bool = True
    eval_every: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # optimizer -> {key: v}
    validation: bool = False  # evaluate on a split held out of the training data (tuning)
    threads: int | None = None  # torch intra-op threads per run (None: torch's default)
    command: str | None = None  # the command line, recorded in the report
    # Time to quality: each optimizer but the baseline also trains full schedules of these
    # fractions of the steps, shortest first, until one reaches the baseline's final metric.
    budgets: tuple[float, ...] = ()
    lang: str = "en"  # the report's language: "en" or "ja"


@dataclass(kw_only=True)
class SweepConfig(SuiteConfig):
    optimizers: list[str] = field(default_factory=list)
    grid: list = field(default_factory=list)  # [Axis]
    optimizer: str = "shampoo4bit"
    references: list[str] | None = None  # None: adamw and 32-bit shampoo (when not swept)
    reuse: list[str] = field(default_factory=list)  # folders of earlier sweeps / benches


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every timing."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch.cuda.is_available() is False")
    return str(dev)


def parse_seeds(text: str | int | list[int]) -> list[int]:
    """``"3"`` or ``3`` -> ``[0, 1, 2]``; ``"0,4,7"`` -> ``[0, 4, 7]``."""
    if isinstance(text, int):
        return list(range(text))
    if isinstance(text, (list, tuple)):
        return [int(s) for s in text]
    text = str(text).strip()
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    n = int(text)
    if n < 1:
        raise ValueError("--seeds needs a count >= 1 or a comma-separated list of seeds")
    return list(range(n))


def check_optimizers(names: list[str], device: str, log=print) -> tuple[list[str], dict[str, str]]:
    """Split ``names`` into those that can run here and ``{name: reason}`` for the others."""
    ok, skipped = [], {}
    for name in names:
        optim_mod.spec(name)  # unknown names are an error, not a skip
        reason = optim_mod.availability(name, device)
        if reason is None:
            ok.append(name)
        else:
            skipped[name] = reason
            log(f"skipping optimizer {name}: {reason}")
    return ok, skipped


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_suite(task: Task, config: SuiteConfig, log=None) -> Path:
    """Train every requested (optimizer, seed) of ``task`` — and, with ``config.budgets``, the
    shorter schedules — and write the report; returns the output folder. Finished runs are reused
    and unfinished ones continued when ``config.resume``; otherwise every run starts afresh."""
    check_overrides(config.overrides, list(config.optimizers))
    return _runs(task, config, list(config.optimizers), log or _log_stderr)


def run_sweep(task: Task, config: SweepConfig, log=None) -> Path:
    """Train every (setting, seed) of the grid and every (reference, seed); write the report."""
    optim_mod.spec(config.optimizer)
    refs = config.references
    refs = default_references(config.optimizer) if refs is None else refs
    refs = [r for r in refs if r != config.optimizer]
    check_overrides(config.overrides, [config.optimizer, *refs])
    check_grid(config.grid, config.optimizer, config.overrides)
    return _runs(task, config, [config.optimizer, *refs], log or _log_stderr)


def _runs(task: Task, config: SuiteConfig, names: list[str], log) -> Path:
    from .report import write_report

    sweep = isinstance(config, SweepConfig)
    out = Path(config.out)
    device = resolve_device(config.device)
    ok, skipped = check_optimizers(names, device, log)
    if sweep and config.optimizer not in ok:
        raise RuntimeError(f"the swept optimizer cannot run here: {skipped[config.optimizer]}")
    if not ok:
        raise RuntimeError(
            "none of the requested optimizers can run here: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    reuse = _ReuseIndex(config.reuse if sweep else [])
    out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.time(), _loadavg()
    # Load the data here first: a missing dataset fails before any run starts, and --epochs
    # needs the number of batches per epoch.
    data = task.data_fn(validation=config.validation)
    steps = resolve_steps(task, data, config.steps, config.epochs)

    def run(name, hp, seed, run_dir, what, steps=steps, **extra) -> dict:
        spec = run_spec(task, config, name, hp, seed, steps, device, run_dir, **extra)
        taken = reuse.take(spec, log, what)
        if taken is not None:
            return taken
        return run_or_reuse(spec, data, config.isolate, config.resume, log, what)

    results: list[dict] = []
    meta: dict[str, Any] = {"kind": "sweep" if sweep else "bench"}
    if sweep:
        base = base_hparams(task, config.optimizer, steps, config.overrides)
        points = settings(config.grid, base, steps)
        for point in points:
            for seed in config.seeds:
                d = out / "runs" / config.optimizer / point.slug / f"seed{seed}"
                r = run(
                    config.optimizer,
                    point.hparams,
                    seed,
                    d,
                    f"{config.optimizer} {point.label} seed {seed}",
                )
                results.append({**r, "setting": point.label})
        meta.update(
            optimizer=config.optimizer,
            references=[r for r in ok if r != config.optimizer],
            grid=[a.meta(steps) for a in config.grid],
            settings=[
                {"label": p.label, "values": p.values, "default": p.default, "dir": p.slug}
                for p in points
            ],
            base_hparams=base,
            reuse=config.reuse,
        )
    hps = {name: run_hparams(task, name, steps, config.overrides) for name in ok}
    for name in meta.get("references", ok):
        for seed in config.seeds:
            d = out / "runs" / name / f"seed{seed}"
            what = f"{name}{' (reference)' if sweep else ''} seed {seed}"
            results.append({**run(name, hps[name], seed, d, what), "setting": None})
    if config.budgets and not sweep:
        results += _shorter_schedules(run, results, ok, hps, config, steps, task.higher_is_better)

    meta.update(
        **task_meta(task, data, steps, config.seeds, config.validation),
        optimizers=ok,
        skipped=skipped,
        budgets=list(config.budgets) if not sweep else [],
        device=device,
        eval_every=task.eval_interval(steps, config.eval_every),
        eval_limit=task.eval_limit,
        final_eval_limit=task.final_eval_limit,
        warmup=task.warmup,
        final_lr=task.final_lr,
        lr_source=task.lr_source,
        lr_tuned={name: name in task.lr for name in ok},
        overrides=config.overrides,
        command=config.command,
        wall_s=time.time() - started,
        load_average={"start": load_start, "end": _loadavg()},
        threads=config.threads,
    )
    write_report(out, meta, results, lang=config.lang)
    log(f"report written to {out / 'report.md'}")
    return out


def _shorter_schedules(run, results, names, hps, config, steps, hib) -> list[dict]:
    """Time to quality: for each optimizer but the baseline and each seed, full schedules of
    ``config.budgets`` of the steps, shortest first, until one ends at or beyond the baseline's
    full-run final metric of that seed (assumed monotone: a longer schedule does not end worse)."""
    baseline = roles(names)["baseline"]
    if baseline is None:
        return []
    target = {r["seed"]: r["final"]["metric"] for r in results if r["optimizer"] == baseline}
    out_runs = []
    for name in names:
        if name == baseline:
            continue
        for seed in config.seeds:
            if seed not in target or not math.isfinite(target[seed] or math.nan):
                continue
            for f in sorted(config.budgets):
                d = Path(config.out) / "runs" / name / f"budget{round(100 * f)}" / f"seed{seed}"
                n = max(1, round(f * steps))
                what = f"{name} seed {seed}, {round(100 * f)}% schedule ({n} steps)"
                r = run(name, hps[name], seed, d, what, steps=n, budget=f, full_steps=steps)
                out_runs.append({**r, "setting": None})
                m = r["final"]["metric"]
                if math.isfinite(m or math.nan) and (
                    m >= target[seed] if hib else m <= target[seed]
                ):
                    break
    return out_runs


def run_hparams(
    task: Task, name: str, steps: int, overrides: dict, defaults: dict | None = None
) -> dict[str, Any]:
    """The hyperparameters a run of optimizer ``name`` gets: the task's, then the ``--hp``
    overrides (those for ``*``, then those for ``name``), then ``defaults`` for the keys still
    unset; only the keys the optimizer takes."""
    hp = task.hyperparameters(name, steps)
    hp.update(overrides.get("*", {}))
    hp.update(overrides.get(name, {}))
    for k, v in (defaults or {}).items():
        hp.setdefault(k, v)
    return optim_mod.effective(name, hp)


def run_spec(
    task: Task,
    config: SuiteConfig,
    name: str,
    hparams: dict[str, Any],
    seed: int,
    steps: int,
    device: str,
    run_dir: Path,
    **extra,
) -> RunSpec:
    """One run of optimizer ``name`` in ``run_dir``, with ``config``'s run options (evaluation
    interval, resume, progress bars, threads, validation split)."""
    return RunSpec(
        task=task,
        optimizer=name,
        seed=seed,
        steps=steps,
        hparams=hparams,
        run_dir=str(run_dir),
        device=device,
        eval_every=config.eval_every,
        resume=config.resume,
        progress=config.progress,
        threads=config.threads,
        extra={"validation": config.validation, **extra},
    )


def task_meta(task: Task, data, steps: int, seeds: list[int], validation: bool) -> dict[str, Any]:
    """What a report says about the task and the runs' length and seeds (the first entries of
    its meta)."""
    return {
        "task": task.name,
        "task_description": task.description,
        "metric_name": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "percent": task.percent,
        "metric_is_loss": task.metric_fn is None,
        "perplexity": task.perplexity,
        "final_eval_what": _final_eval_what(task, data, validation),
        "steps": steps,
        "batch_size": task.batch_size,
        "seeds": seeds,
    }


def run_or_reuse(spec: RunSpec, data, isolate, resume: bool, log, what: str) -> dict:
    """The result of ``spec``: a finished run in ``spec.run_dir`` with the same settings when
    ``resume``, else a fresh run (continued from its checkpoint when ``resume``), in its own
    process when ``isolate`` (``"auto"``: when the task pickles)."""
    task = spec.task
    done = load_result(spec.run_dir, spec.fingerprint()) if resume else None
    if done is not None:
        log(f"{what}: finished earlier, reusing {spec.run_dir}/result.json")
        return done
    if isolate == "auto":
        isolate = can_isolate(spec)
    result = run_isolated(spec) if isolate else train_run(spec, data)
    result["isolated"] = bool(isolate)
    # Kept in the file too, so a report built from reused runs still knows how they ran.
    write_json(Path(spec.run_dir) / RESULT, result)
    log(
        f"{what}: {task.metric_name} {result['final']['metric']:.4f}, "
        f"{result['time']['wall_s']:.1f} s"
    )
    return result


def _final_eval_what(task: Task, data, validation: bool) -> str:
    n = data.test.eval_size(task.final_eval_limit)
    unit = "windows" if hasattr(data.test, "block") else "samples"
    where = (
        "the split held out of the training data"
        if validation
        else data.info.get("eval_set", "the test set")
    )
    if task.final_eval_limit is not None and n < data.test.eval_size(None):
        return f"{n} {unit} of {where} (spread evenly over it)"
    return f"all {n} {unit} of {where}"


def resolve_steps(task: Task, data, steps: int | None, epochs: float | None) -> int:
    if steps is not None and epochs is not None:
        raise ValueError("give --steps or --epochs, not both")
    if epochs is not None:
        if epochs <= 0:
            raise ValueError("--epochs must be positive")
        return max(1, int(round(epochs * data.train.steps_per_epoch)))
    if steps is not None:
        if steps < 1:
            raise ValueError("--steps must be >= 1")
        return int(steps)
    return int(task.steps)


def check_overrides(overrides: dict[str, dict[str, Any]], optimizers: list[str]) -> None:
    """A key given for one optimizer must be one it takes; a key given for ``*`` one that at
    least one of ``optimizers`` takes (a typo must not be dropped silently)."""
    for name, values in overrides.items():
        targets = optimizers if name == "*" else [name]
        accepted = set()
        for t in targets:
            accepted |= optim_mod.spec(t).accepts
        for key in values:
            if key not in accepted:
                raise ValueError(
                    f"--hp {name}.{key}: no optimizer in {', '.join(targets)} takes {key!r} "
                    f"(known: {', '.join(sorted(accepted))})"
                )


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["shampoo4bit.ef_decay=0", "*.stat_interval=5"]`` -> ``{"shampoo4bit": {...}, ...}``.
    Values are parsed as JSON when they can be (numbers, lists, true/false), else kept as text."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--hp {item!r}: expected OPTIMIZER.KEY=VALUE (OPTIMIZER may be *)")
        lhs, value = item.split("=", 1)
        name, key = lhs.split(".", 1)
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        if isinstance(parsed, list):
            parsed = tuple(parsed)
        out.setdefault(name, {})[key] = parsed
    return out


# --------------------------------------------------------------------------------------------
# Sweeps: the grid
# --------------------------------------------------------------------------------------------

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

    def meta(self, steps: int) -> dict[str, Any]:
        """The axis as a report's meta records it."""
        values = self.resolved(steps)
        return {
            "key": self.key,
            "given": [str(v) for v in self.values],
            "values": values,
            "relative": {fmt_value(v): self.given(v, steps) for v in values},
        }

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
    if not optim_mod.is_shampoo(optimizer):
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
        write_json(dst / RESULT, result)
        if (src / "model.pt").exists():
            shutil.copyfile(src / "model.pt", dst / "model.pt")
        log(f"{what}: same settings finished in {src}, reused")
        return result
