"""Run a comparison: every (optimizer, seed) of one task, then the report.

Layout of an output folder::

    OUT/report.md  results.json  *.png         the report (see qshampoo.bench.report)
    OUT/runs/<optimizer>/seed<k>/result.json  one finished run (checkpoint.pt while running)
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import optimizers as optim_mod
from .runner import (
    RESULT,
    RunSpec,
    _jsonable,
    atomic_write_text,
    can_isolate,
    load_result,
    run_isolated,
    train_run,
)
from .tasks import Task

if TYPE_CHECKING:
    from .sweep import SweepConfig


@dataclass
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


def run_suite(task: Task, config: SuiteConfig, log=None) -> Path:
    """Train every requested (optimizer, seed) of ``task`` and write the report; returns the
    output folder. Finished runs are reused and unfinished ones continued when
    ``config.resume``; otherwise every run starts afresh."""
    from . import report as report_mod

    log = log or _log_stderr
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    check_overrides(config.overrides, list(config.optimizers))
    optimizers, skipped = check_optimizers(list(config.optimizers), device, log)
    if not optimizers:
        raise RuntimeError(
            "none of the requested optimizers can run here: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )

    started = time.time()
    load_start = _loadavg()
    # Load the data here first: a missing dataset fails before any run starts, and --epochs
    # needs the number of batches per epoch.
    data = task.data_fn(validation=config.validation)
    steps = resolve_steps(task, data, config.steps, config.epochs)
    results: list[dict] = []
    for name in optimizers:
        hp = run_hparams(task, name, steps, config.overrides)
        for seed in config.seeds:
            run_dir = out / "runs" / name / f"seed{seed}"
            spec = run_spec(task, config, name, hp, seed, steps, device, run_dir)
            results.append(
                run_or_reuse(spec, data, config.isolate, config.resume, log, f"{name} seed {seed}")
            )

    meta = {
        **task_meta(task, data, steps, config.seeds, config.validation),
        "optimizers": optimizers,
        "skipped": skipped,
        "device": device,
        "validation": config.validation,
        "eval_every": task.eval_interval(steps, config.eval_every),
        "eval_limit": task.eval_limit,
        "final_eval_limit": task.final_eval_limit,
        "warmup": task.warmup,
        "final_lr": task.final_lr,
        "lr_source": task.lr_source,
        "lr_tuned": {name: name in task.lr for name in optimizers},
        "overrides": config.overrides,
        "command": config.command,
        "bench_wall_s": time.time() - started,
        "load_average": {"start": load_start, "end": _loadavg()},
        "threads": config.threads,
    }
    report_mod.write_report(out, meta, results)
    log(f"report written to {out / 'report.md'}")
    return out


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    config: SuiteConfig | SweepConfig,
    name: str,
    hparams: dict[str, Any],
    seed: int,
    steps: int,
    device: str,
    run_dir: Path,
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
        extra={"validation": config.validation},
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
    atomic_write_text(Path(spec.run_dir) / RESULT, json.dumps(_jsonable(result), indent=1))
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
