"""The cheaper alternatives a user would consider (issue 20 item 3): 8-bit / 4-bit AdamW and SOAP
join a comparison when their package imports, under their plain labels, and are skipped with one
log line when it does not. A stub package stands in for torchao, so this runs everywhere; the
real packages are exercised when installed."""

import json
import sys

import pytest
import torch

from qshampoo.bench import optimizers as om
from qshampoo.bench.measure import StepWatch
from qshampoo.bench.suite import SuiteConfig, run_suite
from qshampoo.bench.summary import roles
from qshampoo.bench.tasks import get_task

STUB = """
import torch


class AdamW4bit(torch.optim.AdamW):
    '''Stands in for torchao.optim.AdamW4bit: AdamW whose moments are counted, not quantized.'''
"""


@pytest.fixture
def stub_torchao(tmp_path, monkeypatch):
    """A ``torchao.optim.AdamW4bit`` on the path and no ``pytorch_optimizer`` (SOAP missing)."""
    pkg = tmp_path / "stubs" / "torchao"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "optim.py").write_text(STUB)
    monkeypatch.syspath_prepend(str(tmp_path / "stubs"))
    for mod in ("torchao", "torchao.optim"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # import fails
    om.availability.cache_clear()
    yield
    for mod in ("torchao", "torchao.optim"):  # the stub must not outlive the test
        sys.modules.pop(mod, None)
    om.availability.cache_clear()


def test_peers_join_the_comparison_or_are_skipped_in_one_line(tmp_path, stub_torchao):
    assert om.availability("torchao-adamw4bit") is None
    assert "pytorch_optimizer" in om.availability("soap")
    lines = []
    names = ["adamw", "shampoo4bit", "torchao-adamw4bit", "soap"]
    config = SuiteConfig(optimizers=names, seeds=[0, 1], out=str(tmp_path / "rep"), steps=12)
    config.isolate, config.progress, config.budgets = False, False, ()
    out = run_suite(get_task("digits"), config, log=lines.append)

    skips = [line for line in lines if line.startswith("skipping optimizer")]
    assert len(skips) == 1 and skips[0].startswith("skipping optimizer soap: `import ")
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["optimizers"] == ["adamw", "shampoo4bit", "torchao-adamw4bit"]
    assert {r["optimizer"] for r in doc["runs"]} == set(doc["meta"]["optimizers"])
    md = (out / "report.md").read_text()
    assert "| torchao 4-bit AdamW |" in md  # the plain label from the one registry of names
    assert "than torchao 4-bit AdamW [95 % CI " in md  # the candidate is compared with the peer
    assert "`soap` (`import pytorch_optimizer` failed" in md
    # The stub is AdamW at AdamW's tuned rate (a peer has none of its own): same seed, same
    # steps, same numbers; and the baseline stays AdamW.
    hp = {r["optimizer"]: r["hparams"] for r in doc["runs"]}
    assert hp["torchao-adamw4bit"] == hp["adamw"]
    assert hp["adamw"]["lr"] == get_task("digits").lr["adamw"]
    finals = {(r["optimizer"], r["seed"]): r["final"]["metric"] for r in doc["runs"]}
    assert all(finals[("torchao-adamw4bit", s)] == finals[("adamw", s)] for s in (0, 1))


def test_the_baseline_is_not_a_peer_unless_nothing_else_is():
    assert roles(["torchao-adamw4bit", "adamw", "shampoo4bit"])["baseline"] == "adamw"
    assert roles(["soap", "shampoo4bit"])["baseline"] == "soap"
    k = roles(["bnb-adamw8bit", "torchao-adamw8bit", "shampoo", "shampoo4bit"])
    assert k == {"baseline": "bnb-adamw8bit", "reference": "shampoo", "candidate": "shampoo4bit"}


def test_every_peer_has_a_plain_label():
    for name in om.REGISTRY:
        assert om.label(name) != name, name
        assert om.label(name, "ja") != name, name
    assert {n for n, s in om.REGISTRY.items() if s.peer} == {
        "torchao-adamw4bit",
        "torchao-adamw8bit",
        "bnb-adamw8bit",
        "soap",
    }


@pytest.mark.parametrize("name", ["torchao-adamw4bit", "torchao-adamw8bit", "bnb-adamw8bit"])
def test_real_low_bit_adamw_when_installed(name):
    """The real package (when it imports and steps here) trains and stores its moments in fewer
    bytes than fp32 AdamW's 8 per element."""
    if om.availability(name, probe=False) is not None:
        pytest.skip(f"{name}: {om.availability(name, probe=False)}")
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(256, 256))
    opt = om.build(name, [p], lr=1e-3)
    watch = StepWatch(opt, name)  # what a run measures (torchao's compiled step: state only)
    before = p.detach().clone()
    for _ in range(2):
        p.grad = torch.randn_like(p)
        opt.step()
    assert torch.isfinite(p).all() and not torch.equal(p, before)
    rep = om.state_bytes(name, opt)
    assert rep["preconditioners"] == 0
    assert 0 < rep["total"] < 0.5 * 8 * p.numel()  # 4 or 8 bits per moment, plus scales
    assert watch.optimizer_peak()["peak"] >= rep["total"]


def test_a_compiled_step_is_measured_by_its_state(stub_torchao):
    """torchao compiles its step with fullgraph=True, which cannot run under the dispatch mode
    that counts a CPU step's temporaries: the registry says so and only the state is counted."""
    assert not om.spec("torchao-adamw4bit").watchable and om.spec("adamw").watchable
    peaks = {}
    for name in ("adamw", "torchao-adamw4bit"):  # the stub is AdamW: same state, same step
        p = torch.nn.Parameter(torch.ones(64, 64))
        opt = om.build(name, [p], lr=1e-3)
        watch = StepWatch(opt, name)
        for _ in range(2):
            p.grad = torch.ones_like(p)
            opt.step()
        peaks[name] = watch.optimizer_peak()
    assert peaks["adamw"]["state"] == peaks["torchao-adamw4bit"]["state"]
    assert peaks["adamw"]["workspace"] > 0 and peaks["torchao-adamw4bit"]["workspace"] == 0
