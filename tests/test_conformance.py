"""torch.optim conformance: schedulers, GradScaler, clipping, closures, maximize, param groups,
low-precision parameters and torch.compile'd models, for every factor variant."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import qshampoo
from tests.robust_utils import (  # noqa: F401 - single_thread is an autouse fixture
    RICHEST,
    VARIANTS,
    all_finite,
    leaves,
    same,
    single_thread,
    snapshot,
    variant_kwargs,
)

LAST = RICHEST


def small_net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 3))
    return net.to(dtype)


def batch(step, dtype=torch.float32):
    g = torch.Generator(torch.get_default_device()).manual_seed(1000 + step)
    x = torch.randn(16, 8, generator=g).to(dtype)
    y = torch.randint(0, 3, (16,), generator=g)
    return x, y


def loss_of(net, step, dtype=torch.float32):
    x, y = batch(step, dtype)
    return nn.functional.cross_entropy(net(x).float(), y)


def make_opt(net, quant=LAST, **kw):
    kw = {"lr": 1e-2, "stat_interval": 1, "root_interval": 2, **kw}
    return qshampoo.Shampoo(net.parameters(), **variant_kwargs(quant, **kw))


def plain_step(net, opt, step):
    opt.zero_grad()
    loss = loss_of(net, step)
    loss.backward()
    opt.step()
    return loss


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def params_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


# -- LR schedulers ----------------------------------------------------------------------------
SCHEDULERS = {
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=12),
    "warmup_cosine": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o,
        [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=3),
            torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=9),
        ],
        milestones=[3],
    ),
    "warm_restarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=4),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_scheduler_with_state_dicts_resumes_identically(name):
    make_sched = SCHEDULERS[name]
    net = small_net()
    opt = make_opt(net)
    sched = make_sched(opt)
    lrs = []
    for k in range(12):
        plain_step(net, opt, k)
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) > 2  # the schedule really moved the lr the optimizer reads

    net2 = small_net()
    opt2 = make_opt(net2)
    sched2 = make_sched(opt2)
    for k in range(5):
        plain_step(net2, opt2, k)
        sched2.step()
    ckpt = roundtrip(
        {"model": net2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}
    )
    net3 = small_net(seed=1)
    net3.load_state_dict(ckpt["model"])
    opt3 = make_opt(net3)
    sched3 = make_sched(opt3)
    opt3.load_state_dict(ckpt["opt"])
    sched3.load_state_dict(ckpt["sched"])
    for k in range(5, 12):
        plain_step(net3, opt3, k)
        sched3.step()
        assert opt3.param_groups[0]["lr"] == lrs[k]
    assert params_equal(net, net3)


def test_onecycle_cycles_adam_beta1():
    net = small_net()
    opt = make_opt(net)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10)
    beta1 = set()
    for k in range(9):
        plain_step(net, opt, k)
        sched.step()
        beta1.add(opt.param_groups[0]["betas"][0])
    assert len(beta1) > 3


def test_reduce_lr_on_plateau():
    net = small_net()
    opt = make_opt(net)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    for k in range(3):
        plain_step(net, opt, k)
        sched.step(1.0)  # a loss that never improves
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**2)


# -- GradScaler / AMP -------------------------------------------------------------------------
@pytest.mark.parametrize("quant", VARIANTS)
def test_grad_scaler_skipped_steps_leave_state_untouched(quant):
    net = small_net()
    opt = make_opt(net, quant)
    device = torch.get_default_device().type  # QSHAMPOO_TEST_DEVICE=cuda: CUDA's AMP
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10, growth_interval=1)

    def amp_step(k, overflow=False):
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_of(net, k)
        scaler.scale(loss).backward()
        if overflow:  # what a too-large loss scale does to a low-precision backward
            net[0].weight.grad[0, 0] = float("inf")
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    for k in range(3):
        amp_step(k)
    assert opt.state[net[0].weight]["step"] == 3
    before, params = snapshot(opt), [p.detach().clone() for p in net.parameters()]
    scale = scaler.get_scale()
    amp_step(3, overflow=True)
    assert scaler.get_scale() < scale  # the scaler saw the inf and backed off ...
    assert same(before, snapshot(opt))  # ... and the optimizer state is bitwise unchanged
    assert all(torch.equal(a, b) for a, b in zip(params, net.parameters(), strict=True))
    assert opt.diagnostics()["nonfinite_steps"] == 0  # the scaler skipped, not Shampoo
    for k in range(4, 7):
        amp_step(k)
    assert opt.state[net[0].weight]["step"] == 6 and all_finite(opt)


# -- clipping, closure, maximize --------------------------------------------------------------
@pytest.mark.parametrize("quant", VARIANTS)
def test_clipping_before_step_is_what_the_optimizer_sees(quant):
    net, ref = small_net(), small_net()
    opt, opt_ref = make_opt(net, quant), make_opt(ref, quant)
    for k in range(4):
        opt.zero_grad()
        (10 * loss_of(net, k)).backward()
        # foreach=False: the per-tensor norms, as below (the default on CUDA fuses them)
        nn.utils.clip_grad_norm_(net.parameters(), max_norm=0.5, foreach=False)
        opt.step()
        # the same step with the clipped gradients computed by hand
        opt_ref.zero_grad()
        (10 * loss_of(ref, k)).backward()
        grads = [p.grad for p in ref.parameters()]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        coef = torch.clamp(0.5 / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef)
        opt_ref.step()
    assert params_equal(net, ref)


@pytest.mark.parametrize("quant", VARIANTS)
def test_closure_step_equals_explicit_step(quant):
    net, ref = small_net(), small_net()
    opt, opt_ref = make_opt(net, quant), make_opt(ref, quant)
    calls = []
    for k in range(4):

        def closure(k=k):
            calls.append(k)
            opt.zero_grad()
            loss = loss_of(net, k)
            loss.backward()
            return loss

        loss = opt.step(closure)
        ref_loss = plain_step(ref, opt_ref, k)
        assert torch.equal(loss, ref_loss)
    assert calls == [0, 1, 2, 3] and params_equal(net, ref)


@pytest.mark.parametrize("quant", VARIANTS)
@pytest.mark.parametrize("base", ["adamw", "sgd"])
def test_maximize_is_minimizing_the_negation(quant, base):
    net, ref = small_net(), small_net()
    opt = make_opt(net, quant, base=base, maximize=True)
    opt_ref = make_opt(ref, quant, base=base)
    for k in range(4):
        opt.zero_grad()
        (-loss_of(net, k)).backward()  # maximise -loss == minimise loss
        opt.step()
        plain_step(ref, opt_ref, k)
    assert params_equal(net, ref)


# -- add_param_group --------------------------------------------------------------------------
def test_add_param_group_mid_training():
    net = small_net()
    head = nn.Linear(3, 5)
    opt = make_opt(net[:1])  # only the first layer to start with
    for k in range(3):
        plain_step(net, opt, k)
    opt.add_param_group({"params": list(net[2].parameters()), "lr": 5e-3, "base": "sgd"})
    assert opt.param_groups[1]["root_interval"] == 2  # defaults fill the rest
    for k in range(3, 6):
        plain_step(net, opt, k)
    assert (
        opt.state[net[2].weight]["step"] == 3
        and "momentum_buffer" in (opt.state[net[2].weight]["base"])
    )
    # an invalid group is refused and does not stay behind
    with pytest.raises(ValueError, match="stat_decay"):
        opt.add_param_group({"params": list(head.parameters()), "stat_decay": 2.0})
    assert len(opt.param_groups) == 2
    with pytest.raises(ValueError, match="some parameters appear in more than one"):
        opt.add_param_group({"params": [net[0].weight]})
    assert len(opt.param_groups) == 2
    opt.add_param_group({"params": list(head.parameters())})
    # the three groups survive a checkpoint
    opt2 = make_opt(net[:1])
    opt2.add_param_group({"params": list(net[2].parameters()), "lr": 5e-3, "base": "sgd"})
    opt2.add_param_group({"params": list(head.parameters())})
    opt2.load_state_dict(roundtrip(opt.state_dict()))
    assert same(snapshot(opt), snapshot(opt2))


# -- low-precision parameters -----------------------------------------------------------------
@pytest.mark.parametrize("quant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_parameters_train_with_fp32_state(quant, dtype):
    net = small_net(dtype=dtype)
    opt = make_opt(net, quant)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_of(net, 0, dtype)  # one batch: the loss must go down
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.dtype == dtype for p in net.parameters())
    for st in opt.state.values():
        for path, v in leaves(st):
            if torch.is_tensor(v) and v.is_floating_point():
                assert v.dtype == torch.float32, path
    assert all_finite(opt)


def test_float64_parameters_keep_their_precision():
    w = torch.full((4, 3), 1.0, dtype=torch.float64, requires_grad=True)
    opt = qshampoo.Shampoo([w], lr=1e-9, base="sgd", momentum=0.0, root_interval=1)
    w.grad = torch.ones(4, 3, dtype=torch.float64)
    opt.step()
    # 1 - 1e-9 is not representable in float32: the update must not be rounded away
    assert w.dtype == torch.float64 and (w < 1.0).all()
    assert opt.state[w]["precond"][0]["L"]["root"].dtype == torch.float32


# -- another default device ------------------------------------------------------------------
@pytest.mark.parametrize("quant", VARIANTS)
def test_steps_under_another_default_device_stay_with_the_parameters(quant, monkeypatch):
    """A script that calls ``torch.set_default_device`` (here to "meta", where a tensor has no
    data) leaves CPU parameters' state on the CPU and their steps unchanged: every tensor the
    optimizer makes is placed by its parameter. The codebook tables, built once per process,
    are rebuilt inside the context (they were once made on the default device)."""
    from qshampoo.quant import codebooks

    for cache in ("_CACHE", "_BYTE_TABLE_CACHE", "_MIDPOINT_CACHE", "_LUT_CACHE"):
        monkeypatch.setattr(codebooks, cache, {})
    net, ref = small_net(), small_net()
    opt, opt_ref = make_opt(net, quant), make_opt(ref, quant)
    for k in range(4):
        opt.zero_grad()
        loss_of(net, k).backward()
        with torch.device("meta"):
            opt.step()
        plain_step(ref, opt_ref, k)  # second: the tables get built inside the context
    assert params_equal(net, ref) and same(snapshot(opt), snapshot(opt_ref))


# -- torch.compile ----------------------------------------------------------------------------
@pytest.mark.parametrize("quant", VARIANTS)
def test_compiled_model_trains_like_eager(quant):
    eager, compiled_net = small_net(), small_net()
    try:
        compiled = torch.compile(compiled_net, backend="aot_eager")
        compiled(batch(0)[0])
    except Exception as e:  # pragma: no cover - depends on the platform
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
    opt, opt_ref = make_opt(compiled_net, quant), make_opt(eager, quant)
    for k in range(5):
        opt.zero_grad()
        x, y = batch(k)
        nn.functional.cross_entropy(compiled(x), y).backward()
        opt.step()
        plain_step(eager, opt_ref, k)
    for a, b in zip(compiled_net.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the compiled module's state_dict carries the same parameters the optimizer updated
    assert set(compiled.state_dict()) == {f"_orig_mod.{k}" for k in eager.state_dict()}


@pytest.mark.parametrize(("quant", "base"), [(q, "adamw") for q in VARIANTS] + [(RICHEST, "sgd")])
def test_compiled_step_trains_like_eager_without_recompiling(quant, base):
    """``torch.compile(opt.step, dynamic=False)`` with two param groups and an LR schedule on
    a tensor lr (as torch.optim asks for a compiled step): the statistics and root updates run
    eagerly, outside the graph; the rest (dequantization, preconditioning, grafting, AdamW)
    of both groups compiles at the first step and never again, whether statistics or roots
    are due (the step counters reach the graph as a tensor)."""
    compiled_step_trains_like_eager(quant, base, backend="aot_eager")


def compiled_step_trains_like_eager(quant: str, base: str, backend: str) -> None:
    """12 steps, eager and compiled with ``backend``, on the default device (also called by
    tests/test_devices.py with inductor on the GPU). After every step the eager copy takes the
    compiled one's parameters and state, so each step is compared from the same point: the
    steps differ by the rounding of the compiled ops alone, where over a whole run the 4-bit
    codes would amplify those roundings into a level here and there (a device's own kernels,
    inductor's fused ones and eigh's basis of a near-degenerate eigenspace all round
    differently)."""
    torch._dynamo.reset()
    nets = small_net(), small_net()

    def groups(net):
        return [
            {"params": [net[0].weight, net[2].weight], "weight_decay": 0.1},
            {"params": [net[0].bias, net[2].bias]},
        ]

    kw = variant_kwargs(quant, stat_interval=2, root_interval=4, base=base)
    opts = [qshampoo.Shampoo(groups(net), lr=torch.tensor(1e-2), **kw) for net in nets]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1 / (1 + 0.2 * k)) for o in opts]
    step = torch.compile(opts[1].step, backend=backend, dynamic=False)
    for k in range(12):
        plain_step(nets[0], opts[0], k)
        opts[1].zero_grad()
        loss_of(nets[1], k).backward()
        # SGD's momentum buffer appears at the first update: one recompilation at step 2
        with torch._dynamo.config.patch(error_on_recompile=k >= 1 + (base == "sgd")):
            step()
        for s in scheds:
            s.step()
        for a, b in zip(*(net.parameters() for net in nets), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            for a, b in zip(*(net.parameters() for net in nets), strict=True):
                a.copy_(b)
        opts[0].load_state_dict(copy.deepcopy(opts[1].state_dict()))
    assert [opts[1].state[p]["step"] for p in nets[1].parameters()] == [12] * 4
