"""Train one ``(task, optimizer, seed)`` run, checkpointing so it can be resumed exactly.

A run is deterministic given its seed: the seed fixes the model's initialisation, the order of the
data (see :mod:`qshampoo.bench.batches`) and every random number the model draws. A checkpoint
holds the model, the optimizer, the step, the random-number generators' states and the history
so far; it is written to a temporary file and renamed over the old one (``os.replace``), so a
kill at any moment leaves either the previous checkpoint or the new one. Resuming from it gives
results equal to an uninterrupted run's.

With ``isolate=True`` a run executes in a fresh Python process (``multiprocessing`` spawn), so
its peak resident memory is its own and not the high-water mark of earlier runs. An interrupt
of the parent (Ctrl-C, or SIGTERM while :func:`sigterm_raises` is in force) ends the child too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_map

from ..peak import reset_process_peak as reset_peak_rss
from . import optimizers as optim_mod
from .recorder import FORMAT_VERSION, RESULT, Recorder, jsonable, write_json
from .tasks import Task, TaskData

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


class RunInterrupted(Exception):
    """Raised when a run stops before its last step (``stop_after``, used by tests)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``kill`` and job schedulers send), raised in the main thread so that the
    interrupt paths run: children are ended, finished runs and checkpoints are kept."""


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises :class:`Terminated` instead of ending the process at
    once (which would leave a spawned run training on and writing into the report folder)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@dataclass
class RunSpec:
    """Everything that defines one run. :meth:`settings` are the fields that change the numbers;
    their hash, :meth:`fingerprint`, marks the run's checkpoint and result, so that neither is
    taken for a run with other settings."""

    task: Task
    optimizer: str
    seed: int
    steps: int
    hparams: dict[str, Any]
    run_dir: str
    device: str = "cpu"
    eval_every: int | None = None
    checkpoint_every: int | None = None  # default: every evaluation
    resume: bool = False
    progress: bool = True
    threads: int | None = None
    stop_after: int | None = None  # stop (as if killed) after this many steps; for tests
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        t = self.task
        key = {
            "task": t.name,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "steps": self.steps,
            "hparams": jsonable(self.hparams),
            "batch_size": t.batch_size,
            "eval_every": t.eval_interval(self.steps, self.eval_every),
            "eval_limit": t.eval_limit,
            "warmup": t.warmup,
            "final_lr": t.final_lr,
            "device": torch.device(self.device).type,
        }
        if self.extra.get("validation"):  # evaluated on a held-out split, not the test set
            key["validation"] = True
        return key

    def fingerprint(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def differences(old: dict | None, new: dict) -> str:
    """What differs between two runs' :meth:`RunSpec.settings`, e.g. ``"steps 20 -> 30"``."""
    if not old:
        return "settings not recorded"

    def flat(s: dict) -> dict:
        return {**s, **{f"hparams.{k}": v for k, v in s.get("hparams", {}).items()}}

    was, now = flat(old), flat(new)
    keys = sorted(k for k in was.keys() | now.keys() if k != "hparams" and was.get(k) != now.get(k))
    return ", ".join(f"{k} {was.get(k)} -> {now.get(k)}" for k in keys)


# --------------------------------------------------------------------------------------------
# Learning-rate schedule (stateless: a function of the step), checkpoints, generators
# --------------------------------------------------------------------------------------------


def lr_factor(step: int, steps: int, warmup: float, final: float) -> float:
    """Linear warm-up over ``warmup * steps`` steps, then cosine decay to ``final`` x peak."""
    w = int(round(warmup * steps))
    if step < w:
        return (step + 1) / w
    progress = min(1.0, (step - w) / max(1, steps - w))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Some peers keep tensor subclasses in their state, which weights_only refuses. The file
        # is one this harness wrote itself.
        return torch.load(path, map_location="cpu", weights_only=False)


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on tensors with >= 2 dims (weights), none on biases and norm scales."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    return groups + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])


def _to(batch, device):
    """Every tensor of ``batch`` (nested lists, tuples, dicts) on ``device``."""
    return tree_map(lambda t: t.to(device, non_blocking=True) if torch.is_tensor(t) else t, batch)


@torch.no_grad()
def evaluate(task: Task, model, test, device, limit) -> dict[str, float]:
    """Mean loss and metric over the (limited) test set, weighted by batch size."""
    was_training = model.training
    model.eval()
    loss_sum = metric_sum = 0.0
    count = 0
    for x, y in test.eval_batches(task.eval_batch_size, limit):
        x, y = _to(x, device), _to(y, device)
        out = model(x)
        n = int(y.numel()) if y.ndim > 1 else int(y.shape[0])
        loss_sum += float(task.loss_fn(out, y)) * n
        if task.metric_fn is not None:
            metric_sum += float(task.metric_fn(out, y)) * n
        count += n
    model.train(was_training)
    loss = loss_sum / max(count, 1)
    metric = metric_sum / max(count, 1) if task.metric_fn is not None else loss
    return {"loss": loss, "metric": metric, "samples": count}


def _params_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def build(spec: RunSpec, data: TaskData, device: torch.device):
    """A fresh model and its optimizer for ``spec`` (seed the generators first)."""
    model = spec.task.model_fn(data.info).to(device)
    hp = dict(spec.hparams)
    wd = float(hp.pop("weight_decay", 0.0))
    opt = optim_mod.build(spec.optimizer, param_groups(model, wd), weight_decay=wd, **hp)
    return model, opt


def warm_up(spec: RunSpec, data: TaskData, device: torch.device) -> None:
    """One throwaway training step and evaluation batch on a throwaway model and optimizer.

    PyTorch initialises kernels, thread pools and lazy imports on first use; without this, the
    first run in a process would pay for them inside its timed steps. Random-number generators
    are restored afterwards, so the run itself is unchanged.
    """
    rng = _rng_state(device)
    try:
        model, opt = build(spec, data, device)
        x, y = _to(data.train.batch(spec.seed, 0), device)
        spec.task.loss_fn(model(x), y).backward()
        opt.step()
        with torch.no_grad():
            model.eval()
            for xe, _ in data.test.eval_batches(spec.task.eval_batch_size, 1):
                model(_to(xe, device))
    finally:
        _set_rng_state(rng, device)


def train_run(spec: RunSpec, data: TaskData | None = None) -> dict:
    """Run ``spec`` to its last step (or to ``spec.stop_after``) and return its result dict,
    also written as ``result.json`` (and the final weights as ``model.pt``) in ``spec.run_dir``.
    """
    threads_before = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        if data is None:
            data = spec.task.data_fn(validation=bool(spec.extra.get("validation", False)))
        return _train(spec, data)
    finally:
        torch.set_num_threads(threads_before)


def _start(spec: RunSpec, data: TaskData, device: torch.device):
    """The model, optimizer and recorder at the run's first step, or at its checkpoint's when
    resuming, and the peak learning rates (the schedule's 1.0, read before a checkpoint's
    scheduled ones are loaded): ``(model, opt, rec, peak_lrs, step, diverged, resumed_from)``."""
    warm_up(spec, data, device)
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(spec.seed)
    model, opt = build(spec, data, device)
    task = spec.task
    rec = Recorder(
        optimizer=spec.optimizer,
        seed=spec.seed,
        task=task.name,
        hparams=spec.hparams,
        metric_name=task.metric_name,
        higher_is_better=task.higher_is_better,
        percent=task.percent,
    ).watch(opt)
    peak_lrs = [g["lr"] for g in opt.param_groups]
    path = Path(spec.run_dir) / CHECKPOINT
    if path.exists() and not spec.resume:
        path.unlink()
    if not path.exists():
        return model, opt, rec, peak_lrs, 0, False, None
    ckpt = load_checkpoint(path)
    if ckpt.get("fingerprint") != spec.fingerprint():
        raise ValueError(
            f"{path} was written by a run with other settings "
            f"({differences(ckpt.get('settings'), spec.settings())})"
        )
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    rec.load_state_dict(ckpt["recorder"])
    _set_rng_state(ckpt["rng"], device)
    step = int(ckpt["step"])
    return model, opt, rec, peak_lrs, step, bool(ckpt["diverged"]), step


def _train(spec: RunSpec, data: TaskData) -> dict:
    task, device = spec.task, torch.device(spec.device)
    Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
    eval_every = task.eval_interval(spec.steps, spec.eval_every)
    ckpt_every = max(1, int(spec.checkpoint_every or eval_every))
    model, opt, rec, peak_lrs, step, diverged, resumed_from = _start(spec, data, device)
    boost = spec.extra.get("lr_boost")  # (first, last, factor): injected instability, for tests
    bar = None
    if spec.progress:
        from tqdm.auto import tqdm

        what = f"{task.name} {spec.optimizer} seed {spec.seed}"
        what += f" ({spec.steps} steps)" if "budget" in spec.extra else ""
        bar = tqdm(total=spec.steps, initial=step, desc=what, unit="step", file=sys.stderr)
    model.train()
    try:
        while step < spec.steps and not diverged:
            if spec.stop_after is not None and step >= spec.stop_after:
                raise RunInterrupted(f"stopped after {step} steps")
            factor = lr_factor(step, spec.steps, task.warmup, task.final_lr)
            if boost and boost[0] <= step <= boost[1]:
                factor *= boost[2]
            for g, lr0 in zip(opt.param_groups, peak_lrs, strict=True):
                g["lr"] = lr0 * factor
            t0, c0 = time.perf_counter(), time.process_time()
            x, y = _to(data.train.batch(spec.seed, step), device)
            loss = task.loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())  # waits for the device
            rec.step(value, time.perf_counter() - t0, time.process_time() - c0)
            step += 1
            diverged = not math.isfinite(value) and not _params_finite(model)
            if step % eval_every == 0 or step == spec.steps or diverged:
                t1 = time.perf_counter()
                ev = evaluate(task, model, data.test, device, task.eval_limit)
                rec.eval(ev["metric"], ev["loss"], time.perf_counter() - t1)
                if bar is not None:
                    bar.set_postfix(loss=f"{value:.3f}", metric=f"{ev['metric']:.4f}")
            if bar is not None:
                bar.update(1)
            if step % ckpt_every == 0 and step < spec.steps and not diverged:
                state = {"version": FORMAT_VERSION, "fingerprint": spec.fingerprint(), "step": step}
                state.update(settings=spec.settings(), diverged=diverged, rng=_rng_state(device))
                state.update(model=model.state_dict(), optimizer=opt.state_dict())
                atomic_save(
                    {**state, "recorder": rec.state_dict()}, Path(spec.run_dir) / CHECKPOINT
                )
    finally:
        if bar is not None:
            bar.close()
    return _finish(spec, data, model, opt, rec, diverged, resumed_from)


def _finish(spec: RunSpec, data, model, opt, rec: Recorder, diverged, resumed_from) -> dict:
    """The final evaluation on the whole test set, the result, and the files of a finished run:
    ``model.pt``, then ``result.json`` (a run is finished when its result is written)."""
    device, run_dir = torch.device(spec.device), Path(spec.run_dir)
    t1 = time.perf_counter()
    final = evaluate(spec.task, model, data.test, device, spec.task.final_eval_limit)
    rec.eval_s += time.perf_counter() - t1
    if not _params_finite(model):
        final = {"loss": float("nan"), "metric": float("nan"), "samples": final["samples"]}
    result = rec.result(
        final,
        steps=spec.steps,
        fingerprint=spec.fingerprint(),
        settings=spec.settings(),
        device=str(device),
        num_params=sum(p.numel() for p in model.parameters()),
        diverged=diverged,
        resumed_from=resumed_from,
        torch_threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        **{k: spec.extra[k] for k in ("budget", "full_steps") if k in spec.extra},
    )
    atomic_save(model.state_dict(), run_dir / MODEL)
    write_json(run_dir / RESULT, result)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return result


def load_result(run_dir: str | os.PathLike, fingerprint: str | None = None) -> dict | None:
    """A finished run's result, or ``None`` (missing, unreadable or other settings)."""
    try:
        result = json.loads((Path(run_dir) / RESULT).read_text())
    except (OSError, ValueError):
        return None
    if fingerprint is not None and result.get("fingerprint") != fingerprint:
        return None
    return result


# --------------------------------------------------------------------------------------------
# Running in a fresh process
# --------------------------------------------------------------------------------------------


def _child(spec: RunSpec) -> None:
    try:
        train_run(spec)
    except KeyboardInterrupt:
        sys.exit(130)
    except ValueError as e:  # a refused setting: one line for the parent to show
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def can_isolate(spec: RunSpec) -> bool:
    """A run can go to a spawned process when its task pickles and the main module, if it
    defines any of the task's callables, is a file the child can import again."""
    try:
        blob = pickle.dumps(spec.task)
    except Exception:
        return False
    main = sys.modules.get("__main__")
    return b"__main__" not in blob or bool(getattr(main, "__file__", None))


def run_isolated(spec: RunSpec) -> dict:
    """``train_run(spec)`` in a spawned process; returns the result it wrote. An exception in
    the parent while it waits (Ctrl-C, :class:`Terminated`) ends the child before it goes on."""
    import multiprocessing as mp

    if spec.threads is None:
        spec.threads = torch.get_num_threads()
    proc = mp.get_context("spawn").Process(target=_child, args=(spec,), name="qshampoo-bench")
    # OpenMP worker threads spin while they wait by default; when other work shares the cores,
    # that makes a 2-thread run many times slower than a 1-thread one (measured: 1300 vs 200
    # ms/step on a busy 2-core machine). Passive waiting removes that cliff and costs little on
    # an idle machine. It must be in the environment before the child loads OpenMP; a value the
    # user set is kept.
    added = "OMP_WAIT_POLICY" not in os.environ
    if added:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        proc.start()
    finally:
        if added:
            del os.environ["OMP_WAIT_POLICY"]
    try:
        proc.join()
    except BaseException:
        # Ctrl-C reached the child too; SIGTERM did not. Either way it stops now: a checkpoint
        # is always complete (renamed into place), so nothing it leaves is half-written.
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        raise
    what = f"run {spec.optimizer} seed {spec.seed}"
    if proc.exitcode == 130:
        raise KeyboardInterrupt
    if proc.exitcode == 2:
        raise ValueError(f"{what} refused its settings (its error is printed above)")
    if proc.exitcode != 0:
        raise RuntimeError(f"{what} failed in its process (exit code {proc.exitcode}); see above")
    result = load_result(spec.run_dir)
    if result is None:
        raise RuntimeError(f"{what} wrote no {RESULT}")
    return result
