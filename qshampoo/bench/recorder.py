"""Record your own training loop (:class:`Recorder`, or the Hugging Face and Lightning callbacks)
and write the harness's report from its runs; the format of a run's ``result.json``.

Run the script once per optimizer and seed into the same folder: every ``finish`` rewrites
``report.md`` / ``report.html`` from all the runs there (``docs/harness.md``,
``examples/recorder_loop.py``).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..peak import process_peak as peak_rss
from ..peak import process_rss as current_rss
from . import optimizers as optim_mod
from . import stability
from .measure import StepWatch

FORMAT_VERSION = 1
RESULT = "result.json"


def jsonable(obj):
    """``obj`` with tuples as lists, non-finite floats as ``None`` and unknown types as text."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON through a temporary file renamed over ``path`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1))
    tmp.replace(path)


class Recorder:
    """One training run (one optimizer, one seed) of any training loop.

    Args:
        out: the report folder; the run goes to ``out/runs/<optimizer>/seed<seed>/``. ``None``:
            nothing is written (the harness's runner writes its results itself).
        optimizer: the run's name in the report: a registry name (``"adamw"``,
            ``"shampoo4bit"``, ...; ``qshampoo bench --list``) gets its plain label.
        seed: runs of different optimizers with the same seed are compared pairwise.
        metric_name, higher_is_better, percent: what ``eval(metric)`` measures and how it is
            shown (``percent``: a fraction shown x100).
        task: the name of the trial, shown in the report's title.
        norms: record the gradient norm and the update's relative norm at every step (one copy
            of the parameters is kept during ``opt.step()``).
    """

    def __init__(
        self,
        out: str | Path | None = None,
        *,
        optimizer: str,
        seed: int = 0,
        metric_name: str = "metric",
        higher_is_better: bool = True,
        percent: bool = False,
        task: str = "custom",
        hparams: dict[str, Any] | None = None,
        norms: bool = True,
    ):
        self.out = None if out is None else Path(out)
        self.optimizer, self.seed, self.task = optimizer, int(seed), task
        self.metric = {
            "name": metric_name,
            "higher_is_better": higher_is_better,
            "percent": percent,
        }
        self.hparams = dict(hparams or {})
        self.norms = norms
        self.opt: torch.optim.Optimizer | None = None
        self.watch_: StepWatch | None = None
        self.losses: list[float] = []
        self.evals: list[dict] = []
        self.train_s = self.eval_s = self.cpu_s = 0.0
        self._last: float | None = None
        self._eval_since_step = False
        self._intervals: list[float] = []
        self.memory: dict[str, Any] = {"rss_start_bytes": current_rss()}

    # ---- hooks into the optimizer ----

    def watch(self, opt: torch.optim.Optimizer) -> Recorder:
        """Measure ``opt``'s steps (memory at its peak, norms) through its step hooks."""
        while not hasattr(opt, "_optimizer_step_pre_hooks") and hasattr(opt, "optimizer"):
            opt = opt.optimizer  # a trainer's wrapper (accelerate's AcceleratedOptimizer)
        self.opt = opt
        self.watch_ = StepWatch(opt, self.optimizer, norms=self.norms)
        if not self.hparams:
            self.hparams = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        self._last = time.perf_counter()
        return self

    # ---- what the loop reports ----

    def step(self, loss, seconds: float | None = None, cpu_seconds: float = 0.0) -> None:
        """Record one training step's loss (a tensor or a number). ``seconds``: how long the step
        took; by default the time since the previous ``step`` (an interval with an ``eval`` in
        it counts as the median of the others)."""
        value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self.losses.append(value if math.isfinite(value) else float("nan"))
        now = time.perf_counter()
        if seconds is None:
            if self._last is None or self._eval_since_step:
                seconds = statistics.median(self._intervals) if self._intervals else 0.0
            else:
                seconds = now - self._last
                self._intervals.append(seconds)
        self.train_s += seconds
        self.cpu_s += cpu_seconds
        self._last, self._eval_since_step = now, False

    def eval(self, metric: float, loss: float | None = None, seconds: float = 0.0, **extra) -> dict:
        """Record an evaluation of the model now (after ``len(losses)`` steps)."""
        diag = optim_mod.diagnostics(self.opt) if self.opt is not None else {}
        entry = {
            "step": len(self.losses),
            "train_s": self.train_s,
            "loss": None if loss is None else float(loss),
            "metric": float(metric),
            "quant_error": diag.get("quant_error"),
            **extra,
        }
        self.evals.append(entry)
        self.eval_s += seconds
        self._eval_since_step = True
        return entry

    # ---- checkpoints ----

    _STATE = ("losses", "evals", "train_s", "eval_s", "cpu_s", "memory")

    def state_dict(self) -> dict:
        state = {k: getattr(self, k) for k in self._STATE}
        return {**state, "watch": self.watch_.state_dict() if self.watch_ else None}

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])
        if self.watch_ is not None and state.get("watch"):
            self.watch_.load_state_dict(state["watch"])

    # ---- the result ----

    def result(self, final: dict | None = None, **extra) -> dict:
        """The run's result (the format ``qshampoo bench`` writes): ``final`` is ``{"metric",
        "loss"}`` of the final model (default: the last evaluation)."""
        last = self.evals[-1] if self.evals else {"metric": float("nan"), "loss": None}
        final = final or {"metric": last["metric"], "loss": last["loss"]}
        opt, w, steps = self.opt, self.watch_, len(self.losses)
        diag = optim_mod.diagnostics(opt) if opt is not None else {}
        state = optim_mod.state_bytes(self.optimizer, opt) if opt is not None else {}
        peak = w.optimizer_peak() if w else {}
        cuda = None
        if opt is not None and torch.cuda.is_available():
            device = next((p.device for g in opt.param_groups for p in g["params"]), None)
            if device is not None and device.type == "cuda":
                cuda = torch.cuda.max_memory_allocated(device)
        before = w.rss_before if w else None
        grads, updates = (w.grad_norms, w.update_ratios) if w else ([], [])
        return {
            "format": FORMAT_VERSION,
            "task": self.task,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "steps": steps,
            "completed_steps": steps,
            "hparams": jsonable(self.hparams),
            "metric": self.metric,
            "final": dict(final),
            "losses": self.losses,
            "evals": self.evals,
            "memory": {
                "optimizer_state": state,
                # state + the most temporaries one step held (see qshampoo.bench.measure)
                "optimizer_peak_bytes": peak.get("peak"),
                "step_workspace_bytes": peak.get("workspace"),
                "peak_rss_bytes": peak_rss(),
                "rss_start_bytes": self.memory.get("rss_start_bytes"),
                "rss_added_bytes": None if before is None else peak_rss() - before,
                "cuda_peak_bytes": cuda,
            },
            "time": {
                "train_s": self.train_s,
                "eval_s": self.eval_s,
                "wall_s": self.train_s + self.eval_s,
                "ms_per_step": 1000.0 * self.train_s / max(steps, 1),
                "cpu_s": self.cpu_s,
                "cpu_ms_per_step": 1000.0 * self.cpu_s / max(steps, 1),
            },
            "stability": {
                "nonfinite_losses": stability.nonfinite_count(self.losses),
                "optimizer_nonfinite_steps": diag.get("nonfinite_steps", 0),
                "root_failures": diag.get("root_failures", 0),
                "cholesky_failures": diag.get("cholesky_failures", 0),
                "loss_spikes": len(spikes := stability.loss_spikes(self.losses)),
                "spike_steps": [s + 1 for s in spikes],
                "grad_norm_ratio": stability.peak_ratio(grads),
                "update_ratio_max": max(stability.finite(updates), default=None),
                "diverged": bool(extra.pop("diverged", False)),
            },
            "norms": {"grad": grads, "update_ratio": updates},
            "diagnostics": jsonable(diag),
            **extra,
        }

    def finish(
        self, metric: float | None = None, loss: float | None = None, report: bool = True, **kw
    ) -> dict:
        """End the run: its result (``metric`` / ``loss``: of the final model; default the last
        evaluation's) goes to ``out/runs/<optimizer>/seed<seed>/result.json``, and with
        ``report`` the report of every run in ``out`` is written again. ``kw`` go to
        :func:`qshampoo.bench.report.report_folder` (e.g. ``lang="ja"``)."""
        final = None if metric is None else {"metric": float(metric), "loss": loss}
        result = self.result(final, isolated=False, recorded=True)
        if self.watch_ is not None:
            self.watch_.close()
        if self.out is not None:
            write_json(self.out / "runs" / self.optimizer / f"seed{self.seed}" / RESULT, result)
            if report:
                from .report import report_folder

                report_folder(self.out, **kw)
        return result


# --------------------------------------------------------------------------------------------
# Trainer integrations (imported lazily: transformers / lightning are not dependencies)
# --------------------------------------------------------------------------------------------


def HFCallback(
    out, *, optimizer: str, seed: int = 0, metric: str = "eval_loss", lang: str = "en", **kw
):
    """A ``transformers.TrainerCallback`` that records the Trainer's run like :class:`Recorder`.

    ``metric``: the key of ``Trainer.evaluate()``'s metrics to report (``"eval_loss"``, or e.g.
    ``"eval_accuracy"`` from your ``compute_metrics``). The training loss is taken from the
    Trainer's logs: set ``logging_steps=1`` for one value per step (otherwise each logged value
    is the mean over its interval, and loss spikes are judged on those). Other keywords go to
    :class:`Recorder` (``percent``, ``higher_is_better``, ``task``, ...); ``higher_is_better``
    defaults to False for a metric whose name ends in ``loss``. ``lang``: the report's.
    """
    from transformers import TrainerCallback

    kw.setdefault("higher_is_better", not metric.endswith("loss"))

    class _Callback(TrainerCallback):
        def __init__(self):
            self.rec = Recorder(out, optimizer=optimizer, seed=seed, metric_name=metric, **kw)
            self.step = 0

        def on_train_begin(self, args, state, control, optimizer=None, **_):
            self.rec.watch(optimizer)

        def on_log(self, args, state, control, logs=None, **_):
            if logs and "loss" in logs:
                # one entry per step since the last log, each the logged mean
                for _ in range(max(1, state.global_step - self.step)):
                    self.rec.step(logs["loss"])
                self.step = state.global_step

        def on_evaluate(self, args, state, control, metrics=None, **_):
            if metrics and metric in metrics:
                self.rec.eval(metrics[metric], metrics.get("eval_loss"))

        def on_train_end(self, args, state, control, **_):
            self.rec.finish(lang=lang)

    return _Callback()


def LightningCallback(
    out, *, optimizer: str, seed: int = 0, metric: str = "val_loss", lang: str = "en", **kw
):
    """A Lightning ``Callback`` that records the run like :class:`Recorder`: the loss from each
    ``training_step``'s output, ``metric`` (a key of ``trainer.callback_metrics``, what
    ``self.log`` wrote) after every validation. Other keywords go to :class:`Recorder`."""
    try:
        from lightning.pytorch import Callback
    except ImportError:
        from pytorch_lightning import Callback

    kw.setdefault("higher_is_better", not metric.endswith("loss"))

    class _Callback(Callback):
        def __init__(self):
            self.rec = Recorder(out, optimizer=optimizer, seed=seed, metric_name=metric, **kw)

        def on_fit_start(self, trainer, pl_module):
            self.rec.watch(trainer.optimizers[0])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None:
                self.rec.step(loss)

        def on_validation_end(self, trainer, pl_module):
            value = trainer.callback_metrics.get(metric)
            if value is not None and not trainer.sanity_checking:
                self.rec.eval(float(value))

        def on_fit_end(self, trainer, pl_module):
            self.rec.finish(lang=lang)

    return _Callback()
