"""A refused or failed call changes nothing (issue 22): ``load_state_dict`` and ``step()``
are all-or-nothing, param-group values are validated wherever they come from, and the step
works where ``torch.optim.AdamW`` does (meta tensors, huge finite float64 gradients)."""

from __future__ import annotations

import pytest
import torch

import qshampoo
import qshampoo.optimizer
from qshampoo.checkpoint import with_checksums
from qshampoo.dispatch import count_syncs
from qshampoo.factors import Factor, PreconditionerError
from tests.robust_utils import (  # noqa: F401 - single_thread is an autouse fixture
    RICHEST,
    all_finite,
    same,
    single_thread,
    snapshot,
    variant_kwargs,
)


def _two_groups(seed=0, **kw):
    """An optimizer with two param groups, stepped twice (every statistics and root due)."""
    torch.manual_seed(seed)
    a = torch.randn(40, 24, requires_grad=True)
    b = torch.randn(12, 10, requires_grad=True)
    c = torch.randn(7, requires_grad=True)
    opt = qshampoo.Shampoo(
        [{"params": [a, c]}, {"params": [b], "lr": 0.02}],
        max_preconditioner_dim=16,
        stat_interval=1,
        root_interval=1,
        **variant_kwargs(RICHEST, **kw),
    )
    for _ in range(2):
        for p in (a, b, c):
            p.grad = torch.randn(p.shape)
        opt.step()
    return opt, (a, b, c)


def _unchanged(opt, before, params, values) -> None:
    assert same(snapshot(opt), before)
    for p, v in zip(params, values, strict=True):
        assert torch.equal(p, v)


# -- load_state_dict: all or nothing ------------------------------------------------------------
def _one_ranks_state_dict(opt):
    """What one rank of a 2-rank run saves: some blocks of the first parameter only."""
    sd = opt.state_dict()
    blocks = sd["state"][0]["precond"]
    sd["state"][0]["precond"] = {"0": blocks[0], "3": blocks[3]}
    sd["param_groups"][0]["lr"] = 0.5  # a value the refused load must not bring in
    return with_checksums(sd)


def test_refused_load_of_one_ranks_state_dict_changes_nothing():
    opt, params = _two_groups()
    other, _ = _two_groups(seed=1)
    sd = _one_ranks_state_dict(other)
    before, values = snapshot(opt), [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="consolidated_state_dict"):
        opt.load_state_dict(sd)
    _unchanged(opt, before, params, values)
    assert opt.param_groups[0]["lr"] == 1e-3
    # and the optimizer goes on as if nothing had happened
    twin, twin_params = _two_groups()
    for p, q in zip(params, twin_params, strict=True):
        p.grad = torch.randn(p.shape)
        q.grad = p.grad.clone()
    opt.step()
    twin.step()
    assert same(snapshot(opt), snapshot(twin))


def test_load_state_dict_hooks_see_the_state_as_torch_passes_it():
    opt, _ = _two_groups()
    sd = opt.state_dict()
    seen = {}

    def pre(optimizer, state_dict):
        seen["pre"] = len(state_dict["state"])

    def post(optimizer):
        seen["post"] = len(optimizer.state)

    opt.register_load_state_dict_pre_hook(pre)
    opt.register_load_state_dict_post_hook(post)
    opt.load_state_dict(sd)
    assert seen == {"pre": 3, "post": 3}


def test_a_pre_hooks_group_values_are_validated_before_anything_changes():
    opt, params = _two_groups()
    sd = opt.state_dict()
    del sd["checksums"]  # a state edited on purpose

    def pre(optimizer, state_dict):
        state_dict["param_groups"][1]["stat_interval"] = 0

    opt.register_load_state_dict_pre_hook(pre)
    before, values = snapshot(opt), [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"invalid stat_interval=0: must be an integer >= 1"):
        opt.load_state_dict(sd)
    _unchanged(opt, before, params, values)


# -- step(): all or nothing ---------------------------------------------------------------------
def test_nonfinite_raise_in_a_later_group_changes_no_group():
    opt, params = _two_groups()
    opt.param_groups[1]["nonfinite"] = "raise"
    a, b, c = params
    for p in params:
        p.grad = torch.randn(p.shape)
    b.grad[0, 0] = float("nan")
    before, values = snapshot(opt), [p.detach().clone() for p in params]
    with pytest.raises(FloatingPointError):
        opt.step()
    _unchanged(opt, before, params, values)


def _poison(opt, p):
    """Infinite statistics in every block of ``p`` (as a bug or a bit flip would leave them;
    inf, not NaN, so that torch.equal can tell the state unchanged)."""
    for block in opt.state[p]["precond"]:
        for f in block.values():
            for k, v in f.items():
                if torch.is_tensor(v) and v.is_floating_point() and not k.startswith("root"):
                    if k not in ("quant_error", "cholesky_damping"):
                        v.fill_(torch.inf)


@pytest.mark.parametrize("limit", [1, 2])
def test_preconditioner_error_in_a_later_group_changes_no_group(limit):
    opt, params = _two_groups(max_consecutive_failures=limit)
    a, b, c = params
    _poison(opt, b)  # group 1's factors fail from now on
    for _ in range(limit - 1):
        for p in params:
            p.grad = torch.randn(p.shape)
        opt.step()
    for p in params:
        p.grad = torch.randn(p.shape)
    before, values = snapshot(opt), [p.detach().clone() for p in params]
    with pytest.raises(PreconditionerError):
        opt.step()
    _unchanged(opt, before, params, values)


def test_preconditioner_error_at_the_first_step_leaves_no_state(monkeypatch):
    def always_fails(self, ok, damping=None):  # every root fails
        self._record("root", False, damping)

    monkeypatch.setattr(Factor, "record_root_result", always_fails)
    w = torch.randn(6, 5, requires_grad=True)
    opt = qshampoo.Shampoo([w], stat_interval=1, root_interval=1, max_consecutive_failures=1)
    w.grad = torch.randn(6, 5)
    with pytest.raises(PreconditionerError):
        opt.step()
    assert len(opt.state) == 0 and opt.diagnostics()["factors"] == []


# -- param-group values written mid-run -------------------------------------------------------
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("stat_interval", 0, "invalid stat_interval=0: must be an integer >= 1"),
        ("lr", -1.0, "invalid lr=-1.0: must be >= 0"),
        ("betas", (0.9, 1.5), "invalid betas"),
        ("bits", 3, "bits changed after the optimizer state was created"),
    ],
)
def test_group_values_written_mid_run_are_validated_before_any_change(key, value, message):
    opt, params = _two_groups()
    for p in params:
        p.grad = torch.randn(p.shape)
    opt.param_groups[1][key] = value
    before, values = snapshot(opt), [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=message):
        opt.step()
    _unchanged(opt, before, params, values)


def test_group_values_written_mid_run_give_the_constructors_message():
    w = torch.randn(5, 4, requires_grad=True)
    with pytest.raises(ValueError) as made:
        qshampoo.Shampoo([w], stat_interval=0)
    opt = qshampoo.Shampoo([w])
    opt.param_groups[0]["stat_interval"] = 0
    w.grad = torch.randn(5, 4)
    with pytest.raises(ValueError) as stepped:
        opt.step()
    assert str(stepped.value) == str(made.value)


# -- where torch.optim.AdamW steps, so does Shampoo ------------------------------------------------
@pytest.mark.parametrize("kw", [{}, dict(stat_interval=1, root_interval=1)])
def test_step_on_meta_parameters(kw):
    params = [
        torch.empty(6, 5, device="meta", requires_grad=True),
        torch.empty(5, device="meta", requires_grad=True),
    ]
    opt = qshampoo.Shampoo(params, **kw)
    adamw = torch.optim.AdamW([torch.empty(6, 5, device="meta", requires_grad=True)], foreach=False)
    for p in [*params, *adamw.param_groups[0]["params"]]:
        p.grad = torch.empty(p.shape, device="meta")
    adamw.step()  # what torch does
    for _ in range(2):
        opt.step()
    assert opt.state[params[0]]["step"] == 2
    assert opt.state[params[0]]["base"]["exp_avg"].device.type == "meta"


@pytest.mark.parametrize("precondition", [False, True])
def test_huge_finite_float64_gradients_are_stepped_as_adamw_does(precondition):
    torch.manual_seed(0)
    w = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    v = w.detach().clone().requires_grad_()
    opt = qshampoo.Shampoo([w], lr=1e-2, precondition=precondition)
    ref = torch.optim.AdamW([v], lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        g = torch.randn(6, 5, dtype=torch.float64) * 1e20  # ||G||^2 overflows float32
        w.grad, v.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    assert opt.state[w]["step"] == 3 and opt.diagnostics()["nonfinite_steps"] == 0
    assert torch.isfinite(w).all()
    # AdamW's steps (the roots are still the identity, and grafting keeps the norm), up to
    # Shampoo's float32 moments
    torch.testing.assert_close(w, v, rtol=1e-6, atol=1e-8)


def test_huge_float64_gradient_leaves_the_statistics_out_and_finite():
    w = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    opt = qshampoo.Shampoo([w], stat_interval=1, root_interval=1, **variant_kwargs(RICHEST))
    w.grad = torch.randn(6, 5, dtype=torch.float64)
    opt.step()
    precond = snapshot(opt)[1]
    precond = [x for x in precond if "precond" in x[0]]
    before = w.detach().clone()
    w.grad = torch.randn(6, 5, dtype=torch.float64) * 1e20  # G G^T overflows float32
    opt.step()
    assert not torch.equal(w, before) and torch.isfinite(w).all()  # stepped
    after = [x for x in snapshot(opt)[1] if "precond" in x[0]]
    assert same(after, precond)  # statistics (and roots of them) left as they were
    assert all_finite(opt) and opt.state[w]["step"] == 2


# -- host synchronisations of the optimizer shell (issue 22 item 7, issue 19 item 2) ----------
#: the shell: what orchestrates the step (the factor and quantization code is apart)
SHELL = ("qshampoo/optimizer.py", "qshampoo/store.py", "qshampoo/base.py", "qshampoo/layout.py")


def _syncs_per_step(opt, params, steps: int = 4) -> list:
    """The host reads of each of ``steps`` steps (statistics at steps 2, 4; roots at 4)."""
    out = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape)
        with count_syncs() as where:
            opt.step()
        out.append(where)
    return out


def _shell(where) -> dict:
    return {k: n for k, n in where.items() if k[1].startswith(SHELL)}


#: the one read the shell makes: at a step where statistics or roots are due, to raise, and
#: at every step on the CPU
FLAGS = ("Tensor.tolist", "qshampoo/optimizer.py:_finite_flags")


@pytest.fixture
def skip_on_device(monkeypatch):
    """Run the skip of a non-finite gradient as on an accelerator (decided on the device, no
    read at a plain step) on the CPU, where the flags are otherwise read at every step."""
    monkeypatch.setattr(qshampoo.optimizer, "_reads_are_free", lambda device: False)


@pytest.mark.parametrize("on_device", [True, False])
@pytest.mark.parametrize("quant", ["none", RICHEST])
def test_the_shell_reads_the_device_only_for_the_nonfinite_check(quant, on_device, request):
    """On an accelerator the optimizer shell reads the device once at a step where roots are
    due (the gradients' finiteness, all groups at once: it decides on the host which roots
    and statistics may take a gradient) and not at all at a plain or statistics step: not for
    the group validation, the undo point, the schedule, the skip of a non-finite gradient or
    its statistics (left out on the device). On the CPU, where a read is free, the same one
    read at every step. (A tensor ``lr`` is read at every
    eager base update of SGD, as ``torch.optim.SGD``'s non-capturable step reads it.)"""
    if on_device:
        request.getfixturevalue("skip_on_device")
    params = [torch.randn(40, 24, requires_grad=True), torch.randn(24, requires_grad=True)]
    opt = qshampoo.Shampoo(
        [{"params": params[:1]}, {"params": params[1:], "lr": 2e-3}],
        stat_interval=2,
        root_interval=4,
        max_consecutive_failures=1,  # an undo point at every due step
        **variant_kwargs(quant),
    )
    per_step = [_shell(where) for where in _syncs_per_step(opt, params)]
    assert per_step == ([{}, {}, {}, {FLAGS: 1}] if on_device else [{FLAGS: 1}] * 4)


@pytest.mark.parametrize("base", ["adamw", "sgd"])
@pytest.mark.parametrize("quant", ["none", RICHEST])
def test_a_plain_step_does_not_synchronise(base, quant, skip_on_device):
    params = [torch.randn(40, 24, requires_grad=True), torch.randn(24, requires_grad=True)]
    opt = qshampoo.Shampoo(
        params, base=base, stat_interval=100, root_interval=100, **variant_kwargs(quant)
    )
    first, *plain = _syncs_per_step(opt, params, steps=4)  # nothing due after the first,
    assert _shell(first) == {}  # which creates the state (the factor code reads there)
    assert plain == [{}] * 3


def test_nonfinite_raise_reads_the_flags_at_every_step():
    """``nonfinite="raise"`` must raise before anything changes: one read per step."""
    params = [torch.randn(40, 24, requires_grad=True), torch.randn(24, requires_grad=True)]
    opt = qshampoo.Shampoo(params, stat_interval=100, root_interval=100, nonfinite="raise")
    for where in _syncs_per_step(opt, params, steps=2):
        assert _shell(where) == {FLAGS: 1}


@pytest.mark.parametrize("on_device", [True, False])
@pytest.mark.parametrize("base", ["adamw", "sgd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_nan_gradient_at_a_plain_step_is_skipped_on_the_device(base, dtype, on_device, request):
    """A NaN gradient at a step where nothing is due: its parameter and moments stay as they
    were, with no host read on an accelerator (one on the CPU), and the skip is counted; the
    other parameter goes on, and the next steps of the skipped one are those of a run without
    the bad step, bias correction included (it counts the applied steps)."""
    if on_device:
        request.getfixturevalue("skip_on_device")

    def make():
        torch.manual_seed(0)
        params = [
            torch.randn(12, 8, dtype=dtype, requires_grad=True),
            torch.randn(8, dtype=dtype, requires_grad=True),
        ]
        kw = dict(base=base, weight_decay=0.1, stat_interval=100, root_interval=100)
        return params, qshampoo.Shampoo(params, lr=1e-2, **kw, **variant_kwargs(RICHEST))

    params, opt = make()
    ref_params, ref = make()
    grads = [[torch.randn(p.shape, dtype=dtype) for p in params] for _ in range(4)]
    for k in range(4):
        if k == 2:  # the bad step: the reference sees only the bias's gradient
            bad = grads[k][0].clone()
            bad[3, 1] = float("nan")
            params[0].grad, params[1].grad = bad, grads[k][1].clone()
            ref_params[0].grad, ref_params[1].grad = None, grads[k][1].clone()
            w, moments = params[0].detach().clone(), snapshot(opt)[1][:2]
            with count_syncs() as where:
                opt.step()
            ref.step()
            assert _shell(where) == ({} if on_device else {FLAGS: 1})
            assert torch.equal(params[0], w)
            assert same(snapshot(opt)[1][:2], moments)  # the base state's moments
            assert opt.diagnostics()["nonfinite_steps"] == 1
            assert opt.state[params[0]]["nonfinite_steps"] == 1
            assert opt.state[params[0]]["step"] == 3  # the schedule counts the step
            continue
        for p, q, g in zip(params, ref_params, grads[k], strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    # the bias went on at every step; the weight's applied steps are those of the reference
    # (bias correction at 3 applied steps: the same numbers, bit for bit)
    for p, q in zip(params, ref_params, strict=True):
        assert torch.equal(p, q)
    assert all_finite(opt) and opt.diagnostics()["factors"][0]["skipped_steps"] == 1


@pytest.mark.parametrize("base", ["adamw", "sgd"])
def test_the_cpu_and_the_device_side_skip_give_the_same_run(base, monkeypatch):
    """On the CPU the skip is decided on the host while every gradient is finite and none was
    ever skipped, and on the device otherwise: the same run, bit for bit, as one whose every
    step decides it on the device (as an accelerator does), with a NaN at a plain step in the
    middle, statistics and roots due between (fp32). After the skip the CPU's group steps as
    the device does (bias correction of the applied steps), not from its step count."""

    def run(on_device: bool) -> tuple:
        torch.manual_seed(0)
        params = [torch.randn(12, 8, requires_grad=True), torch.randn(8, requires_grad=True)]
        opt = qshampoo.Shampoo(
            params,
            base=base,
            lr=1e-2,
            weight_decay=0.1,
            stat_interval=2,
            root_interval=4,
            **variant_kwargs(RICHEST),
        )
        with monkeypatch.context() as m:
            if on_device:
                m.setattr(qshampoo.optimizer, "_reads_are_free", lambda device: False)
            for k in range(9):
                for p in params:
                    p.grad = torch.randn(p.shape)
                if k == 4:  # a plain step (step 5)
                    params[0].grad[3, 1] = float("nan")
                opt.step()
        return snapshot(opt), [p.detach().clone() for p in params], opt.diagnostics()

    cpu, device = run(False), run(True)
    assert cpu[2]["nonfinite_steps"] == device[2]["nonfinite_steps"] == 1
    assert same(cpu[:2], device[:2])
