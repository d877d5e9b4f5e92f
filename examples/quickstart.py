"""AdamW vs Shampoo (32-bit and 4-bit) on scikit-learn's digits: a one-minute, real comparison.

python examples/quickstart.py
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits

import qshampoo


def data():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1400], perm[1400:]
    return x[train], y[train], x[test], y[test]


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )


def run(make_opt, seed: int = 0, steps: int = 300, batch: int = 64) -> tuple[float, float, float]:
    xtr, ytr, xte, yte = data()
    net = model(seed)
    opt = make_opt(net.parameters())
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(ytr), (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        out = net(xte)
        test_loss = torch.nn.functional.cross_entropy(out, yte).item()
        acc = (out.argmax(1) == yte).float().mean().item()
    return test_loss, acc, seconds


OPTIMIZERS = {
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3),
    "Shampoo (32-bit)": lambda p: qshampoo.Shampoo(p, lr=1e-3, stat_interval=5, root_interval=25),
}


def main() -> None:
    print(f"{'optimizer':<18} {'test loss':>10} {'accuracy':>9} {'seconds':>8}")
    for name, make in OPTIMIZERS.items():
        loss, acc, sec = run(make)
        print(f"{name:<18} {loss:>10.4f} {acc:>9.3f} {sec:>8.2f}")


if __name__ == "__main__":
    main()
