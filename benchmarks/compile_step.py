"""Can a user ``torch.compile`` the whole optimizer step? Time it and compare with eager.

Trains a 2-layer MLP (64-64-10) for 12 steps with ``Shampoo4bit`` (``quant="cholesky_ef"``,
or the variant ``--quant`` names; statistics every 2 steps, roots every 4, every factor
quantized), once calling ``opt.step`` and once
``torch.compile(opt.step)``, from the same initialization, and prints the wall time of each
(compilation included) and the largest difference between the final parameters. ``--backend``
picks the ``torch.compile`` backend: ``inductor`` (the default, generated kernels), or ``eager``
/ ``aot_eager`` (Dynamo's tracing alone, running the same ATen ops), which separates what tracing
changes from what inductor's generated arithmetic changes.

    PYTHONPATH=. python benchmarks/compile_step.py [--backend inductor|eager|aot_eager] [--quant Q]
"""

from __future__ import annotations

import argparse
import time

import torch

import qshampoo


def run(backend: str | None, quant: str) -> tuple[list[torch.Tensor], float]:
    """12 steps, eagerly (``backend=None``) or with ``torch.compile(opt.step)``."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10))
    opt = qshampoo.Shampoo(
        net.parameters(),
        lr=1e-2,
        quant=quant,
        stat_interval=2,
        root_interval=4,
        min_quant_numel=0,
    )
    step = opt.step if backend is None else torch.compile(opt.step, backend=backend)
    x = torch.randn(32, 64)
    start = time.time()
    for _ in range(12):
        opt.zero_grad()
        net(x).square().mean().backward()
        step()
    return [p.detach().clone() for p in net.parameters()], time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--quant", default="cholesky_ef")
    args = ap.parse_args()
    eager, t_eager = run(None, args.quant)
    compiled, t_compiled = run(args.backend, args.quant)
    diff = max((a - b).abs().max().item() for a, b in zip(eager, compiled, strict=True))
    print(f"eager: {t_eager:.3f} s, compiled: {t_compiled:.1f} s, max |difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
