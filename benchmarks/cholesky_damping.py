"""Does the damping that the stored Cholesky factor carries into the next EMA matter?

algorithm.md section 3 leaves it open: ``cholesky(L + delta I)`` stores ``delta`` in the factor,
so at steady state CQ's statistics hold about ``delta / (1 - beta)`` of damping where 32-bit
Shampoo holds none. ``cholesky_damping="subtract"`` removes the previous ``delta`` before the
EMA. This runs ``qshampoo bench`` for ``shampoo4bit`` (CQ+EF) with each setting on both tasks
(2 seeds, one thread per run) and prints the final metric of each.

    python benchmarks/cholesky_damping.py [--out /tmp/damp]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qshampoo.cli import main as qshampoo

SETTINGS = ("carry", "subtract")
TASKS = ("fashion-mnist", "shakespeare")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="/tmp/cholesky_damping")
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    rows = []
    for task in TASKS:
        for mode in SETTINGS:
            out = Path(args.out) / f"{task}-{mode}"
            qshampoo(
                [
                    "bench",
                    "--task",
                    task,
                    "--optimizers",
                    "shampoo4bit",
                    "--seeds",
                    args.seeds,
                    "--threads",
                    "1",
                    "--no-progress",
                    "--resume",
                    "--out",
                    str(out),
                    "--hp",
                    f'shampoo4bit.cholesky_damping="{mode}"',
                ]
            )
            summary = json.loads((out / "results.json").read_text())["summary"]["shampoo4bit"]
            m = summary["metric"]
            rows.append((task, mode, m["mean"], m["std"], m["values"]))
    print("| task | cholesky_damping | final metric (mean ± std) | per seed |")
    print("|---|---|---|---|")
    for task, mode, mean, std, values in rows:
        seeds = ", ".join(f"{v:.4f}" for v in values)
        print(f"| {task} | {mode} | {mean:.4f} ± {std:.4f} | {seeds} |")


if __name__ == "__main__":
    main()
