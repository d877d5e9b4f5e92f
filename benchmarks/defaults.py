"""Which configuration should ``Shampoo4bit`` default to? Train the candidates, tabulate them.

Each candidate is a ``qshampoo bench`` optimizer name with ``--hp`` overrides. ``run`` trains
every candidate on one task for each seed, seed by seed (all candidates of seed 0, then of
seed 1, ...: the candidates alternate, so a slow spell of the shared machine does not land on
one of them), one ``qshampoo bench`` invocation per (candidate, seed) into
``ROOT/TASK/CANDIDATE/seedK`` (a finished folder is skipped, so an interrupted run resumes).

    python benchmarks/defaults.py run --task shakespeare --seeds 0,1,2 --root /tmp/defaults
    python benchmarks/defaults.py table --root /tmp/defaults            # markdown to stdout
    python benchmarks/defaults.py time --task shakespeare               # optimizer step time
    python benchmarks/defaults.py ddp --task fashion-mnist              # the default under DDP

``table`` gives per candidate and task the final metric per seed and its mean, the paired
difference from 32-bit Shampoo (same seed: same initialisation and data order; relative for a
loss, in points for an accuracy) with twice its standard error over seeds, the preconditioner
bytes at the end of the run and how many times fewer than 32-bit Shampoo's, and the runs' CPU
ms per training step (forward, backward, optimizer; one thread; from the harness).

``time`` measures the optimizer alone, the same way for every candidate, in one process: the
task's model with one fixed batch, each candidate's optimizer warmed up for ``--warmup`` steps
(so ``bits="auto"`` has promoted what its budget allows), then in every repetition each
candidate in turn runs ``2 * T2`` consecutive ``opt.step()`` calls on fixed gradients (a
window in which the statistics and the roots fall due at their real frequency); the table
gives the median CPU ms per step (the thread's CPU time, which other processes on a shared
machine disturb far less than wall time). Only times from one invocation are comparable with
each other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: candidate -> (harness optimizer name, --hp overrides without the "NAME." prefix)
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "adamw": ("adamw", []),
    "32-bit": ("shampoo", []),
    "paper (ef_decay=0.9)": ("shampoo4bit", []),
    "ef_decay=0": ("shampoo4bit", ["ef_decay=0.0"]),
    "auto 1/8": ("shampoo4bit-auto", ["memory_budget=0.125"]),
    "auto 1/8, ef_decay=0": ("shampoo4bit-auto", ["memory_budget=0.125", "ef_decay=0.0"]),
}
REFERENCE = "32-bit"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def command(task: str, cand: str, seed: int, out: Path) -> list[str]:
    opt, hps = CANDIDATES[cand]
    cmd = ["qshampoo", "bench", "--task", task, "--optimizers", opt]
    for hp in hps:
        cmd += ["--hp", f"{opt}.{hp}"]
    cmd += ["--seeds", f"{seed},", "--threads", "1", "--no-progress", "--out", str(out)]
    return cmd


def run(args) -> None:
    root = Path(args.root)
    cands = [c.strip() for c in args.candidates.split(";")] if args.candidates else list(CANDIDATES)
    seeds = [int(s) for s in args.seeds.split(",")]
    exe = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{exe}{os.pathsep}{os.environ.get('PATH', '')}"}
    for seed in seeds:
        for cand in cands:
            out = root / args.task / slug(cand) / f"seed{seed}"
            if (out / "results.json").exists():
                continue
            cmd = command(args.task, cand, seed, out)
            print(f"[{time.strftime('%H:%M:%S')}] {shlex.join(cmd)}", flush=True)
            subprocess.run(["nice", "-n", "19", *cmd], check=True, env=env)


# -- the table -------------------------------------------------------------------------------
def load(root: Path, task: str) -> dict[str, dict[int, dict]]:
    """candidate -> seed -> the run's record (from ``results.json``)."""
    out: dict[str, dict[int, dict]] = {}
    for cand in CANDIDATES:
        for res_file in sorted((root / task / slug(cand)).glob("seed*/results.json")):
            res = json.loads(res_file.read_text())
            for r in res["runs"]:
                r["_command"] = res["meta"].get("command")
                r["_machine"] = res.get("machine")
                out.setdefault(cand, {})[r["seed"]] = r
    return out


def table(args) -> None:
    root = Path(args.root)
    tasks = [t for t in ("shakespeare", "fashion-mnist") if (root / t).exists()]
    for task in tasks:
        runs = load(root, task)
        reference = args.versus or REFERENCE
        if reference not in runs:
            continue
        ref = runs[reference]
        first = next(iter(ref.values()))
        is_loss = task == "shakespeare"
        unit = "val loss" if is_loss else "test accuracy (%)"
        diff_unit = "relative, %" if is_loss else "points"
        print(f"\n### {task} ({first['steps']} steps, {unit})\n")
        print(
            f"| candidate | {unit}, per seed | mean | vs {reference} per seed ({diff_unit}) | "
            f"vs {reference}, mean ± 2 s.e. | preconditioner bytes | fewer than 32-bit | "
            "CPU ms/step (harness) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        ref_bytes = statistics.mean(
            r["memory"]["optimizer_state"]["preconditioners"] for r in runs[REFERENCE].values()
        )
        for cand, by_seed in runs.items():
            seeds = sorted(by_seed)
            vals = [metric(by_seed[s], is_loss) for s in seeds]
            diffs = [
                paired(by_seed[s], ref[s], is_loss)
                for s in seeds
                if s in ref and ref[s] is not None
            ]
            nbytes = statistics.mean(
                r["memory"]["optimizer_state"]["preconditioners"] for r in by_seed.values()
            )
            cpu = statistics.mean(r["time"]["cpu_ms_per_step"] for r in by_seed.values())
            fmt = "{:.4f}" if is_loss else "{:.2f}"
            dfmt = "{:+.2f}"
            mean_d = statistics.mean(diffs) if diffs else float("nan")
            se2 = 2 * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
            ratio = ref_bytes / nbytes if nbytes else float("inf")
            print(
                f"| {cand} | {', '.join(fmt.format(v) for v in vals)} "
                f"| {fmt.format(statistics.mean(vals))} "
                f"| {', '.join(dfmt.format(d) for d in diffs)} "
                f"| {dfmt.format(mean_d)} ± {se2:.2f} "
                f"| {nbytes / 2**20:.2f} MiB | "
                + ("—" if nbytes == 0 else f"{ratio:.2f}×")
                + f" | {cpu:.1f} |"
            )
        print(f"\nseeds: {sorted(ref)}; commands (one per seed, `--seeds K,`):\n")
        for cand, by_seed in runs.items():
            print(f"- {cand}: `{by_seed[min(by_seed)]['_command']}`")


def metric(r: dict, is_loss: bool) -> float:
    return r["final"]["loss"] if is_loss else 100 * r["final"]["metric"]


def paired(r: dict, ref: dict, is_loss: bool) -> float:
    """This run against 32-bit Shampoo with the same seed: % for a loss, points otherwise."""
    if is_loss:
        return 100 * (metric(r, True) / metric(ref, True) - 1)
    return metric(r, False) - metric(ref, False)


# -- optimizer step time ---------------------------------------------------------------------
def build_optimizer(task_name: str, cand: str, params):
    from qshampoo.bench import optimizers
    from qshampoo.bench.tasks import get_task

    task = get_task(task_name)
    opt, hps = CANDIDATES[cand]
    hp = task.hyperparameters(opt, task.steps)
    for item in hps:
        k, v = item.split("=", 1)
        hp[k] = json.loads(v)
    return optimizers.build(opt, params, **hp), hp


def step_time(args) -> None:
    import torch
    from torch import nn

    from qshampoo.bench.models import CharGPT, SmallResNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cands = [c.strip() for c in args.candidates.split(";")] if args.candidates else list(CANDIDATES)
    if args.task == "shakespeare":
        make = lambda: CharGPT(vocab=80)  # noqa: E731
        idx = torch.randint(0, 80, (32, 64))
        loss_fn = lambda net: nn.functional.cross_entropy(  # noqa: E731
            net(idx).flatten(0, 1), idx.roll(-1, 1).flatten()
        )
    else:
        make = SmallResNet
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
        loss_fn = lambda net: nn.functional.cross_entropy(net(x), y)  # noqa: E731
    setups = {}
    for cand in cands:
        torch.manual_seed(0)
        net = make()
        opt, hp = build_optimizer(args.task, cand, net.parameters())
        window = 2 * hp.get("root_interval", 50)
        for _ in range(args.warmup):  # real gradients, so the statistics (and "auto") evolve
            opt.zero_grad()
            loss_fn(net).backward()
            opt.step()
        opt.zero_grad()
        loss_fn(net).backward()  # the gradients every timed step reuses
        setups[cand] = (net, opt, window)
    times: dict[str, list[float]] = {c: [] for c in cands}
    for _ in range(args.reps):
        for cand in cands:
            net, opt, window = setups[cand]
            with torch.no_grad():
                # this thread's CPU time: other processes on a shared machine delay the
                # window's wall time, not its CPU time (one torch thread)
                t0 = time.thread_time()
                for _ in range(window):
                    opt.step()
                times[cand].append(1e3 * (time.thread_time() - t0) / window)
    print(
        f"\nOptimizer step CPU time, {args.task} model, median of {args.reps} windows of 2·T2 "
        f"steps after {args.warmup} warm-up steps; {machine()}; {args.threads} thread(s)\n"
    )
    print("| candidate | CPU ms/step (median) | min | max | vs 32-bit | 8-bit factors |")
    print("|---|---|---|---|---|---|")
    ref = statistics.median(times[REFERENCE]) if REFERENCE in times else None
    for cand in cands:
        t = times[cand]
        med = statistics.median(t)
        opt = setups[cand][1]
        prec = opt.diagnostics().get("precision") if hasattr(opt, "diagnostics") else None
        eight = (
            f"{prec['factors_8bit']} / {prec['factors_8bit'] + prec['factors_4bit']}"
            if prec
            else "—"
        )
        rel = f"{med / ref:.2f}×" if ref else "—"
        print(f"| {cand} | {med:.2f} | {min(t):.2f} | {max(t):.2f} | {rel} | {eight} |")


# -- the default under DDP ---------------------------------------------------------------------
def _ddp_worker(rank: int, port: int, world: int, task: str, steps: int, out: str) -> None:
    import warnings

    import torch
    import torch.distributed as dist
    from torch import nn

    import qshampoo
    from qshampoo.bench.models import CharGPT, SmallResNet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = CharGPT(vocab=80) if task == "shakespeare" else SmallResNet()
    model = nn.parallel.DistributedDataParallel(net)
    t1 = 8 if task == "shakespeare" else 9
    opt = qshampoo.Shampoo4bit(model.parameters(), lr=3e-3, stat_interval=t1, root_interval=5 * t1)
    g = torch.Generator().manual_seed(rank)
    worst = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            if task == "shakespeare":
                idx = torch.randint(0, 80, (16, 64), generator=g)
                logits = model(idx)
                loss = nn.functional.cross_entropy(logits.flatten(0, 1), idx.roll(-1, 1).flatten())
            else:
                x, y = (
                    torch.randn(64, 1, 28, 28, generator=g),
                    torch.randint(0, 10, (64,), generator=g),
                )
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            r = opt.memory_report()
            worst = max(worst, r["preconditioners"] / r["memory_budget"])
    prec = opt.diagnostics()["precision"]
    mine = [
        str(w.message)
        for w in caught
        if "qshampoo" in w.filename or "memory_budget" in str(w.message)
    ]
    line = (
        f"rank {rank}: bits={opt.param_groups[0]['bits']!r}, preconditioners "
        f"{r['preconditioners']} B, budget {r['memory_budget']} B (1/8 of this rank's 32-bit "
        f"{prec['reference_32bit']} B; all-4-bit {prec['all_4bit']} B), highest bytes/budget "
        f"over the run {worst:.3f}, factors 8/4-bit {prec['factors_8bit']}/{prec['factors_4bit']}, "
        f"qshampoo warnings: {mine or 'none'}"
    )
    Path(out, f"rank{rank}.txt").write_text(line + "\n")
    dist.destroy_process_group()


def ddp(args) -> None:
    """``Shampoo4bit`` with its defaults under DDP (blocks split across 2 gloo processes): the
    budget applies to each process's own blocks, is never exceeded, and nothing warns."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_ddp_worker, args=(port, 2, args.task, args.steps, out), nprocs=2)
        print(f"{args.task}, {args.steps} steps, DDP on 2 gloo processes:")
        for rank in range(2):
            print(Path(out, f"rank{rank}.txt").read_text().strip())


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--task", required=True)
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--root", default="/tmp/defaults")
    r.add_argument("--candidates", default="", help="names separated by ; (default: all)")
    t = sub.add_parser("table")
    t.add_argument("--root", default="/tmp/defaults")
    t.add_argument("--versus", default="", help="paired differences from this candidate")
    s = sub.add_parser("time")
    s.add_argument("--task", default="shakespeare")
    s.add_argument("--candidates", default="", help="names separated by ; (default: all)")
    s.add_argument("--reps", type=int, default=15)
    s.add_argument("--warmup", type=int, default=200)
    s.add_argument("--threads", type=int, default=1)
    d = sub.add_parser("ddp")
    d.add_argument("--task", default="shakespeare")
    d.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)
    {"run": run, "table": table, "time": step_time, "ddp": ddp}[args.cmd](args)


if __name__ == "__main__":
    main()
