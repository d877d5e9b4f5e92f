"""qshampoo.Shampoo with quant="none": algorithm.md section 1, exactly."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import qshampoo
from tests.reference import ReferenceShampoo

SHAPES = [(7, 5), (4, 3, 2, 2), (6,), (1, 5, 1, 6), (9, 1)]


def make_params(shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


def set_grads(params, step):
    g = torch.Generator(torch.get_default_device()).manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def through_checkpoint(params, opt):
    """The parameters (fresh leaves) and the optimizer's state dict as a new process loads
    them from one checkpoint file (``torch.save`` / ``torch.load(weights_only=True)``)."""
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    return [t.clone().requires_grad_() for t in ckpt["params"]], ckpt["opt"]


def run(opt_fn, steps, shapes=SHAPES, dtype=torch.float32):
    params = make_params(shapes, dtype)
    opt = opt_fn(params)
    for k in range(steps):
        set_grads(params, k)
        opt.step()
    return params, opt


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adamw_equivalence_without_roots(wd):
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)
    ours, _ = run(lambda p: qshampoo.Shampoo(p, **kw, stat_interval=1, root_interval=10**6), 12)
    # foreach=False: torch's per-tensor AdamW (its default on CUDA, the fused multi-tensor
    # one, rounds differently)
    ref, _ = run(lambda p: torch.optim.AdamW(p, **kw, foreach=False), 12)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 5e-4])
def test_sgd_equivalence_without_roots(nesterov, wd):
    kw = dict(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=wd)
    ours, _ = run(
        lambda p: qshampoo.Shampoo(p, base="sgd", **kw, stat_interval=1, root_interval=10**6), 12
    )
    ref, _ = run(lambda p: torch.optim.SGD(p, **kw), 12)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("base", ["adamw", "sgd"])
@pytest.mark.parametrize("T1,T2", [(1, 1), (1, 3), (2, 4)])
def test_matches_dense_reference(base, T1, T2):
    """Blocked (7x5 with max dim 3), conv, 1-D and size-1-dim parameters, 10 steps."""
    kw = dict(lr=1e-2 if base == "adamw" else 0.05, weight_decay=0.01)
    ours, _ = run(
        lambda p: qshampoo.Shampoo(
            p,
            base=base,
            stat_interval=T1,
            root_interval=T2,
            max_preconditioner_dim=3,
            matrix_eps=1e-4,
            **kw,
        ),
        10,
    )
    ref_params = make_params()
    ref = ReferenceShampoo(ref_params, base=base, T1=T1, T2=T2, max_dim=3, matrix_eps=1e-4, **kw)
    for k in range(10):
        set_grads(ref_params, k)
        ref.step()
    for a, b in zip(ours, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_blocking_splits_as_documented():
    p = torch.zeros(3072, 100, requires_grad=True)
    opt = qshampoo.Shampoo([p], max_preconditioner_dim=1200)
    p.grad = torch.ones_like(p)
    opt.step()
    orders = [(b["L"]["order"], b["R"]["order"]) for b in opt.state[p]["precond"]]
    assert orders == [(1200, 100), (1200, 100), (672, 100)]


@pytest.mark.parametrize("ratio", [16.0, 4, None])
def test_a_long_thin_parameter_is_preconditioned_on_its_short_side(ratio):
    """A block side whose factor would hold more than max_factor_ratio times the block's
    entries gets no factor; the block is preconditioned on the other side alone (one-sided
    Shampoo, G_b R_hat), and every factor stays within that multiple of its block."""
    p = torch.zeros(1500, 3, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = qshampoo.Shampoo(
            [p],
            lr=0.1,
            base="sgd",
            momentum=0.0,
            max_factor_ratio=ratio,
            stat_interval=1,
            root_interval=1,
        )
    # overriding the default so that a factor exceeds 16x its block warns, naming the shape
    messages = [str(w.message) for w in caught]
    if ratio is None:
        assert len(messages) == 1 and "(1500, 3)" in messages[0] and "order 1200" in messages[0]
    else:
        assert messages == []
    p.grad = torch.randn(1500, 3, generator=torch.Generator().manual_seed(0))
    opt.step()
    blocks = opt.state[p]["precond"]  # two blocks: 1200 x 3 and 300 x 3
    if ratio is None:
        assert [sorted(b) for b in blocks] == [["L", "R"], ["L", "R"]]
        return
    assert [sorted(b) for b in blocks] == [["R"], ["R"]]
    assert all(e.factor.order**2 <= ratio * 300 * 3 for e in opt.store.entries())
    roots = [e.factor.root() for e in opt.store.entries()]
    G = p.grad
    d = torch.cat([G[:1200] @ roots[0], G[1200:] @ roots[1]])
    d = d * G.norm() / d.norm()  # grafted
    torch.testing.assert_close(p.detach(), -0.1 * d)  # SGD without momentum from zero


def test_one_dim_and_precondition_false_use_base_only():
    w = torch.randn(4, 4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    opt = qshampoo.Shampoo([{"params": [w], "precondition": False}, {"params": [b]}])
    w.grad, b.grad = torch.randn(4, 4), torch.randn(4)
    opt.step()
    assert "precond" not in opt.state[w] and "precond" not in opt.state[b]


def test_per_group_overrides_and_lr_scheduler():
    a, b = make_params([(6, 4), (5, 3)])
    opt = qshampoo.Shampoo(
        [{"params": [a], "root_interval": 2}, {"params": [b], "lr": 0.5, "base": "sgd"}],
        lr=0.1,
        stat_interval=1,
        root_interval=10**6,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for k in range(3):
        set_grads([a, b], k)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * 0.5**3)
    # group 0 computed roots (root_interval=2): its root is no longer the identity
    root = opt.state[a]["precond"][0]["L"]["root"]
    assert not torch.allclose(root, torch.eye(6))
    assert torch.equal(opt.state[b]["precond"][0]["L"]["root"], torch.eye(5))
    assert "momentum_buffer" in opt.state[b]["base"]


def test_lr_is_read_every_step():
    """Changing the group's lr between steps changes the update (no cached hyperparameters)."""
    (a,) = make_params([(4, 4)])
    opt = qshampoo.Shampoo([a], lr=0.1, base="sgd", momentum=0.0)
    a.grad = torch.ones(4, 4)
    before = a.detach().clone()
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    assert torch.equal(a, before)


def test_closure_and_grad_not_cleared():
    w = torch.randn(3, 3, requires_grad=True)
    opt = qshampoo.Shampoo([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() > 0 and w.grad is not None and w.grad.abs().sum() > 0


def test_maximize_ascends():
    w = torch.zeros(3, 3, requires_grad=True)
    opt = qshampoo.Shampoo([w], lr=0.1, base="sgd", momentum=0.0, maximize=True)
    w.grad = torch.ones(3, 3)
    opt.step()
    assert (w > 0).all()


@pytest.mark.parametrize("base", ["adamw", "sgd"])
def test_checkpoint_round_trip_continues_identically(base, tmp_path):
    kw = dict(base=base, lr=1e-2, stat_interval=1, root_interval=2, max_preconditioner_dim=4)
    full, _ = run(lambda p: qshampoo.Shampoo(p, **kw), 8)

    params = make_params()
    opt = qshampoo.Shampoo(params, **kw)
    for k in range(5):
        set_grads(params, k)
        opt.step()
    params2, saved = through_checkpoint(params, opt)
    opt2 = qshampoo.Shampoo(params2, **kw)
    opt2.load_state_dict(saved)
    for k in range(5, 8):
        set_grads(params2, k)
        opt2.step()
    for a, b in zip(full, params2, strict=True):
        assert torch.equal(a, b)


def test_load_state_dict_rejects_foreign_state():
    params = make_params()
    opt = qshampoo.Shampoo(params)
    with pytest.raises(ValueError, match="format"):
        opt.load_state_dict(torch.optim.AdamW(params).state_dict())


def test_bf16_parameters_keep_fp32_state():
    params, opt = run(
        lambda p: qshampoo.Shampoo(p, lr=1e-2, stat_interval=1, root_interval=2),
        4,
        dtype=torch.bfloat16,
    )
    st = opt.state[params[0]]
    assert params[0].dtype == torch.bfloat16
    assert st["base"]["exp_avg"].dtype == torch.float32
    assert st["precond"][0]["L"]["stat"].dtype == torch.float32
    sd = opt.state_dict()
    opt2 = qshampoo.Shampoo(params, lr=1e-2, stat_interval=1, root_interval=2)
    opt2.load_state_dict(sd)
    assert opt2.state[params[0]]["base"]["exp_avg"].dtype == torch.float32


def test_memory_report_counts_state_bytes():
    params, opt = run(lambda p: qshampoo.Shampoo(p, max_preconditioner_dim=4), 2)
    rep = opt.memory_report()

    def nbytes(obj):
        if isinstance(obj, torch.Tensor):
            return obj.nbytes
        if isinstance(obj, dict):
            return sum(nbytes(v) for v in obj.values())
        if isinstance(obj, list):
            return sum(nbytes(v) for v in obj)
        return 0

    assert rep["total"] == sum(nbytes(s) for s in opt.state.values())
    assert rep["preconditioners"] == sum(nbytes(s.get("precond", [])) for s in opt.state.values())
    assert rep["base_state"] == sum(nbytes(s["base"]) for s in opt.state.values())
    # 7x5 cut at 4: blocks (4,4) (4,1) (3,4) (3,1) -> fp32 stat + root per factor
    orders = [4, 4, 4, 1, 3, 4, 3, 1]
    first = sum(2 * 4 * n * n for n in orders)
    assert sum(nbytes(b) for b in opt.state[params[0]]["precond"]) == first


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"momentum": 1.5}, "momentum"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov"),
        ({"stat_decay": 1.0}, "stat_decay"),
        ({"matrix_eps": 0.0}, "matrix_eps"),
        ({"stat_interval": 0}, "stat_interval"),
        ({"root_interval": 2.5}, "root_interval"),
        ({"max_preconditioner_dim": 0}, "max_preconditioner_dim"),
        ({"root_method": "svd"}, "root_method"),
        ({"quant": "int4"}, "quant"),
        ({"bits": 5}, "bits"),
        ({"block_size": 0}, "block_size"),
        ({"codebook": "nf4"}, "codebook"),
        ({"ef_decay": 1.0}, "ef_decay"),
        ({"min_quant_numel": -1}, "min_quant_numel"),
        ({"base": "adam"}, "base"),
        ({"nonfinite": "ignore"}, "nonfinite"),
        ({"compile": "yes"}, "compile"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        qshampoo.Shampoo(make_params([(3, 3)]), **kwargs)
    # per-group overrides are validated too
    with pytest.raises(ValueError, match=name):
        qshampoo.Shampoo([{"params": make_params([(3, 3)]), **kwargs}])


def test_sparse_gradients_and_complex_parameters_are_refused():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = qshampoo.Shampoo(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    with pytest.raises(TypeError, match="complex"):
        qshampoo.Shampoo([torch.zeros(3, 3, dtype=torch.complex64, requires_grad=True)])


def test_layout_keys_cannot_change_after_state_exists():
    params, opt = run(lambda p: qshampoo.Shampoo(p), 1)
    opt.param_groups[0]["max_preconditioner_dim"] = 2
    set_grads(params, 1)
    with pytest.raises(ValueError, match="max_preconditioner_dim"):
        opt.step()


def test_nonfinite_gradient_is_skipped_and_counted():
    params = make_params([(4, 4), (3,)])
    opt = qshampoo.Shampoo(params, stat_interval=1, root_interval=1)
    set_grads(params, 0)
    opt.step()
    stat = opt.state[params[0]]["precond"][0]["L"]["stat"].clone()
    before = params[0].detach().clone()
    set_grads(params, 1)
    params[0].grad[0, 0] = float("nan")
    opt.step()
    assert torch.equal(params[0], before)
    assert torch.equal(opt.state[params[0]]["precond"][0]["L"]["stat"], stat)
    assert opt.diagnostics()["nonfinite_steps"] == 1
    assert opt.state[params[1]]["step"] == 2  # the healthy parameter went on
    params[0].grad[0, 0] = float("inf")
    opt.param_groups[0]["nonfinite"] = "raise"
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()


def test_trains_digits_better_than_untrained():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = qshampoo.Shampoo(net.parameters(), lr=1e-2, stat_interval=2, root_interval=10)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


# -- Shampoo4bit's defaults (benchmarks/RESULTS_defaults.md) --------------------------------------
WIDE = [(192, 128), (128,), (128, 192)]  # factors of order 128 and 192: quantized


def wide_grads(params, step):
    """Gradients whose columns differ in scale by up to 400x, so some factors' 4-bit
    Cholesky rows lose enough to be promoted under the default budget."""
    g = torch.Generator(torch.get_default_device()).manual_seed(100 + step)
    for p in params:
        scale = (1 + torch.arange(p.shape[-1], dtype=torch.float32) / 10) ** 2
        p.grad = torch.randn(p.shape, generator=g) * scale


def run_wide(opt_fn, steps, start=0, params=None):
    params = params if params is not None else make_params(WIDE)
    opt = opt_fn(params)
    for k in range(start, steps):
        wide_grads(params, k)
        opt.step()
    return params, opt


def test_shampoo4bit_default_is_adaptive_precision_within_an_eighth():
    params, opt = run_wide(lambda p: qshampoo.Shampoo4bit(p, stat_interval=2, root_interval=4), 8)
    group = opt.param_groups[0]
    assert (group["quant"], group["bits"], group["ef_decay"]) == ("cholesky_ef", "auto", 0.9)
    prec = opt.diagnostics()["precision"]
    assert prec["memory_budget"] == int(prec["reference_32bit"] / 8)
    assert opt.memory_report()["preconditioners"] <= prec["memory_budget"]
    assert prec["factors_8bit"] >= 1  # the budget is spent, not just set


def test_shampoo4bit_default_is_the_explicit_configuration():
    kw = dict(lr=1e-2, stat_interval=2, root_interval=4)
    default, _ = run_wide(lambda p: qshampoo.Shampoo4bit(p, **kw), 8)
    explicit, _ = run_wide(
        lambda p: qshampoo.Shampoo(
            p, quant="cholesky_ef", bits="auto", memory_budget=1 / 8, ef_decay=0.9, **kw
        ),
        8,
    )
    for a, b in zip(default, explicit, strict=True):
        assert torch.equal(a, b)


def test_shampoo4bit_paper_preset_is_papers_configuration():
    kw = dict(lr=1e-2, stat_interval=2, root_interval=4)
    paper, opt = run_wide(lambda p: qshampoo.Shampoo4bit(p, paper=True, **kw), 8)
    group = opt.param_groups[0]
    assert (group["quant"], group["bits"], group["ef_decay"]) == ("cholesky_ef", 4, 0.9)
    assert "precision" not in opt.diagnostics()
    explicit, _ = run_wide(lambda p: qshampoo.Shampoo(p, quant="cholesky_ef", bits=4, **kw), 8)
    default, _ = run_wide(lambda p: qshampoo.Shampoo4bit(p, **kw), 8)
    assert all(torch.equal(a, b) for a, b in zip(paper, explicit, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(paper, default, strict=True))


def test_shampoo4bit_explicit_keywords_win():
    params = make_params(WIDE)
    assert qshampoo.Shampoo4bit(params, bits=4).param_groups[0]["bits"] == 4
    assert qshampoo.Shampoo4bit(params, bits=8).memory_report().get("memory_budget") is None
    opt = qshampoo.Shampoo4bit(params, memory_budget=0.2)
    assert opt.param_groups[0]["bits"] == "auto"
    assert opt.memory_report()["memory_budget"] == int(
        0.2 * opt.diagnostics()["precision"]["reference_32bit"]
    )
    opt = qshampoo.Shampoo4bit(params, paper=True, ef_decay=0.0)
    assert (opt.param_groups[0]["bits"], opt.param_groups[0]["ef_decay"]) == (4, 0.0)
    with pytest.raises(ValueError, match="memory_budget"):  # as Shampoo: auto needs a budget
        qshampoo.Shampoo4bit(params, bits="auto")
    with pytest.raises(ValueError, match="every factor in 4 bits"):  # an explicit budget binds
        qshampoo.Shampoo4bit(make_params([(32, 32)]), memory_budget=0.125)


def test_shampoo4bit_default_falls_back_to_4_bits_where_an_eighth_cannot_hold_them(recwarn):
    """Factors of order < 64 stay fp32, so 4 bits everywhere is 32-bit's bytes here: the
    default keeps every factor in 4 bits rather than refusing a budget nobody asked for."""
    params, opt = run(lambda p: qshampoo.Shampoo4bit(p, stat_interval=1, root_interval=2), 4)
    assert opt.param_groups[0]["bits"] == 4
    assert "memory_budget" not in opt.memory_report()
    assert not [w for w in recwarn if "memory_budget" in str(w.message)]


def test_shampoo4bit_default_reads_params_once_and_keeps_fp32_groups():
    """A generator (of tensors, or inside a group) is read by the default's budget check and
    still reaches the optimizer; a ``quant="none"`` group stays fp32 (``bits=4``, unused)."""
    a, b = make_params(WIDE), make_params([(16, 8), (16,), (8, 16)])
    opt = qshampoo.Shampoo4bit(p for p in a)
    assert len(opt.param_groups[0]["params"]) == 3 and opt.param_groups[0]["bits"] == "auto"
    groups = [{"params": (p for p in a)}, {"params": b, "quant": "none"}]
    opt = qshampoo.Shampoo4bit(groups, stat_interval=1, root_interval=2)
    assert [len(g["params"]) for g in opt.param_groups] == [3, 3]
    assert [(g["quant"], g["bits"]) for g in opt.param_groups] == [
        ("cholesky_ef", "auto"),
        ("none", 4),
    ]
    assert "bits" not in groups[1]  # the caller's dict is not changed
    for k in range(3):
        wide_grads(a + b, k)
        opt.step()
    kinds = {f["kind"] for f in opt.diagnostics()["factors"]}
    assert kinds == {"cholesky_ef", "none"}
    # a group of fp32 factors large enough to break 1/8 turns the default to 4 bits
    groups = [{"params": a}, {"params": make_params(WIDE), "quant": "none"}]
    assert qshampoo.Shampoo4bit(groups).param_groups[0]["bits"] == 4


def test_shampoo4bit_default_checkpoint_round_trip_continues_identically():
    kw = dict(lr=1e-2, stat_interval=2, root_interval=4)
    full, _ = run_wide(lambda p: qshampoo.Shampoo4bit(p, **kw), 10)
    params, opt = run_wide(lambda p: qshampoo.Shampoo4bit(p, **kw), 6)
    params2, saved = through_checkpoint(params, opt)
    opt2 = qshampoo.Shampoo4bit(params2, **kw)
    opt2.load_state_dict(saved)
    run_wide(lambda p: opt2, 10, start=6, params=params2)
    for a, b in zip(full, params2, strict=True):
        assert torch.equal(a, b)
    # a checkpoint of the paper's configuration (the default before 0.x) names the fix
    _, paper = run_wide(lambda p: qshampoo.Shampoo4bit(p, paper=True, **kw), 4)
    with pytest.raises(ValueError, match="bits=4"):
        qshampoo.Shampoo4bit(make_params(WIDE), **kw).load_state_dict(paper.state_dict())
    qshampoo.Shampoo4bit(make_params(WIDE), paper=True, **kw).load_state_dict(paper.state_dict())


def test_shampoo4bit_default_compiled_step_trains_like_eager():
    """``torch.compile(opt.step)`` with the default, through a factor's switch to 8 bits;
    each step is compared from the same point (see test_conformance's compiled-step test)."""
    import copy

    torch._dynamo.reset()
    a, b = make_params(WIDE), make_params(WIDE)
    kw = dict(lr=torch.tensor(1e-2), stat_interval=2, root_interval=4)
    eager, compiled = qshampoo.Shampoo4bit(a, **kw), qshampoo.Shampoo4bit(b, **kw)
    step = torch.compile(compiled.step, backend="aot_eager", dynamic=False)
    for k in range(8):
        wide_grads(a, k)
        wide_grads(b, k)
        eager.step()
        step()
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            for x, y in zip(a, b, strict=True):
                x.copy_(y)
        eager.load_state_dict(copy.deepcopy(compiled.state_dict()))
    assert compiled.diagnostics()["precision"]["promotions"] >= 1
