"""Does the precision signal choose well? ``bits="auto"`` against the opposite choice.

Runs the harness task with ``shampoo4bit-auto`` as is, but with the policy's ranking reversed:
at every decision the factors with the *lowest* signal per extra byte are promoted first
(thresholds off, so every factor is a candidate; the same budget, margin and dwell). Same bytes,
opposite choice: if it trains as well as the policy, the signal does not matter and any
promotion at that budget would do.

The ablation is a monkeypatch of the policy, so the runs execute in this process
(``isolate=False``; the peak-RSS column of its report is not per run).

    PYTHONPATH=. python benchmarks/precision_ablation.py --task shakespeare --budget 0.125 \\
        --threads 1 --out /tmp/sh_auto_inverse
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import qshampoo.precision_state as precision_state_mod
from qshampoo.bench import optimizers as optim_mod
from qshampoo.bench.suite import SuiteConfig, run_suite
from qshampoo.bench.tasks import get_task
from qshampoo.precision import plan

NAME = "shampoo4bit-auto-inverse"


def inverse_plan(candidates, room, config):
    """``plan`` with every signal s replaced by 1/s: lowest error per byte first."""
    flipped = [dataclasses.replace(c, signal=1.0 / max(c.signal, 1e-12)) for c in candidates]
    return plan(flipped, room, dataclasses.replace(config, promote_at=0.0, demote_below=0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="shakespeare")
    ap.add_argument("--budget", type=float, default=0.125)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="report/precision-ablation")
    args = ap.parse_args()

    precision_state_mod.plan = inverse_plan  # the name the optimizer's precision bookkeeping calls
    base = optim_mod.spec("shampoo4bit-auto")
    optim_mod.REGISTRY[NAME] = dataclasses.replace(
        base, name=NAME, description="bits='auto' with the policy's ranking reversed (ablation)"
    )
    task = get_task(args.task)
    lr = task.lr["shampoo4bit-auto"]
    config = SuiteConfig(
        optimizers=[NAME],
        seeds=[int(s) for s in args.seeds.split(",")],
        out=args.out,
        isolate=False,
        progress=False,
        threads=args.threads,
        overrides={NAME: {"lr": lr, "memory_budget": args.budget}},
        command="python benchmarks/precision_ablation.py " + " ".join(sys.argv[1:]),
    )
    run_suite(task, config)


if __name__ == "__main__":
    main()
