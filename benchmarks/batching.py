"""What batching same-order factors saves, and where it stops paying.

1. Statistics updates: for B Cholesky-EF factors of one order, one statistics update of all B
   (each with its own gradient block, as in a training step) three ways: one factor at a time,
   all B in one batch, and as the optimizer does it (batches of at most
   ``STATISTICS_BATCH_NUMEL`` entries).
2. Root rebuilds: B 4-bit roots of one order rebuilt as dense symmetric matrices
   (``dequantize_symmetric``) with one gather per root, with one gather for the batch, and as the
   optimizer does it (one gather for several roots up to ``BATCHED_GATHER_MAX_ORDER``).

Repetitions are interleaved; the tables give median ms for all B factors.

    PYTHONPATH=. python benchmarks/batching.py [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qshampoo.factors import FACTORS, FactorConfig, StepHyper, base, update_statistics
from qshampoo.quant import blockwise, dequantize_symmetric, quantize

#: (B, order): the GPT's 13 factors of order 128, the CNN's 3 of order 288, and larger ones
CASES = [(13, 128), (4, 256), (3, 288), (2, 384), (4, 512), (4, 1024)]

#: the three ways, as values of the module constant that selects them
MODES = {
    "one at a time": 0,  # a cap of 0 entries: batches of one factor
    "one batch": 1 << 40,
    "default": base.STATISTICS_BATCH_NUMEL,
}
GATHER_MODES = {
    "one at a time": 0,  # no order is small enough for the batched gather
    "one batch": 1 << 40,
    "default": blockwise.BATCHED_GATHER_MAX_ORDER,
}


def interleaved_medians(calls: dict, setters: dict, repeats: int) -> dict[str, float]:
    """Median ms of each ``calls[mode]()`` after ``setters[mode]()``, repetitions
    interleaved; the first round warms up and is not counted."""
    times: dict[str, list[float]] = {mode: [] for mode in calls}
    for rep in range(repeats + 1):
        for mode, call in calls.items():
            setters[mode]()
            start = time.perf_counter()
            call()
            if rep:
                times[mode].append((time.perf_counter() - start) * 1e3)
    return {mode: statistics.median(t) for mode, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = StepHyper()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms for all B")
    print(f"\nStatistics updates (STATISTICS_BATCH_NUMEL = {base.STATISTICS_BATCH_NUMEL}):\n")
    print("| B | order | " + " | ".join(MODES) + " |")
    print("|---|---|" + "---|" * len(MODES))
    for B, n in CASES:
        gen = torch.Generator().manual_seed(n)
        blocks = [torch.randn(n, 256, generator=gen) for _ in range(B)]
        cpu, config = torch.device("cpu"), FactorConfig()
        factors = {
            mode: [FACTORS["cholesky_ef"].new(n, config, cpu, 1e-6) for _ in range(B)]
            for mode in MODES
        }
        calls = {
            mode: (lambda fs=fs, bl=blocks: update_statistics(list(zip(fs, bl, strict=True)), hp))
            for mode, fs in factors.items()
        }
        setters = {
            mode: (lambda c=c: setattr(base, "STATISTICS_BATCH_NUMEL", c))
            for mode, c in MODES.items()
        }
        ms = interleaved_medians(calls, setters, args.repeats)
        base.STATISTICS_BATCH_NUMEL = MODES["default"]
        print(f"| {B} | {n} | " + " | ".join(f"{ms[m]:.2f}" for m in MODES) + " |")

    print(f"\nRoot rebuilds (BATCHED_GATHER_MAX_ORDER = {blockwise.BATCHED_GATHER_MAX_ORDER}):\n")
    print("| B | order | " + " | ".join(GATHER_MODES) + " |")
    print("|---|---|" + "---|" * len(GATHER_MODES))
    for B, n in CASES:
        gen = torch.Generator().manual_seed(n)
        roots = []
        for _ in range(B):
            a = torch.randn(n, n, generator=gen)
            roots.append(quantize(a + a.T, layout="tril", exact_diagonal=True))
        calls = {mode: (lambda r=roots: dequantize_symmetric(r)) for mode in GATHER_MODES}
        setters = {
            mode: (lambda c=c: setattr(blockwise, "BATCHED_GATHER_MAX_ORDER", c))
            for mode, c in GATHER_MODES.items()
        }
        ms = interleaved_medians(calls, setters, args.repeats)
        blockwise.BATCHED_GATHER_MAX_ORDER = GATHER_MODES["default"]
        print(f"| {B} | {n} | " + " | ".join(f"{ms[m]:.2f}" for m in GATHER_MODES) + " |")


if __name__ == "__main__":
    main()
