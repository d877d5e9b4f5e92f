"""The one registry of optimizers — names, how to build them, their family and stored bits — and
the adapters that read any optimizer's memory and diagnostics.

Every optimizer is built as ``build(name, param_groups, **hyperparameters)``. qshampoo and the
peers (torchao, bitsandbytes, pytorch-optimizer) are imported lazily, so a missing package only
makes its names unavailable (:func:`availability` says why); it never breaks the harness.
``family`` groups optimizers whose hyperparameters mean the same thing: ``"adam"`` (AdamW and
everything grafted onto or derived from it) and ``"sgd"``. Plain labels ("4-bit Shampoo") are
the entries ``opt.<name>`` of :mod:`qshampoo.bench.text`, in every report language.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch


class OptimizerUnavailable(RuntimeError):
    """The optimizer's package is missing or cannot run here."""


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    family: str  # "adam" or "sgd": which hyperparameter defaults apply
    description: str
    factory: Callable[..., torch.optim.Optimizer]
    accepts: frozenset[str]  # keywords the factory takes; build() drops the others
    peer: bool = False
    # For optimizers without memory_report(): state keys that hold preconditioners.
    precond_keys: frozenset[str] = frozenset()
    # qshampoo's Shampoo: the bits its preconditioners are stored in (32: fp32); None: not
    # Shampoo. What the report compares is decided from this, never from the name.
    bits: int | None = None
    # False for a step that torch.compile's with fullgraph (torchao's): it cannot run under the
    # dispatch mode that counts a CPU step's temporaries, so only its state is measured there.
    watchable: bool = True


ADAM_KEYS = frozenset({"lr", "betas", "eps", "weight_decay"})
SGD_KEYS = frozenset({"lr", "momentum", "weight_decay", "nesterov"})


def _class(module: str, *attrs: str) -> type:
    """The first of ``module.attrs`` that exists; :class:`OptimizerUnavailable` if none does."""
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything else
        raise OptimizerUnavailable(f"`import {module}` failed ({e})") from e
    for a in attrs:
        if hasattr(mod, a):
            return getattr(mod, a)
    raise OptimizerUnavailable(f"{module} has no {attrs[0]}")


def _factory(module: str, *attrs: str, **defaults) -> Callable[..., torch.optim.Optimizer]:
    """Build ``module.attrs[0]`` (or the next that exists) with ``defaults`` unless overridden."""

    def make(params, **kw):
        return _class(module, *attrs)(params, **{**defaults, **kw})

    return make


def _shampoo(quant: str, cls: str = "Shampoo", **defaults) -> Callable[..., torch.optim.Optimizer]:
    """A factory of ``qshampoo.<cls>(quant=quant)``; ``defaults`` apply unless overridden."""

    def make(params, **kw):
        from .. import optimizer

        kw = {**defaults, **kw}
        if cls == "Shampoo" and kw.get("bits") != "auto":
            kw.pop("memory_budget", None)  # one hyperparameter dict serves the whole family
        return getattr(optimizer, cls)(params, quant=quant, **kw)

    return make


def _specs() -> list[OptimizerSpec]:
    from ..optimizer import Shampoo

    # every keyword of Shampoo that is a hyperparameter; quant is what the names choose
    layout = {"self", "params", "quant", "distributed", "process_group", "precision_config"}
    shampoo_keys = frozenset(inspect.signature(Shampoo.__init__).parameters) - layout

    def shampoo(name, stored, quant, description, cls="Shampoo", **defaults):
        factory = _shampoo(quant, cls, **defaults)
        return OptimizerSpec(name, "adam", description, factory, shampoo_keys, bits=stored)

    def peer(name, module, attr, precond=(), alias=(), watchable=True):
        factory = _factory(module, attr, *alias)
        description = f"{module.split('.')[0]}'s {attr} (peer, when installed)"
        keys = frozenset(precond)
        return OptimizerSpec(
            name, "adam", description, factory, ADAM_KEYS, True, keys, watchable=watchable
        )

    adamw = _factory("torch.optim", "AdamW")
    sgd = _factory("torch.optim", "SGD", momentum=0.9)
    return [
        OptimizerSpec("adamw", "adam", "torch.optim.AdamW", adamw, ADAM_KEYS),
        OptimizerSpec("sgd", "sgd", "torch.optim.SGD with momentum 0.9", sgd, SGD_KEYS),
        shampoo("shampoo", 32, "none", "32-bit Shampoo grafted onto AdamW"),
        # what a user gets: Shampoo4bit's defaults (CQ+EF, bits="auto" within 1/8), and Paper A's
        shampoo("shampoo4bit", 4, "cholesky_ef", "qshampoo.Shampoo4bit()", "Shampoo4bit"),
        shampoo(
            "shampoo4bit-paper",
            4,
            "cholesky_ef",
            "Shampoo4bit(paper=True)",
            "Shampoo4bit",
            paper=True,
        ),
        shampoo("shampoo4bit-naive", 4, "naive", "4-bit, the matrices themselves (VQ)"),
        shampoo("shampoo4bit-eigen", 4, "eigen", "4-bit eigenvectors (Paper B)"),
        shampoo("shampoo4bit-cholesky", 4, "cholesky", "4-bit Cholesky factors, no error feedback"),
        shampoo(
            "shampoo4bit-auto",
            4,
            "cholesky_ef",
            "CQ+EF with 8 bits for the factors where 4 cost the most, within memory_budget",
            bits="auto",
            memory_budget=1 / 7,
        ),
        shampoo("shampoo8bit", 8, "cholesky_ef", "CQ+EF in 8 bits", bits=8),
        shampoo("shampoo8bit-cholesky", 8, "cholesky", "CQ in 8 bits", bits=8),
        peer("torchao-adamw4bit", "torchao.optim", "AdamW4bit", ("_AdamW4bit",), watchable=False),
        peer("torchao-adamw8bit", "torchao.optim", "AdamW8bit", ("_AdamW8bit",), watchable=False),
        peer("bnb-adamw8bit", "bitsandbytes.optim", "AdamW8bit"),
        peer("soap", "pytorch_optimizer", "SOAP", precond=("GG", "Q")),
    ]


REGISTRY: dict[str, OptimizerSpec] = {s.name: s for s in _specs()}


def label(name: str, lang: str = "en") -> str:
    """The plain name a report shows for optimizer ``name`` ("4-bit Shampoo"), in ``lang``."""
    from .text import TEXT, t

    return t(f"opt.{name}", lang) if f"opt.{name}" in TEXT else name


def spec(name: str) -> OptimizerSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(REGISTRY)}") from None


def is_shampoo(name: str) -> bool:
    return name in REGISTRY and REGISTRY[name].bits is not None


def quantized(name: str) -> bool:
    """Shampoo with its preconditioners in fewer than 32 bits."""
    return is_shampoo(name) and REGISTRY[name].bits < 32


def effective(name: str, hyperparameters: dict) -> dict:
    """The part of ``hyperparameters`` that optimizer ``name`` takes (what :func:`build` passes)."""
    return {k: v for k, v in hyperparameters.items() if k in spec(name).accepts}


def build(name: str, params, **hyperparameters) -> torch.optim.Optimizer:
    """Construct optimizer ``name`` over ``params`` (tensors or param groups). Keywords it does
    not take (e.g. ``stat_interval`` for AdamW) are dropped, so one dict serves a family."""
    return spec(name).factory(params, **effective(name, hyperparameters))


def check(name: str, hyperparameters: dict) -> None:
    """Raise ``ValueError`` (one line, naming the keyword) when optimizer ``name`` refuses
    ``hyperparameters``: the optimizer's own validation, before any run is started. The probe
    parameter is a vector, which Shampoo does not precondition: what depends on the model's
    shapes (a ``memory_budget`` fraction against 4-bit factors) is checked by the run itself."""
    p = torch.nn.Parameter(torch.zeros(2))
    try:
        build(name, [p], **hyperparameters)
    except OptimizerUnavailable:
        pass  # reported by availability()
    except Exception as e:  # ValueError mostly; a malformed value can raise anything
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


@functools.cache  # a peer that compiles its step takes tens of seconds
def availability(name: str, device: str | torch.device = "cpu", probe: bool = True) -> str | None:
    """``None`` when ``name`` can be built here, else the reason it cannot.

    With ``probe`` the optimizer also takes one step on a 64x64 parameter (which catches, e.g., a
    CUDA-only kernel; it can take a while for optimizers that compile their step)."""
    p = torch.nn.Parameter(torch.zeros(64, 64, device=device))
    p.grad = torch.zeros_like(p)
    try:
        opt = build(name, [p], lr=1e-3)
        if probe:
            opt.step()
    except Exception as e:  # not installed, or e.g. a CUDA-only kernel on a CPU tensor
        reason = str(e) if isinstance(e, OptimizerUnavailable) else f"{type(e).__name__}: {e}"
        return reason.strip().splitlines()[0] if reason.strip() else type(e).__name__
    return None


# --------------------------------------------------------------------------------------------
# Adapters: memory and diagnostics of any optimizer
# --------------------------------------------------------------------------------------------


def tensor_bytes(obj) -> int:
    """Bytes the tensors in ``obj`` (a tensor, or dicts / lists / tuples of them) really store.
    Tensor subclasses that wrap others (torchao's quantized state) count their inner tensors."""
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if not isinstance(obj, torch.Tensor):
        return 0
    if type(obj) is not torch.Tensor and hasattr(obj, "__tensor_flatten__"):
        inner, _ = obj.__tensor_flatten__()
        return sum(tensor_bytes(getattr(obj, n)) for n in inner)
    return obj.numel() * obj.element_size()


def memory_report(
    opt: torch.optim.Optimizer, precond_keys: frozenset[str] = frozenset()
) -> dict[str, int]:
    """``{"preconditioners", "base_state", "total"}`` in bytes.

    Uses the optimizer's own ``memory_report()`` when it has one; otherwise every tensor in
    ``opt.state`` counts, as preconditioners under the keys ``precond_keys`` (e.g. SOAP's
    ``GG`` and ``Q``) and as base state elsewhere.
    """
    own = getattr(opt, "memory_report", None)
    if callable(own):
        report = {k: int(v) for k, v in own().items() if isinstance(v, (int, float))}
        report.setdefault("preconditioners", 0)
        report.setdefault("base_state", report.get("total", 0) - report["preconditioners"])
        report.setdefault("total", report["preconditioners"] + report["base_state"])
        return report
    pre = base = 0
    for state in opt.state.values():
        for key, value in state.items():
            if key in precond_keys:
                pre += tensor_bytes(value)
            else:
                base += tensor_bytes(value)
    return {"preconditioners": pre, "base_state": base, "total": pre + base}


def state_bytes(name: str, opt: torch.optim.Optimizer) -> dict[str, int]:
    """:func:`memory_report` with the registry's knowledge of optimizer ``name``."""
    return memory_report(opt, REGISTRY[name].precond_keys if name in REGISTRY else frozenset())


def diagnostics(opt: torch.optim.Optimizer) -> dict:
    """The optimizer's ``diagnostics()`` with the keys the report uses always present."""
    own = getattr(opt, "diagnostics", None)
    out = {"quant_error": None, **(own() if callable(own) else {})}
    for k in ("nonfinite_steps", "root_failures", "cholesky_failures"):
        out[k] = int(out.get(k) or 0)
    if out["quant_error"] is not None:
        out["quant_error"] = float(out["quant_error"])
    return out
