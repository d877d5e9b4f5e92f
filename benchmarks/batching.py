"""What batching same-order factors saves, and where it stops paying.

1. Statistics updates: for B Cholesky-EF factors of one order, one statistics update of all B
   (each with its own gradient block, as in a training step) under three workspace budgets:
   one factor at a time, everything in one batch, and the default ``max_workspace_bytes``.
2. Root rebuilds: B 4-bit roots of one order rebuilt as dense symmetric matrices
   (``dequantize_symmetric``) one root at a time and as one batch.

Repetitions are interleaved; the tables give median ms for all B factors.

    PYTHONPATH=. python benchmarks/batching.py [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from qshampoo.factors import FACTORS, FactorConfig, StepHyper
from qshampoo.quant import dequantize_symmetric, quantize
from qshampoo.store import update_statistics
from qshampoo.workspace import DEFAULT_MAX_WORKSPACE

#: (B, order): the GPT's 13 factors of order 128, the CNN's 3 of order 288, and larger ones
CASES = [(13, 128), (4, 256), (3, 288), (2, 384), (4, 512), (4, 1024)]
BUDGETS = {"one at a time": 1, "one batch": 1 << 50, "default": DEFAULT_MAX_WORKSPACE}


def compare(make_calls: Callable, modes: list[str], repeats: int) -> None:
    """Print a table: for each case, the median ms of ``make_calls(B, n)[mode]()``;
    repetitions interleaved, the first round a warm-up."""
    print("| B | order | " + " | ".join(modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for B, n in CASES:
        calls = make_calls(B, n)
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for rep in range(repeats + 1):
            for mode in modes:
                start = time.perf_counter()
                calls[mode]()
                if rep:
                    times[mode].append((time.perf_counter() - start) * 1e3)
        cells = [f"{statistics.median(times[mode]):.2f}" for mode in modes]
        print(f"| {B} | {n} | " + " | ".join(cells) + " |")


def statistics_updates(B: int, n: int) -> dict[str, Callable]:
    """Per budget, one statistics update of its own B ``cholesky_ef`` factors (each factor with
    its own 256-column gradient block, the same blocks under every budget)."""
    gen = torch.Generator().manual_seed(n)
    blocks = [torch.randn(n, 256, generator=gen) for _ in range(B)]
    hp, cpu = StepHyper(), torch.device("cpu")

    def update(budget: int) -> Callable:
        factors = [FACTORS["cholesky_ef"].new(n, FactorConfig(), cpu, 1e-6) for _ in range(B)]
        return lambda: update_statistics(list(zip(factors, blocks, strict=True)), hp, budget)

    return {mode: update(budget) for mode, budget in BUDGETS.items()}


def root_rebuilds(B: int, n: int) -> dict[str, Callable]:
    """Rebuilding the same B 4-bit roots as dense symmetric matrices, one at a time or batched."""
    gen = torch.Generator().manual_seed(n)
    roots = []
    for _ in range(B):
        a = torch.randn(n, n, generator=gen)
        roots.append(quantize(a + a.T, layout="tril", exact_diagonal=True))
    return {
        "one at a time": lambda: [dequantize_symmetric(q) for q in roots],
        "one batch": lambda: dequantize_symmetric(roots),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms for all B")
    print("\nStatistics updates of B cholesky_ef factors of one order, by workspace budget:")
    compare(statistics_updates, list(BUDGETS), args.repeats)
    print("\nRoot rebuilds (dequantize_symmetric) of B 4-bit roots of one order:")
    compare(root_rebuilds, ["one at a time", "one batch"], args.repeats)


if __name__ == "__main__":
    main()
