"""Long-run stability: every factor variant, many steps, settings chosen to break things.

A small MLP (64-64-64-10) on scikit-learn's digits, mini-batches of 32, AdamW base with an
aggressive learning rate, a tiny ``matrix_eps``, statistics at every step and roots every few
steps, and every factor quantized (``min_quant_numel=0``). Every ``--nan-every`` steps one
gradient entry is set to NaN (a bad batch), which ``nonfinite="skip"`` must absorb. At the end
every parameter and every tensor of the optimizer state must be finite.

    PYTHONPATH=. python benchmarks/long_run.py --steps 20000            # all variants
    PYTHONPATH=. python benchmarks/long_run.py --steps 2000 --quant none

Prints a markdown table (one row per variant); results are recorded in RESULTS_long_run.md.
``tests/test_failure_policy.py`` runs a short version through ``run_variant``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

import qshampoo
from qshampoo.factors import FACTORS

DEFAULTS = dict(
    lr=3e-2,
    matrix_eps=1e-12,
    stat_interval=1,
    root_interval=10,
    weight_decay=0.0,
    min_quant_numel=0,
)


def _data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(d.target)


def _finite_state(opt) -> bool:
    def walk(obj):
        if torch.is_tensor(obj):
            return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
        if isinstance(obj, dict):
            return all(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return all(walk(v) for v in obj)
        return True

    return all(walk(st) for st in opt.state.values())


def run_variant(
    quant: str,
    steps: int = 20000,
    seed: int = 0,
    batch: int = 32,
    nan_every: int = 997,
    log_every: int = 0,
    **overrides,
) -> dict:
    """Train the MLP for ``steps`` steps with ``quant``; return losses, health and timing."""
    torch.manual_seed(seed)
    x, y = _data()
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )
    kw = {**DEFAULTS, **overrides}
    opt = qshampoo.Shampoo(net.parameters(), quant=quant, **kw)
    gen = torch.Generator(x.device).manual_seed(seed)
    losses, injected = [], 0
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        if nan_every and k % nan_every == 0:
            net[0].weight.grad[0, 0] = float("nan")
            injected += 1
        opt.step()
        losses.append(loss.item())
        if log_every and k % log_every == 0:
            print(f"  {quant} step {k}: loss {sum(losses[-log_every:]) / log_every:.4f}")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        full_loss = torch.nn.functional.cross_entropy(net(x), y).item()
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    diag = opt.diagnostics()
    window = max(1, min(200, steps // 10))
    finite = (
        all(bool(torch.isfinite(p).all()) for p in net.parameters())
        and _finite_state(opt)
        and math.isfinite(full_loss)
    )
    return {
        "quant": quant,
        "steps": steps,
        "first_loss": sum(losses[:window]) / window,
        "final_loss": sum(losses[-window:]) / window,
        "full_loss": full_loss,
        "accuracy": accuracy,
        "finite": finite,
        "nan_losses": sum(not math.isfinite(v) for v in losses),
        "injected_nan": injected,
        "nonfinite_steps": diag["nonfinite_steps"],
        "root_failures": diag["root_failures"],
        "cholesky_failures": diag["cholesky_failures"],
        "quant_error": diag["quant_error"],
        "seconds": seconds,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--quant", nargs="*", default=sorted(FACTORS), choices=sorted(FACTORS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--matrix-eps", type=float, default=DEFAULTS["matrix_eps"])
    ap.add_argument("--root-interval", type=int, default=DEFAULTS["root_interval"])
    ap.add_argument("--nan-every", type=int, default=997)
    ap.add_argument("--log-every", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny matrices: 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, qshampoo "
        f"{qshampoo.__version__}"
    )
    print(
        f"settings: steps={args.steps} lr={args.lr} matrix_eps={args.matrix_eps} "
        f"stat_interval=1 root_interval={args.root_interval} min_quant_numel=0 "
        f"nan_every={args.nan_every} seed={args.seed}\n"
    )
    header = (
        "| quant | steps | loss first→last 200 | full-data loss | train acc | finite | "
        "NaN injected / skipped | root fails | Cholesky fails | quant error | time (s) |"
    )
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    bad = 0
    for quant in args.quant:
        r = run_variant(
            quant,
            steps=args.steps,
            seed=args.seed,
            nan_every=args.nan_every,
            log_every=args.log_every,
            lr=args.lr,
            matrix_eps=args.matrix_eps,
            root_interval=args.root_interval,
        )
        qe = "—" if r["quant_error"] is None else f"{r['quant_error']:.3g}"
        print(
            f"| {quant} | {r['steps']} | {r['first_loss']:.3f} → {r['final_loss']:.3f} | "
            f"{r['full_loss']:.4f} | {r['accuracy']:.4f} | {'yes' if r['finite'] else 'NO'} | "
            f"{r['injected_nan']} / {r['nonfinite_steps']} | {r['root_failures']} | "
            f"{r['cholesky_failures']} | {qe} | {r['seconds']:.0f} |",
            flush=True,
        )
        bad += not r["finite"] or r["nan_losses"] > 0
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
