"""Property tests over shapes, dtypes and hyperparameters: every case either trains a few steps
with finite results, or is refused with a ValueError/TypeError that names the problem."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qshampoo
from qshampoo.quant import CODEBOOK_NAMES, SUPPORTED_BITS
from tests.robust_utils import (
    VARIANTS,
    all_finite,
    leaves,
    single_thread,  # noqa: F401 - an autouse fixture
)

#: QSHAMPOO_HYPOTHESIS_EXAMPLES=500 for a thorough (randomised) search; CI runs a fixed 40
_EXAMPLES = int(os.environ.get("QSHAMPOO_HYPOTHESIS_EXAMPLES", "40"))
SETTINGS = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize="QSHAMPOO_HYPOTHESIS_EXAMPLES" not in os.environ,
)
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _dims():
    # zero-size and size-1 dims, small ones, and the odd long one (extreme aspect ratios)
    return st.one_of(st.sampled_from([0, 1, 1, 2, 3, 5]), st.integers(6, 40), st.just(200))


@st.composite
def shapes(draw):
    shape = draw(st.lists(_dims(), min_size=0, max_size=5))
    while math.prod(shape) > 1200:  # keep every example fast
        shape[shape.index(max(shape))] //= 4
    return tuple(shape)


def train(params, opt, steps=3, seed=0):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        opt.step()


def assert_healthy(params, opt):
    assert all(torch.isfinite(p).all() for p in params)
    assert all_finite(opt)
    for s in opt.state.values():
        for path, v in leaves(s):
            if torch.is_tensor(v) and v.is_floating_point():
                assert v.dtype == torch.float32, path


@SETTINGS
@given(
    shape=shapes(),
    dtype=st.sampled_from(DTYPES),
    quant=st.sampled_from(VARIANTS),
    base=st.sampled_from(["adamw", "sgd"]),
    max_dim=st.sampled_from([1, 3, 7, 1200]),
    intervals=st.sampled_from([(1, 1), (1, 2), (2, 1)]),
)
def test_any_shape_and_dtype_trains(shape, dtype, quant, base, max_dim, intervals):
    p = torch.randn(shape).to(dtype).requires_grad_()
    bias = torch.randn(3).to(dtype).requires_grad_()
    opt = qshampoo.Shampoo(
        [p, bias],
        lr=1e-2,
        base=base,
        quant=quant,
        min_quant_numel=0,
        block_size=16,
        max_preconditioner_dim=max_dim,
        stat_interval=intervals[0],
        root_interval=intervals[1],
    )
    train([p, bias], opt)
    assert p.shape == shape and p.dtype == dtype
    assert_healthy([p, bias], opt)
    assert opt.diagnostics()["root_failures"] == 0


VALID = {
    "lr": st.floats(0.0, 1.0),
    "betas": st.tuples(st.floats(0.0, 0.999), st.floats(0.0, 0.999)),
    "eps": st.floats(1e-12, 1.0),
    "weight_decay": st.floats(0.0, 1.0),
    "momentum": st.floats(0.0, 0.99),
    "nesterov": st.booleans(),
    "maximize": st.booleans(),
    "stat_decay": st.floats(0.0, 0.999),
    "matrix_eps": st.floats(1e-30, 1.0),
    "stat_interval": st.integers(1, 4),
    "root_interval": st.integers(1, 4),
    "max_preconditioner_dim": st.integers(1, 20),
    "root_method": st.sampled_from(["eigh", "newton"]),
    "quant": st.sampled_from(VARIANTS),
    "bits": st.sampled_from(SUPPORTED_BITS),
    "block_size": st.sampled_from([1, 2, 7, 64, 128]),
    "codebook": st.sampled_from(CODEBOOK_NAMES),
    "ef_decay": st.floats(0.0, 0.99),
    "min_quant_numel": st.sampled_from([0, 16, 4096]),
    "precondition": st.booleans(),
    "nonfinite": st.sampled_from(["skip", "raise"]),
    "max_consecutive_failures": st.integers(0, 5),
    "base": st.sampled_from(["adamw", "sgd"]),
}


@SETTINGS
@given(hp=st.fixed_dictionaries({}, optional=VALID), dtype=st.sampled_from(DTYPES))
def test_valid_hyperparameters_train(hp, dtype):
    params = [
        torch.randn(9, 7).to(dtype).requires_grad_(),
        torch.randn(4, 3, 2).to(dtype).requires_grad_(),
        torch.randn(5).to(dtype).requires_grad_(),
    ]
    if hp.get("nesterov") and hp.get("momentum", 0.9) == 0:
        with pytest.raises(ValueError, match="nesterov"):
            qshampoo.Shampoo(params, **hp)
        return
    opt = qshampoo.Shampoo(params, **hp)
    train(params, opt, steps=4)
    assert_healthy(params, opt)


INVALID = {
    "lr": [-1e-3, math.nan, math.inf, "0.1", None, True, torch.tensor([0.1, 0.2])],
    "betas": [(0.9,), (0.9, 1.0), (-0.1, 0.9), 0.9, (0.9, math.nan), ("a", 0.9)],
    "eps": [-1.0, math.nan, math.inf, 0.0, "1e-8"],
    "weight_decay": [-0.1, math.inf, math.nan, None],
    "momentum": [1.0, -0.5, math.nan, "0.9"],
    "nesterov": ["yes", 1, None],
    "maximize": ["no", 0],
    "stat_decay": [1.0, -0.1, math.nan],
    "matrix_eps": [0.0, -1e-6, math.inf, math.nan, "tiny"],
    "stat_interval": [0, -3, 2.5, True, "10"],
    "root_interval": [0, 1.5, None],
    "max_preconditioner_dim": [0, -1, 3.0],
    "root_method": ["svd", None, 4],
    "quant": ["int4", None, "NONE", 4],
    "bits": [0, 5, 16, True, "4", 4.5],
    "block_size": [0, -64, 64.0, None],
    "codebook": ["nf4", None, 2],
    "ef_decay": [1.0, -0.1, math.nan],
    "min_quant_numel": [-1, 1.5, None],
    "precondition": ["true", None],
    "nonfinite": ["ignore", None, True],
    "max_consecutive_failures": [-1, 2.5, None, True],
    "base": ["adam", None, "SGD"],
}


@SETTINGS
@given(
    name_value=st.sampled_from(sorted(INVALID)).flatmap(
        lambda name: st.tuples(st.just(name), st.sampled_from(INVALID[name]))
    ),
    per_group=st.booleans(),
)
def test_invalid_hyperparameters_are_refused_by_name(name_value, per_group):
    name, value = name_value
    params = [torch.randn(4, 3, requires_grad=True)]
    kwargs = {name: value}
    if name == "eps" and value == 0.0:
        kwargs["base"] = "adamw"  # eps = 0 is allowed for sgd, where it is unused
    with pytest.raises(ValueError, match=name):
        if per_group:
            qshampoo.Shampoo([{"params": params, **kwargs}])
        else:
            qshampoo.Shampoo(params, **kwargs)


@pytest.mark.parametrize(
    "param,match",
    [
        (torch.zeros(3, 3, dtype=torch.complex64), "complex"),
        (torch.zeros(3, 3, dtype=torch.int64), "floating-point"),
        (torch.zeros(3, 3, dtype=torch.bool), "floating-point"),
    ],
)
def test_non_float_parameters_are_refused(param, match):
    with pytest.raises((TypeError, RuntimeError), match=match):
        qshampoo.Shampoo([param])


def test_param_group_validation_does_not_leave_a_broken_group():
    opt = qshampoo.Shampoo([torch.randn(3, 3, requires_grad=True)])
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [torch.randn(2, 2, requires_grad=True)], "lr": -1})
    with pytest.raises(TypeError, match="complex"):
        opt.add_param_group({"params": [torch.zeros(2, 2, dtype=torch.complex64)]})
    assert len(opt.param_groups) == 1
