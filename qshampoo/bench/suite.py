"""Run a comparison (``qshampoo bench``) or a sweep (``qshampoo sweep``) of one task: first
:func:`plan` checks everything and lists the runs — nothing is created before it has passed —
then :func:`execute` trains them (a comparison also its shorter schedules) and writes the report.
A comparison is a sweep of one point.

Layout of an output folder::

    OUT/report.md  report.html  results.json  *.png       the report (qshampoo.bench.report)
    OUT/runs/<optimizer>/seed<k>/result.json              one finished run (checkpoint.pt while
                                                          running)
    OUT/runs/<optimizer>/budget<pct>/seed<k>/             a shorter full schedule (time to quality)
    OUT/runs/<optimizer>/<setting>/seed<k>/               one point of a sweep's grid

Nothing in ``OUT`` is replaced unless asked: ``resume`` reuses the runs with the same settings
and refuses the others, ``overwrite`` trains them again. Every point of a sweep has its
hyperparameters written out in full (each sweepable key the optimizer takes, at its value), so
the point that equals the defaults has the same fingerprint in every sweep and ``reuse`` can take
it from an earlier folder instead of training it again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import optimizers as optim_mod
from .grid import base_hparams, check_grid, default_references, settings
from .recorder import RESULT, write_json
from .runner import (
    CHECKPOINT,
    RunSpec,
    can_isolate,
    differences,
    load_checkpoint,
    load_result,
    run_isolated,
    sigterm_raises,
    train_run,
)
from .summary import roles
from .tasks import Task, TaskData
from .text import LANGS

#: shorter full schedules tried for the time to quality, as fractions of the steps: one, so that
#: the default comparison stays within 10 minutes on a 2-core CPU (docs/harness.md)
DEFAULT_BUDGETS = (0.7,)


@dataclass(kw_only=True)
class SuiteConfig:
    optimizers: list[str]
    seeds: list[int]
    out: str
    steps: int | None = None  # default: the task's budget
    epochs: float | None = None  # alternative to steps: passes over the training data
    device: str = "cpu"
    resume: bool = False  # reuse finished runs with the same settings, continue checkpoints
    overwrite: bool = False  # train again runs that OUT holds (with other settings, or at all)
    isolate: bool | str = "auto"  # True, False or "auto" (isolate when the task pickles)
    progress: bool = True
    eval_every: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # optimizer -> {key: v}
    validation: bool = False  # evaluate on a split held out of the training data (tuning)
    threads: int | None = None  # torch intra-op threads per run (None: torch's default)
    command: str | None = None  # the command line, recorded in the report
    # Time to quality: the candidate also trains full schedules of these fractions of the
    # steps, shortest first, until one reaches the baseline's final metric.
    budgets: tuple[float, ...] = ()
    lang: str = "en"  # the report's language: "en" or "ja"


@dataclass(kw_only=True)
class SweepConfig(SuiteConfig):
    optimizers: list[str] = field(default_factory=list)
    grid: list = field(default_factory=list)  # [Axis]
    optimizer: str = "shampoo4bit"
    references: list[str] | None = None  # None: adamw and 32-bit shampoo (when not swept)
    reuse: list[str] = field(default_factory=list)  # folders of earlier sweeps / benches


@dataclass
class Run:
    what: str  # how the log names it
    spec: RunSpec
    entry: str  # its entry in the report: the optimizer, or the sweep's setting


@dataclass
class Plan:
    """Everything :func:`execute` needs, checked."""

    task: Task
    config: SuiteConfig
    data: TaskData
    out: Path
    runs: list[Run]  # the full schedules
    budget_runs: list[Run]  # the shorter ones, by optimizer, seed and budget: tried as needed
    meta: dict[str, Any]
    reuse: _ReuseIndex
    log: Any


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_suite(task: Task, config: SuiteConfig, log=None) -> Path:
    """Train every requested (optimizer, seed) of ``task`` — and, with ``config.budgets``, the
    shorter schedules — or, given a :class:`SweepConfig`, every (setting, seed) of its grid and
    every (reference, seed); write the report; return the output folder."""
    return execute(plan(task, config, log))


run_sweep = run_suite  # a sweep is a comparison whose entries are one optimizer's settings


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | None) -> str:
    """``"auto"`` -> CUDA when available, else CPU; any other device must work here."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
        if dev.type not in ("cpu", "cuda", "mps", "xpu"):
            raise ValueError("the harness trains on cpu, cuda, mps or xpu")
        torch.empty(1, device=dev)  # not compiled in, no such index, no driver: refused
    except Exception as e:
        raise ValueError(f"--device {device!r}: {str(e).splitlines()[0]}") from None
    return str(dev)


def parse_seeds(seeds: str | int | list[int]) -> list[int]:
    """``"3"`` or ``3`` -> ``[0, 1, 2]``; ``"0,4,7"`` or ``[0, 4, 7]`` -> ``[0, 4, 7]``. A seed
    given twice is refused: it would count one run as two."""
    try:
        if isinstance(seeds, (list, tuple)):
            out = [int(s) for s in seeds]
        elif "," in str(seeds):
            out = [int(s) for s in str(seeds).split(",") if s.strip()]
        else:
            out = list(range(int(seeds))) if int(seeds) >= 1 else []
    except (TypeError, ValueError):
        out = None
    if not out or not all(0 <= s < 2**32 for s in out):
        raise ValueError(f"--seeds {seeds!r}: a count >= 1, or seeds from 0 to 2**32-1: 0,4,7")
    if len(set(out)) < len(out):
        twice = next(s for s in out if out.count(s) > 1)
        raise ValueError(f"--seeds {seeds!r}: seed {twice} is listed twice")
    return out


def resolve_steps(task: Task, data, steps: int | None, epochs: float | None) -> int:
    if steps is not None and epochs is not None:
        raise ValueError("give --steps or --epochs, not both")
    if epochs is not None:
        if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
            raise ValueError(f"--epochs must be a positive number, got {epochs}")
        return max(1, int(round(epochs * data.train.steps_per_epoch)))
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"--steps must be an integer >= 1, got {steps}")
    return int(steps or task.steps)


def check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file or lies where no folder can be made, before anything is
    created (a probe folder is made and removed at once in the nearest existing parent)."""
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a folder")
    if parent == out:
        return
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".qshampoo-", dir=parent))
    except OSError as e:
        raise ValueError(
            f"--out {out}: cannot create a folder in {parent} ({e.strerror})"
        ) from None


def check_optimizers(names: list[str], device: str) -> tuple[list[str], dict[str, str]]:
    """Split ``names`` into those that can run here and ``{name: reason}`` for the others."""
    reasons = {name: optim_mod.availability(name, device) for name in names}
    return [n for n, r in reasons.items() if r is None], {n: r for n, r in reasons.items() if r}


def check_overrides(overrides: dict[str, dict[str, Any]], optimizers: list[str]) -> None:
    """A key given for one optimizer must be one it takes; a key given for ``*`` one that at
    least one of ``optimizers`` takes (a typo must not be dropped silently)."""
    for name, values in overrides.items():
        targets = optimizers if name == "*" else [name]
        accepted = set().union(*(optim_mod.spec(t).accepts for t in targets))
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
        lhs, eq, value = item.partition("=")
        name, dot, key = lhs.partition(".")
        if not (eq and dot and name and key):
            raise ValueError(f"--hp {item!r}: expected OPTIMIZER.KEY=VALUE (OPTIMIZER may be *)")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(name, {})[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def _check_folder(p: Plan) -> None:
    """Nothing in the output folder is replaced unless asked: without ``resume`` a run there is
    refused, with it a run with other settings is; ``overwrite`` allows both."""
    if p.config.overwrite:
        return
    for run in p.runs + p.budget_runs:
        d = Path(run.spec.run_dir)
        result, ckpt = load_result(d), d / CHECKPOINT
        if result is None and not ckpt.exists():
            continue
        where = d.relative_to(p.out)
        if not p.config.resume:
            raise ValueError(
                f"{p.out} already holds runs ({where}): add --resume to reuse those with the "
                "same settings, --overwrite to train them again, or choose another --out"
            )
        try:
            old = result if result is not None else load_checkpoint(ckpt)
        except Exception:  # a damaged checkpoint: nothing says which settings wrote it
            old = {}
        if old.get("fingerprint") != run.spec.fingerprint():
            raise ValueError(
                f"--resume: {where} in {p.out} was trained with other settings "
                f"({differences(old.get('settings'), run.spec.settings())}); add --overwrite to "
                "train it again with these, or choose another --out"
            )


# --------------------------------------------------------------------------------------------
# The plan and its execution
# --------------------------------------------------------------------------------------------


def plan(task: Task, config: SuiteConfig, log=None) -> Plan:
    """Check the configuration — optimizers, overrides and every run's hyperparameters (by the
    optimizer's own validation), device, seeds, output folder, data, budgets — and list the
    runs. Raises ``ValueError`` with one line naming the problem; creates nothing."""
    log = log or _log_stderr
    sweep = isinstance(config, SweepConfig)
    out = Path(config.out)
    seeds = parse_seeds(config.seeds)
    if config.lang not in LANGS:
        raise ValueError(f"unknown language {config.lang!r}; choose from {', '.join(LANGS)}")
    for what, v in (("--eval-every", config.eval_every), ("--threads", config.threads)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{what} must be an integer >= 1, got {v}")
    if not all(isinstance(f, (int, float)) and 0 < f < 1 for f in config.budgets):
        raise ValueError(f"--budgets: every fraction must be in (0, 1), got {config.budgets}")
    if sweep:
        refs = (
            default_references(config.optimizer) if config.references is None else config.references
        )
        names = [config.optimizer, *(r for r in refs if r != config.optimizer)]
    else:
        names = list(dict.fromkeys(config.optimizers))
    if not names:
        raise ValueError("no optimizer to run: name at least one")
    for name in names:
        optim_mod.spec(name)  # an unknown name is an error, not a skip
    check_overrides(config.overrides, names)
    if sweep:
        check_grid(config.grid, config.optimizer, config.overrides)
    check_out(out)
    device = resolve_device(config.device)
    reuse = _ReuseIndex(config.reuse if sweep else [])
    data = task.data_fn(validation=config.validation)  # missing data fails here, before any run
    steps = resolve_steps(task, data, config.steps, config.epochs)
    ok, skipped = check_optimizers(names, device)
    if sweep and names[0] not in ok:
        raise ValueError(f"the swept optimizer cannot run here: {skipped[names[0]]}")
    if not ok:
        raise ValueError(
            "none of the requested optimizers can run here: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )

    template = RunSpec(task, "", 0, steps, {}, "", device, config.eval_every, resume=config.resume)
    template.progress, template.threads = config.progress, config.threads

    def run(name, hp, seed, where, what, entry, n=steps, **extra) -> Run:
        d = str(out / "runs" / name / where / f"seed{seed}")
        extra["validation"] = config.validation
        kw = {"optimizer": name, "seed": seed, "steps": n, "hparams": hp, "extra": extra}
        return Run(what, dataclasses.replace(template, run_dir=d, **kw), entry)

    runs: list[Run] = []
    meta: dict[str, Any] = {"kind": "sweep" if sweep else "bench"}
    if sweep:
        base = base_hparams(task, names[0], steps, config.overrides)
        points = settings(config.grid, base, steps)
        for pt, seed in itertools.product(points, seeds):
            what = f"{names[0]} {pt.label} seed {seed}"
            runs.append(run(names[0], pt.hparams, seed, pt.slug, what, pt.label))
        meta.update(
            optimizer=names[0],
            references=[r for r in ok if r != names[0]],
            grid=[a.meta(steps) for a in config.grid],
            settings=[
                {"label": p.label, "values": p.values, "default": p.default, "dir": p.slug}
                for p in points
            ],
            base_hparams=base,
            reuse=config.reuse,
        )
    hps = {name: task.hyperparameters(name, steps, config.overrides) for name in ok}
    full = meta.get("references", ok)
    ref = " (reference)" if sweep else ""
    runs += [run(n, hps[n], s, "", f"{n}{ref} seed {s}", n) for n in full for s in seeds]
    # Time to quality for the candidate (4-bit Shampoo): what the recommendation weighs. The
    # others' would double the cost of the default comparison (docs/harness.md).
    budget_runs, k = [], roles(ok)
    for name, seed, f in itertools.product(ok, seeds, sorted(config.budgets) if not sweep else []):
        if k["baseline"] is not None and name == k["candidate"]:
            n, pct = max(1, round(f * steps)), round(100 * f)
            what = f"{name} seed {seed}, {pct}% schedule ({n} steps)"
            extra = {"budget": f, "full_steps": steps}
            budget_runs.append(run(name, hps[name], seed, f"budget{pct}", what, name, n, **extra))
    checked = set()
    for r in runs:  # every distinct setting, refused by the optimizer itself before any run
        key = (r.spec.optimizer, json.dumps(r.spec.hparams, sort_keys=True, default=str))
        if key not in checked:
            checked.add(key)
            try:
                optim_mod.check(r.spec.optimizer, r.spec.hparams)
            except ValueError as e:
                where = f" at {r.entry}" if r.entry != r.spec.optimizer else ""
                raise ValueError(f"{r.spec.optimizer}{where}: {e}") from None
    same = ("metric_name", "higher_is_better", "percent", "perplexity", "batch_size")
    same += ("eval_limit", "final_eval_limit", "warmup", "final_lr", "lr_source")
    meta.update({k: getattr(task, k) for k in same}, task=task.name, steps=steps, seeds=seeds)
    meta.update(task_description=task.description, metric_is_loss=task.metric_fn is None)
    meta.update(final_eval_what=_final_eval_what(task, data, config.validation))
    meta.update(optimizers=ok, skipped=skipped, budgets=[] if sweep else sorted(config.budgets))
    meta.update(device=device, eval_every=task.eval_interval(steps, config.eval_every))
    meta.update(lr_tuned={name: name in task.lr for name in ok}, overrides=config.overrides)
    meta.update(command=config.command, threads=config.threads, validation=config.validation)
    p = Plan(task, config, data, out, runs, budget_runs, meta, reuse, log)
    _check_folder(p)
    for name, reason in skipped.items():  # once every check passed: a refusal is one line
        log(f"skipping optimizer {name}: {reason}")
    return p


def execute(p: Plan) -> Path:
    """Train the plan's runs (reusing or continuing what ``resume`` allows) and write the report;
    returns the output folder. SIGTERM, like Ctrl-C, ends the runs and keeps what finished."""
    from .report import write_report

    started, load_start = time.time(), _loadavg()
    p.out.mkdir(parents=True, exist_ok=True)
    with sigterm_raises():
        results = [{**_result(p, r), "entry": r.entry} for r in p.runs]
        results += _shorter_schedules(p, results)
    meta = {**p.meta, "wall_s": time.time() - started}
    meta["load_average"] = {"start": load_start, "end": _loadavg()}
    write_report(p.out, meta, results, lang=p.config.lang)
    p.log(f"report written to {p.out / 'report.md'}")
    return p.out


def _result(p: Plan, run: Run) -> dict:
    """The result of ``run``: a finished run with the same settings when resuming, or one taken
    from a ``reuse`` folder, else a fresh run (continued from its checkpoint when resuming), in
    its own process when the config isolates (``"auto"``: when the task pickles)."""
    spec = run.spec
    done = load_result(spec.run_dir, spec.fingerprint()) if p.config.resume else None
    if done is not None:
        p.log(f"{run.what}: finished earlier, reusing {spec.run_dir}/{RESULT}")
        return done
    if (taken := p.reuse.take(spec, p.log, run.what)) is not None:
        return taken
    isolate = can_isolate(spec) if p.config.isolate == "auto" else p.config.isolate
    result = run_isolated(spec) if isolate else train_run(spec, p.data)
    result["isolated"] = bool(isolate)
    # Kept in the file too, so a report built from reused runs still knows how they ran.
    write_json(Path(spec.run_dir) / RESULT, result)
    metric, seconds = result["final"]["metric"], result["time"]["wall_s"]
    p.log(f"{run.what}: {p.task.metric_name} {metric:.4f}, {seconds:.1f} s")
    return result


def _reaches(value: float | None, target: float | None, hib: bool) -> bool:
    if value is None or target is None or not math.isfinite(value) or not math.isfinite(target):
        return False
    return value >= target if hib else value <= target


def _shorter_schedules(p: Plan, results: list[dict]) -> list[dict]:
    """Time to quality: for the candidate and each seed whose full schedule reached the
    baseline's final metric of that seed, the planned shorter full schedules,
    shortest first, until one ends at or beyond it (assumed monotone: a shorter schedule does
    not end better than a longer one, so where the full one fell short, none is trained)."""
    baseline = roles(p.meta["optimizers"])["baseline"]
    target = {r["seed"]: r["final"]["metric"] for r in results if r["optimizer"] == baseline}
    hib, out = p.task.higher_is_better, []
    full = {(r["optimizer"], r["seed"]): r["final"]["metric"] for r in results}
    done = {k for k, v in full.items() if not _reaches(v, target.get(k[1]), hib)}
    for run in p.budget_runs:
        key = (run.spec.optimizer, run.spec.seed)
        if key in done:  # a shorter schedule reached it, or the full one did not
            continue
        r = {**_result(p, run), "entry": run.entry}
        out.append(r)
        if _reaches(r["final"]["metric"], target[run.spec.seed], hib):
            done.add(key)
    return out


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every timing."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _final_eval_what(task: Task, data, validation: bool) -> str:
    n = data.test.eval_size(task.final_eval_limit)
    unit = "windows" if hasattr(data.test, "block") else "samples"
    where = data.info.get("eval_set", "the test set")
    if validation:
        where = "the split held out of the training data"
    if task.final_eval_limit is not None and n < data.test.eval_size(None):
        return f"{n} {unit} of {where} (spread evenly over it)"
    return f"all {n} {unit} of {where}"


class _ReuseIndex:
    """Finished runs (``result.json``) under other report folders, by fingerprint."""

    def __init__(self, folders: list[str]):
        self.by_fp: dict[str, Path] = {}
        for folder in folders:
            if not Path(folder).is_dir():
                raise ValueError(f"--reuse {folder}: no such folder")
            for path in sorted(Path(folder).rglob(RESULT)):
                if fp := (load_result(path.parent) or {}).get("fingerprint"):
                    self.by_fp.setdefault(fp, path.parent)

    def take(self, spec: RunSpec, log, what: str) -> dict | None:
        """Copy a matching finished run into ``spec.run_dir`` and return it, or ``None``."""
        src, dst = self.by_fp.get(spec.fingerprint()), Path(spec.run_dir)
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
