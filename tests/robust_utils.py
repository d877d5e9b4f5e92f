"""Helpers shared by the robustness, conformance and checkpoint tests."""

from __future__ import annotations

import pytest
import torch

from qshampoo.factors import FACTORS

#: every factor variant that exists (the 4-bit ones join as they land)
VARIANTS = sorted(FACTORS)
#: the most elaborate variant that exists (Shampoo4bit's default once it has landed)
RICHEST = "cholesky_ef" if "cholesky_ef" in FACTORS else VARIANTS[-1]


def variant_kwargs(quant: str, **kw) -> dict:
    """Optimizer keywords that make every factor of a small test model use ``quant``."""
    return dict(quant=quant, min_quant_numel=0, block_size=16, **kw)


def leaves(obj, prefix="state"):
    """``(path, value)`` for every leaf of a nested state (dicts, lists, tensors, numbers)."""
    if isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            yield from leaves(obj[k], f"{prefix}[{k!r}]")
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        for i, v in enumerate(obj):
            yield from leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def snapshot(opt) -> list:
    """A deep copy of an optimizer's state and hyperparameters, comparable with ``same``."""
    out = []
    for group in opt.param_groups:
        out.append({k: v for k, v in group.items() if k != "params"})
        for p in group["params"]:
            st = opt.state.get(p, {})
            out.append(
                [(k, v.detach().clone() if torch.is_tensor(v) else v) for k, v in leaves(st)]
            )
    return out


def same(a, b) -> bool:
    """Bitwise equality of two snapshots (tensors: dtype, shape and bytes)."""
    if type(a) is not type(b):
        return False
    if torch.is_tensor(a):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def all_finite(opt) -> bool:
    for st in opt.state.values():
        for _, v in leaves(st):
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
                return False
    return True


@pytest.fixture(autouse=True)
def single_thread():
    """These tests use tiny matrices: one thread is faster, and spares a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
