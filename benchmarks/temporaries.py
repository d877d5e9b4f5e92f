"""The temporaries of each batched stage, measured, against the workspace formulas.

For each factor variant, order ``n`` and batch size ``B``, ``B`` factors (a few statistics
updates old) go through one batched stage — ``statistics`` (grams included), ``roots``,
``precondition`` (``L_hat G R_hat`` with ``G`` of ``n x n``) — under ``qshampoo.peak.TensorPeak``.
The table gives the bytes per factor (per job for ``precondition``: two dense roots and its
products) as fp32 ``n x n`` matrices, next to what ``Factor.workspace_bytes`` and
``store.job_cost`` allow (LAPACK's own workspace, which ``TensorPeak`` does not see, taken
out, except for VQ's Newton roots); ``tests/test_workspace.py`` checks the bound on whole steps.

    python benchmarks/temporaries.py
    python benchmarks/temporaries.py --orders 64,300,1024 --batches 1,3 --variants none,cholesky_ef

Roots larger than ``quant.blockwise.STRIP_BYTES`` are decoded a strip of rows at a time to be
multiplied. ``--strips`` measures that decoding alone (``quant.symmetric_row_strips``) for
``--orders`` (default here 300,600,1200,2048), block sizes 8-64, 3, 4 and 8 bits, one and three
roots, with the default strips and strips of one tile row, against the low-bit factors'
``workspace_bytes("precondition")`` (the largest fraction is what the formula's margin is):

    python benchmarks/temporaries.py --strips

``--model NAME`` (``qshampoo.bench.paper_models``) measures instead a step where nothing is due
on that model (``Shampoo4bit(paper=True)``, the state built by one step): its temporaries
against the largest preconditioning round the store reports (``Distributor.plan``, what such a
step may allocate) and ``memory_report()["workspace"]`` (every stage's most):

    python benchmarks/temporaries.py --model vit-small-cifar100
"""

from __future__ import annotations

import argparse
import itertools

import torch

from qshampoo.factors import FACTORS, FactorConfig, StepHyper
from qshampoo.peak import TensorPeak
from qshampoo.store import job_cost, precondition, update_roots, update_statistics

BIG = 1 << 40


def measure(quant: str, n: int, B: int, bits: int | str) -> dict[str, float]:
    g = torch.Generator().manual_seed(n)
    adaptive = bits == "auto"
    config = FactorConfig(8 if adaptive else bits, adaptive=adaptive)
    factors = [FACTORS[quant].new(n, config, torch.device("cpu"), 1e-6) for _ in range(B)]
    hp = StepHyper()
    grads = [torch.randn(n, n, generator=g) for _ in range(B)]
    for _ in range(3):
        update_statistics(list(zip(factors, grads, strict=True)), hp, BIG)
    update_roots(factors, hp, BIG)
    out = {}
    n2 = 4 * n * n
    with TensorPeak() as tp:
        update_statistics(list(zip(factors, grads, strict=True)), hp, BIG)
    out["statistics"] = tp.peak / B / n2
    with TensorPeak() as tp:
        update_roots(factors, hp, BIG)
    out["roots"] = tp.peak / B / n2
    jobs = [(f, gr, f) for f, gr in zip(factors, grads, strict=True)]
    with TensorPeak() as tp:
        res = precondition(jobs, BIG)
        del res
    # per job, against its whole allowance (two dense roots and three products)
    out["precondition"] = tp.peak / B / n2
    cls = type(factors[0])
    lapack = 0 if quant == "naive" else 4 * (2 * n * n + 6 * n + 1)
    formula = {
        "statistics": cls.workspace_bytes("statistics", n, config),
        # LAPACK's own workspace (syevd's) is not seen by TensorPeak; VQ's roots are Newton
        # iterations, whose temporaries it sees, and the formula's LAPACK term (there for the
        # float64 eigh fallback) covers them too
        "roots": cls.workspace_bytes("roots", n, config) - lapack,
        "precondition": job_cost((factors[0], (n, n), factors[0])),
    }
    return {**out, **{f"{k} allowed": v / n2 for k, v in formula.items()}}


def strips(orders: list[int]) -> None:
    """The strip decoding's temporaries against the formula, per root (cache warm)."""
    from unittest import mock

    from qshampoo.factors.quantized import QuantizedFactor
    from qshampoo.quant import blockwise, quantize, strip_rows, symmetric_row_strips

    g = torch.Generator().manual_seed(0)
    print("| n | bits | block size | roots | strip bytes | tallest strip | peak / formula |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for n, bits, s, B, nbytes in itertools.product(
        orders, (3, 4, 8), (64, 32, 8), (1, 3), (blockwise.STRIP_BYTES, 1)
    ):
        with mock.patch.object(blockwise, "STRIP_BYTES", nbytes):
            rows = strip_rows(n, s)
            if rows is None:
                continue
            qs = []
            for _ in range(B):
                x = torch.randn(n, n, generator=g)
                qs.append(
                    quantize(x + x.T, block_size=s, bits=bits, layout="tril", exact_diagonal=True)
                )
            for _ in symmetric_row_strips(qs):  # the strips' tile indices, cached
                pass
            with TensorPeak() as tp:
                for _ in symmetric_row_strips(qs):
                    pass
            allowed = QuantizedFactor.workspace_bytes("precondition", n, FactorConfig(bits, s))
        ratio = tp.peak / (B * (allowed - QuantizedFactor.OVERHEAD))
        worst = max(worst, ratio)
        print(f"| {n} | {bits} | {s} | {B} | {nbytes} | {rows} | {ratio:.2f} |", flush=True)
    print(f"\nlargest: {worst:.2f} of the formula (OVERHEAD aside)")


def idle_step(name: str) -> None:
    """An idle step's temporaries on a paper model, against the reported bounds."""
    import qshampoo
    from qshampoo.bench.paper_models import PAPER_MODELS
    from qshampoo.layout import param_blocking

    builder, base, _ = PAPER_MODELS[name]
    torch.manual_seed(0)
    params = [p for p in builder().parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).mul_(1e-3)
    opt = qshampoo.Shampoo4bit(params, base=base, paper=True, stat_interval=BIG, root_interval=BIG)
    opt.step()
    # the state tensors go in as a temporary list: holding them would keep replaced ones alive
    leaves = torch.utils._pytree.tree_leaves(list(opt.state.values()))
    with TensorPeak(existing=[t for t in leaves if isinstance(t, torch.Tensor)]) as tp:
        del leaves
        opt.step()
    rounds = 0
    for group in opt.param_groups:
        held = [p for p in group["params"] if param_blocking(p, group) is not None]
        rounds = max([rounds] + [n for _, n in opt.store.distributor.plan(held, group, opt.store)])
    MiB = 1 << 20
    print(f"{name}, Shampoo4bit(paper=True), a step where nothing is due (MiB):")
    print(f"temporaries {tp.peak / MiB:.2f}; largest preconditioning round reported ", end="")
    print(f"{rounds / MiB:.2f}; workspace {opt.memory_report()['workspace'] / MiB:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", default="64,128,300,513,1024")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--variants", default=",".join(FACTORS))
    ap.add_argument("--bits", default="4")
    ap.add_argument("--strips", action="store_true", help="the strip decoding alone")
    ap.add_argument("--model", help="an idle step of this paper model instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.model:
        idle_step(args.model)
        return
    if args.strips:
        orders = "300,600,1200,2048" if args.orders == ap.get_default("orders") else args.orders
        strips([int(n) for n in orders.split(",")])
        return
    bits = args.bits if args.bits == "auto" else int(args.bits)
    print("| variant | n | B | statistics (allowed) | roots (allowed) | precondition (allowed) |")
    print("|---|---|---|---|---|---|")
    for quant in args.variants.split(","):
        for n in map(int, args.orders.split(",")):
            for B in map(int, args.batches.split(",")):
                r = measure(quant, n, B, bits)
                cells = " | ".join(
                    f"{r[p]:.2f} ({r[p + ' allowed']:.2f})"
                    for p in ("statistics", "roots", "precondition")
                )
                print(f"| {quant} | {n} | {B} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
