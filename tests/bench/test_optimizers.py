import pytest
import torch

from qshampoo.bench import optimizers as om


def test_registry_names():
    for name in [
        "adamw",
        "sgd",
        "shampoo",
        "shampoo4bit",
        "shampoo4bit-naive",
        "shampoo4bit-eigen",
        "shampoo4bit-cholesky",
        "torchao-adamw4bit",
        "bnb-adamw8bit",
        "soap",
    ]:
        assert name in om.REGISTRY
    with pytest.raises(ValueError, match="unknown optimizer"):
        om.spec("adam")


def test_build_drops_keywords_the_optimizer_does_not_take():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = om.build("adamw", [p], lr=0.1, stat_interval=10, momentum=0.9)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 0.1


def test_memory_report_falls_back_to_state_tensors():
    p = torch.nn.Parameter(torch.zeros(10, 10))
    opt = om.build("adamw", [p], lr=0.1)
    assert om.memory_report(opt)["total"] == 0
    p.grad = torch.ones_like(p)
    opt.step()
    rep = om.memory_report(opt)
    # exp_avg + exp_avg_sq (400 bytes each) + the step counter (a 0-d fp32 tensor).
    assert rep["preconditioners"] == 0
    assert rep["base_state"] == rep["total"] == 2 * 400 + 4


def test_diagnostics_defaults_for_torch_optimizers():
    p = torch.nn.Parameter(torch.zeros(3))
    d = om.diagnostics(om.build("sgd", [p], lr=0.1))
    assert d == {
        "nonfinite_steps": 0,
        "root_failures": 0,
        "cholesky_failures": 0,
        "quant_error": None,
    }


def test_unavailable_optimizers_give_a_reason():
    for name in ["adamw", "sgd"]:
        assert om.availability(name) is None
    for name in ["torchao-adamw4bit", "bnb-adamw8bit", "soap"]:
        reason = om.availability(name, probe=False)  # a probe step may compile: slow
        assert reason is None or isinstance(reason, str) and reason


def test_qshampoo_adapters():
    if om.availability("shampoo") is not None:
        pytest.skip("qshampoo.Shampoo is not available")
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = om.build("shampoo", [p], lr=0.1, stat_interval=1, root_interval=1)
    p.grad = torch.randn(8, 8)
    opt.step()
    rep = om.memory_report(opt)
    assert rep["preconditioners"] > 0 and rep["total"] >= rep["preconditioners"]
    d = om.diagnostics(opt)
    assert d["nonfinite_steps"] == 0 and d["root_failures"] == 0


def test_soap_state_split_when_installed():
    if om.availability("soap") is not None:
        pytest.skip("pytorch_optimizer is not installed")
    p = torch.nn.Parameter(torch.randn(64, 64))
    p.grad = torch.randn(64, 64)
    opt = om.build("soap", [p], lr=1e-3)
    for _ in range(2):
        opt.step()
    rep = om.state_bytes("soap", opt)
    assert rep["preconditioners"] == 4 * 64 * 64 * 4  # GG and Q: two 64x64 fp32 each
    assert rep["base_state"] == 2 * 64 * 64 * 4  # exp_avg, exp_avg_sq


def test_check_refuses_bad_values_but_not_a_budget_fraction():
    """A memory_budget fraction is checked against the model's factors by the run, not
    against the check's probe parameter (whose factors would be fp32)."""
    om.check("shampoo4bit-auto", {"memory_budget": 0.125})
    om.check("shampoo4bit", {"memory_budget": 0.125})
    with pytest.raises(ValueError, match="stat_interval"):
        om.check("shampoo4bit", {"stat_interval": 0})
