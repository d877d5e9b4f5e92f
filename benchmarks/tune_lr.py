"""Tune the learning rate of each optimizer on a built-in task, the same way for all.

    python benchmarks/tune_lr.py --task fashion-mnist \
        --optimizers adamw,shampoo,shampoo4bit,shampoo4bit-naive

The procedure (qshampoo.bench.tuning.tune_lr): a half-decade grid per optimizer family
(AdamW-like: 3e-4 .. 1e-2; SGD: 0.01 .. 0.3), each point trained for the task's full default
budget on a validation split held out of the training data, with a seed the comparison does not
use; the grid grows past an edge when the best point is on it (twice at most). The best learning
rate per optimizer goes into ``TUNED_LR`` in qshampoo/bench/tasks.py by hand, and the table is
appended to benchmarks/RESULTS_lr.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from qshampoo.bench.machine import machine_info, versions
from qshampoo.bench.tasks import get_task
from qshampoo.bench.tuning import tune_lr


def markdown(result: dict, command: str) -> str:
    m = machine_info()
    v = versions()
    lines = [
        f"## {result['task']}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {v.get('torch')} "
        f"({torch.get_num_threads()} threads), device {result['device']}; "
        f"qshampoo git {v.get('qshampoo_git')}; tuning took {result['wall_s'] / 60:.1f} min.",
        "",
        f"Budget: {result['steps']} steps of batch {result['batch_size']} per point, seed(s) "
        f"{result['seeds']}, evaluated on a held-out validation split; metric: "
        f"{result['metric_name']} ({'higher' if result['higher_is_better'] else 'lower'} is "
        "better).",
        "",
        "| optimizer | " + "learning rate: metric | " + "best |",
        "|---|---|---|",
    ]
    for name, r in result["optimizers"].items():
        if "skipped" in r:
            lines.append(f"| `{name}` | skipped: {r['skipped']} | — |")
            continue
        cells = ", ".join(f"{lr}: {score:.4f}" for lr, score in r["scores"].items())
        best = f"**{r['best']:.3g}**" + (" (edge of grid)" if r["edge"] else "")
        lines.append(f"| `{name}` | {cells} | {best} |")
    lines += [
        "",
        "```python",
        f'"{result["task"]}": {{'
        + ", ".join(
            f'"{n}": {r["best"]:.3g}' for n, r in result["optimizers"].items() if "best" in r
        )
        + "},",
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="fashion-mnist")
    p.add_argument("--optimizers", default="adamw,shampoo,shampoo4bit,shampoo4bit-naive")
    p.add_argument("--steps", type=int, default=None, help="default: the task's budget")
    p.add_argument("--out", default=None, help="default: runs/tune-<task>")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", default="1000", help="comma-separated tuning seeds")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--results",
        default=str(Path(__file__).with_name("RESULTS_lr.md")),
        help="markdown file the table is appended to",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task(args.task, args.data_dir)
    result = tune_lr(
        task,
        [s for s in args.optimizers.split(",") if s],
        out=args.out or f"runs/tune-{task.name}",
        steps=args.steps,
        seeds=tuple(int(s) for s in args.seeds.split(",") if s),
        device=args.device,
    )
    command = "python benchmarks/tune_lr.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    text = markdown(result, command)
    print(text)
    with open(args.results, "a") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
