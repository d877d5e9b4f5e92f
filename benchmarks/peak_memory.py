"""Peak memory of an optimizer step on the papers' models, each optimizer in its own process.

What a user hits is the peak of a training step, not the bytes the optimizer state holds. For
each model and optimizer a fresh process builds the model with real fp32 tensors on the device,
allocates every gradient (seeded noise), creates the optimizer and steps it twice; it reports

- *process peak*: the high-water mark of the whole process over both steps (on the CPU
  ``VmHWM``, on CUDA ``torch.cuda.max_memory_allocated``) — parameters, gradients, the state
  being built and every transient;
- *step peak*: the high-water mark of the second step alone (reset just before it), when the
  state already exists — what every later step of that kind costs;
- *temporaries*: the most bytes held at once by tensors created inside the second step
  (``qshampoo.peak.TensorPeak``, deterministic);
- the state (``memory_report()["preconditioners"]``, AdamW's moments) and the workspace the
  optimizer reports (``memory_report()["workspace"]``, the most it may allocate on top of it);
- on the CPU, where the memory held after the second step is (``qshampoo.peak.process_memory``):
  ``RssAnon`` (heap, tensors), ``RssFile`` (mostly code pages of the shared libraries, brought
  in as kernels are first used) and glibc's heap in use / kept free (``mallinfo2``). A second
  table gives each above the AdamW process's, less the state: what the process holds beyond
  its state, and where.

The table gives each peak *above the AdamW process's*, which shares everything but the
optimizer, for two kinds of step:

- ``due``: ``stat_interval=1, root_interval=1``, every statistic and root is updated — the step
  that comes every ``root_interval`` steps in training (the worst one);
- ``idle``: nothing is due (intervals beyond the run) — every other step.

    python benchmarks/peak_memory.py                                  # ViT-Small and LLaMA-130M
    python benchmarks/peak_memory.py --models vit-small-cifar100 \
        --optimizers adamw,none,cholesky_ef,naive
    python benchmarks/peak_memory.py --device cuda --out /tmp/peak.md
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import time

import torch
from torch.utils._pytree import tree_leaves

import qshampoo
from qshampoo.bench.paper_models import PAPER_MODELS
from qshampoo.peak import (
    TensorPeak,
    process_memory,
    process_peak,
    process_rss,
    reset_process_peak,
)

MiB = 2**20
#: optimizer name -> qshampoo.Shampoo keywords (None: torch.optim.AdamW)
OPTIMIZERS: dict[str, dict | None] = {
    "adamw": None,
    "none": {"quant": "none"},
    "shampoo4bit": {},  # qshampoo.Shampoo4bit's defaults
    "paper": {"paper": True},  # qshampoo.Shampoo4bit(paper=True): 4 bits everywhere
    "cholesky_ef": {"quant": "cholesky_ef"},
    "cholesky": {"quant": "cholesky"},
    "naive": {"quant": "naive"},
    "eigen": {"quant": "eigen"},
}
PHASES = {"due": (1, 1), "idle": (10**9, 10**9)}
LABELS = {
    "none": "32-bit Shampoo",
    "shampoo4bit": "4-bit Shampoo (default)",
    "paper": "4-bit Shampoo (paper=True)",
    "cholesky_ef": "4-bit Shampoo (CQ+EF)",
    "cholesky": "4-bit CQ",
    "naive": "4-bit naive (VQ)",
    "eigen": "4-bit eigenvectors (Paper B)",
}


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else process_peak()


def _reset(device: torch.device) -> None:
    """Start a new high-water mark from what is held now (on the CPU after returning freed heap
    memory to the system, so that the mark does not start from the allocator's slack)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _trim()
    if device.type == "cpu" and not reset_process_peak():
        raise RuntimeError("cannot reset the process's peak memory here (needs Linux /proc)")


def _tensors(state: dict) -> list[torch.Tensor]:
    return [t for t in tree_leaves(list(state.values())) if isinstance(t, torch.Tensor)]


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def child(model_name: str, opt_name: str, phase: str, device: str) -> dict:
    """One measurement, in this (fresh) process."""
    torch.set_num_threads(1)
    dev = torch.device(device)
    builder, base, _ = PAPER_MODELS[model_name]
    torch.manual_seed(0)
    with dev:
        model = builder()
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator(dev).manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, device=dev).mul_(1e-3)
    kw = OPTIMIZERS[opt_name]
    if kw is None:
        lr = 1e-3 if base == "adamw" else 0.1
        opt = (
            torch.optim.AdamW(params, lr=lr)
            if base == "adamw"
            else torch.optim.SGD(params, lr=lr, momentum=0.9)
        )
    else:
        t1, t2 = PHASES[phase]
        cls = qshampoo.Shampoo4bit if opt_name in ("shampoo4bit", "paper") else qshampoo.Shampoo
        opt = cls(params, base=base, stat_interval=t1, root_interval=t2, **kw)
    _reset(dev)
    start = time.perf_counter()
    opt.step()
    first_s = time.perf_counter() - start
    _reset(dev)
    held = process_rss() if dev.type == "cpu" else torch.cuda.memory_allocated(dev)
    # the state tensors go in as a temporary list: holding them would keep replaced ones alive
    with TensorPeak(existing=_tensors(opt.state)) as tp:
        start = time.perf_counter()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        step_s = time.perf_counter() - start
    step_peak = _peak(dev)
    after = process_memory() if dev.type == "cpu" else {}
    out = {
        "model": model_name,
        "optimizer": opt_name,
        "phase": phase,
        "process_peak": process_peak() if dev.type == "cpu" else None,
        "step_peak": step_peak,
        "held_before_step": held,
        "temporaries": tp.peak,
        # where the memory held after the step is (CPU): see process_memory
        "rss_anon": after.get("anon"),
        "rss_file": after.get("file"),
        "heap_in_use": after.get("heap_in_use"),
        "heap_free": after.get("heap_free"),
        "first_step_s": first_s,
        "step_s": step_s,
    }
    if kw is not None:
        rep = opt.memory_report()
        out["state"] = rep["preconditioners"]
        out["workspace"] = rep.get("workspace")
    return out


def run_child(model: str, opt: str, phase: str, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", model, opt, phase, "--device", device]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[dict], device: str) -> str:
    what = "max_memory_allocated" if device.startswith("cuda") else "VmHWM"
    lines = [
        f"Peak memory above the AdamW process's ({what}), MiB; state = preconditioner bytes, "
        "workspace = what the optimizer reports it may allocate on top; ratio = this peak / "
        "32-bit Shampoo's.",
        "",
        "| model | step | optimizer | state | workspace | step peak above AdamW | ratio | "
        "process peak above AdamW | ratio | temporaries of the step | step (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, ref, fp32 in _against_adamw(rows):
        cells = []
        for key in ("step_peak", "process_peak"):
            a, f = _above(r, ref, key), _above(fp32, ref, key)
            cells.append("—" if a is None else f"{a:.0f}")
            cells.append("—" if a is None or not f else f"{a / f:.2f}")
        ws = r.get("workspace")
        lines.append(
            f"| {r['model']} | {r['phase']} | {LABELS.get(r['optimizer'], r['optimizer'])} | "
            f"{r['state'] / MiB:.0f} | {'—' if ws is None else f'{ws / MiB:.0f}'} | "
            f"{' | '.join(cells)} | {r['temporaries'] / MiB:.0f} | {r['step_s']:.2f} |"
        )
    return "\n".join(lines)


def held_table(rows: list[dict]) -> str:
    """What each Shampoo process holds after the measured step beyond AdamW's process and
    its own state (CPU), split by where it is."""
    lines = [
        "Held after the measured step, above the AdamW process's, MiB (`held before the step` "
        "and `RssAnon` less the state; `RssFile`: code and other file pages; glibc's heap in "
        "use less the state, and the free heap it keeps: every column above AdamW's).",
        "",
        "| model | step | optimizer | state | held before the step − state | "
        "RssAnon − state | RssFile | heap in use − state | heap kept free |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r, ref, _ in _against_adamw(rows):
        if r.get("rss_anon") is None:
            continue
        state = r["state"] / MiB
        cells = []
        for key, less in (
            ("held_before_step", state),
            ("rss_anon", state),
            ("rss_file", 0.0),
            ("heap_in_use", state),
            ("heap_free", 0.0),
        ):
            if r.get(key) is None:
                cells.append("—")
            else:
                cells.append(f"{_above(r, ref, key) - less:.1f}")
        lines.append(
            f"| {r['model']} | {r['phase']} | {LABELS.get(r['optimizer'], r['optimizer'])} | "
            f"{state:.0f} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def _against_adamw(rows: list[dict]):
    """``(row, the AdamW row, the 32-bit Shampoo row or None)`` of the same model and step for
    each optimizer's row but AdamW's, where an AdamW row was measured."""
    by_key = {(r["model"], r["optimizer"], r["phase"]): r for r in rows}
    for r in rows:
        ref = by_key.get((r["model"], "adamw", r["phase"]))
        if r["optimizer"] != "adamw" and ref is not None:
            yield r, ref, by_key.get((r["model"], "none", r["phase"]))


def _above(x: dict | None, ref: dict, key: str) -> float | None:
    """MiB of ``x[key]`` above the AdamW row ``ref``."""
    return None if x is None or x[key] is None else (x[key] - ref[key]) / MiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="vit-small-cifar100,llama-130m")
    ap.add_argument("--optimizers", default="adamw,none,shampoo4bit,paper")
    ap.add_argument("--phases", default="due,idle")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--json", help="also write the raw measurements here")
    ap.add_argument(
        "--child", nargs=3, metavar=("MODEL", "OPTIMIZER", "PHASE"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.device)))
        return 0
    rows = []
    for model in args.models.split(","):
        for phase in args.phases.split(","):
            for opt in args.optimizers.split(","):
                r = run_child(model, opt, phase, args.device)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    text = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, qshampoo {getattr(qshampoo, '__version__', '?')}, one thread per "
        f"process, device {args.device}\n\n" + table(rows, args.device)
    )
    if args.device == "cpu":
        text += "\n\n" + held_table(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
