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
from collections.abc import Callable

import torch

from qshampoo.factors import FACTORS, FactorConfig, StepHyper, base, update_statistics
from qshampoo.quant import blockwise, dequantize_symmetric, quantize

#: (B, order): the GPT's 13 factors of order 128, the CNN's 3 of order 288, and larger ones
CASES = [(13, 128), (4, 256), (3, 288), (2, 384), (4, 512), (4, 1024)]


def compare(module, constant: str, make_calls: Callable, repeats: int) -> None:
    """Print a table: for each case, the median ms of ``make_calls(B, n, modes)[mode]()`` with
    ``module.constant`` set for each mode (0: one factor at a time, huge: one batch, its value:
    the default); repetitions interleaved, the first round a warm-up."""
    modes = {"one at a time": 0, "one batch": 1 << 40, "default": getattr(module, constant)}
    print(f"\n{constant} = {modes['default']}:\n")
    print("| B | order | " + " | ".join(modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for B, n in CASES:
        calls = make_calls(B, n, list(modes))
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for rep in range(repeats + 1):
            for mode, value in modes.items():
                setattr(module, constant, value)
                start = time.perf_counter()
                calls[mode]()
                if rep:
                    times[mode].append((time.perf_counter() - start) * 1e3)
        setattr(module, constant, modes["default"])
        cells = [f"{statistics.median(times[mode]):.2f}" for mode in modes]
        print(f"| {B} | {n} | " + " | ".join(cells) + " |")


def statistics_updates(B: int, n: int, modes: list[str]) -> dict[str, Callable]:
    """Per mode, one statistics update of its own B ``cholesky_ef`` factors (each factor with
    its own 256-column gradient block, the same blocks in every mode)."""
    gen = torch.Generator().manual_seed(n)
    blocks = [torch.randn(n, 256, generator=gen) for _ in range(B)]
    hp, cpu = StepHyper(), torch.device("cpu")

    def update(factors: list) -> Callable:
        return lambda: update_statistics(list(zip(factors, blocks, strict=True)), hp)

    new = FACTORS["cholesky_ef"].new
    return {mode: update([new(n, FactorConfig(), cpu, 1e-6) for _ in range(B)]) for mode in modes}


def root_rebuilds(B: int, n: int, modes: list[str]) -> dict[str, Callable]:
    """Rebuilding the same B 4-bit roots as dense symmetric matrices, in every mode."""
    gen = torch.Generator().manual_seed(n)
    roots = []
    for _ in range(B):
        a = torch.randn(n, n, generator=gen)
        roots.append(quantize(a + a.T, layout="tril", exact_diagonal=True))
    return dict.fromkeys(modes, lambda: dequantize_symmetric(roots))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms for all B")
    print("\nStatistics updates of B cholesky_ef factors of one order:")
    compare(base, "STATISTICS_BATCH_NUMEL", statistics_updates, args.repeats)
    print("\nRoot rebuilds (dequantize_symmetric) of B 4-bit roots of one order:")
    compare(blockwise, "BATCHED_GATHER_MAX_ORDER", root_rebuilds, args.repeats)


if __name__ == "__main__":
    main()
