import json
import math

import pytest
import torch

from qshampoo.bench import optimizers as om
from qshampoo.bench import runner
from qshampoo.bench.runner import RunInterrupted, RunSpec, train_run


def available(*names):
    """The optimizers among ``names`` that can run here."""
    return [n for n in names if om.availability(n) is None]


STEPS = 30


def spec_for(task, name, run_dir, **kw):
    return RunSpec(
        task=task,
        optimizer=name,
        seed=kw.pop("seed", 0),
        steps=STEPS,
        hparams=task.hyperparameters(name, STEPS),
        run_dir=str(run_dir),
        progress=False,
        eval_every=10,
        **kw,
    )


def test_runs_two_optimizers(digits_task, digits_data, tmp_path):
    names = ["adamw", *available("shampoo")][:2] if available("shampoo") else ["adamw", "sgd"]
    for name in names:
        r = train_run(spec_for(digits_task, name, tmp_path / name), digits_data)
        assert r["completed_steps"] == STEPS and len(r["losses"]) == STEPS
        assert [e["step"] for e in r["evals"]] == [10, 20, 30]
        assert all(math.isfinite(v) for v in r["losses"])
        assert 0.0 <= r["final"]["metric"] <= 1.0 and r["final"]["samples"] == 359
        assert r["losses"][-1] < r["losses"][0]
        assert r["memory"]["optimizer_state"]["total"] > 0
        assert r["memory"]["peak_rss_bytes"] > 0
        assert r["time"]["ms_per_step"] > 0
        saved = json.loads((tmp_path / name / runner.RESULT).read_text())
        assert saved["final"] == r["final"]
        assert (tmp_path / name / runner.MODEL).exists()
        assert not (tmp_path / name / runner.CHECKPOINT).exists()  # removed once finished
        assert not list((tmp_path / name).glob(".*.tmp"))


def test_same_seed_same_run(digits_task, digits_data, tmp_path):
    a = train_run(spec_for(digits_task, "adamw", tmp_path / "a"), digits_data)
    b = train_run(spec_for(digits_task, "adamw", tmp_path / "b"), digits_data)
    c = train_run(spec_for(digits_task, "adamw", tmp_path / "c", seed=1), digits_data)
    assert a["losses"] == b["losses"] and a["final"] == b["final"]
    assert a["losses"] != c["losses"]


@pytest.mark.parametrize(
    "name", ["adamw", *available("shampoo", "shampoo4bit", "shampoo4bit-naive")]
)
def test_resume_equals_uninterrupted(digits_task, digits_data, tmp_path, name):
    full = train_run(spec_for(digits_task, name, tmp_path / "full"), digits_data)

    cut = spec_for(digits_task, name, tmp_path / "cut", checkpoint_every=5, stop_after=13)
    with pytest.raises(RunInterrupted):
        train_run(cut, digits_data)
    ckpt = torch.load(tmp_path / "cut" / runner.CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 10  # the last checkpoint before the "kill"; steps 11-13 are lost
    # Something else moves the global generator between the kill and the resume.
    torch.rand(5)
    resumed = spec_for(digits_task, name, tmp_path / "cut", resume=True)
    r = train_run(resumed, digits_data)

    assert r["resumed_from"] == 10
    assert r["losses"] == full["losses"]
    assert r["final"] == full["final"]
    assert [(e["step"], e["loss"], e["metric"]) for e in r["evals"]] == [
        (e["step"], e["loss"], e["metric"]) for e in full["evals"]
    ]
    a = torch.load(tmp_path / "full" / runner.MODEL, weights_only=True)
    b = torch.load(tmp_path / "cut" / runner.MODEL, weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_other_settings(digits_task, digits_data, tmp_path):
    cut = spec_for(digits_task, "adamw", tmp_path, checkpoint_every=5, stop_after=7)
    with pytest.raises(RunInterrupted):
        train_run(cut, digits_data)
    other = spec_for(digits_task, "adamw", tmp_path, resume=True)
    other.hparams = {**other.hparams, "lr": 0.5}
    with pytest.raises(ValueError, match=r"other settings \(hparams.lr 0.1 -> 0.5\)"):
        train_run(other, digits_data)


def test_atomic_save_replaces(tmp_path):
    path = tmp_path / "x.pt"
    runner.atomic_save({"a": 1}, path)
    runner.atomic_save({"a": 2}, path)
    assert torch.load(path, weights_only=True) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_lr_schedule():
    f = [runner.lr_factor(s, 100, 0.1, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def test_isolated_run(digits_task, tmp_path):
    spec = spec_for(digits_task, "adamw", tmp_path)
    assert runner.can_isolate(spec)
    r = runner.run_isolated(spec)
    assert r["completed_steps"] == STEPS and r["memory"]["peak_rss_bytes"] > 0
