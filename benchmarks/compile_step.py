"""Compiling the whole optimizer step, ``torch.compile(opt.step)``, against eager.

Three measurements:

1. **Training** (always): a 2-layer MLP (64-64-10) trained for 12 steps with ``Shampoo``
   (``--quant``, default ``cholesky_ef``; statistics every 2 steps, roots every 4, every factor
   quantized), once calling ``opt.step`` and once ``torch.compile(opt.step)``, from the same
   initialization. Prints the wall time of each (compilation included), how many graphs Dynamo
   compiled (``TORCH_LOGS=recompiles`` says why each recompilation happened), and the largest
   difference between the final parameters; then the largest difference between one compiled
   step and the eager one taken from the same state (over the 12 states of the eager run),
   which rounding cannot accumulate into. ``--lr-schedule`` decays the lr at every step
   (``LambdaLR``; ``lr`` given as a tensor, as torch.optim asks for a compiled step with a
   schedule).
2. **Real models** (``--train``, e.g. ``cnn,gpt``, the models of ``step_time.py``): 40 training
   steps on a fixed batch, eager and compiled, set up as a user would (two param groups, a
   tensor lr under a cosine schedule); prints the losses and how many graphs were compiled.
3. **Steady state** (``--models``, e.g. ``cnn,gpt,mlp512``, the models of ``step_time.py``):
   ms per step, eager and compiled, median of ``--reps`` interleaved repetitions after the
   compilation, in two states: *plain* (neither statistics nor roots due, so the compiled graph
   is all of the step) and *stats* (statistics due: they run eagerly in both).

Both compile with ``dynamic=False`` (static shapes, as docs/speed.md advises; ``--dynamic auto``
gives ``torch.compile``'s default, which makes shapes symbolic once the step's code has seen a
second shape, as with a second optimizer or, here, the second model). ``--backend`` picks the
``torch.compile`` backend: ``inductor`` (the default, generated kernels), or ``eager`` /
``aot_eager`` (Dynamo's tracing alone, running the same ATen ops), which separates what tracing
changes from what inductor's generated arithmetic changes.

    PYTHONPATH=. python benchmarks/compile_step.py [--backend B] [--quant Q] [--lr-schedule]
    PYTHONPATH=. python benchmarks/compile_step.py --threads 1 --models cnn,gpt [--dynamic auto]
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/compile_step.py --train cnn,gpt
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from step_time import Timed, machine, model
from torch._dynamo.utils import counters

import qshampoo


def compiled(step, backend: str, dynamic: str):
    return torch.compile(step, backend=backend, dynamic=None if dynamic == "auto" else False)


def setup(quant: str, schedule: bool):
    """The MLP, its optimizer, the schedule (or None) and the batch, from seed 0."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10))
    opt = qshampoo.Shampoo(
        net.parameters(),
        lr=torch.tensor(1e-2) if schedule else 1e-2,
        quant=quant,
        stat_interval=2,
        root_interval=4,
        min_quant_numel=0,
    )
    sched = None
    if schedule:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + 0.1 * k))
    return net, opt, sched, torch.randn(32, 64)


def train(
    backend: str | None, quant: str, schedule: bool, dynamic: str
) -> tuple[list[torch.Tensor], float]:
    """12 steps, eagerly (``backend=None``) or with ``torch.compile(opt.step)``."""
    net, opt, sched, x = setup(quant, schedule)
    step = opt.step if backend is None else compiled(opt.step, backend, dynamic)
    start = time.time()
    for _ in range(12):
        opt.zero_grad()
        net(x).square().mean().backward()
        step()
        if sched is not None:
            sched.step()
    return [p.detach().clone() for p in net.parameters()], time.time() - start


def one_step_gap(backend: str, quant: str, schedule: bool, dynamic: str) -> float:
    """The largest difference between one compiled step and the eager step taken from the
    same state, over the 12 states of the eager training run (a copy of the model and the
    optimizer takes the compiled step, so rounding differences cannot accumulate)."""
    net, opt, sched, x = setup(quant, schedule)
    worst = 0.0
    for _ in range(12):
        twin, twin_opt = copy.deepcopy((net, opt))
        torch._dynamo.reset()  # every copy is a new optimizer: compile afresh
        for n, o, step in (
            (net, opt, opt.step),
            (twin, twin_opt, compiled(twin_opt.step, backend, dynamic)),
        ):
            o.zero_grad()
            n(x).square().mean().backward()
            step()
        pairs = zip(net.parameters(), twin.parameters(), strict=True)
        worst = max(worst, *((a - b).abs().max().item() for a, b in pairs))
        if sched is not None:
            sched.step()
    return worst


def train_model(name: str, backend: str | None, dynamic: str) -> list[float]:
    """40 training steps of a ``step_time.py`` model on its fixed batch, as a user would set it
    up: weight decay on the matrices only (two param groups), ``lr`` a tensor under a cosine
    schedule, statistics every 5 steps, roots every 10. Returns the losses."""
    torch.manual_seed(0)
    net, loss_fn = model(name)
    matrices = [p for p in net.parameters() if p.dim() >= 2]
    others = [p for p in net.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": 0.05}, {"params": others, "weight_decay": 0.0}]
    opt = qshampoo.Shampoo4bit(groups, lr=torch.tensor(1e-3), stat_interval=5, root_interval=10)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 40)
    step = opt.step if backend is None else compiled(opt.step, backend, dynamic)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        step()
        sched.step()
        losses.append(loss.item())
    return losses


def steady_state(name: str, backend: str, quant: str, reps: int, dynamic: str) -> dict[str, float]:
    """Median ms of one step, eager and compiled, in the plain and stats states (T1=10, T2=50)."""
    torch.manual_seed(0)
    net, loss_fn = model(name)
    loss_fn().backward()
    grads = [p.grad.detach().clone() for p in net.parameters()]

    def make(label: str) -> Timed:
        params = [p.detach().clone().requires_grad_() for p in net.parameters()]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt = qshampoo.Shampoo(params, lr=1e-3, quant=quant, stat_interval=10, root_interval=50)
        step = compiled(opt.step, backend, dynamic) if label == "compiled" else None
        return Timed(label, opt, params, True, grads, step)

    if dynamic == "false":
        # a fresh cache for every model. With --dynamic auto Dynamo keeps what it saw of the
        # earlier models, and that is what makes it compile the later ones with symbolic
        # shapes, as it would a second optimizer of other shapes in a training script
        torch._dynamo.reset()
    runs = [make("eager"), make("compiled")]
    for r in runs:  # state, compilation
        for _ in range(3):
            r.step()
    samples: dict[str, list[float]] = {}
    for _ in range(reps):
        for r in runs:
            for state, k in (("plain", 51), ("stats", 60)):
                samples.setdefault(f"{r.name} {state}", []).append(r.step_at(k) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--quant", default="cholesky_ef")
    ap.add_argument("--lr-schedule", action="store_true")
    ap.add_argument("--dynamic", choices=["false", "auto"], default="false")
    ap.add_argument("--models", default="", help="also time steady-state steps of these models")
    ap.add_argument("--train", default="", help="also train these models, eager and compiled")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}")
    eager, t_eager = train(None, args.quant, args.lr_schedule, args.dynamic)
    counters.clear()
    result, t_compiled = train(args.backend, args.quant, args.lr_schedule, args.dynamic)
    diff = max((a - b).abs().max().item() for a, b in zip(eager, result, strict=True))
    print(
        f"training: eager {t_eager:.3f} s, compiled {t_compiled:.1f} s, "
        f"{counters['stats']['unique_graphs']} graphs compiled, max |difference| {diff:.2e}"
    )
    gap = one_step_gap(args.backend, args.quant, args.lr_schedule, args.dynamic)
    print(f"one compiled step from the eager run's state: max |difference| {gap:.2e}")
    for name in filter(None, args.train.split(",")):
        torch._dynamo.reset()
        counters.clear()
        eager_losses = train_model(name, None, args.dynamic)
        losses = train_model(name, args.backend, args.dynamic)
        gap = max(abs(a - b) for a, b in zip(eager_losses, losses, strict=True))
        print(
            f"{name}, 40 steps: loss {eager_losses[0]:.4f} -> {eager_losses[-1]:.4f} eager, "
            f"-> {losses[-1]:.4f} compiled; max |loss difference| {gap:.1e}; "
            f"{counters['stats']['unique_graphs']} graphs compiled"
        )
    if args.models:
        print("\n| model | state | eager ms | compiled ms | compiled / eager |")
        print("|---|---|---|---|---|")
    for name in filter(None, args.models.split(",")):
        ms = steady_state(name, args.backend, args.quant, args.reps, args.dynamic)
        for state in ("plain", "stats"):
            e, c = ms[f"eager {state}"], ms[f"compiled {state}"]
            print(f"| {name} | {state} | {e:.2f} | {c:.2f} | {c / e:.2f} |", flush=True)


if __name__ == "__main__":
    main()
