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
from .suite import SuiteConfig, run_suite
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
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        data = data.tensors
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = torch.as_tensor(data[0]), torch.as_tensor(data[1])
        if len(x) != len(y):
            raise ValueError(f"{what}: {len(x)} inputs but {len(y)} targets")
        return x, y
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data, None
    raise TypeError(
        f"{what}: expected (inputs, targets) tensors, a map-style Dataset or a DataLoader, "
        f"got {type(data).__name__}"
    )


@dataclass
class UserData:
    """``data_fn`` of a user task: the user's data, batched the harness's deterministic way.
    With ``validation``, the test set is ``validation_data`` or the last ``validation_fraction``
    of the training data."""

    train: Data
    test: Data
    batch_size: int
    validation_data: Data | None = None
    validation_fraction: float = 0.1

    def __call__(self, validation: bool = False) -> TaskData:
        x, y = _as_xy(self.train, "train_data")
        if not validation:
            tx, ty = _as_xy(self.test, "test_data")
        elif self.validation_data is not None:
            tx, ty = _as_xy(self.validation_data, "validation_data")
        else:
            n = len(x)
            cut = n - max(1, int(round(n * self.validation_fraction)))
            if y is None:
                Subset = torch.utils.data.Subset  # noqa: N806
                x, tx, ty = Subset(x, range(cut)), Subset(x, range(cut, n)), None
            else:
                x, y, tx, ty = x[:cut], y[:cut], x[cut:], y[cut:]
        train = ClassificationBatches(x, y, batch_size=self.batch_size)
        test = ClassificationBatches(tx, ty, batch_size=self.batch_size, drop_last=False)
        return TaskData(train, test, {"train_size": len(x), "test_size": len(tx)})


def make_task(
    model_fn: Callable[[], nn.Module],
    train_data: Data,
    test_data: Data,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    metric_fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
    *,
    lr: float | dict[str, float] | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    validation_data: Data | None = None,
    **fields,
) -> Task:
    """A :class:`~qshampoo.bench.tasks.Task` from your pieces (the arguments: :func:`compare`);
    ``fields`` are the Task's (``name``, ``metric_name``, ``steps``, ``batch_size`` ...)."""
    fields = {"name": "custom", "eval_batch_size": 256, **fields}
    fields.setdefault("description", f"user task {fields['name']!r}")
    fields.setdefault("metric_name", "test loss" if metric_fn is None else "metric")
    if fields.get("higher_is_better") is None:
        fields["higher_is_better"] = metric_fn is not None
    optimizers = tuple(fields.pop("optimizers", ("adamw", "shampoo", "shampoo4bit")))
    lrs = dict(lr) if isinstance(lr, dict) else {} if lr is None else dict.fromkeys(optimizers, lr)
    batch_size = fields.setdefault("batch_size", 64)
    return Task(
        model_fn=_IgnoreInfo(model_fn),
        data_fn=UserData(train_data, test_data, batch_size, validation_data),
        loss_fn=loss_fn,
        metric_fn=metric_fn,
        lr={k: float(v) for k, v in lrs.items()},
        hparams={"betas": betas, "eps": 1e-8, "weight_decay": weight_decay},
        sgd_hparams={"momentum": 0.9, "weight_decay": weight_decay},
        optimizers=optimizers,
        lr_source="given to qshampoo.bench.compare" if lrs else "family defaults (not tuned)",
        **fields,
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
    hparams: dict[str, dict[str, Any]] | None = None,
    out: str | Path = "report/custom",
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    isolate: bool | str = "auto",
    progress: bool = True,
    budgets: Sequence[float] = (),
    lang: str = "en",
    **task_options,
) -> Path:
    """Train ``model_fn()`` with each optimizer and seed; write the report; return its folder.

    ``model_fn()`` returns a fresh model (called once per run, after seeding); the data are
    ``(inputs, targets)`` tensors, a map-style ``Dataset`` of pairs, or a ``DataLoader`` (only its
    dataset is used: the harness batches deterministically, so runs are reproducible and
    resumable); ``loss_fn(model(x), y)`` is a batch's mean loss and ``metric_fn`` its mean metric
    (``None``: the loss). ``seeds`` is a count or a list; ``steps`` / ``epochs`` the budget per
    run (default one epoch); ``hparams`` extra keywords per optimizer (``"*"``: all); ``resume``
    reuses the runs in ``out`` with the same settings, ``overwrite`` trains them again (else they
    are refused); ``budgets`` the fractions of the steps trained for the time to quality;
    ``task_options`` go to :func:`make_task` (``batch_size``, ``lr``, ``weight_decay``,
    ``metric_name``, ``percent``, ``eval_every`` ...). The arguments: ``docs/harness.md``.
    """
    task_options.setdefault("steps", steps or 500)
    task = make_task(
        model_fn, train_data, test_data, loss_fn, metric_fn, optimizers=optimizers, **task_options
    )
    config = SuiteConfig(
        optimizers=list(optimizers),
        seeds=seeds,
        out=str(out),
        steps=steps,
        epochs=1.0 if steps is None and epochs is None else epochs,
        device=device,
        resume=resume,
        overwrite=overwrite,
        isolate=isolate,
        progress=progress,
        eval_every=task.eval_every,
        overrides=dict(hparams or {}),
        command=f"qshampoo.bench.compare(name={task.name!r}, ...)",
        budgets=tuple(budgets),
        lang=lang,
    )
    return run_suite(task, config)
