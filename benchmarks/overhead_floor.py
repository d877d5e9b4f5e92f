"""The least time 4-bit Shampoo (CQ+EF) can add to a 32-bit Shampoo step on this machine.

The speed targets of docs/speed.md ask ``cholesky_ef`` to stay within 1.10x (MLPs of width
>= 512) and 1.25x (the harness models) of ``quant="none"`` at T1 = 10, T2 = 50. This script
asks how close any implementation of the algorithm could come. For each model of
``step_time.py`` it measures, in one process:

- ``none`` and ``cholesky_ef``, amortized ms/step (``step_time.measure``: same method, same
  intervals, medians of ``--reps``);
- the *floor*: the work CQ+EF does that 32-bit Shampoo does not, timed alone with every
  memory-bound pass of the statistics step (decoding, quantizing, the error update, packing)
  counted as free:

  * every statistics step, per 4-bit factor of order n: ``C Cᵀ``, rebuilding L from its
    stored factor (``linalg.lower_gram``), and the Cholesky factorisation of the new L
    (``linalg.cholesky_lower``); the gram ``G Gᵀ`` and the EMA both variants do;
  * every root step, per factor: ``C Cᵀ`` again (its root is computed from L);
  * every step, per 4-bit root: writing its n x n fp32 matrix once into a buffer that
    already exists (the least a dequantization can cost);

  same-order factors are timed in one batched call where that is faster, as the step does;
- the same O(n³) work at the machine's matmul rate (``2 n³`` flops in the time of an
  ``n x n`` matmul): ``C Cᵀ`` of a triangular ``C`` is ``n³/3`` flops when only one half of
  the symmetric result is computed (LAPACK's ``lauum``), the Cholesky ``n³/3``; so ``2n³/3``
  per factor per statistics step and ``n³/3`` per root step — what the two would cost if they
  ran as fast as a matmul.

The table gives what ``cholesky_ef`` adds to ``none`` (*added*) and the floor, both split as
``step_time.py`` splits a step (preconditioning / statistics / roots), and *floor ratio* =
(none + floor) / none. Where the floor with this project's kernels is above a target, reaching
it needs a faster Cholesky and triangular product; where even the floor at the matmul rate is
above it, no implementation of the algorithm reaches it at these intervals on this machine.
Below the target, the gap between *added* and the floor is what fused kernels (decoding and
quantizing in one pass, dequantizing inside the matmul) would have to win.

    PYTHONPATH=. python benchmarks/overhead_floor.py --threads 1
    PYTHONPATH=. python benchmarks/overhead_floor.py --models mlp512,mlp1024 --reps 5
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_time  # noqa: E402  (sibling scripts)
from kernels import median_ms  # noqa: E402

import qshampoo  # noqa: E402
from qshampoo.linalg import cholesky_lower, lower_gram  # noqa: E402

#: the targets of docs/speed.md: 4-bit / 32-bit amortized step
TARGETS = {"cnn": 1.25, "gpt": 1.25}
MLP_TARGET, MLP_TARGET_MIN_WIDTH = 1.10, 512
#: same-order factors are also timed as one batch when it holds at most this many entries
BATCH_MAX_ENTRIES = 1 << 22


def target(model: str) -> float | None:
    if model in TARGETS:
        return TARGETS[model]
    width = int(model[3:].split("x")[0]) if model.startswith("mlp") else 0
    return MLP_TARGET if width >= MLP_TARGET_MIN_WIDTH else None


def quantized_orders(model: str) -> Counter:
    """Order -> how many of ``model``'s factors ``cholesky_ef`` stores in 4 bits (after one
    step, with the optimizer's defaults: blocking, ``min_quant_numel``)."""
    torch.manual_seed(0)
    net, loss_fn = step_time.model(model)
    loss_fn().backward()
    opt = qshampoo.Shampoo(net.parameters(), quant="cholesky_ef")
    opt.step()
    factors = opt.diagnostics()["factors"]
    return Counter(f["order"] for f in factors if f["kind"] == "cholesky_ef")


def spd(batch: int, n: int) -> torch.Tensor:
    """A well-conditioned batch ``(batch, n, n)`` of SPD matrices."""
    g = torch.randn(batch, n, n) / n**0.5
    return g @ g.mT + torch.eye(n)


PARTS = ("precondition", "statistics", "roots")


def kernel_floor(orders: Counter, T1: int, T2: int, reps: int) -> dict[str, dict[str, float]]:
    """The floor in ms/step, split as ``step_time`` splits a step (``precondition``: writing
    the roots, ``statistics``, ``roots``), from the project's kernels (``"kernels"``) and at
    the matmul rate (``"gemm"``; the same ``precondition``)."""
    kernels = dict.fromkeys(PARTS, 0.0)
    gemm = dict.fromkeys(PARTS, 0.0)
    for n, count in orders.items():
        A = spd(1, n)
        C = cholesky_lower(A)[0]
        gram = median_ms(lower_gram, C, reps)
        chol = median_ms(cholesky_lower, A, reps)
        if count > 1 and count * n * n <= BATCH_MAX_ENTRIES:
            A_b = spd(count, n)
            C_b = cholesky_lower(A_b)[0]
            gram = min(gram, median_ms(lower_gram, C_b, reps) / count)
            chol = min(chol, median_ms(cholesky_lower, A_b, reps) / count)
        write = median_ms(lambda b: b.fill_(0.5), torch.empty(count, n, n), reps)
        rate = 2 * n**3 / median_ms(lambda m: m @ m, torch.randn(n, n), reps)  # flops per ms
        kernels["precondition"] += write
        kernels["statistics"] += count * (gram + chol) / T1
        kernels["roots"] += count * gram / T2
        gemm["precondition"] += write
        gemm["statistics"] += count * (2 * n**3 / 3) / rate / T1
        gemm["roots"] += count * (n**3 / 3) / rate / T2
    return {"kernels": kernels, "gemm": gemm}


def run(model: str, T1: int, T2: int, reps: int) -> dict:
    orders = quantized_orders(model)
    steps = step_time.measure(model, T1, T2, reps, False, variants=("none", "cholesky_ef"))
    none, four = steps["none"], steps["cholesky_ef"]
    added = {k: four[k] - none[k] for k in PARTS}
    floor = kernel_floor(orders, T1, T2, reps)
    return {"orders": orders, "none": none, "cholesky_ef": four, "added": added, "floor": floor}


def table(results: dict[str, dict], T1: int, T2: int) -> str:
    lines = [
        f"Amortized ms/step (T1={T1}, T2={T2}). *added*: `cholesky_ef` minus `none`, split into "
        "preconditioning / statistics / roots as in step_time.py; *floor*: what CQ+EF must add "
        "at least, split the same way, with this project's kernels and (last two columns) at "
        "the matmul rate; memory-bound passes of the statistics step counted as free.",
        "",
        "| model | 4-bit factors (order×count) | `none` | `cholesky_ef` | ratio | added | floor "
        "| floor ratio | floor at matmul rate | its ratio | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, r in results.items():
        orders = ", ".join(f"{n}×{c}" for n, c in sorted(r["orders"].items()))
        none, four = r["none"]["amortized"], r["cholesky_ef"]["amortized"]
        kernels, gemm = (sum(r["floor"][k].values()) for k in ("kernels", "gemm"))
        t = target(model)
        lines.append(
            f"| {model} | {orders} | {none:.2f} | {four:.2f} | {four / none:.2f}× | "
            f"{_split(r['added'])} | {_split(r['floor']['kernels'])} | "
            f"{(none + kernels) / none:.3f}× | {_split(r['floor']['gemm'])} | "
            f"{(none + gemm) / none:.3f}× | {f'≤ {t:.2f}×' if t else '—'} |"
        )
    return "\n".join(lines)


def _split(parts: dict[str, float]) -> str:
    return f"{sum(parts.values()):.2f} (" + " / ".join(f"{parts[k]:.2f}" for k in PARTS) + ")"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="mlp256,mlp512,mlp1024,mlp2048,cnn,gpt")
    ap.add_argument("--T1", type=int, default=10)
    ap.add_argument("--T2", type=int, default=50)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    header = f"Machine: {step_time.machine()}\nCommand: `python {' '.join(sys.argv)}`"
    print(header, flush=True)
    results = {}
    for m in args.models.split(","):
        t = time.perf_counter()
        results[m] = run(m, args.T1, args.T2, args.reps)
        print(f"{m}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    print(f"\n{table(results, args.T1, args.T2)}")


if __name__ == "__main__":
    main()
