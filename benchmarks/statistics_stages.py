"""Where the time of one 4-bit statistics step goes: the stages of ``update_statistics_batch``.

Runs the Cholesky statistics step (``--quant``, default ``cholesky_ef``) of one factor of order
``n`` (a square layer's left factor, fed its layer's ``G Gᵀ``) with timers wrapped around the
functions it calls, and prints the median ms of each over ``--reps`` steps, next to ``G Gᵀ``
itself (what 32-bit Shampoo's statistics step costs besides an EMA). The timers wrap the real
code path: ``stored_factors`` and ``error_states`` (unpack and decode ``C``, ``E``),
``lower_gram`` (``C Cᵀ``), ``damped_cholesky_ex``, and ``requantize_batch`` (quantize
``C + E``, decode it, the error update, quantize ``E``, pack), whose calls of ``_encode``,
``_decode`` and ``keep_codes`` are also shown on their own; *rest* is the step minus its
top-level stages (EMA, diagonal, norms).

    PYTHONPATH=. python benchmarks/statistics_stages.py --threads 1 --sizes 256 512 1024
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

import qshampoo
from qshampoo.factors import cholesky
from qshampoo.factors.base import StepHyper

TOP = ("stored_factors", "error_states", "lower_gram", "damped_cholesky_ex", "requantize_batch")
#: called inside the top-level stages: ``_encode`` by ``requantize_batch`` (C + E, then E),
#: ``_decode`` by ``stored_factors`` / ``error_states`` (C, E) and ``requantize_batch`` (the
#: stored C), ``keep_codes`` by ``requantize_batch`` (packing)
INNER = ("_encode", "_decode", "keep_codes")


@contextmanager
def timers(cls: type, spent: dict[str, float]):
    """Wrap the stages with timers that add their seconds to ``spent``; undo on exit."""
    targets = [(cholesky, "lower_gram"), (cholesky, "damped_cholesky_ex")]
    targets += [
        (cls, name) for name in ("stored_factors", "error_states", "requantize_batch", *INNER)
    ]
    saved = []
    for owner, name in targets:
        saved.append((owner, name, vars(owner).get(name), name in vars(owner)))
        fn = getattr(owner, name)

        def run(*args, fn=fn, name=name, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] += time.perf_counter() - t
            return out

        raw = inspect.getattr_static(owner, name)
        setattr(
            owner, name, staticmethod(run) if isinstance(raw, classmethod | staticmethod) else run
        )
    try:
        yield
    finally:
        for owner, name, value, own in saved:
            if own:
                setattr(owner, name, value)
            else:
                delattr(owner, name)


def stages(n: int, quant: str, reps: int) -> dict[str, float]:
    """Median ms per stage of one factor's statistics step, and of ``G Gᵀ``."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(n, n))
    w.grad = torch.randn(n, n) * 1e-2
    opt = qshampoo.Shampoo(
        [w], quant=quant, stat_interval=1, root_interval=10**9, max_preconditioner_dim=n
    )
    for _ in range(3):  # state, and a factor away from its initial eps I
        opt.step()
    factor = next(opt.store.entries()).factor
    cls = type(factor)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(reps):
        spent: dict[str, float] = defaultdict(float)
        t = time.perf_counter()
        gram = w.grad @ w.grad.T
        samples["G Gᵀ"].append(time.perf_counter() - t)
        with timers(cls, spent):
            t = time.perf_counter()
            cls.update_statistics_batch([factor], gram[None].clone(), StepHyper())
            total = time.perf_counter() - t
        samples["step"].append(total)
        samples["rest"].append(total - sum(spent[k] for k in TOP))
        for k in TOP + INNER:
            samples[k].append(spent[k])
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--quant", default="cholesky_ef")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cols = ["step", *TOP, "rest", *(f"({k})" for k in INNER), "G Gᵀ"]
    print(f"{args.quant}, median ms of {args.reps} steps, {torch.get_num_threads()} thread(s)")
    print("| n | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for n in args.sizes:
        ms = stages(n, args.quant, args.reps)
        row = [f"{ms[c.strip('()')]:.2f}" for c in cols]
        print(f"| {n} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
