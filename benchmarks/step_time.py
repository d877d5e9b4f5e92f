"""Optimizer step time: qshampoo's variants against AdamW and the peers' second-order optimizers.

One process; every repetition times each (model, optimizer) once, in turn (interleaved, so slow
drifts of the machine hit all rows alike), and the table reports medians.

Only ``opt.step()`` is timed, on fixed gradients (one backward pass made them). For qshampoo the
step is timed in three states, by setting the step counters just before the step:

- *plain*: neither statistics nor roots are due — preconditioning, grafting, the base update;
- *stats*: statistics due (``k % T1 == 0``);
- *roots*: statistics and roots due (``k % T2 == 0``).

Amortized ms/step = plain + (stats - plain) / T1 + (roots - stats) / T2, split into
*base* (the same optimizer with ``precondition=False``), *precondition* (plain - base),
*statistics* ((stats - plain) / T1) and *roots* ((roots - stats) / T2).

Peers (pytorch-optimizer ``SOAP`` and ``Shampoo``, heavyball ``SOAP``; when installed) do their
expensive update every ``f`` steps on their own counters, so they are timed over whole windows of
``T2`` consecutive steps with ``f = T2`` (matched root interval; their statistics update every
step by design) and reported as the window's mean.

    python benchmarks/step_time.py                       # default: every model, 10/50 and 1/50
    python benchmarks/step_time.py --intervals 10/50     # one configuration only
    python benchmarks/step_time.py --models mlp512,cnn --out /tmp/step_time.md
    python benchmarks/step_time.py --models mlp1024 --no-peers --variants none,cholesky_ef
    python benchmarks/step_time.py --models mlp512x1,mlp512x2,mlp512x4,mlp512x8 --no-peers

Every model is timed in each configuration of ``--intervals`` (``T1/T2``; default ``10/50``,
the library's defaults scaled down, and ``1/50``, statistics at every step as Meta's
Distributed Shampoo does by default), and a last table gives per configuration the ratio
Shampoo4bit (``cholesky_ef``) / 32-bit Shampoo (``none``) of the amortized step.

``--compile-step`` adds ``none`` and ``cholesky_ef`` stepped through
``torch.compile(opt.step, dynamic=False)`` (compiled before the timing starts).

``--device cuda`` builds the models, the batches and so every optimizer's state on the GPU and
synchronizes it around every timed region; the table then also gives each optimizer's state in
MiB as the CUDA allocator counts it (the bytes its first step left allocated).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

import qshampoo
from qshampoo import kernels
from qshampoo.bench.models import CharGPT, SmallResNet

VARIANTS = ("none", "naive", "eigen", "cholesky", "cholesky_ef")
#: the qshampoo rows besides ``base only``: name -> ``qshampoo.Shampoo`` keyword arguments
ROWS: dict[str, dict] = {
    **{v: {"quant": v} for v in VARIANTS},
    "cholesky_ef, compile=True": {"quant": "cholesky_ef", "compile": True},
}
CPU = torch.device("cpu")


# -- models: (module, a batch) ---------------------------------------------------------------------
def mlp(width: int, layers: int = 2, batch: int = 256) -> tuple[nn.Module, Callable]:
    net = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    x = torch.randn(batch, width)
    return net, lambda: net(x).square().mean()


def cnn() -> tuple[nn.Module, Callable]:
    net = SmallResNet()
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    return net, lambda: nn.functional.cross_entropy(net(x), y)


def gpt() -> tuple[nn.Module, Callable]:
    net = CharGPT(vocab=80)
    idx = torch.randint(0, 80, (32, 64))
    return net, lambda: nn.functional.cross_entropy(net(idx).flatten(0, 1), idx.flatten())


MODELS: dict[str, Callable[[], tuple[nn.Module, Callable]]] = {
    **{f"mlp{w}": (lambda w=w: mlp(w)) for w in (256, 512, 1024, 2048, 4096)},
    "cnn": cnn,
    "gpt": gpt,
}


def model(name: str) -> tuple[nn.Module, Callable]:
    """A model of :data:`MODELS`, or ``mlp<width>x<layers>`` (e.g. ``mlp512x8``)."""
    if name in MODELS:
        return MODELS[name]()
    if name.startswith("mlp") and "x" in name:
        width, layers = name[3:].split("x")
        return mlp(int(width), int(layers))
    raise SystemExit(f"unknown model {name!r}: one of {list(MODELS)} or mlp<width>x<layers>")


# -- optimizers ------------------------------------------------------------------------------------
@dataclass
class Timed:
    """One optimizer on one model, with its own copy of the parameters and fixed gradients."""

    name: str
    opt: torch.optim.Optimizer
    params: list[torch.Tensor]
    shampoo: bool  # qshampoo: timed by the three-state method; else by windows
    grads: list[torch.Tensor]  # the fixed gradients (qshampoo never changes p.grad)
    step: Callable[[], object] | None = None  # what to call instead of opt.step
    sync: Callable[[], None] = lambda: None  # waits for the device (CUDA work is asynchronous)
    state_bytes: int | None = None  # what the first step left allocated on the GPU

    def __post_init__(self) -> None:
        self.step = self.step or self.opt.step

    def step_at(self, k: int, stat_interval: int | None = None) -> float:
        """Wall seconds of one ``step()`` whose step counter becomes ``k`` (``stat_interval``:
        the groups' for this step only, e.g. to time a plain step when it is 1)."""
        for p in self.params:
            st = self.opt.state.get(p)
            if st:
                st["step"] = k - 1
        saved = [g["stat_interval"] for g in self.opt.param_groups]
        if stat_interval is not None:
            for g in self.opt.param_groups:
                g["stat_interval"] = stat_interval
        self.sync()
        t = time.perf_counter()
        self.step()
        self.sync()
        elapsed = time.perf_counter() - t
        for g, v in zip(self.opt.param_groups, saved, strict=True):
            g["stat_interval"] = v
        return elapsed

    def window(self, steps: int) -> float:
        self.sync()
        t = time.perf_counter()
        for _ in range(steps):
            if self.name != "adamw":
                # heavyball consumes the gradient (in place, then p.grad = None): every peer
                # step gets a fresh copy (a memcpy of the gradients, timed for every peer alike)
                for p, g in zip(self.params, self.grads, strict=True):
                    p.grad = g.clone()
            self.opt.step()
        self.sync()
        return (time.perf_counter() - t) / steps


def peers(T2: int, heavyball_eager: bool = False) -> dict[str, Callable]:
    out = {}
    try:
        import pytorch_optimizer as po

        out["po-SOAP"] = lambda p: po.SOAP(p, lr=1e-3, precondition_frequency=T2)
        out["po-Shampoo"] = lambda p: po.Shampoo(p, lr=1e-3, preconditioning_compute_steps=T2)
    except ImportError:
        pass
    try:
        import heavyball

        if heavyball_eager:  # its helpers uncompiled (by default torch.compile, max-autotune)
            heavyball.utils.compile_mode = None
        out["heavyball-SOAP"] = lambda p: heavyball.SOAP(
            p, lr=1e-3, precondition_frequency=T2, compile_step=False
        )
    except ImportError:
        pass
    return out


def build(
    model_name: str,
    T1: int,
    T2: int,
    with_peers: bool,
    compile_step: bool = False,
    device: torch.device = CPU,
    heavyball_eager: bool = False,
    variants: tuple[str, ...] = tuple(ROWS),
) -> list[Timed]:
    torch.manual_seed(0)
    with device:  # the model's parameters and its batch
        net, loss_fn = model(model_name)
    loss_fn().backward()
    cuda = device.type == "cuda"
    sync = partial(torch.cuda.synchronize, device) if cuda else (lambda: None)
    grads = [p.grad.detach().clone() for p in net.parameters()]

    def row(name: str, make: Callable, shampoo: bool, compiled: bool = False) -> Timed:
        params = [p.detach().clone().requires_grad_() for p in net.parameters()]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt = make(params)
        step = torch.compile(opt.step, dynamic=False) if compiled else None
        return Timed(name, opt, params, shampoo, grads, step, sync)

    kw = dict(lr=1e-3, stat_interval=T1, root_interval=T2)
    rows = [
        row("adamw", lambda p: torch.optim.AdamW(p, lr=1e-3), False),
        row("base only", lambda p: qshampoo.Shampoo(p, precondition=False, **kw), True),
    ]
    for name in variants:
        make = partial(qshampoo.Shampoo, **ROWS[name], **kw)
        rows.append(row(name, make, True))
    if compile_step:  # the whole step compiled (docs/speed.md)
        # each optimizer is a cache entry of the step's compiled frame and Dynamo keeps at
        # most 8 (then runs the frame eagerly): start every model afresh
        torch._dynamo.reset()
        for v in ("none", "cholesky_ef"):
            make = partial(qshampoo.Shampoo, quant=v, **kw)
            rows.append(row(f"{v}, compiled step", make, True, compiled=True))
    if with_peers:
        for name, make in peers(T2, heavyball_eager).items():
            rows.append(row(name, make, False))
    for r in list(rows):  # state exists, first-call costs (and compilation) paid
        before = torch.cuda.memory_allocated(device) if cuda else 0
        try:
            r.step()
        except Exception as e:  # a peer that cannot run here is left out, and said so
            if r.shampoo:
                raise
            print(f"{r.name} left out: {type(e).__name__}: {e}".split("\n")[0], file=sys.stderr)
            rows.remove(r)
            continue
        r.sync()
        if cuda:
            r.state_bytes = torch.cuda.memory_allocated(device) - before
        for p, g in zip(r.params, grads, strict=True):
            p.grad = g.clone()
    return rows


def measure(
    model_name: str,
    T1: int,
    T2: int,
    reps: int,
    with_peers: bool,
    compile_step: bool = False,
    device: torch.device = CPU,
    heavyball_eager: bool = False,
    variants: tuple[str, ...] = tuple(ROWS),
) -> dict[str, dict]:
    """Median ms per step of every row of ``build`` (``variants``: the qshampoo rows of
    :data:`ROWS` to time; ``base only`` is always timed, the precondition split needs it)."""
    rows = build(model_name, T1, T2, with_peers, compile_step, device, heavyball_eager, variants)
    samples: dict[str, dict[str, list[float]]] = {r.name: {} for r in rows}
    # a k that is a multiple of neither interval, of T1 only, and of T2 (hence of T1); with
    # T1 = 1 every step updates the statistics, and the plain step (what the preconditioning
    # costs) is timed with the statistics interval set to T2 for that step
    plain_T1 = T1 if T1 > 1 else T2
    plain_k = next(k for k in range(T2 + 1, 3 * T2) if k % plain_T1 and k % T2)
    stats_k = next(k for k in range(T2 + 1, 3 * T2) if k % T1 == 0 and k % T2)
    roots_k = 2 * T2
    for _ in range(reps):
        for r in rows:
            s = samples[r.name]
            if r.shampoo:
                for what, k in (("plain", plain_k), ("stats", stats_k), ("roots", roots_k)):
                    every = plain_T1 if what == "plain" and T1 == 1 else None
                    s.setdefault(what, []).append(r.step_at(k, every))
            else:
                s.setdefault("window", []).append(r.window(T2 if r.name != "adamw" else 5))
    med = {
        name: {k: statistics.median(v) * 1e3 for k, v in s.items()} for name, s in samples.items()
    }
    base = med["base only"]["plain"]
    state_mib = {r.name: r.state_bytes / 2**20 for r in rows if r.state_bytes is not None}
    out = {}
    for name, m in med.items():
        if "window" in m:
            out[name] = {"amortized": m["window"]}
        else:
            stats = (m["stats"] - m["plain"]) / T1
            roots = (m["roots"] - m["stats"]) / T2
            out[name] = {
                "amortized": m["plain"] + stats + roots,
                "base": base,
                "precondition": m["plain"] - base,
                "statistics": stats,
                "roots": roots,
            }
        if name in state_mib:
            out[name]["state MiB"] = state_mib[name]
    return out


def machine(device: torch.device = CPU) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = ""
    if device.type == "cuda":
        # the Triton kernels (qshampoo/kernels/) run on CUDA tensors when QSHAMPOO_TRITON=auto
        on = kernels.enabled(torch.empty(0, device=device))
        gpu = (
            f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, Triton kernels "
            f"{'on' if on else 'off'}) on "
        )
    return (
        f"{gpu}{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, load average {load:.1f} at the start"
    )


def table(results: dict[str, dict[str, dict]], T1: int, T2: int) -> str:
    cols = ["base", "precondition", "statistics", "roots"]
    if any("state MiB" in r for res in results.values() for r in res.values()):
        cols.append("state MiB")
    lines = [
        f"Amortized ms/step (T1={T1}, T2={T2}); qshampoo rows split into base update / "
        "preconditioning / statistics / roots; ratio = this row / `none` (32-bit Shampoo).",
        "",
        "| model | optimizer | ms/step | ratio to none | " + " | ".join(cols) + " |",
        "|---|---|---|---|" + "---|" * len(cols),
    ]
    for model, res in results.items():
        ref = res["none"]["amortized"]
        for name, r in res.items():
            split = [f"{r[k]:.2f}" if k in r else "" for k in cols]
            lines.append(
                f"| {model} | {name} | {r['amortized']:.2f} | "
                f"{r['amortized'] / ref:.2f} | " + " | ".join(split) + " |"
            )
    return "\n".join(lines)


def ratios(by_config: dict[tuple[int, int], dict[str, dict[str, dict]]]) -> str:
    """Shampoo4bit (``cholesky_ef``) / 32-bit Shampoo (``none``), amortized, per model (rows)
    and interval configuration (columns)."""
    configs = list(by_config)
    models = list(next(iter(by_config.values())))
    lines = [
        "Shampoo4bit / 32-bit Shampoo (amortized ms/step of `cholesky_ef` / `none`):",
        "",
        "| model | " + " | ".join(f"T1={a}, T2={b}" for a, b in configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    for m in models:
        cells = []
        for c in configs:
            res = by_config[c][m]
            ok = "cholesky_ef" in res
            cells.append(
                f"{res['cholesky_ef']['amortized'] / res['none']['amortized']:.2f}" if ok else ""
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_intervals(text: str) -> list[tuple[int, int]]:
    """``"10/50,1/50"`` -> ``[(10, 50), (1, 50)]``."""
    out = []
    for item in text.split(","):
        t1, _, t2 = item.partition("/")
        out.append((int(t1), int(t2)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument(
        "--intervals",
        default="10/50,1/50",
        help="T1/T2 configurations (stat_interval/root_interval), comma-separated",
    )
    ap.add_argument("--T1", type=int, default=None, help="with --T2: one configuration only")
    ap.add_argument("--T2", type=int, default=None)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument(
        "--peers-up-to",
        type=int,
        default=1024,
        help="time the peers' windows only on MLPs up to this width (slow)",
    )
    ap.add_argument(
        "--compile-step",
        action="store_true",
        help="add `none` and `cholesky_ef` with torch.compile(opt.step, dynamic=False)",
    )
    ap.add_argument(
        "--variants",
        default=",".join(ROWS),
        help="the qshampoo rows to time, comma-separated (base only is always timed)",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument(
        "--heavyball-eager",
        action="store_true",
        help="run heavyball's helpers uncompiled (its default, torch.compile with max-autotune, "
        "failed on the H200 with torch 2.11 / triton 3.6)",
    )
    ap.add_argument("--out", default=None, help="append the table to this markdown file")
    args = ap.parse_args(argv)
    variants = tuple(args.variants.split(","))
    unknown = [v for v in variants if v not in ROWS]
    if unknown:
        ap.error(f"unknown variants {unknown}: choose from {list(ROWS)}")
    if "none" not in variants:
        ap.error("--variants must include none: every ratio is to it")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    header = f"Machine: {machine(device)}\nCommand: `python {' '.join(sys.argv)}`"
    print(header, flush=True)
    configs = parse_intervals(args.intervals)
    if args.T1 is not None or args.T2 is not None:
        configs = [(args.T1 or 10, args.T2 or 50)]
    by_config: dict[tuple[int, int], dict[str, dict]] = {c: {} for c in configs}
    for m in args.models.split(","):
        width = int(m[3:].split("x")[0]) if m.startswith("mlp") else 0
        with_peers = not args.no_peers and width <= args.peers_up_to
        for T1, T2 in configs:
            t = time.perf_counter()
            by_config[(T1, T2)][m] = measure(
                m,
                T1,
                T2,
                args.reps,
                with_peers,
                args.compile_step,
                device,
                args.heavyball_eager,
                variants,
            )
            print(f"{m} T1={T1} T2={T2}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    tables = [table(results, T1, T2) for (T1, T2), results in by_config.items()]
    text = f"{header}\n\n" + "\n\n".join(tables) + f"\n\n{ratios(by_config)}\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%d %H:%M')}\n\n{text}")


if __name__ == "__main__":
    main()
