"""Compare optimizers on your own model with the harness's Python API.

The model and data here are ones the harness does not ship: a small tabular classifier on
scikit-learn's breast-cancer dataset (569 samples, 30 features, 2 classes). Swap in your own model
factory, datasets, loss and metric; everything else stays the same.

    python examples/own_model.py            # under a minute on a 2-core CPU
    python examples/own_model.py --quick    # a few seconds (smoke test)

The report lands in report/own-model/ (report.md, results.json, PNG plots).
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from qshampoo.bench import compare


def load_data(seed: int = 0):
    """Standardised features and a fixed 80/20 split, as tensors."""
    bunch = load_breast_cancer()
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = len(x) // 5
    mean, std = x[n_test:].mean(0), x[n_test:].std(0)  # statistics of the training part only
    x = (x - mean) / std
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


# Module-level functions (not lambdas), so each run can go to its own process and report its own
# peak memory. Lambdas work too; the runs then share this process.
def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(30, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 2)
    )


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, target)


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == target).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only")
    parser.add_argument("--out", default="report/own-model")
    parser.add_argument("--optimizers", default="adamw,shampoo,shampoo4bit")
    args = parser.parse_args()

    train, test = load_data()
    report_dir = compare(
        make_model,
        train,
        test,
        loss_fn,
        accuracy,
        metric_name="test accuracy",
        percent=True,
        optimizers=args.optimizers.split(","),
        seeds=2,
        steps=20 if args.quick else 200,
        batch_size=32,
        # One learning rate per optimizer; for a fair comparison tune them the same way, e.g.
        # with qshampoo.bench.tune_lr (benchmarks/tune_lr.py does it for the built-in tasks).
        lr={"adamw": 1e-3, "shampoo": 1e-3, "shampoo4bit": 1e-3},
        weight_decay=1e-4,
        hparams={"*": {"stat_interval": 5, "root_interval": 25}},  # Shampoo's T1, T2
        name="breast-cancer-mlp",
        description="scikit-learn breast cancer (455/114 samples, 30 features), MLP 30-128-128-2",
        out=args.out,
        device="cpu",
    )
    print(f"report: {report_dir / 'report.md'}")


if __name__ == "__main__":  # required: runs are started in fresh processes
    main()
