"""The report from synthetic results: files written and parseable, numbers where they belong."""

import json
import math

import pytest

from qshampoo.bench import report


def fake_run(name, seed, metric, *, precond=0, base=1000, qe=None, spikes=0, ms=2.0):
    steps = 40
    losses = [2.0 * math.exp(-t / 10) + 0.1 for t in range(steps)]
    evals = [
        {"step": s, "train_s": s * ms / 1000, "loss": 0.5, "metric": metric, "quant_error": qe}
        for s in (10, 20, 30, 40)
    ]
    return {
        "task": "toy",
        "optimizer": name,
        "seed": seed,
        "steps": steps,
        "completed_steps": steps,
        "hparams": {"lr": 0.001, "weight_decay": 0.0},
        "num_params": 100,
        "final": {"loss": 0.5, "metric": metric, "samples": 10},
        "losses": losses,
        "evals": evals,
        "memory": {
            "optimizer_state": {
                "preconditioners": precond,
                "base_state": base,
                "total": precond + base,
            },
            "peak_rss_bytes": 300 * 2**20 + precond,
            "rss_start_bytes": 200 * 2**20,
            "cuda_peak_bytes": None,
        },
        "time": {"train_s": steps * ms / 1000, "eval_s": 0.1, "wall_s": 1.0, "ms_per_step": ms},
        "stability": {
            "nonfinite_losses": 0,
            "optimizer_nonfinite_steps": 0,
            "root_failures": 0,
            "cholesky_failures": 0,
            "loss_spikes": spikes,
            "spike_steps": [],
            "diverged": False,
        },
        "diagnostics": {"quant_error": qe},
        "isolated": True,
    }


META = {
    "task": "toy",
    "task_description": "a toy",
    "metric_name": "accuracy",
    "higher_is_better": True,
    "percent": True,
    "steps": 40,
    "batch_size": 8,
    "seeds": [0, 1],
    "optimizers": ["adamw", "shampoo", "shampoo4bit"],
    "skipped": {"soap": "not installed"},
    "device": "cpu",
    "warmup": 0.05,
    "final_lr": 0.1,
    "bench_wall_s": 12.0,
    "command": "qshampoo bench --task toy",
}


@pytest.fixture
def results():
    return [
        fake_run("adamw", 0, 0.80, base=2000),
        fake_run("adamw", 1, 0.81, base=2000),
        fake_run("shampoo", 0, 0.90, precond=70000, base=2000, ms=4.0),
        fake_run("shampoo", 1, 0.91, precond=70000, base=2000, ms=4.0),
        fake_run("shampoo4bit", 0, 0.895, precond=10000, base=2000, qe=0.05, spikes=1, ms=5.0),
        fake_run("shampoo4bit", 1, 0.905, precond=10000, base=2000, qe=0.05, ms=5.0),
    ]


def test_report_files(tmp_path, results):
    doc = report.write_report(tmp_path, META, results)
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded["meta"]["task"] == "toy" and len(loaded["runs"]) == 6
    assert loaded["machine"]["cores"] >= 1 and loaded["machine"]["cpu"]
    assert loaded["versions"]["torch"]
    assert loaded["summary"]["shampoo"]["metric"]["mean"] == pytest.approx(0.905)
    assert loaded["verdict"] == doc["verdict"]
    md = (tmp_path / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| `")]
    assert len([t for t in table if "%" not in t]) >= 3
    header = next(line for line in md.splitlines() if line.startswith("| optimizer | accuracy"))
    assert "preconditioner state" in header and "ms/step" in header and "loss spikes" in header
    assert "| `shampoo4bit` | 90.00 ± 0.71 |" in md
    assert "`soap` (not installed)" in md
    for name in ("curves_step.png", "curves_time.png", "memory.png", "time.png", "quant_error.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in md


def test_verdict_comes_from_the_numbers(results):
    summary = report.summarize(META, results)
    text = report.verdict(META, summary)
    assert "best final accuracy was 32-bit Shampoo's (90.50%)" in text
    # 4-bit vs 32-bit: 0.5 points apart with stds 0.71 -> within noise; vs AdamW: beyond.
    assert "0.50 points worse than 32-bit Shampoo (within seed noise" in text
    assert "points better than AdamW (beyond seed noise" in text
    assert "kept 95% of 32-bit Shampoo's gain over AdamW" in text
    assert "(7.0× less)" in text
    assert "4-bit Shampoo (CQ+EF) 2.50×" in text  # 5 ms vs AdamW's 2 ms per step
    assert "4-bit Shampoo (CQ+EF): 1 loss spikes" in text

    # Change the numbers, change the verdict: a 4-bit variant clearly behind.
    worse = [dict(r) for r in results]
    for r in worse:
        if r["optimizer"] == "shampoo4bit":
            r["final"] = {**r["final"], "metric": r["final"]["metric"] - 0.08}
    text = report.verdict(META, report.summarize(META, worse))
    assert "beyond seed noise" in text.split("4-bit Shampoo (CQ+EF) was ")[1].split(" and ")[0]
    assert "kept 15% of" in text


def test_one_seed_says_so(results):
    meta = {**META, "seeds": [0]}
    one = [r for r in results if r["seed"] == 0]
    text = report.verdict(meta, report.summarize(meta, one))
    assert "one seed: no noise estimate" in text


def test_diverged_run_is_reported(tmp_path, results):
    results[0]["final"] = {**results[0]["final"], "metric": float("nan")}
    results[0]["stability"]["diverged"] = True
    report.write_report(tmp_path, META, results)
    md = (tmp_path / "report.md").read_text()
    assert "(1 diverged)" in md
    json.loads((tmp_path / "results.json").read_text())  # NaN is written as null, still JSON


def test_fmt_bytes():
    assert report.fmt_bytes(512) == "512 B"
    assert report.fmt_bytes(2048) == "2.0 KiB"
    assert report.fmt_bytes(3 * 2**20) == "3.0 MiB"


def test_language_model_table_has_perplexity(results):
    meta = {**META, "metric_name": "val loss", "higher_is_better": False, "percent": False}
    meta.update(metric_is_loss=True, perplexity=True)
    table = report.results_table(meta, report.summarize(meta, results))
    assert "| optimizer | val loss | perplexity |" in table
    assert f"| `adamw` | 0.81 ± 0.01 | {math.exp(0.5):.2f} ± 0.00 |" in table  # exp(test loss)
    meta["perplexity"] = False  # e.g. a regression whose metric is its MSE: no second column
    assert "| optimizer | val loss | preconditioner state |" in report.results_table(
        meta, report.summarize(meta, results)
    )


def test_verdict_when_a_variant_loses_the_whole_gain(results):
    for r in results:
        if r["optimizer"] == "shampoo4bit":
            r["final"] = {**r["final"], "metric": 0.70}
    text = report.verdict(META, report.summarize(META, results))
    assert "4-bit Shampoo (CQ+EF) kept none of 32-bit Shampoo's gain over AdamW." in text
