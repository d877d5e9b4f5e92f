"""Checkpoints: bit-identical resume in a new process, and clear errors for what does not fit."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import qshampoo
from qshampoo.checkpoint import load_file, with_checksums
from tests.robust_utils import (
    RICHEST,
    VARIANTS,
    same,
    single_thread,  # noqa: F401 - an autouse fixture
    snapshot,
    variant_kwargs,
)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(6, 9), (3, 2, 2, 2), (5,), (1, 7, 1, 4)]
K, TOTAL = 5, 9


def make_params(shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


def set_grads(params, step):
    g = torch.Generator(torch.get_default_device()).manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def opt_kwargs(quant, base="adamw"):
    return variant_kwargs(
        quant, base=base, lr=1e-2, stat_interval=1, root_interval=2, max_preconditioner_dim=5
    )


def train(params, opt, steps):
    for k in steps:
        set_grads(params, k)
        opt.step()


def saved_bytes(opt, params=None) -> bytes:
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    return buf.getvalue()


def load(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


# -- resume in a new process ------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import os, sys, torch, qshampoo
    from tests.test_checkpoint import make_params, opt_kwargs, train, K, TOTAL
    torch.set_num_threads(int(sys.argv[2]))
    torch.set_default_device(os.environ.get("QSHAMPOO_TEST_DEVICE") or "cpu")  # as conftest
    out = {}
    for quant, base, dtype in torch.load(sys.argv[1] + "/cases.pt"):
        ckpt = torch.load(f"{sys.argv[1]}/{quant}-{base}-{dtype}.pt", weights_only=True)
        params = [t.clone().requires_grad_() for t in ckpt["params"]]
        opt = qshampoo.Shampoo(params, **opt_kwargs(quant, base))
        opt.load_state_dict(ckpt["opt"])
        train(params, opt, range(K, TOTAL))
        out[f"{quant}-{base}-{dtype}"] = {
            "params": [p.detach() for p in params], "opt": opt.state_dict()
        }
    torch.save(out, sys.argv[1] + "/resumed.pt")
    """
)

CASES = [(q, "adamw", "float32") for q in VARIANTS] + [
    (RICHEST, "sgd", "float32"),
    (RICHEST, "adamw", "bfloat16"),
]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Save every case at step K here; one new process loads each and runs to TOTAL."""
    d = tmp_path_factory.mktemp("resume")
    for quant, base, dtype in CASES:
        params = make_params(dtype=getattr(torch, dtype))
        opt = qshampoo.Shampoo(params, **opt_kwargs(quant, base))
        train(params, opt, range(K))
        ckpt = {"params": [p.detach() for p in params], "opt": opt.state_dict()}
        torch.save(ckpt, d / f"{quant}-{base}-{dtype}.pt")
    torch.save(CASES, d / "cases.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(d), str(torch.get_num_threads())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(d / "resumed.pt", weights_only=True)


@pytest.mark.parametrize("quant,base,dtype", CASES)
def test_resume_in_new_process_is_bit_identical(resumed, quant, base, dtype):
    params = make_params(dtype=getattr(torch, dtype))
    opt = qshampoo.Shampoo(params, **opt_kwargs(quant, base))
    train(params, opt, range(TOTAL))
    got = resumed[f"{quant}-{base}-{dtype}"]
    for a, b in zip(params, got["params"], strict=True):
        assert a.dtype == b.dtype and torch.equal(a.detach(), b)
    params2 = [t.clone().requires_grad_() for t in got["params"]]
    opt2 = qshampoo.Shampoo(params2, **opt_kwargs(quant, base))
    opt2.load_state_dict(got["opt"])
    assert same(snapshot(opt)[1:], snapshot(opt2)[1:])


# -- what does not fit gives a clear error ----------------------------------------------------
def trained(quant="none", shapes=SHAPES, **kw):
    params = make_params(shapes)
    opt = qshampoo.Shampoo(params, **{**opt_kwargs(quant), **kw})
    train(params, opt, range(3))
    return params, opt


def assert_refused(opt, sd, *needles):
    before = snapshot(opt)
    with pytest.raises(ValueError) as err:
        opt.load_state_dict(sd)
    for n in needles:
        assert n in str(err.value), str(err.value)
    assert same(before, snapshot(opt)), "a refused load must leave the optimizer as it was"
    return str(err.value)


LAYOUT_CHANGES = [("quant", q) for q in VARIANTS if q != "none"] + [
    ("max_preconditioner_dim", 4),
    ("precondition", False),
    ("base", "sgd"),
    ("block_size", 32),
]


@pytest.mark.parametrize("key,value", LAYOUT_CHANGES)
def test_checkpoint_of_another_variant_or_layout_is_refused(key, value):
    theirs_kw = {"quant": "none", key: value}
    _, theirs = trained(theirs_kw.pop("quant"), **theirs_kw)
    params, mine = trained("none")
    msg = assert_refused(mine, load(saved_bytes(theirs)), f"{key}=", "this optimizer")
    assert "create the optimizer with the checkpoint's values" in msg


@pytest.mark.parametrize("quant", VARIANTS)
def test_checkpoint_of_another_model_is_refused(quant):
    _, theirs = trained(quant)
    sd = load(saved_bytes(theirs))
    # transposed parameter shapes: same count, same numel, different layout
    _, mine = trained(quant, shapes=[(9, 6), (3, 2, 2, 2), (5,), (1, 7, 1, 4)])
    assert_refused(mine, sd, "parameter #0 (shape (9, 6))")
    # the same parameters in another order
    _, mine = trained(quant, shapes=[SHAPES[1], SHAPES[0], *SHAPES[2:]])
    assert_refused(mine, sd, "parameter #0")
    # one parameter fewer
    _, mine = trained(quant, shapes=SHAPES[:3])
    assert_refused(mine, sd, "4 parameters in the checkpoint, 3 here")


def test_foreign_and_malformed_state_dicts_are_refused():
    params, opt = trained()
    assert_refused(opt, torch.optim.AdamW(params).state_dict(), "format_version")
    sd = load(saved_bytes(opt))
    # qshampoo 0.1 stored the low-bit triangles row by row: said so, not misread
    assert_refused(opt, {**sd, "format_version": 1}, "qshampoo 0.1", "tile by tile")
    assert_refused(opt, {**sd, "state": []}, "'state'")
    with pytest.raises(TypeError, match="dict"):
        opt.load_state_dict([sd])
    bad = load(saved_bytes(opt))
    bad["param_groups"][0]["lr"] = -1.0
    assert_refused(opt, bad, "param group 0 of the checkpoint", "lr")


@pytest.mark.parametrize("quant", VARIANTS)
def test_nonfinite_state_is_refused(quant):
    params, opt = trained(quant)
    opt.state[params[0]]["base"]["exp_avg"][0, 0] = float("nan")
    sd = load(saved_bytes(opt))  # the checksum matches: the NaN was there when it was saved
    _, fresh = trained(quant)
    assert_refused(fresh, sd, "['exp_avg'] holds inf/NaN")


def test_edited_state_needs_its_checksum_removed():
    params, opt = trained()
    sd = load(saved_bytes(opt))
    sd["state"][0]["base"]["exp_avg"].mul_(0.5)
    assert_refused(opt, sd, "checksum", "delete its 'checksums'")
    del sd["checksums"]
    opt.load_state_dict(sd)
    assert torch.equal(opt.state[params[0]]["base"]["exp_avg"], sd["state"][0]["base"]["exp_avg"])


def test_skip_counters_saved_as_ints_still_load():
    """Before the skip was decided on the device, ``nonfinite_steps`` was a host int: such a
    state (with its checksums, as it was written) loads, counts on, and resumes as the same
    state saved with tensor counters does."""
    params, opt = trained(RICHEST)
    params[0].grad = torch.full(params[0].shape, float("nan"))
    opt.step()  # one skip to carry over
    sd = load(saved_bytes(opt))
    old = {
        **sd,
        "state": {
            i: {**st, "nonfinite_steps": int(st["nonfinite_steps"])}
            for i, st in sd["state"].items()
        },
    }
    old = with_checksums({k: v for k, v in old.items() if k != "checksums"})
    resumed = []
    for state in (sd, old):
        ps, fresh = trained(RICHEST)
        fresh.load_state_dict(state)
        with torch.no_grad():
            for p, q in zip(ps, params, strict=True):
                p.copy_(q)
        ps[0].grad = torch.full(ps[0].shape, float("inf"))
        fresh.step()
        train(ps, fresh, range(5, 7))
        resumed.append((snapshot(fresh), [p.detach().clone() for p in ps]))
        assert fresh.diagnostics()["nonfinite_steps"] == 2
    assert same(resumed[0], resumed[1])


def test_negative_skip_counter_is_refused():
    params, opt = trained()
    sd = load(saved_bytes(opt))
    sd["state"][0]["nonfinite_steps"] = torch.tensor(-1)
    del sd["checksums"]
    assert_refused(opt, sd, "['nonfinite_steps'] should be non-negative")
    sd["state"][0]["nonfinite_steps"] = -1
    assert_refused(opt, sd, "non-negative int")


def test_checkpoint_without_a_newer_group_key_still_loads():
    params, opt = trained()
    sd = load(saved_bytes(opt))
    for g in sd["param_groups"]:
        del g["max_consecutive_failures"]
    del sd["checksums"]  # as a checkpoint written before the key existed would not match
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["max_consecutive_failures"] == 10
    train(params, opt, range(3, 5))


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's unpickler on damaged bytes
@pytest.mark.parametrize("quant", VARIANTS)
def test_damaged_file_never_loads_silently(quant):
    """Flip bytes all over a saved file: torch.load or load_state_dict refuses it, or (a byte
    that nothing reads, e.g. zip padding) it loads to exactly the original state."""
    params, opt = trained(quant)
    data = saved_bytes(opt)
    reference = snapshot(opt)
    rng = random.Random(0)
    positions = sorted(rng.sample(range(len(data)), min(60, len(data))))
    outcomes = {"load": 0, "validate": 0, "identical": 0}
    _, fresh = trained(quant)
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 1 << rng.randrange(8)
        try:
            sd = load(bytes(damaged))
        except Exception:
            outcomes["load"] += 1
            continue
        try:
            fresh.load_state_dict(sd)  # a refused load leaves ``fresh`` as it was
        except (ValueError, TypeError):
            outcomes["validate"] += 1
            continue
        assert same(snapshot(fresh), reference), f"byte {pos} changed the state silently"
        outcomes["identical"] += 1
        _, fresh = trained(quant)
    assert outcomes["validate"] > 0, outcomes  # tensor bytes are caught by the checksums


def test_truncated_file_is_refused(tmp_path):
    _, opt = trained()
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 3, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(Exception):  # noqa: B017 - torch's own error, whatever its type
            torch.load(path, weights_only=True)
        with pytest.raises(ValueError, match="truncated, damaged, or not a torch checkpoint"):
            load_file(path)
    path.write_bytes(data)
    opt.load_state_dict(load_file(path))


@pytest.mark.parametrize("quant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_parameters_keep_state_dtypes_through_checkpoints(quant, dtype):
    params = make_params(dtype=dtype)
    opt = qshampoo.Shampoo(params, **opt_kwargs(quant))
    train(params, opt, range(3))
    sd = load(saved_bytes(opt))
    opt2 = qshampoo.Shampoo(params, **opt_kwargs(quant))
    opt2.load_state_dict(sd)
    assert same(snapshot(opt), snapshot(opt2))
    for st in opt2.state.values():
        assert st["base"]["exp_avg"].dtype == torch.float32
