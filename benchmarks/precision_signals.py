"""Which cheap error signal predicts a Cholesky factor's inverse-root error best?

Trains 32-bit Shampoo on a harness task (as ``qshampoo bench`` does: same model, data order,
hyperparameters and schedule) and, at a few steps, takes every Kronecker factor's fp32
statistics ``L``. For each, with ``C = cholesky(L + delta I)`` and ``C_b`` its strict lower part
quantized at ``b`` bits (diagonal exact, no error feedback), it compares

    true     NRE of the inverse root: ||f(L) - f(C_b C_b^T)|| / ||f(L)||, f(A) = (A + eps I)^(-1/4)
    frob     ||C - C_b|| / ||C||                      (the existing ``quant_error``)
    rowrel   ||diag(C)^-1 (C - C_b)|| / sqrt(n)       (each row's error relative to its pivot)
    backward ||C^-1 (C - C_b)|| / sqrt(n)             (first-order relative perturbation of L)

and prints per factor the values at 4 and 8 bits plus the Spearman rank correlation of each
signal with the true 4-bit NRE, and with the reduction 4 -> 8 bits per extra byte.

    PYTHONPATH=. python benchmarks/precision_signals.py --task shakespeare --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from qshampoo import Shampoo
from qshampoo.bench import optimizers as optim_mod
from qshampoo.bench.runner import lr_factor, param_groups, seed_everything
from qshampoo.bench.tasks import get_task
from qshampoo.factors.cholesky import damped_cholesky
from qshampoo.memory import factor_bytes
from qshampoo.quant import decode, encode


def collect(task_name: str, seed: int, at: list[int]) -> dict[int, list[dict]]:
    task = get_task(task_name)
    data = task.data_fn()
    steps = task.steps
    hp = task.hyperparameters("shampoo", steps)
    seed_everything(seed)
    model = task.model_fn(data.info)
    names = {id(p): n for n, p in model.named_parameters()}
    wd = float(hp.pop("weight_decay", 0.0))
    opt = optim_mod.build("shampoo", param_groups(model, wd), weight_decay=wd, **hp)
    assert isinstance(opt, Shampoo)
    peak = [g["lr"] for g in opt.param_groups]
    out: dict[int, list[dict]] = {}
    for step in range(steps):
        f = lr_factor(step, steps, task.warmup, task.final_lr)
        for g, lr0 in zip(opt.param_groups, peak, strict=True):
            g["lr"] = lr0 * f
        x, y = data.train.batch(seed, step)
        loss = task.loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step + 1 in at:
            snap = []
            for group in opt.param_groups:
                for p in group["params"]:
                    pre = opt.store.view(p, group)
                    if pre is None:
                        continue
                    for b, pair in enumerate(pre.blocks):
                        for side, fac in zip("LR", pair, strict=True):
                            snap.append(
                                dict(
                                    param=names[id(p)],
                                    block=b,
                                    side=side,
                                    order=fac.order,
                                    L=fac.statistics().clone(),
                                )
                            )
            out[step + 1] = snap
    return out


def root(A: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    A = A.double()
    w, V = torch.linalg.eigh(A)
    w = w.clamp_min(0)
    w = w + eps * w.max()
    return (V * w.pow(-0.25)) @ V.T


def signals(L: torch.Tensor, bits: int, block_size: int = 64) -> dict[str, float]:
    n = L.shape[0]
    C, ok, _ = damped_cholesky(L[None], 1e-6)
    C = C[0]
    strict = C.tril(-1)
    codes, scales = encode(strict, layout="tril", block_size=block_size, bits=bits)
    Cq = decode(codes, scales, (n, n), layout="tril", block_size=block_size, bits=bits)
    Cq = Cq + torch.diag(C.diagonal())
    dC = (C - Cq).double()
    exact = root(C.double() @ C.double().T)
    approx = root(Cq.double() @ Cq.double().T)
    nre = float((exact - approx).norm() / exact.norm())
    Cd = C.double()
    back = torch.linalg.solve_triangular(Cd, dC, upper=False)
    return dict(
        true=nre,
        frob=float(dC.norm() / Cd.norm()),
        rowrel=float((dC / Cd.diagonal()[:, None]).norm() / math.sqrt(n)),
        backward=float(back.norm() / math.sqrt(n)),
    )


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="shakespeare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--at", default="80,200,400", help="steps at which to take the statistics")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    at = [int(s) for s in args.at.split(",")]
    t0 = time.time()
    snaps = collect(args.task, args.seed, at)
    rows = []
    for step, snap in snaps.items():
        for f in snap:
            if f["order"] ** 2 < 4096:
                continue
            s4, s8 = signals(f["L"], 4), signals(f["L"], 8)
            extra = sum(factor_bytes("cholesky_ef", f["order"], bits=8).values()) - sum(
                factor_bytes("cholesky_ef", f["order"], bits=4).values()
            )
            rows.append(
                dict(
                    step=step,
                    **{k: f[k] for k in ("param", "block", "side", "order")},
                    extra_bytes=extra,
                    **{f"{k}4": v for k, v in s4.items()},
                    **{f"{k}8": v for k, v in s8.items()},
                )
            )
    print(f"# {args.task}, seed {args.seed}, {time.time() - t0:.0f} s")
    print("| step | factor | order | true NRE 4b | 8b | frob 4b | rowrel 4b | backward 4b |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['step']} | {r['param']}.{r['block']}.{r['side']} | {r['order']} | "
            f"{r['true4']:.4f} | {r['true8']:.4f} | {r['frob4']:.4f} | {r['rowrel4']:.4f} | "
            f"{r['backward4']:.4f} |"
        )
    print()
    print("Spearman rank correlation with the true 4-bit NRE (and with its gain per byte):")
    for step in snaps:
        rs = [r for r in rows if r["step"] == step]
        true = [r["true4"] for r in rs]
        gain = [(r["true4"] - r["true8"]) / r["extra_bytes"] for r in rs]
        for k in ("frob", "rowrel", "backward"):
            sig = [r[f"{k}4"] for r in rs]
            per_byte = [r[f"{k}4"] / r["extra_bytes"] for r in rs]
            print(
                f"  step {step}: {k:9s} {spearman(sig, true):+.3f}   "
                f"(per byte vs gain per byte {spearman(per_byte, gain):+.3f})"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
