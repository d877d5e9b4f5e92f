"""Adaptive precision (``bits="auto"``): per-factor widths, the policy, the budget, checkpoints."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import qshampoo
from qshampoo.distributed import block_costs
from qshampoo.factors import FactorConfig, StepHyper, make_factor
from qshampoo.memory import factor_bytes, state_bytes
from qshampoo.precision import Candidate, PrecisionConfig, plan

QUANTIZED = ["naive", "eigen", "cholesky", "cholesky_ef"]
DEVICE = torch.get_default_device()  # QSHAMPOO_TEST_DEVICE, else the CPU
SHAPES = [(96, 64), (130, 70), (70, 130), (64, 3, 3, 3), (96,), (10, 96)]


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _factor(quant, bits, n=96, codebook="linear2", updates=6, seed=0, adaptive=True):
    f = make_factor(quant, n, FactorConfig(bits, 32, codebook, adaptive), DEVICE, 1e-6, 0)
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    hp = StepHyper()
    for _ in range(updates):  # rows of very different scales, as real statistics have
        x = torch.randn(n, 40, generator=g) * torch.logspace(-2, 0, n)[:, None]
        f.update_statistics(x @ x.T, hp)
    type(f).compute_roots([f], hp)
    return f


def _bytes_ok(f, quant):
    expected = factor_bytes(quant, f.order, bits=f.bits, block_size=32, adaptive=f.adaptive)
    got = {**f.nbytes(), "diagnostics": 0}
    got["diagnostics"] = sum(t.nbytes for t in f.state.values() if isinstance(t, torch.Tensor))
    got["diagnostics"] -= got["statistics"] + got["roots"]
    assert got == expected


# -- switching preserves the represented factor ------------------------------------------------
@pytest.mark.parametrize("quant", QUANTIZED)
def test_demotion_keeps_the_factor_within_4bit_tolerance(quant):
    f = _factor(quant, 8)
    S8, R8 = f.statistics().clone(), f.root().clone()
    assert f.set_bits(4) and f.bits == 4
    assert not f.set_bits(4)  # nothing to do
    S4, R4 = f.statistics(), f.root()
    # what 4-bit storage of the same matrices loses, measured directly, bounds the switch
    direct_root = qshampoo.quant.dequantize_symmetric(
        qshampoo.quant.quantize(R8, block_size=32, layout="tril", exact_diagonal=True)
    )
    assert 0 < _rel(R4, R8) <= 1.0001 * _rel(direct_root, R8)
    assert 0 < _rel(S4, S8) < 0.1
    _bytes_ok(f, quant)


@pytest.mark.parametrize("quant", ["naive", "eigen", "cholesky"])
def test_promotion_keeps_the_factor(quant):
    f = _factor(quant, 4)
    S4, R4 = f.statistics().clone(), f.root().clone()
    assert f.set_bits(8) and f.bits == 8
    # the 8-bit linear-square codebook holds every 4-bit value: promotion is lossless
    assert _rel(f.statistics(), S4) < 1e-6 and _rel(f.root(), R4) < 1e-6
    _bytes_ok(f, quant)
    g = _factor(quant, 4, codebook="dynamic_tree")
    S4, R4 = g.statistics().clone(), g.root().clone()
    g.set_bits(8)  # not nested: within 8-bit rounding
    assert _rel(g.statistics(), S4) < 0.02 and _rel(g.root(), R4) < 0.02


def test_promotion_folds_the_error_state_into_the_factor():
    f = _factor("cholesky_ef", 4)
    C, E, R4 = f.factor(), f.error_state(), f.root().clone()
    assert E.norm() > 0
    f.set_bits(8)
    # an adaptive CQ+EF factor in 8 bits is CQ: C + E, rounded to 8 bits
    assert f.error_state() is None and "e_scales" not in f.state
    assert _rel(f.factor(), C + E) < 0.01 < _rel(f.factor(), C)
    assert _rel(f.root(), R4) < 1e-6
    _bytes_ok(f, "cholesky_ef")
    fixed = _factor("cholesky_ef", 4, adaptive=False)
    fixed.set_bits(8)  # bits=8 chosen by the user: CQ+EF stays CQ+EF
    assert fixed.error_state() is not None
    _bytes_ok(fixed, "cholesky_ef")


@pytest.mark.parametrize("adaptive", [True, False])
def test_demotion_moves_the_lost_part_into_the_error_state(adaptive):
    f = _factor("cholesky_ef", 8, adaptive=adaptive)
    assert (f.error_state() is None) == adaptive
    before = f.factor() + (0 if adaptive else f.error_state())
    f.set_bits(4)
    after = f.factor() + f.error_state()
    lost = _rel(f.factor(), before)  # what the 4-bit factor alone misses
    # C_bar + E changes only by E's own 4-bit rounding, about a tenth of what C_bar lost
    assert _rel(after, before) < 0.2 * lost


def test_an_fp32_factor_has_no_other_width():
    f = make_factor("cholesky_ef", 8, FactorConfig(4), DEVICE, 1e-6, 4096)  # 8 x 8 stays fp32
    assert f.bits == 32 and not f.set_bits(32)
    with pytest.raises(ValueError, match="fp32"):
        f.set_bits(8)


# -- the policy ----------------------------------------------------------------------------------
def _cand(key, bits, signal, b4=100, b8=200, age=10):
    return Candidate(key, bits, signal, b4, b8, age)


def test_plan_takes_error_per_byte_within_room():
    cands = [
        _cand("a", 4, 0.10, 100, 200),  # 0.1 / 100
        _cand("b", 4, 0.50, 100, 1100),  # 0.5 / 1000: less per byte
        _cand("c", 4, 0.05, 10, 20),  # 0.05 / 10: most per byte
    ]
    assert plan(cands, 210 + 10) == {"a": 4, "b": 4, "c": 8}
    assert plan(cands, 210 + 110) == {"a": 8, "b": 4, "c": 8}
    # b does not fit, but smaller candidates are still tried
    assert plan(cands, 210 + 1000) == {"a": 8, "b": 4, "c": 8}
    assert plan(cands, 210 + 1110) == {"a": 8, "b": 8, "c": 8}
    assert plan(cands, 209) == {"a": 4, "b": 4, "c": 4}  # cannot even hold 4 bits


def test_plan_hysteresis_and_thresholds():
    cfg = PrecisionConfig(promote_at=0.02, demote_below=0.01, margin=0.25, dwell=2)
    # an 8-bit factor keeps its place against a slightly worse-off 4-bit one ...
    assert plan([_cand("x", 8, 0.10), _cand("y", 4, 0.12)], 300, cfg) == {"x": 8, "y": 4}
    # ... but not against a clearly worse one
    assert plan([_cand("x", 8, 0.10), _cand("y", 4, 0.13)], 300, cfg) == {"x": 4, "y": 8}
    # thresholds: a 4-bit factor needs promote_at, an 8-bit one stays down to demote_below
    assert plan([_cand("x", 4, 0.015)], 1000, cfg) == {"x": 4}
    assert plan([_cand("x", 8, 0.015)], 1000, cfg) == {"x": 8}
    assert plan([_cand("x", 8, 0.005)], 1000, cfg) == {"x": 4}
    # dwell: a recent switch is not undone, in either direction
    assert plan([_cand("x", 8, 0.005, age=1)], 1000, cfg) == {"x": 8}
    assert plan([_cand("x", 4, 0.5, age=1)], 1000, cfg) == {"x": 4}


def test_plan_is_deterministic_and_breaks_ties_by_position():
    cands = [_cand(k, 4, 0.1) for k in [(2, 0, "L"), (0, 0, "R"), (0, 0, "L")]]
    first = plan(cands, 300 + 100)
    assert first == plan(list(reversed(cands)), 300 + 100)
    assert [k for k, b in first.items() if b == 8] == [(0, 0, "L")]


@pytest.mark.parametrize(
    "kw",
    [
        {"promote_at": -1.0},
        {"promote_at": 0.01, "demote_below": 0.02},
        {"margin": float("nan")},
        {"dwell": -1},
        {"dwell": 1.5},
    ],
)
def test_precision_config_is_validated(kw):
    with pytest.raises(ValueError, match="PrecisionConfig"):
        PrecisionConfig(**kw)


# -- the optimizer -------------------------------------------------------------------------------
def _params(seed=0):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _grads(params, step):
    g = torch.Generator(torch.get_default_device()).manual_seed(1000 + step)
    for p in params:
        rows = p.shape[0]
        scale = torch.logspace(-2 + (step % 5) / 4, 0, rows).view(-1, *[1] * (p.dim() - 1))
        p.grad = torch.randn(p.shape, generator=g) * scale


def _opt(params, budget, **kw):
    kw = dict(lr=1e-2, stat_interval=1, root_interval=3, block_size=32, **kw)
    return qshampoo.Shampoo4bit(params, bits="auto", memory_budget=budget, **kw)


def _formula(opt):
    """The preconditioner bytes that qshampoo.memory's formulas give, factor by factor."""
    total = 0
    for d, f in zip(opt.diagnostics()["factors"], _factors(opt), strict=True):
        bits = d.get("bits", 4)
        parts = factor_bytes(
            "cholesky_ef", d["order"], bits=bits, block_size=32, adaptive=f.adaptive
        )
        total += sum(parts.values())
    return total


def _factors(opt):
    return [e.factor for e in opt.store.entries()]


# all adaptive factors at 4 bits take 0.144 of 32-bit's bytes here, at 8 bits 0.164
@pytest.mark.parametrize("budget", [0.15, 88_000, 1.0])
def test_budget_is_never_exceeded(budget):
    params = _params()
    opt = _opt(params, budget, precision_config=PrecisionConfig(promote_at=0, demote_below=0))
    reports = []
    for step in range(12):
        # the last parameter gets its first gradient late: its state was reserved at 4 bits
        _grads(params[:-1] if step < 6 else params, step)
        if step < 6:
            params[-1].grad = None
        opt.step()
        r = opt.memory_report()
        reports.append(r)
        assert r["preconditioners"] <= r["memory_budget"], (step, r)
        assert r["preconditioners"] == _formula(opt)  # the formulas the policy plans with
        assert r["preconditioners"] == sum(
            r[k] for k in ("preconditioners_fp32", "preconditioners_4bit", "preconditioners_8bit")
        )
    d = opt.diagnostics()["precision"]
    assert d["all_4bit"] <= d["bytes"] <= d["memory_budget"]
    if budget == 1.0:  # room for everything: every adaptive factor ends in 8 bits
        assert d["factors_4bit"] == 0 and d["bytes"] == d["all_8bit"]
    else:
        assert d["factors_8bit"] > 0 and d["factors_4bit"] > 0
    assert d["promotions"] == sum(e["to"] == 8 for e in d["log"])


def test_budget_fraction_means_32bit_bytes():
    params = _params()
    opt = _opt(params, 0.2)
    ref = state_bytes(SHAPES, quant="none", block_size=32)["preconditioners"]
    assert opt.diagnostics()["precision"]["reference_32bit"] == ref
    assert opt.memory_report()["memory_budget"] == int(0.2 * ref)
    floor = state_bytes(SHAPES, quant="cholesky_ef", bits="auto", block_size=32)
    assert opt.diagnostics()["precision"]["all_4bit"] == floor["preconditioners"]


def _run(budget, steps, opt=None, params=None, start=0):
    params = params or _params()
    opt = opt or _opt(params, budget)
    for step in range(start, start + steps):
        _grads(params, step)
        opt.step()
    return params, opt


def test_policy_is_deterministic_and_switches_both_ways():
    cfg = PrecisionConfig(promote_at=0.05, demote_below=0.045, margin=0, dwell=1)
    runs = []
    for _ in range(2):
        params = _params()
        opt = _opt(params, 0.15, precision_config=cfg)
        _run(None, 12, opt, params)
        runs.append((params, opt.diagnostics()))
    (p1, d1), (p2, d2) = runs
    assert d1["precision"]["log"] == d2["precision"]["log"]
    assert [f.get("bits") for f in d1["factors"]] == [f.get("bits") for f in d2["factors"]]
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))
    # the gradients' spectra change every step: factors are promoted and demoted
    assert d1["precision"]["promotions"] > 0 and d1["precision"]["demotions"] > 0
    log = d1["precision"]["log"]
    assert {"step", "param", "group", "block", "side", "order", "from", "to", "signal"} <= set(
        log[0]
    )


def test_state_dict_round_trip_with_mixed_precision():
    params, opt = _run(0.15, 6)
    bits = [f.bits for f in _factors(opt)]
    assert 4 in bits and 8 in bits
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = _opt(twin, 0.15)
    opt2.load_state_dict(saved)
    assert [f.bits for f in _factors(opt2)] == bits
    assert opt2.memory_report() == opt.memory_report()
    _run(None, 8, opt, params, start=6)
    _run(None, 8, opt2, twin, start=6)
    for a, b in zip(params, twin, strict=True):
        assert torch.equal(a, b)
    assert [f.bits for f in _factors(opt2)] == [f.bits for f in _factors(opt)]


@pytest.mark.parametrize("duplicate", ["deepcopy", "pickle"])
def test_a_copied_optimizer_keeps_its_budget(duplicate):
    # both go through Optimizer.__getstate__, which keeps only defaults, state and param groups
    params, opt = _run(0.15, 4)
    if duplicate == "deepcopy":
        twin = copy.deepcopy(opt)
    else:
        twin = pickle.loads(pickle.dumps(opt))
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    assert twin.memory_report() == opt.memory_report()
    assert twin.diagnostics()["precision"] == opt.diagnostics()["precision"]
    _run(None, 6, opt, params, start=4)
    _run(None, 6, twin, twin_params, start=4)
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)
    assert twin.diagnostics()["precision"] == opt.diagnostics()["precision"]


def test_a_smaller_budget_is_met_on_load():
    params, opt = _run(0.16, 6)
    sd = opt.state_dict()
    tight = _opt(_params(), 0.147)
    assert opt.memory_report()["preconditioners"] > tight.memory_report()["memory_budget"]
    tight.load_state_dict(sd)
    r = tight.memory_report()
    assert r["preconditioners"] <= r["memory_budget"]
    assert tight.diagnostics()["precision"]["demotions"] > 0


def test_load_checks_per_factor_bits():
    params, opt = _run(0.15, 6)
    sd = opt.state_dict()
    # a fixed 4-bit optimizer cannot take the 8-bit factors
    fixed = qshampoo.Shampoo4bit(_params(), stat_interval=1, block_size=32)
    with pytest.raises(ValueError, match="bits"):
        fixed.load_state_dict(sd)
    # a width the policy never uses is refused, naming the factor
    key = next(k for k, st in sd["state"].items() if "precond" in st)
    sd["state"][key]["precond"][0]["L"]["bits"] = 3
    del sd["checksums"]
    with pytest.raises(ValueError, match=r"\['bits'\] is 3"):
        _opt(_params(), 0.15).load_state_dict(sd)


def test_mixed_precision_preconditions_like_the_factors_say():
    """Same-shaped blocks at different widths are batched apart, each with its own root."""
    from qshampoo.store import precondition

    params, opt = _run(0.15, 6)
    for group in opt.param_groups:
        for p in group["params"]:
            pre = opt.store.view(p, group)
            if pre is None:
                continue
            jobs = [job for _, job in pre.jobs(p.grad.float())]
            want = torch.cat([(L.root() @ gb @ R.root()).flatten() for L, gb, R in jobs])
            got = torch.cat([b.flatten() for b in precondition(jobs, budget=1 << 30)])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_distributed_cost_model_takes_auto():
    group = dict(quant="cholesky_ef", bits="auto", block_size=64, min_quant_numel=4096)
    blocking = qshampoo.blocking.Blocking.of((96, 64), 1200)
    ((nbytes, _),) = block_costs(blocking, group)
    expected = sum(
        sum(factor_bytes("cholesky_ef", n, bits=4, adaptive=True).values()) for n in (96, 64)
    )
    assert nbytes == expected


# -- invalid keywords ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, name",
    [
        ({"bits": "auto", "quant": "none", "memory_budget": 0.2}, "bits"),
        ({"bits": "auto"}, "memory_budget"),
        ({"bits": 4, "memory_budget": 0.2}, "memory_budget"),
        ({"bits": "auto", "memory_budget": 0.0}, "memory_budget"),
        ({"bits": "auto", "memory_budget": 1.5}, "memory_budget"),
        ({"bits": "auto", "memory_budget": -5}, "memory_budget"),
        ({"bits": "auto", "memory_budget": True}, "memory_budget"),
        ({"bits": "auto", "memory_budget": "1/7"}, "memory_budget"),
        ({"bits": "auto", "memory_budget": float("nan")}, "memory_budget"),
        ({"bits": "Auto", "memory_budget": 0.2}, "bits"),
        ({"bits": "auto", "memory_budget": 0.2, "precision_config": {}}, "precision_config"),
    ],
)
def test_invalid_keywords(kw, name):
    with pytest.raises(ValueError, match=name):
        qshampoo.Shampoo4bit(_params(), **kw)


@pytest.mark.parametrize("budget", [0.1, 1000])
def test_a_budget_below_all_4bit_is_refused(budget):
    with pytest.raises(ValueError, match=r"memory_budget=.*every factor in 4 bits"):
        _opt(_params(), budget)


def test_a_group_added_later_is_checked():
    params = _params()
    opt = _opt(params[:2], 90_000)
    before = len(opt.param_groups)
    opt.add_param_group({"params": params[2:4]})
    with pytest.raises(ValueError, match="memory_budget"):  # 4 bits would not fit
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(300, 300))]})
    assert len(opt.param_groups) == before + 1


@pytest.mark.parametrize("quant", ["naive", "eigen", "cholesky"])
def test_every_quantized_variant_adapts_within_budget(quant):
    params = _params()
    cfg = PrecisionConfig(promote_at=0, demote_below=0)
    opt = qshampoo.Shampoo(
        params,
        quant=quant,
        bits="auto",
        memory_budget=0.3,
        stat_interval=1,
        block_size=32,
        precision_config=cfg,
    )
    _run(None, 4, opt, params)
    r = opt.memory_report()
    assert r["preconditioners"] <= r["memory_budget"] and r["preconditioners_8bit"] > 0
    expected = sum(
        sum(factor_bytes(quant, f.order, bits=f.bits, block_size=32, adaptive=f.adaptive).values())
        if f.bits != 32
        else sum(factor_bytes("none", f.order).values())
        for f in _factors(opt)
    )
    assert r["preconditioners"] == expected
