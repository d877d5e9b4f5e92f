"""Learning-rate tuning by one procedure for every optimizer.

For each optimizer: train with each learning rate of a log grid (factor ``sqrt(10)`` between
points) for the task's full budget, on a split held out of the training data (the test set is
never looked at), with seeds that the comparison itself does not use; rank by the mean final
metric. When the best learning rate lies on an edge of the grid, the grid grows one point past
that edge, up to ``max_extend`` times. The same grid, seeds and budget apply to all optimizers.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from . import optimizers as optim_mod
from .recorder import write_json
from .runner import RunSpec, load_result, train_run
from .suite import resolve_device, resolve_steps
from .tasks import Task

# Starting grids per family (half-decades around the usual value).
GRIDS = {"adam": [3e-4, 1e-3, 3e-3, 1e-2], "sgd": [0.01, 0.03, 0.1, 0.3]}
TUNING_SEEDS = (1000,)
STEP = math.sqrt(10.0)


def _fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


def _score(task, name, lr, steps, seeds, out, device, resume, progress, data):
    """Mean final metric (and total seconds) of ``name`` at learning rate ``lr``."""
    sign = 1.0 if task.higher_is_better else -1.0
    hp = optim_mod.effective(name, {**task.hyperparameters(name, steps), "lr": lr})
    values, secs = [], []
    for seed in seeds:
        spec = RunSpec(
            task=task,
            optimizer=name,
            seed=seed,
            steps=steps,
            hparams=hp,
            run_dir=str(Path(out) / "runs" / name / f"lr{_fmt_lr(lr)}" / f"seed{seed}"),
            device=device,
            resume=resume,
            progress=progress,
            extra={"validation": True},
        )
        result = load_result(spec.run_dir, spec.fingerprint()) if resume else None
        if result is None:
            result = train_run(spec, data)
        v = result["final"]["metric"]
        values.append(v if math.isfinite(v) else -sign * math.inf)
        secs.append(result["time"]["wall_s"])
    return sum(values) / len(values), sum(secs)


def tune_lr(
    task: Task,
    optimizers: list[str],
    *,
    out: str | Path,
    steps: int | None = None,
    seeds: tuple[int, ...] = TUNING_SEEDS,
    grids: dict[str, list[float]] | None = None,
    max_extend: int = 2,
    device: str = "cpu",
    resume: bool = True,
    progress: bool = False,
    log=None,
) -> dict:
    """Tune the learning rate of each optimizer on ``task``; returns (and writes to
    ``out/tuning.json``) ``{optimizer: {"best": lr, "scores": {lr: mean metric}}}`` and the
    settings used."""

    def _log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log = log or _log
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    grids = grids or GRIDS
    data = task.data_fn(validation=True)
    steps = resolve_steps(task, data, steps, None)
    started = time.time()
    sign = 1.0 if task.higher_is_better else -1.0
    table: dict[str, dict] = {}
    for name in optimizers:
        reason = optim_mod.availability(name, device)
        if reason is not None:
            log(f"skipping {name}: {reason}")
            table[name] = {"skipped": reason}
            continue
        family = optim_mod.spec(name).family
        grid = sorted(grids[family])
        scores: dict[float, float] = {}
        seconds: dict[float, float] = {}

        def score(lr: float, name=name, scores=scores, seconds=seconds) -> float:
            if lr not in scores:
                scores[lr], seconds[lr] = _score(
                    task, name, lr, steps, seeds, out, device, resume, progress, data
                )
                log(f"{name} lr {_fmt_lr(lr)}: {task.metric_name} {scores[lr]:.4f}")
            return scores[lr]

        for lr in grid:
            score(lr)
        for _ in range(max_extend):
            best = max(grid, key=lambda lr: sign * scores[lr])
            if best == grid[0]:
                grid.insert(0, grid[0] / STEP)
                score(grid[0])
            elif best == grid[-1]:
                grid.append(grid[-1] * STEP)
                score(grid[-1])
            else:
                break
        best = max(grid, key=lambda lr: sign * scores[lr])
        table[name] = {
            "best": best,
            "scores": {_fmt_lr(lr): scores[lr] for lr in grid},
            "seconds": sum(seconds.values()),
            "edge": best in (grid[0], grid[-1]),
        }
    result = {
        "task": task.name,
        "metric_name": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "steps": steps,
        "batch_size": task.batch_size,
        "seeds": list(seeds),
        "device": device,
        "grids": {k: sorted(v) for k, v in grids.items()},
        "max_extend": max_extend,
        "optimizers": table,
        "wall_s": time.time() - started,
    }
    write_json(out / "tuning.json", result)
    return result
