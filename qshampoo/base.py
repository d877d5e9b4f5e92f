"""The base optimizers Shampoo hands its grafted direction to: AdamW and SGD with momentum.

Each is a plain function over one parameter, written to match ``torch.optim.AdamW`` and
``torch.optim.SGD`` operation for operation, so that Shampoo without roots reproduces them.
``param`` may be bf16/fp16; its state and the arithmetic are fp32. A float64 ``param`` is updated
in place in float64 (rounding it through fp32 at every step would throw its precision away).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: parameter dtypes updated in place; narrower ones are updated through an fp32 copy
_WIDE = (torch.float32, torch.float64)


def adamw_init(param: Tensor) -> dict[str, Tensor]:
    z = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
    return {"exp_avg": z, "exp_avg_sq": z.clone()}


def adamw_update(
    param: Tensor,
    direction: Tensor,
    state: dict,
    step: int,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """Decoupled weight decay, then Adam's bias-corrected step along ``direction`` (fp32)."""
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    w = param if param.dtype in _WIDE else param.float()
    w.mul_(1.0 - lr * weight_decay)
    exp_avg.lerp_(direction, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(direction, direction, value=1.0 - beta2)
    step_size = lr / (1.0 - beta1**step)
    denom = exp_avg_sq.sqrt().div_((1.0 - beta2**step) ** 0.5).add_(eps)  # one temporary
    w.addcdiv_(exp_avg, denom, value=-step_size)
    if w is not param:
        param.copy_(w)


def sgd_init(param: Tensor) -> dict[str, Tensor]:
    return {}  # the momentum buffer is created by the first update that uses it, as in torch


def sgd_update(
    param: Tensor,
    direction: Tensor,
    state: dict,
    step: int,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """Coupled L2 (added to the direction), heavy-ball or Nesterov momentum, no dampening."""
    w = param if param.dtype in _WIDE else param.float()
    d = direction.add(w.to(direction.dtype), alpha=weight_decay) if weight_decay != 0 else direction
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = d.clone()
        else:
            buf.mul_(momentum).add_(d)
        d = d.add(buf, alpha=momentum) if nesterov else buf
    w.add_(d, alpha=-lr)
    if w is not param:
        param.copy_(w)


BASES = {"adamw": (adamw_init, adamw_update), "sgd": (sgd_init, sgd_update)}


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

    def chunked(param: Tensor, direction: Tensor, state: dict, step: int, **kw) -> None:
        rows = chunk_rows(param, max_bytes)
        unmade = kw.get("momentum", 0) != 0 and "momentum_buffer" not in state
        if param.dim() == 0 or rows >= param.shape[0] or unmade:
            update(param, direction, state, step, **kw)
            return
        for start in range(0, param.shape[0], rows):
            part = slice(start, start + rows)
            view = {k: v[part] for k, v in state.items()}
            update(param[part], direction[part], view, step, **kw)

    return chunked
