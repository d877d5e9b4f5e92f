"""The decision report from your own training loop: ``qshampoo.bench.Recorder``.

Your loop stays as it is (AMP, clipping, accumulation, dict batches, DDP ...); three lines record
it. Run it once per optimizer and seed into one folder: each run rewrites ``report.md`` and
``report.html`` from every run there. Here a small MLP learns scikit-learn's digits:

    python examples/recorder_loop.py --out report/recorder --steps 150
"""

from __future__ import annotations

import argparse

import torch

import qshampoo
from qshampoo.bench import Recorder


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def make_optimizer(name: str, params, lr: float):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    quant = {"shampoo": "none", "shampoo4bit": "cholesky_ef"}[name]
    return qshampoo.Shampoo(
        params, lr=lr, quant=quant, stat_interval=3, root_interval=15, min_quant_numel=1024
    )


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def train(out: str, name: str, seed: int, steps: int, lang: str = "en") -> dict:
    (x, y), (xt, yt) = digits()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 10),
    )
    opt = make_optimizer(name, model.parameters(), lr=3e-3)
    rec = Recorder(out, optimizer=name, seed=seed, metric_name="test accuracy", percent=True)
    rec.watch(opt)  # memory at the step's peak, gradient and update norms
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(loss)  # the training loss of this step
        if (step + 1) % 25 == 0:
            rec.eval(accuracy(model, xt, yt))  # a periodic evaluation
    return rec.finish(accuracy(model, xt, yt), lang=lang)  # the result, and the report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="report/recorder")
    ap.add_argument("--optimizers", default="adamw,shampoo,shampoo4bit")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lang", default="en", choices=["en", "ja"])
    args = ap.parse_args(argv)
    for name in args.optimizers.split(","):
        for seed in range(args.seeds):
            r = train(args.out, name, seed, args.steps, args.lang)
            print(f"{name} seed {seed}: accuracy {r['final']['metric']:.4f}")
    print(f"report: {args.out}/report.md")


if __name__ == "__main__":
    main()
