"""Optimizers by name, and adapters that read their memory and diagnostics.

Every optimizer is built as ``build(name, param_groups, **hyperparameters)``. The qshampoo
optimizers and the peers are imported lazily, so a missing package only makes its names
unavailable (:func:`availability` says why); it never breaks the harness.

``family`` groups optimizers whose hyperparameters mean the same thing: the ``"adam"`` family
(AdamW and everything grafted onto or derived from it) shares betas/eps and a learning-rate range;
``"sgd"`` is SGD with momentum.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class OptimizerUnavailable(RuntimeError):
    """The optimizer's package is missing or cannot run here."""


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    family: str  # "adam" or "sgd": which hyperparameter defaults apply
    description: str
    factory: Callable[..., torch.optim.Optimizer]
    # Keywords the factory understands; the others in a task's hyperparameters are dropped.
    accepts: frozenset[str] = field(default_factory=frozenset)
    peer: bool = False
    # For optimizers without memory_report(): state keys that hold preconditioners.
    precond_keys: frozenset[str] = field(default_factory=frozenset)
    # qshampoo's Shampoo: the bits its preconditioners are stored in (32: fp32); None: not
    # Shampoo. What the report compares is decided from this, never from the name.
    bits: int | None = None


_ADAM_KEYS = frozenset({"lr", "betas", "eps", "weight_decay"})
_SGD_KEYS = frozenset({"lr", "momentum", "weight_decay", "nesterov"})


def _shampoo_keys() -> frozenset[str]:
    """Every keyword of ``qshampoo.Shampoo`` that is a hyperparameter (not process layout)."""
    from ..optimizer import Shampoo

    names = inspect.signature(Shampoo.__init__).parameters
    # quant is what the optimizer names (shampoo, shampoo4bit, ...) choose
    layout = {"self", "params", "quant", "distributed", "process_group", "precision_config"}
    return frozenset(names) - layout


def _import(module: str, what: str):
    try:
        return importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything else
        raise OptimizerUnavailable(f"{what}: `import {module}` failed ({e})") from e


def _shampoo(quant: str, **defaults) -> Callable[..., torch.optim.Optimizer]:
    """A factory of ``qshampoo.Shampoo(quant=quant)``; ``defaults`` apply unless overridden."""

    def make(params, **kw):
        cls = getattr(_import("qshampoo", "qshampoo"), "Shampoo", None)
        if cls is None:
            raise OptimizerUnavailable("qshampoo.Shampoo is not implemented in this checkout")
        kw = {**defaults, **kw}
        if kw.get("bits") != "auto":
            kw.pop("memory_budget", None)  # one hyperparameter dict serves the whole family
        return cls(params, quant=quant, **kw)

    return make


def _adamw(params, **kw):
    return torch.optim.AdamW(params, **kw)


def _sgd(params, **kw):
    kw.setdefault("momentum", 0.9)
    return torch.optim.SGD(params, **kw)


def _peer(module: str, what: str, *attrs: str) -> Callable[..., torch.optim.Optimizer]:
    """A factory of the first of ``module.attrs`` that exists (a peer's optimizer class)."""

    def make(params, **kw):
        mod = _import(module, what)
        cls = next((getattr(mod, a) for a in attrs if hasattr(mod, a)), None)
        if cls is None:
            raise OptimizerUnavailable(f"{module} has no {attrs[0]}")
        return cls(params, **kw)

    return make


def _specs() -> list[OptimizerSpec]:
    sk = _shampoo_keys()

    def shampoo(name, stored_bits, description, quant, **defaults):
        return OptimizerSpec(
            name, "adam", description, _shampoo(quant, **defaults), sk, bits=stored_bits
        )

    return [
        OptimizerSpec("adamw", "adam", "torch.optim.AdamW", _adamw, _ADAM_KEYS),
        OptimizerSpec("sgd", "sgd", "torch.optim.SGD with momentum 0.9", _sgd, _SGD_KEYS),
        shampoo("shampoo", 32, "32-bit Shampoo grafted onto AdamW", "none"),
        shampoo(
            "shampoo4bit",
            4,
            "4-bit Shampoo: Cholesky factors + error feedback (Paper A, CQ+EF)",
            "cholesky_ef",
        ),
        shampoo(
            "shampoo4bit-naive", 4, "4-bit Shampoo quantizing the matrices themselves (VQ)", "naive"
        ),
        shampoo(
            "shampoo4bit-eigen", 4, "4-bit Shampoo with quantized eigenvectors (Paper B)", "eigen"
        ),
        shampoo(
            "shampoo4bit-cholesky",
            4,
            "4-bit Shampoo with Cholesky factors, no error feedback (CQ)",
            "cholesky",
        ),
        shampoo(
            "shampoo4bit-auto",
            4,
            "CQ+EF with adaptive precision: 8 bits (CQ) for the factors where 4 bits cost the "
            "most, within memory_budget (default 1/7 of 32-bit's preconditioner bytes)",
            "cholesky_ef",
            bits="auto",
            memory_budget=1 / 7,
        ),
        shampoo(
            "shampoo8bit",
            8,
            "8-bit Shampoo: Cholesky factors + error feedback (CQ+EF) in 8 bits",
            "cholesky_ef",
            bits=8,
        ),
        shampoo(
            "shampoo8bit-cholesky",
            8,
            "8-bit Shampoo: Cholesky factors in 8 bits, no error feedback (CQ)",
            "cholesky",
            bits=8,
        ),
        OptimizerSpec(
            "torchao-adamw4bit",
            "adam",
            "torchao.optim.AdamW4bit (peer)",
            _peer("torchao.optim", "torchao", "AdamW4bit", "_AdamW4bit"),
            _ADAM_KEYS,
            peer=True,
        ),
        OptimizerSpec(
            "bnb-adamw8bit",
            "adam",
            "bitsandbytes.optim.AdamW8bit (peer)",
            _peer("bitsandbytes.optim", "bitsandbytes", "AdamW8bit"),
            _ADAM_KEYS,
            peer=True,
        ),
        OptimizerSpec(
            "soap",
            "adam",
            "pytorch_optimizer.SOAP (peer)",
            _peer("pytorch_optimizer", "pytorch-optimizer", "SOAP"),
            _ADAM_KEYS,
            peer=True,
            precond_keys=frozenset({"GG", "Q"}),
        ),
    ]


REGISTRY: dict[str, OptimizerSpec] = {s.name: s for s in _specs()}


def label(name: str, lang: str = "en") -> str:
    """The plain name a report shows for optimizer ``name`` ("4-bit Shampoo"), in ``lang``."""
    from .text import TEXT, t

    return t(f"opt.{name}", lang) if f"opt.{name}" in TEXT else name


def is_shampoo(name: str) -> bool:
    return name in REGISTRY and REGISTRY[name].bits is not None


def quantized(name: str) -> bool:
    """Shampoo with its preconditioners in fewer than 32 bits."""
    return is_shampoo(name) and REGISTRY[name].bits < 32


def names() -> list[str]:
    return list(REGISTRY)


def spec(name: str) -> OptimizerSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(REGISTRY)}") from None


def build(name: str, params, **hyperparameters) -> torch.optim.Optimizer:
    """Construct optimizer ``name`` over ``params`` (tensors or param groups).

    Keywords the optimizer does not take (e.g. ``stat_interval`` for AdamW) are dropped, so one
    hyperparameter dict can serve a whole family.
    """
    return spec(name).factory(params, **effective(name, hyperparameters))


def effective(name: str, hyperparameters: dict) -> dict:
    """The part of ``hyperparameters`` that optimizer ``name`` takes (what :func:`build` passes)."""
    accepts = spec(name).accepts
    return {k: v for k, v in hyperparameters.items() if k in accepts}


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
    except OptimizerUnavailable as e:
        return str(e)
    except Exception as e:  # e.g. a CUDA-only kernel on a CPU tensor
        return f"{type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------------------------
# Adapters: memory and diagnostics of any optimizer
# --------------------------------------------------------------------------------------------


def tensor_bytes(t) -> int:
    """Bytes a tensor really stores. Tensor subclasses that wrap others (torchao's quantized
    state) are counted through their inner tensors."""
    if not isinstance(t, torch.Tensor):
        return 0
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        inner, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in inner)
    return t.numel() * t.element_size()


def _nested_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return tensor_bytes(obj)
    if isinstance(obj, dict):
        return sum(_nested_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nested_bytes(v) for v in obj)
    return 0


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
            n = _nested_bytes(value)
            if key in precond_keys:
                pre += n
            else:
                base += n
    return {"preconditioners": pre, "base_state": base, "total": pre + base}


def state_bytes(name: str, opt: torch.optim.Optimizer) -> dict[str, int]:
    """:func:`memory_report` with the registry's knowledge of optimizer ``name``."""
    return memory_report(opt, spec(name).precond_keys)


DIAGNOSTIC_DEFAULTS = {
    "nonfinite_steps": 0,
    "root_failures": 0,
    "cholesky_failures": 0,
    "quant_error": None,
}


def diagnostics(opt: torch.optim.Optimizer) -> dict:
    """The optimizer's ``diagnostics()`` with the keys the report uses always present."""
    out = dict(DIAGNOSTIC_DEFAULTS)
    own = getattr(opt, "diagnostics", None)
    if callable(own):
        out.update(own())
    for k in ("nonfinite_steps", "root_failures", "cholesky_failures"):
        out[k] = int(out[k] or 0)
    q = out.get("quant_error")
    out["quant_error"] = None if q is None else float(q)
    return out
