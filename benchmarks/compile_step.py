"""Can a user ``torch.compile`` the whole optimizer step? Time it and compare with eager.

Trains a 2-layer MLP (64-64-10) for 12 steps with ``Shampoo4bit`` (statistics every 2 steps,
roots every 4, every factor quantized), once calling ``opt.step`` and once
``torch.compile(opt.step)``, from the same initialization, and prints the wall time of each
(compilation included) and the largest difference between the final parameters.

    PYTHONPATH=. python benchmarks/compile_step.py
"""

from __future__ import annotations

import time

import torch

import qshampoo


def run(compiled: bool) -> tuple[list[torch.Tensor], float]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10))
    opt = qshampoo.Shampoo4bit(
        net.parameters(), lr=1e-2, stat_interval=2, root_interval=4, min_quant_numel=0
    )
    step = torch.compile(opt.step) if compiled else opt.step
    x = torch.randn(32, 64)
    start = time.time()
    for _ in range(12):
        opt.zero_grad()
        net(x).square().mean().backward()
        step()
    return [p.detach().clone() for p in net.parameters()], time.time() - start


def main() -> None:
    eager, t_eager = run(False)
    compiled, t_compiled = run(True)
    diff = max((a - b).abs().max().item() for a, b in zip(eager, compiled, strict=True))
    print(f"eager: {t_eager:.3f} s, compiled: {t_compiled:.1f} s, max |difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
