"""Run the harness's comparison on your own model and data.

>>> from qshampoo.bench import compare
>>> report_dir = compare(
...     model_fn=lambda: MyNet(),                 # a fresh model per run
...     train_data=(x_train, y_train),            # tensors, or a map-style Dataset
...     test_data=(x_test, y_test),
...     loss_fn=torch.nn.functional.cross_entropy,
...     metric_fn=lambda out, y: (out.argmax(1) == y).float().mean(),
...     metric_name="accuracy",
...     optimizers=["adamw", "shampoo", "shampoo4bit"],
...     steps=500, batch_size=64, lr={"adamw": 1e-3, "shampoo": 1e-3, "shampoo4bit": 1e-3},
...     out="report/mynet",
... )

The same report as ``qshampoo bench`` lands in ``report_dir``. Each run goes to its own process
when the model factory, the losses and the data pickle (define them at module level and guard the
script with ``if __name__ == "__main__":``); otherwise the runs share this process, and the report
says so. See ``docs/harness.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .batches import ClassificationBatches
from .suite import SuiteConfig, parse_seeds, run_suite
from .tasks import Task, TaskData

Data = Any  # (inputs, targets) tensors, a map-style Dataset, or a DataLoader (its dataset is used)


@dataclass(frozen=True)
class _IgnoreInfo:
    """Adapts a no-argument model factory to the harness's ``model_fn(info)``."""

    fn: Callable[[], nn.Module]

    def __call__(self, info: dict) -> nn.Module:
        return self.fn()


def _as_xy(data: Data, what: str) -> tuple[Any, Any]:
    """``(x, y)`` tensors, or ``(dataset, None)`` for a map-style dataset."""
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if len(x) != len(y):
            raise ValueError(f"{what}: {len(x)} inputs but {len(y)} targets")
        return x, y
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data, None
    raise TypeError(
        f"{what}: expected (inputs, targets) tensors, a map-style Dataset or a DataLoader, "
        f"got {type(data).__name__}"
    )


def _split(x, y, fraction: float):
    """The last ``fraction`` of the samples as a validation split."""
    n = len(x)
    cut = n - max(1, int(round(n * fraction)))
    if y is not None:
        return (x[:cut], y[:cut]), (x[cut:], y[cut:])
    return (
        torch.utils.data.Subset(x, range(cut)),
        None,
    ), (torch.utils.data.Subset(x, range(cut, n)), None)


@dataclass
class UserData:
    """``data_fn`` of a user task: the user's data, batched the harness's deterministic way."""

    train: Data
    test: Data
    batch_size: int
    validation_data: Data | None = None
    validation_fraction: float = 0.1

    def __call__(self, validation: bool = False) -> TaskData:
        x, y = _as_xy(self.train, "train_data")
        if validation:
            if self.validation_data is not None:
                tx, ty = _as_xy(self.validation_data, "validation_data")
            else:
                (x, y), (tx, ty) = _split(x, y, self.validation_fraction)
        else:
            tx, ty = _as_xy(self.test, "test_data")
        train = ClassificationBatches(x, y, batch_size=self.batch_size)
        test = ClassificationBatches(tx, ty, batch_size=self.batch_size, drop_last=False)
        info = {"train_size": len(x), "test_size": len(tx)}
        return TaskData(train, test, info)


def make_task(
    model_fn: Callable[[], nn.Module],
    train_data: Data,
    test_data: Data,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    metric_fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    *,
    name: str = "custom",
    description: str | None = None,
    metric_name: str | None = None,
    higher_is_better: bool | None = None,
    percent: bool = False,
    steps: int = 500,
    batch_size: int = 64,
    eval_every: int | None = None,
    eval_limit: int | None = None,
    eval_batch_size: int = 256,
    lr: float | dict[str, float] | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    optimizers: Sequence[str] = ("adamw", "shampoo", "shampoo4bit"),
    validation_data: Data | None = None,
) -> Task:
    """A :class:`~qshampoo.bench.tasks.Task` from your pieces (see :func:`compare`)."""
    if metric_fn is None:
        metric_name = metric_name or "test loss"
        higher_is_better = False if higher_is_better is None else higher_is_better
    else:
        metric_name = metric_name or "metric"
        higher_is_better = True if higher_is_better is None else higher_is_better
    lrs: dict[str, float] = {}
    if isinstance(lr, dict):
        lrs = {k: float(v) for k, v in lr.items()}
    elif lr is not None:
        lrs = {k: float(lr) for k in optimizers}
    return Task(
        name=name,
        description=description or f"user task {name!r}",
        model_fn=_IgnoreInfo(model_fn),
        data_fn=UserData(train_data, test_data, batch_size, validation_data),
        loss_fn=loss_fn,
        metric_fn=metric_fn,
        metric_name=metric_name,
        higher_is_better=higher_is_better,
        percent=percent,
        steps=steps,
        batch_size=batch_size,
        eval_every=eval_every,
        eval_limit=eval_limit,
        eval_batch_size=eval_batch_size,
        lr=lrs,
        hparams={"betas": betas, "eps": 1e-8, "weight_decay": weight_decay},
        sgd_hparams={"momentum": 0.9, "weight_decay": weight_decay},
        optimizers=tuple(optimizers),
        lr_source="given to qshampoo.bench.compare" if lrs else "family defaults (not tuned)",
    )


def compare(
    model_fn: Callable[[], nn.Module],
    train_data: Data,
    test_data: Data,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    metric_fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    *,
    optimizers: Sequence[str] = ("adamw", "shampoo", "shampoo4bit"),
    seeds: int | Sequence[int] = 2,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 64,
    lr: float | dict[str, float] | None = None,
    weight_decay: float = 0.0,
    hparams: dict[str, dict[str, Any]] | None = None,
    metric_name: str | None = None,
    higher_is_better: bool | None = None,
    percent: bool = False,
    eval_every: int | None = None,
    eval_limit: int | None = None,
    eval_batch_size: int = 256,
    name: str = "custom",
    description: str | None = None,
    out: str | Path = "report/custom",
    device: str = "auto",
    resume: bool = False,
    isolate: bool | str = "auto",
    progress: bool = True,
    budgets: Sequence[float] = (),
    lang: str = "en",
) -> Path:
    """Train ``model_fn()`` with each optimizer and seed; write the report; return its folder.

    Args:
        model_fn: returns a fresh, untrained model (called once per run, after seeding).
        train_data, test_data: ``(inputs, targets)`` tensors, a map-style ``Dataset`` yielding
            ``(input, target)`` pairs, or a ``DataLoader`` (only its dataset is used: the harness
            batches deterministically itself, so that runs are reproducible and resumable).
        loss_fn: ``loss_fn(model(inputs), targets)`` -> scalar mean loss of a batch.
        metric_fn: ``metric_fn(model(inputs), targets)`` -> the batch's mean metric (number or
            0-d tensor); averaged over the test set weighted by batch size. ``None``: the loss.
        optimizers: names from ``qshampoo bench --list``; unavailable ones are skipped.
        seeds: a count (seeds ``0..n-1``) or a list. A seed fixes init and data order.
        steps / epochs: the budget per run (default one epoch).
        lr: one learning rate for all, or ``{optimizer: lr}``; fair comparisons tune each the
            same way (see :func:`qshampoo.bench.tuning.tune_lr`).
        hparams: extra keywords per optimizer, ``{"shampoo4bit": {"ef_decay": 0.0}}``; the key
            ``"*"`` applies to all.
        metric_name, higher_is_better, percent: how the metric is named, ranked and shown.
        out: the report folder. ``resume``: reuse / continue the runs already there.
        isolate: run each training in a fresh process (``"auto"``: when everything pickles).
        budgets: time to quality: fractions of the steps that every optimizer but the baseline
            also trains as shorter full schedules (e.g. ``(0.5, 0.7, 0.85)``; ``()``: none).
        lang: the report's language, ``"en"`` or ``"ja"``.
    """
    task = make_task(
        model_fn,
        train_data,
        test_data,
        loss_fn,
        metric_fn,
        name=name,
        description=description,
        metric_name=metric_name,
        higher_is_better=higher_is_better,
        percent=percent,
        steps=steps or 500,
        batch_size=batch_size,
        eval_every=eval_every,
        eval_limit=eval_limit,
        eval_batch_size=eval_batch_size,
        lr=lr,
        weight_decay=weight_decay,
        optimizers=optimizers,
    )
    if steps is None and epochs is None:
        epochs = 1.0
    config = SuiteConfig(
        optimizers=list(optimizers),
        seeds=parse_seeds(seeds),
        out=str(out),
        steps=steps,
        epochs=epochs,
        device=device,
        resume=resume,
        isolate=isolate,
        progress=progress,
        eval_every=eval_every,
        overrides=dict(hparams or {}),
        command=f"qshampoo.bench.compare(name={name!r}, ...)",
        budgets=tuple(budgets),
        lang=lang,
    )
    return run_suite(task, config)
