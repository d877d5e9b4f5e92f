"""Numerical robustness: root/Cholesky retries, failure counting, non-finite gradients."""

from __future__ import annotations

import pytest
import torch

import qshampoo
import qshampoo.optimizer
from qshampoo.dispatch import count_syncs
from qshampoo.factors import PreconditionerError, cholesky_with_retry
from qshampoo.roots import DAMPING_GROWTH, DAMPING_RETRIES, inverse_root_ex
from tests.robust_utils import (
    RICHEST,
    VARIANTS,
    all_finite,
    same,
    single_thread,  # noqa: F401 - an autouse fixture
    snapshot,
    variant_kwargs,
)

DIAG_KEYS = {"nonfinite_steps", "root_failures", "cholesky_failures", "quant_error", "factors"}
FACTOR_KEYS = {
    "param",
    "group",
    "shape",
    "block",
    "side",
    "kind",
    "order",
    "root_failures",
    "cholesky_failures",
    "consecutive_root_failures",
    "consecutive_cholesky_failures",
    "root_damping",
    "cholesky_damping",
    "quant_error",
    "skipped_steps",
}


# -- roots and Cholesky: the retry ladder -----------------------------------------------------
def test_root_retry_ladder():
    spd = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    A = torch.stack([spd, torch.zeros(2, 2), torch.eye(2) * 1e-40, torch.full((2, 2), torch.nan)])
    root, ok, damping = inverse_root_ex(A, eps=1e-6)
    assert ok.tolist() == [True, True, True, False]
    # healthy: first attempt; all-zero statistics: the identity, not a failure
    assert damping[:2] == [1e-6, 1e-6]
    torch.testing.assert_close(root[1], torch.eye(2), rtol=1e-5, atol=0)
    # subnormal statistics: fp32 damping underflows, the float64 retry succeeds
    assert torch.isfinite(root[2]).all()
    # NaN: every retry fails; the damping reported is the last one tried
    assert damping[3] == pytest.approx(1e-6 * DAMPING_GROWTH**DAMPING_RETRIES)


def test_root_retry_with_more_damping_rescues_what_float64_cannot():
    # damped by 5e-185 * 1e30, the root (~3.8e38) overflows float32 even when computed in
    # float64; ten times more damping brings it under float32's maximum (~3.4e38)
    A = torch.diag(torch.tensor([1e30, 0.0]))
    root, ok, damping = inverse_root_ex(A, eps=5e-185)
    assert ok.item() and damping[0] == pytest.approx(5e-184)
    assert torch.isfinite(root).all()


def test_cholesky_with_retry():
    A = torch.stack(
        [
            torch.eye(3),
            torch.ones(3, 3),  # singular: needs damping > 0, starts from 0
            torch.diag(torch.tensor([1.0, 1.0, -1.0])),  # indefinite: fails at every damping
            torch.full((3, 3), torch.nan),
        ]
    )
    C, ok, damping = cholesky_with_retry(A, 0.0)
    assert ok.tolist() == [True, True, False, False]
    torch.testing.assert_close(C[0], torch.eye(3))
    assert damping[0] == 0.0 and damping[1] > 0.0
    assert torch.isfinite(C[1]).all() and torch.allclose(C[1] @ C[1].T, A[1], atol=1e-4)


# -- failure counting and the streak limit ----------------------------------------------------
def _poison_statistics(opt, p):
    """Make a factor's statistics NaN behind the optimizer's back (as a bug or bit-flip would):
    every floating tensor of its state but the root and the health scalars."""
    f = opt.state[p]["precond"][0]["L"]
    for k, v in f.items():
        if torch.is_tensor(v) and v.is_floating_point() and not k.startswith("root"):
            if k not in ("quant_error", "cholesky_damping"):
                v.fill_(torch.nan)
    return f


def _root_state(f):
    return {k: v.clone() for k, v in f.items() if k.startswith("root") and torch.is_tensor(v)}


@pytest.mark.parametrize("quant", VARIANTS)
def test_failed_root_keeps_previous_and_streak_raises(quant):
    w = torch.randn(4, 3, requires_grad=True)
    opt = qshampoo.Shampoo(
        [w], stat_interval=1, root_interval=1, max_consecutive_failures=3, **variant_kwargs(quant)
    )
    w.grad = torch.randn(4, 3)
    opt.step()
    f = _poison_statistics(opt, w)
    root = _root_state(f)
    opt.param_groups[0]["stat_interval"] = 10**6  # keep the NaN statistics as they are
    for k in range(2):
        opt.step()
        assert same(_root_state(f), root)  # kept the last good root
        assert f["root_failures"] == k + 1 and f["consecutive_root_failures"] == k + 1
    assert torch.isfinite(w).all()
    d = opt.diagnostics()
    assert d["root_failures"] == 2
    assert d["factors"][0]["root_damping"] == pytest.approx(1e-6 * DAMPING_GROWTH**DAMPING_RETRIES)
    with pytest.raises(PreconditionerError) as err:
        opt.step()
    msg = str(err.value)
    for needed in ("parameter #0", "shape (4, 3)", "block 0 (left)", "3 times in a row"):
        assert needed in msg
    for fix in ("matrix_eps", "learning rate", "max_consecutive_failures=0"):
        assert fix in msg
    assert isinstance(err.value, RuntimeError) and isinstance(
        err.value, qshampoo.PreconditionerError
    )


@pytest.mark.parametrize("quant", [q for q in VARIANTS if q.startswith("cholesky")])
def test_failed_cholesky_keeps_previous_factor_and_streak_raises(quant):
    w = torch.randn(6, 5, requires_grad=True)
    opt = qshampoo.Shampoo(
        [w],
        stat_interval=1,
        root_interval=10**6,
        max_consecutive_failures=2,
        **variant_kwargs(quant),
    )
    w.grad = torch.randn(6, 5)
    opt.step()
    f = _poison_statistics(opt, w)
    opt.step()
    assert f["cholesky_failures"] == 1 and opt.diagnostics()["cholesky_failures"] == 1
    with pytest.raises(PreconditionerError, match="Cholesky factorisation .* 2 times in a row"):
        opt.step()


def test_streak_limit_zero_never_raises_and_success_resets_streak():
    w = torch.randn(4, 3, requires_grad=True)
    opt = qshampoo.Shampoo([w], stat_interval=1, root_interval=1, max_consecutive_failures=0)
    w.grad = torch.randn(4, 3)
    opt.step()
    f = _poison_statistics(opt, w)
    opt.param_groups[0]["stat_interval"] = 10**6
    for _ in range(5):
        opt.step()
    assert f["consecutive_root_failures"] == 5
    f["stat"].copy_(torch.eye(4))  # healthy again
    opt.step()
    assert f["consecutive_root_failures"] == 0 and f["root_failures"] == 5


@pytest.mark.parametrize("quant", VARIANTS)
def test_zero_gradients_for_ever_are_not_failures(quant):
    """Statistics that decay to exactly zero get the identity root, not a failure streak."""
    w = torch.randn(5, 4, requires_grad=True)
    opt = qshampoo.Shampoo(
        [w],
        stat_interval=1,
        root_interval=1,
        stat_decay=0.0,
        max_consecutive_failures=1,
        **variant_kwargs(quant),
    )
    for _ in range(4):
        w.grad = torch.zeros(5, 4)
        opt.step()
    d = opt.diagnostics()
    assert d["root_failures"] == 0
    assert torch.isfinite(w).all() and all_finite(opt)


# -- non-finite gradients never poison the statistics -----------------------------------------
@pytest.mark.parametrize("quant", VARIANTS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "overflow"])
def test_nonfinite_gradient_leaves_state_untouched(quant, bad):
    torch.manual_seed(0)
    w = torch.randn(8, 6, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    opt = qshampoo.Shampoo(
        [w, b], lr=1e-2, stat_interval=1, root_interval=1, **variant_kwargs(quant)
    )
    for _ in range(3):
        w.grad, b.grad = torch.randn(8, 6), torch.randn(6)
        opt.step()
    before = snapshot(opt)
    w_before = w.detach().clone()
    grad = torch.randn(8, 6)
    if bad == "overflow":  # every entry finite, but G G^T and ||G||^2 overflow float32
        grad = grad * 1e20
    else:
        grad[3, 2] = bad
    w.grad, b.grad = grad, torch.randn(6)
    opt.step()
    after = snapshot(opt)
    assert torch.equal(w, w_before)

    # w's whole state (statistics, roots, moments) is bitwise unchanged ...
    def without_counters(snap):
        return [x for x in snap if x[0] not in ("state['nonfinite_steps']", "state['step']")]

    assert same(without_counters(before[1]), without_counters(after[1]))
    # ... except the counters: the skip is counted, and the step counter (the schedule of
    # the statistics and roots) counts every step given a gradient; b stepped on
    assert opt.state[w]["nonfinite_steps"] == 1 and opt.state[w]["step"] == 4
    assert opt.state[b]["step"] == 4 and opt.state[b]["nonfinite_steps"] == 0
    assert opt.diagnostics()["nonfinite_steps"] == 1
    assert all(d["skipped_steps"] == 1 for d in opt.diagnostics()["factors"])
    for _ in range(3):
        w.grad, b.grad = torch.randn(8, 6), torch.randn(6)
        opt.step()
    assert all_finite(opt) and torch.isfinite(w).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inf_gradient_is_skipped(dtype):
    w = torch.randn(6, 4).to(dtype).requires_grad_()
    opt = qshampoo.Shampoo([w], stat_interval=1, root_interval=1)
    w.grad = torch.full((6, 4), float("inf"), dtype=dtype)
    opt.step()
    assert opt.state[w]["step"] == 1 and opt.state[w]["nonfinite_steps"] == 1
    assert torch.equal(opt.state[w]["base"]["exp_avg"], torch.zeros(6, 4))
    opt.param_groups[0]["nonfinite"] = "raise"
    with pytest.raises(FloatingPointError, match=r"parameter #0 .*shape \(6, 4\)"):
        opt.step()


# -- diagnostics ------------------------------------------------------------------------------
@pytest.mark.parametrize("quant", VARIANTS)
def test_diagnostics_keys_are_stable(quant):
    w = torch.randn(8, 5, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    opt = qshampoo.Shampoo(
        [w, b], stat_interval=1, root_interval=2, max_preconditioner_dim=6, **variant_kwargs(quant)
    )
    assert opt.diagnostics() == {
        "nonfinite_steps": 0,
        "root_failures": 0,
        "cholesky_failures": 0,
        "quant_error": None,
        "factors": [],
    }
    for _ in range(2):
        w.grad, b.grad = torch.randn(8, 5), torch.randn(5)
        opt.step()
    d = opt.diagnostics()
    assert set(d) == DIAG_KEYS
    # 8x5 cut at 6: blocks (6,5) and (2,5), each with L and R
    assert [(f["block"], f["side"], f["order"]) for f in d["factors"]] == [
        (0, "L", 6),
        (0, "R", 5),
        (1, "L", 2),
        (1, "R", 5),
    ]
    for f in d["factors"]:
        assert FACTOR_KEYS <= set(f) <= FACTOR_KEYS | {"bits"}
        assert f["param"] == 0 and f["shape"] == (8, 5) and f["root_failures"] == 0
        assert f["root_damping"] == opt.param_groups[0]["matrix_eps"]
        assert f["quant_error"] is None or f["quant_error"] >= 0
    errors = [f["quant_error"] for f in d["factors"] if f["quant_error"] is not None]
    if errors:
        assert d["quant_error"] == pytest.approx(sum(errors) / len(errors))
    else:
        assert d["quant_error"] is None


# -- the short version of benchmarks/long_run.py ----------------------------------------------
@pytest.mark.parametrize("quant", VARIANTS)
def test_short_aggressive_run_stays_finite(quant):
    """Aggressive lr, tiny matrix_eps, statistics every step, roots every 5 steps."""
    from benchmarks.long_run import run_variant

    result = run_variant(quant, steps=150, seed=0, nan_every=50)
    assert result["nonfinite_steps"] == result["injected_nan"] == 3
    assert result["finite"], result
    assert result["final_loss"] < result["first_loss"]


# -- an accelerator's statistics step: decided on the device ---------------------------------
@pytest.fixture
def on_accelerator(monkeypatch):
    """Run the step as on an accelerator (nothing read back at plain and statistics steps)."""
    monkeypatch.setattr(qshampoo.optimizer, "_reads_are_free", lambda device: False)


def _run(quant: str, bad, on_device: bool, monkeypatch) -> tuple:
    """Ten steps (statistics every 2, roots every 4) of a weight and a bias, with a bad
    gradient of the weight at step 6, a statistics step where no root is due; the state
    (failures counted on the device read first, by ``diagnostics()``) and parameters."""
    torch.manual_seed(0)
    w = torch.randn(8, 6, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    opt = qshampoo.Shampoo(
        [w, b], lr=1e-2, stat_interval=2, root_interval=4, **variant_kwargs(quant)
    )
    with monkeypatch.context() as m:
        if on_device:
            m.setattr(qshampoo.optimizer, "_reads_are_free", lambda device: False)
        for k in range(1, 11):
            w.grad, b.grad = torch.randn(8, 6), torch.randn(6)
            if k == 6 and bad == "overflow":
                w.grad *= 1e20
            elif k == 6 and bad is not None:
                w.grad[3, 2] = bad
            if k == 6:
                with count_syncs() as where:
                    opt.step()
                assert not on_device or not where, where
                continue
            opt.step()
        diagnostics = opt.diagnostics()
    return snapshot(opt), [w.detach().clone(), b.detach().clone()], diagnostics


@pytest.mark.parametrize("quant", VARIANTS)
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), "overflow"])
def test_an_accelerators_statistics_step_gives_the_cpus_run(quant, bad, monkeypatch):
    """A statistics step as an accelerator runs it (nothing read back: every due update is
    made, and a non-finite gradient's factors keep their state, selected on the device) gives
    the CPU's run bit for bit, with a bad gradient at a statistics step or without one."""
    cpu = _run(quant, bad, False, monkeypatch)
    device = _run(quant, bad, True, monkeypatch)
    assert same(cpu[:2], device[:2])
    assert cpu[2]["nonfinite_steps"] == device[2]["nonfinite_steps"] == (bad is not None)


@pytest.mark.parametrize("quant", [q for q in VARIANTS if q.startswith("cholesky")])
def test_an_accelerators_failed_cholesky_keeps_its_factor_and_raises_at_the_root_step(
    quant, on_accelerator, monkeypatch
):
    """On an accelerator a failed Cholesky factorisation (forced: ``cholesky_lower`` reports
    info > 0 for one factor) is not retried at a statistics step: that
    factor keeps its previous state bit for bit while the others move on, nothing is read
    back, the failures are counted on the device and appear in ``diagnostics()``, and
    ``PreconditionerError`` is raised at the next root step after
    ``max_consecutive_failures``, before that step changes anything."""
    import qshampoo.factors.base as factors_base

    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    opt = qshampoo.Shampoo(
        [w],
        stat_interval=1,
        root_interval=5,
        max_consecutive_failures=3,
        **variant_kwargs(quant),
    )
    w.grad = torch.randn(6, 5)
    opt.step()  # step 1: statistics (on the device), state created
    left, right = opt.store.view(w).blocks[0]
    counted = factors_base.PENDING_FAILURES  # the failures counted on the device
    keys = [k for k, v in left.state.items() if torch.is_tensor(v) and k != counted]
    before = {k: left.state[k].clone() for k in keys}
    right_before = right.state["chol_diag"].clone()
    real = factors_base.cholesky_lower

    def left_fails(A):  # the left factor (order 6; the right one, of order 5, is not)
        C, info = real(A)
        return C, info + 1 if A.shape[-1] == 6 else info

    monkeypatch.setattr(factors_base, "cholesky_lower", left_fails)
    for _ in range(3):  # steps 2-4: statistics only
        w.grad = torch.randn(6, 5)
        with count_syncs() as where:
            opt.step()
        assert not where, where
        assert all(torch.equal(left.state[k], before[k]) for k in keys)
    assert not torch.equal(right.state["chol_diag"], right_before)  # the other moved on
    d = opt.diagnostics()
    assert d["cholesky_failures"] == 3
    assert [f["consecutive_cholesky_failures"] for f in d["factors"]] == [3, 0]
    assert [f["cholesky_failures"] for f in d["factors"]] == [3, 0]
    params, state = w.detach().clone(), snapshot(opt)
    w.grad = torch.randn(6, 5)
    with pytest.raises(PreconditionerError, match="3 times in a row .*on an accelerator"):
        opt.step()  # step 5: roots due
    assert torch.equal(w, params) and same(snapshot(opt), state)


def test_failures_counted_on_the_device_fold_into_the_checkpoints_counters(
    on_accelerator, monkeypatch
):
    """The failures an accelerator counts on the device are read into the counters by
    ``state_dict()``, which saves them in the usual format (ints), and a success ends the
    streak."""
    import qshampoo.factors.base as factors_base

    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    opt = qshampoo.Shampoo([w], stat_interval=1, root_interval=100, **variant_kwargs(RICHEST))
    w.grad = torch.randn(6, 5)
    opt.step()
    real = factors_base.cholesky_lower
    fail = [True, True, False, True]

    def sometimes(A):  # the left factor (order 6) as ``fail`` says
        C, info = real(A)
        return C, info + 1 if A.shape[-1] == 6 and fail.pop(0) else info

    monkeypatch.setattr(factors_base, "cholesky_lower", sometimes)
    for _ in range(4):
        w.grad = torch.randn(6, 5)
        opt.step()
    saved = opt.state_dict()["state"][0]["precond"][0]["L"]
    assert saved["cholesky_failures"] == 3 and saved["consecutive_cholesky_failures"] == 1
    assert type(saved["cholesky_failures"]) is int
    assert factors_base.PENDING_FAILURES not in saved
    fresh = qshampoo.Shampoo([w], stat_interval=1, root_interval=100, **variant_kwargs(RICHEST))
    fresh.load_state_dict(opt.state_dict())
