"""The base optimizers Shampoo hands its grafted direction to: AdamW and SGD with momentum.

Each is a plain function over one parameter, written to match ``torch.optim.AdamW`` and
``torch.optim.SGD`` operation for operation, so that Shampoo without roots reproduces them.
``param`` may be bf16/fp16; its state and the arithmetic are fp32. A float64 ``param`` is updated
in place in float64 (rounding it through fp32 at every step would throw its precision away).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

#: parameter dtypes updated in place; narrower ones are updated through an fp32 copy
_WIDE = (torch.float32, torch.float64)


def adamw_init(param: Tensor) -> dict[str, Tensor]:
    z = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
    return {"exp_avg": z, "exp_avg_sq": z.clone()}


def adamw_values(
    step: int, *, lr: float, betas: tuple[float, float], weight_decay: float, **_: Any
) -> dict[str, Any]:
    """The numbers one AdamW step at step count ``step`` (>= 1) multiplies by, on the host.

    ``keep`` (None: the step is applied), ``decay`` (the decoupled weight decay's factor),
    ``lerp`` (the first moment's weight), ``beta2``, ``bc2_sqrt`` (the square root of the
    second moment's bias correction) and ``neg_step_size`` (minus the bias-corrected learning
    rate). ``skippable_values`` gives them as device tensors instead, for a step that a device
    flag may cancel."""
    beta1, beta2 = betas
    return {
        "keep": None,
        "decay": 1.0 - lr * weight_decay,
        "lerp": 1.0 - beta1,
        "beta2": beta2,
        "bc2_sqrt": (1.0 - beta2**step) ** 0.5,
        "neg_step_size": -(lr / (1.0 - beta1**step)),
    }


def adamw_update(
    param: Tensor,
    direction: Tensor,
    state: dict,
    values: dict[str, Any],
    *,
    betas: tuple[float, float],
    eps: float,
) -> None:
    """Decoupled weight decay, then Adam's bias-corrected step along ``direction`` (fp32), with
    the step's ``values`` (``adamw_values``: host numbers, or 0-d device tensors from
    ``skippable_values``; the arithmetic is the same). Where ``values["keep"]`` is a false
    device flag, the parameter and its moments are left as they are: the direction is
    replaced by zeros and every factor is one (or zero), so that each operation writes back
    what it read, exactly."""
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    keep = values["keep"]
    d = direction if keep is None else torch.where(keep, direction, 0.0)
    w = param if param.dtype in _WIDE else param.float()
    w.mul_(values["decay"])
    exp_avg.lerp_(d, values["lerp"])
    exp_avg_sq.mul_(values["beta2"]).addcmul_(d, d, value=1.0 - betas[1])
    denom = exp_avg_sq.sqrt().div_(values["bc2_sqrt"]).add_(eps)  # one temporary
    scale = values["neg_step_size"]
    if isinstance(scale, Tensor):
        # addcdiv's value is read on the host: a device one is multiplied in first, which
        # gives the same products (addcdiv computes value * exp_avg, then divides); into the
        # masked direction's memory, which is no longer needed
        if d is not direction and w.dtype == d.dtype:
            numerator = torch.mul(exp_avg, scale, out=d)
        else:
            numerator = torch.mul(exp_avg.to(w.dtype), scale)
        w.addcdiv_(numerator, denom)
    else:
        w.addcdiv_(exp_avg, denom, value=scale)
    if w is not param:
        param.copy_(w)


def sgd_init(param: Tensor) -> dict[str, Tensor]:
    return {}  # the momentum buffer is created by the first update that uses it, as in torch


def sgd_values(step: int, *, momentum: float, **_: Any) -> dict[str, Any]:
    """The numbers of one SGD step on the host: ``keep`` (None: applied) and ``momentum``."""
    return {"keep": None, "momentum": momentum}


def sgd_update(
    param: Tensor,
    direction: Tensor,
    state: dict,
    values: dict[str, Any],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """Coupled L2 (added to the direction), heavy-ball or Nesterov momentum, no dampening.
    Where ``values["keep"]`` is a false device flag, the parameter and its momentum buffer
    are left as they are (a first step skipped so makes a buffer of zeros)."""
    keep = values["keep"]
    w = param if param.dtype in _WIDE else param.float()
    d = direction.add(w.to(direction.dtype), alpha=weight_decay) if weight_decay != 0 else direction
    if keep is not None:
        d = torch.where(keep, d, 0.0)
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = d.clone()
        else:
            buf.mul_(values["momentum"]).add_(d)
        d = d.add(buf, alpha=momentum) if nesterov else buf
        if keep is not None:
            d = torch.where(keep, d, 0.0)
    w.add_(d, alpha=-lr)
    if w is not param:
        param.copy_(w)


#: name -> (state init, host values of a step, update)
BASES = {
    "adamw": (adamw_init, adamw_values, adamw_update),
    "sgd": (sgd_init, sgd_values, sgd_update),
}


def skippable_values(
    base: str, keep: Tensor, skipped: Tensor, steps: list[int], **hyper: Any
) -> list[dict[str, Tensor]]:
    """The values of one step of ``n`` parameters (``adamw_values`` / ``sgd_values``) as 0-d
    tensors on ``keep``'s device, for an update applied only where ``keep`` ((n,) bool) is
    true: where it is false, the update leaves the parameter and its moments as they are.

    ``skipped`` ((n,) int64) counts each parameter's skipped steps, this one included;
    ``steps`` (host ints) its steps, this one included. AdamW's bias correction counts the
    applied steps, ``steps - skipped``; while ``skipped`` is 0 the values are the host's,
    bit for bit (selected, not recomputed on the device). ``hyper``: the group's ``lr``,
    ``betas``, ``weight_decay``, ``momentum``. About twenty small operations for all ``n``
    parameters, none of which reads a value back. Steps that differ between the parameters
    (parameters without a gradient at some steps) are copied to the device once per call.
    """
    n, device = keep.numel(), keep.device
    real = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    uniform = len(set(steps)) == 1
    host = [BASES[base][1](k, **hyper) for k in (steps[:1] if uniform else steps)]

    def exact(key: str) -> Any:  # the host's value: one number, or one per parameter
        return host[0][key] if uniform else _column([h[key] for h in host], real, device)

    def pick(applied: Any, skipped: float, dtype: torch.dtype = real) -> Tensor:
        if not isinstance(applied, Tensor):
            applied = torch.full_like(keep, applied, dtype=dtype)
        return torch.where(keep, applied.to(dtype), skipped)

    if base == "sgd":
        out = {"momentum": pick(hyper["momentum"], 1.0)}
    else:
        beta1, beta2 = hyper["betas"]
        count = steps[0] if uniform else _column(steps, torch.int64, device)
        applied = (count - skipped).clamp_min_(1).to(real)  # >= 1: no division by zero
        fresh = skipped == 0
        neg_step_size = (1 - torch.pow(beta1, applied)).reciprocal_().mul_(-hyper["lr"])
        bc2_sqrt = (1 - torch.pow(beta2, applied)).sqrt_()
        out = {
            "decay": pick(host[0]["decay"], 1.0),
            "lerp": pick(1.0 - beta1, 0.0, torch.float32),  # lerp's weight: the moment's dtype
            "beta2": pick(beta2, 1.0),
            "bc2_sqrt": torch.where(fresh, exact("bc2_sqrt"), bc2_sqrt),
            "neg_step_size": torch.where(
                keep, torch.where(fresh, exact("neg_step_size"), neg_step_size), 0.0
            ),
        }
    columns = {"keep": keep.unbind(), **{k: v.unbind() for k, v in out.items()}}
    return [{k: c[j] for k, c in columns.items()} for j in range(n)]


def _column(values: list, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``values`` (numbers or 0-d tensors) as one tensor on ``device`` (a copy to it)."""
    if not any(isinstance(v, Tensor) for v in values):
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.stack([torch.as_tensor(v, dtype=dtype, device=device) for v in values])


def chunk_rows(param: Tensor, max_bytes: int) -> int:
    """Rows (slices along the first dimension) of ``param`` per chunk of a chunked update: as
    many as hold at most ``max_bytes`` of fp32 entries, at least one."""
    if param.dim() == 0:
        return 1
    per_row = 4 * max(1, math.prod(param.shape[1:]))
    return max(1, min(param.shape[0], max_bytes // per_row))


def in_chunks(update, max_bytes: int):
    """``update`` applied to consecutive row slices of a parameter, its direction and its state
    (``chunk_rows``), so that its full-size temporaries (AdamW's denominator, an fp32 copy of a
    narrower parameter) take at most ``max_bytes`` each. The arithmetic is elementwise, so the
    result is the same. A state that the update has yet to create (SGD's momentum buffer,
    made by the first step) is made by one whole update."""

    def chunked(param: Tensor, direction: Tensor, state: dict, values: dict, **kw) -> None:
        rows = chunk_rows(param, max_bytes)
        unmade = kw.get("momentum", 0) != 0 and "momentum_buffer" not in state
        if param.dim() == 0 or rows >= param.shape[0] or unmade:
            update(param, direction, state, values, **kw)
            return
        for start in range(0, param.shape[0], rows):
            part = slice(start, start + rows)
            view = {k: v[part] for k, v in state.items()}
            update(param[part], direction[part], view, values, **kw)

    return chunked
