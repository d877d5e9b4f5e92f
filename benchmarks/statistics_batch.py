"""Batched statistics updates: what batching same-order factors saves, and where it stops paying.

For B Cholesky-EF factors of one order, times one statistics update of all B (each with its
own gradient block, as in a training step) three ways: one factor at a time, all B in one batch,
and as the optimizer does it (batches of at most ``STATISTICS_BATCH_NUMEL`` entries). Repetitions
are interleaved; the table gives median ms per update of all B factors.

    PYTHONPATH=. python benchmarks/statistics_batch.py [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qshampoo.factors import FACTORS, FactorConfig, StepHyper, base, update_statistics

#: (B, order): the GPT's 13 factors of order 128, the CNN's 3 of order 288, and larger ones
CASES = [(13, 128), (4, 256), (3, 288), (2, 384), (4, 512), (4, 1024)]

MODES = {
    "one at a time": 0,  # a cap of 0 entries: batches of one factor
    "one batch": 1 << 40,
    "default": base.STATISTICS_BATCH_NUMEL,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = StepHyper()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms per update")
    print(f"of all B factors; STATISTICS_BATCH_NUMEL = {base.STATISTICS_BATCH_NUMEL}")
    print("| B | order | " + " | ".join(MODES) + " |")
    print("|---|---|" + "---|" * len(MODES))
    for B, n in CASES:
        gen = torch.Generator().manual_seed(n)
        blocks = [torch.randn(n, 256, generator=gen) for _ in range(B)]
        factors = {
            mode: [
                FACTORS["cholesky_ef"].new(n, FactorConfig(), torch.device("cpu"), 1e-6)
                for _ in range(B)
            ]
            for mode in MODES
        }
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for rep in range(args.repeats + 1):  # the first round warms up
            for mode, cap in MODES.items():
                base.STATISTICS_BATCH_NUMEL = cap
                start = time.perf_counter()
                update_statistics(list(zip(factors[mode], blocks, strict=True)), hp)
                if rep:
                    times[mode].append((time.perf_counter() - start) * 1e3)
        base.STATISTICS_BATCH_NUMEL = MODES["default"]
        cells = [f"{statistics.median(times[mode]):.2f}" for mode in MODES]
        print(f"| {B} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
