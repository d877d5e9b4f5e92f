"""What the step's checks cost: host synchronisations by where they are made, and the time of
the param-group validation that every ``step()`` runs (issue 22).

1. Host reads of device values (``qshampoo.dispatch.count_syncs``) in each kind of step of a
   small model (a 40x24 matrix cut into 16-blocks, a 64x64 matrix, a bias), per variant:
   a plain step (nothing due), a statistics step, a statistics and roots step; split into
   the optimizer shell (``optimizer.py``, ``store.py``, ``base.py``, ``layout.py``) and the
   factor and quantization code (everything else). The shell's as the CPU runs the step (it
   reads the gradients' finiteness at every step: a read of memory, free) and as an
   accelerator does (a plain step decides a non-finite gradient's skip on the device, with no
   read), the latter run here by switching the choice (``qshampoo.optimizer._reads_are_free``).
2. ``Shampoo._check_groups`` (validation of every group and of the state layout, before the
   step changes anything): unchanged groups, and a group whose ``lr`` changed (as a
   scheduler writes it), in microseconds per step, median of ``--reps`` runs of 1000 calls;
   next to a plain step of the same model, for scale.

    PYTHONPATH=. python benchmarks/step_checks.py
    PYTHONPATH=. python benchmarks/step_checks.py --reps 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import timeit
from unittest import mock

import torch

import qshampoo
import qshampoo.optimizer
from qshampoo.dispatch import count_syncs

SHELL = ("qshampoo/optimizer.py", "qshampoo/store.py", "qshampoo/base.py", "qshampoo/layout.py")


def model(quant: str):
    torch.manual_seed(0)
    params = [
        torch.randn(40, 24, requires_grad=True),
        torch.randn(64, 64, requires_grad=True),
        torch.randn(24, requires_grad=True),
    ]
    opt = qshampoo.Shampoo(
        params,
        quant=quant,
        min_quant_numel=0,
        block_size=16,
        max_preconditioner_dim=16,
        stat_interval=2,
        root_interval=4,
    )
    return opt, params


def syncs(quant: str, on_device: bool = False) -> dict[str, tuple[int, int]]:
    """``{step kind: (shell reads, factor code reads)}``, steps 3, 2 and 4 of a fresh run, as
    the CPU runs them or, ``on_device``, as an accelerator does."""
    if on_device:
        with mock.patch.object(qshampoo.optimizer, "_reads_are_free", lambda device: False):
            return syncs(quant)
    opt, params = model(quant)
    kinds = {3: "plain", 2: "statistics", 4: "statistics + roots"}
    out = {}
    for k in range(1, 5):
        for p in params:
            p.grad = torch.randn(p.shape)
        with count_syncs() as where:
            opt.step()
        if k in kinds:
            shell = sum(n for (_, at), n in where.items() if at.startswith(SHELL))
            out[kinds[k]] = (shell, sum(where.values()) - shell)
    return {kind: out[kind] for kind in kinds.values()}


def validation_us(reps: int) -> tuple[float, float, float]:
    opt, params = model("cholesky_ef")
    for p in params:
        p.grad = torch.randn(p.shape)
    opt.step()

    def changed():
        opt.param_groups[0]["lr"] *= 1.0000001
        opt._check_groups()

    def median_us(f, number):
        return statistics.median(
            timeit.timeit(f, number=number) / number * 1e6 for _ in range(reps)
        )

    opt.param_groups[0]["stat_interval"] = opt.param_groups[0]["root_interval"] = 10**9
    return (
        median_us(opt._check_groups, 1000),
        median_us(changed, 1000),
        median_us(opt.step, 50),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread")
    print("\n| variant | step | host reads: shell, CPU | shell, accelerator | factor code |")
    print("|---|---|---|---|---|")
    for quant in sorted(qshampoo.factors.FACTORS):
        on_device = syncs(quant, on_device=True)
        for kind, (shell, rest) in syncs(quant).items():
            print(f"| {quant} | {kind} | {shell} | {on_device[kind][0]} | {rest} |")
    unchanged, changed, step = validation_us(args.reps)
    print(
        f"\ngroup checks per step: {unchanged:.1f} us (unchanged), {changed:.1f} us (lr "
        f"changed); a plain step of this model: {step:.0f} us (medians of {args.reps})"
    )


if __name__ == "__main__":
    main()
