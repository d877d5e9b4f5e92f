"""Learning-rate tuning by one procedure for every optimizer: a sweep of ``lr``.

For each optimizer: train with each learning rate of a log grid (factor ``sqrt(10)`` between
points) for the task's full budget, on a split held out of the training data (the test set is
never looked at), with seeds that the comparison itself does not use; rank by the mean final
metric. When the best learning rate lies on an edge of the grid, the grid grows one point past
that edge, up to ``max_extend`` times. The same grid, seeds and budget apply to all optimizers.
Each optimizer's sweep (``out/<optimizer>/``, with its report) keeps its runs, so a second call
trains only what is new.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from . import optimizers as optim_mod
from .grid import Axis
from .recorder import write_json
from .suite import SweepConfig, run_sweep
from .tasks import Task

# Starting grids per family (half-decades around the usual value).
GRIDS = {"adam": [3e-4, 1e-3, 3e-3, 1e-2], "sgd": [0.01, 0.03, 0.1, 0.3]}
TUNING_SEEDS = (1000,)
STEP = math.sqrt(10.0)


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
    settings used. ``resume=False`` trains every point again."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started, sign = time.time(), 1.0 if task.higher_is_better else -1.0
    table: dict[str, dict] = {}
    ran_steps = steps

    def rank(value) -> float:  # a diverged point (no finite metric) ranks last
        return sign * value if value is not None and math.isfinite(value) else -math.inf

    for name in optimizers:
        grid = sorted((grids or GRIDS)[optim_mod.spec(name).family])
        for extended in range(max_extend + 1):
            config = SweepConfig(
                grid=[Axis("lr", grid)],
                optimizer=name,
                references=[],
                seeds=list(seeds),
                out=str(Path(out) / name),
                steps=steps,
                device=device,
                resume=True,
                overwrite=not resume and extended == 0,
                isolate=False,
                progress=progress,
                validation=True,  # the test set stays unseen
            )
            try:
                doc = json.loads((run_sweep(task, config, log) / "results.json").read_text())
            except ValueError as e:  # the optimizer cannot run here
                table[name] = {"skipped": str(e)}
                break
            summary, ran_steps = doc["summary"].values(), doc["meta"]["steps"]
            scores = {s["values"]["lr"]: s["metric"]["mean"] for s in summary}
            best = max(grid, key=lambda lr: rank(scores.get(lr)))
            table[name] = {
                "best": best,
                "scores": {f"{lr:.3g}": scores[lr] for lr in grid},
                "seconds": sum(s["wall_s"]["mean"] * len(s["seeds"]) for s in summary),
                "edge": best in (grid[0], grid[-1]),
            }
            if not table[name]["edge"] or extended == max_extend:
                break
            grid = [grid[0] / STEP, *grid] if best == grid[0] else [*grid, grid[-1] * STEP]
        log(f"{name}: best lr {table[name].get('best')}")
    result = {
        "task": task.name,
        "metric_name": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "steps": ran_steps,
        "batch_size": task.batch_size,
        "seeds": list(seeds),
        "device": device,
        "grids": {k: sorted(v) for k, v in (grids or GRIDS).items()},
        "max_extend": max_extend,
        "optimizers": table,
        "wall_s": time.time() - started,
    }
    write_json(Path(out) / "tuning.json", result)
    return result
