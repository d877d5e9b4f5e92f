"""The report from synthetic results: the recommendation follows its rules, the tiles and tables
hold the numbers, both languages, and the files are written."""

import json
import math
import re

import pytest

from qshampoo.bench import report
from qshampoo.bench.summary import summarize_runs


def fake_run(name, seed, metric, *, state=1000, peak=None, ms=2.0, spikes=0, qe=None, **extra):
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
        "final": {"loss": 0.5, "metric": metric},
        "losses": losses,
        "evals": evals,
        "memory": {
            "optimizer_state": {"preconditioners": 0, "base_state": state, "total": state},
            "optimizer_peak_bytes": peak or 2 * state,
            "step_workspace_bytes": (peak or 2 * state) - state,
            "peak_rss_bytes": 300 * 2**20,
            "rss_added_bytes": 2**20,
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
            "grad_norm_ratio": 3.0,
            "diverged": False,
        },
        "norms": {"grad": [1.0] * steps, "update_ratio": [0.01] * steps},
        "diagnostics": {"quant_error": qe},
        "isolated": True,
        **extra,
    }


META = {
    "kind": "bench",
    "task": "toy",
    "task_description": "a toy",
    "metric_name": "accuracy",
    "higher_is_better": True,
    "percent": True,
    "steps": 40,
    "batch_size": 8,
    "seeds": [0, 1, 2],
    "optimizers": ["adamw", "shampoo", "shampoo4bit"],
    "skipped": {"soap": "not installed"},
    "device": "cpu",
    "warmup": 0.05,
    "final_lr": 0.1,
    "wall_s": 12.0,
    "budgets": [0.5],
    "command": "qshampoo bench --task toy",
}


@pytest.fixture
def results():
    """AdamW 80 %; 32-bit Shampoo 90 % at 8x AdamW's peak; 4-bit 89.9 % at 1.5x, slower."""
    out = []
    for s, (d, e) in enumerate(((0.0, 0.003), (0.004, 0.001), (-0.003, -0.006))):
        out += [
            fake_run("adamw", s, 0.80 + d),
            fake_run("shampoo", s, 0.90 + d, peak=16000, ms=3.0),
            fake_run("shampoo4bit", s, 0.899 + e, peak=3000, ms=4.0, qe=0.05),
            # the 4-bit optimizer's half-length schedule already passes AdamW
            fake_run("shampoo4bit", s, 0.85 + d, ms=4.0, budget=0.5, completed_steps=20),
        ]
    return out


def rendered(results, meta=META, lang="en"):
    summary = {
        n: {
            **summarize_runs([r for r in results if r["optimizer"] == n and "budget" not in r]),
            "label": report.optim_mod.label(n, lang),
        }
        for n in meta["optimizers"]
    }
    k = report.kpis(meta, summary, results)
    return summary, k, report.recommendation(meta, summary, k, lang)


def test_adopt_if_memory_bound(results):
    _, k, text = rendered(results)
    assert k["candidate"] == "shampoo4bit" and k["baseline"] == "adamw"
    assert k["reference"] == "shampoo"
    assert text.startswith("**Adopt if memory-bound** — 4-bit Shampoo: same accuracy as 32-bit")
    assert "9.80 points better than AdamW [95 % CI +8.94, +10.66]" in text
    assert "5.3× less optimizer memory at peak than 32-bit Shampoo" in text
    assert "2.00× AdamW's step time" in text
    assert "AdamW's final accuracy in 50 % of its steps" in text
    assert "no instability in 3 × 40 steps" in text


def test_the_rules_follow_the_numbers(results):
    worse = [dict(r) for r in results]
    for r in worse:
        if r["optimizer"] == "shampoo4bit":
            r["final"] = {**r["final"], "metric": r["final"]["metric"] - 0.2}
    assert rendered(worse)[2].startswith("**Do not adopt**")
    spiky = [dict(r) for r in results]
    for r in spiky:
        if r["optimizer"] == "shampoo4bit" and r["seed"] == 1:
            r["stability"] = {**r["stability"], "loss_spikes": 2}
    text = rendered(spiky)[2]
    assert text.startswith("**Do not adopt**") and "instability: 2 loss spikes" in text
    one = [r for r in results if r["seed"] == 0]
    assert rendered(one, {**META, "seeds": [0]})[2].startswith("**Undecided")
    alone = [r for r in results if r["optimizer"] != "shampoo"]
    meta = {**META, "optimizers": ["adamw", "shampoo4bit"]}
    assert rendered(alone, meta)[2].startswith("**Adopt** — 4-bit Shampoo: 9.80 points better")


def test_tiles_and_tables(results):
    summary, k, _ = rendered(results)
    quality, memory, time, stability = report.tiles(META, summary, k, "en")
    assert quality["rows"][0][:2] == ("4-bit Shampoo", "+9.80 points")
    assert memory["rows"][0][1] == "1.50×" and memory["rows"][1][1] == "8.00×"
    assert "in 50 % of its steps" in time["rows"][0][2]
    assert stability["rows"][0][1] == "0 events"
    head, rows = report.results_table(META, summary, k)
    assert head[3] == "optimizer memory at peak (MiB)" and rows[2][3] == "0.00"
    assert head[9] == "steps to AdamW's accuracy (%)"
    assert rows[2][9] == "50 (3/3)"  # steps to AdamW's accuracy, seeds that reached it


def test_report_files(tmp_path, results):
    doc = report.write_report(tmp_path, META, results)
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert loaded["recommendation"] == doc["recommendation"] and len(loaded["runs"]) == 12
    md = (tmp_path / "report.md").read_text()
    assert md.splitlines()[2].startswith("**Adopt if memory-bound**")
    assert md.index("| AdamW = 1.0 |") < md.index("![") < md.index("## Appendix")
    assert "### Results" in md and "Shared by every row: " in md
    assert "`soap` (not installed)" in md
    for name in ("kpi.png", "curves.png", "memory.png", "stability.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "http" not in page.split("<body>")[1]
    assert page.count('class="tile"') == 4 and 'class="decision"' in page


def test_japanese_report(tmp_path, results):
    report.write_report(tmp_path, META, results, lang="ja")
    md = (tmp_path / "report.md").read_text()
    assert md.splitlines()[2].startswith("**メモリが制約なら採用** — 4ビット Shampoo")
    assert "付録" in md and "用語集" in md
    assert '<html lang="ja">' in (tmp_path / "report.html").read_text()
    # rerendering a folder in the other language keeps the runs and the date
    before = json.loads((tmp_path / "results.json").read_text())
    doc = report.rerender(tmp_path, "en")
    assert doc["meta"]["date"] == before["meta"]["date"] and doc["meta"]["lang"] == "en"
    assert (tmp_path / "report.md").read_text().startswith("# Should we switch")


def test_diverged_run_is_reported(tmp_path, results):
    results[0]["final"] = {**results[0]["final"], "metric": float("nan")}
    results[0]["stability"]["diverged"] = True
    report.write_report(tmp_path, META, results)
    assert "(1 diverged)" in (tmp_path / "report.md").read_text()
    json.loads((tmp_path / "results.json").read_text())  # NaN is written as null, still JSON


def test_language_model_table_has_perplexity(results):
    meta = {**META, "metric_name": "val loss", "higher_is_better": False, "percent": False}
    meta.update(metric_is_loss=True, perplexity=True)
    summary, k, text = rendered(results, meta)
    head, rows = report.results_table(meta, summary, k)
    assert head[:3] == ["optimizer", "val loss", "perplexity"]
    assert rows[0][2] == f"{math.exp(0.5):.2f} ± 0.00"
    # a higher loss is worse: the 4-bit optimizer's "gain" of 0.099 is a loss
    assert text.startswith("**Do not adopt**") and "0.0980 worse than AdamW" in text


def test_markdown_and_html_come_from_the_same_blocks(tmp_path):
    blocks = [("h", 1, "T"), ("p", "**bold** and `code` <tag>"), ("table", ["a"], [["1"]])]
    md, page = report.render(blocks, tmp_path, "en")
    assert md == "# T\n\n**bold** and `code` <tag>\n\n| a |\n|---|\n| 1 |\n"
    assert '<p class="decision"><strong>bold</strong> and <code>code</code> &lt;tag&gt;' in page
    assert re.search(r"<table><tr><th>a</th></tr><tr><td>1</td></tr></table>", page)


def test_the_sentence_compares_the_candidate_with_the_cheaper_alternatives(results):
    """A peer from the registry (4-bit AdamW) gets its paired comparison in the sentence."""
    peer = [fake_run("torchao-adamw4bit", s, 0.79 + 0.001 * s, state=300) for s in range(3)]
    meta = {**META, "optimizers": ["adamw", "shampoo", "shampoo4bit", "torchao-adamw4bit"]}
    _, k, text = rendered(results + peer, meta)
    assert "points better than torchao 4-bit AdamW [95 % CI " in text
    assert set(k["rows"]["shampoo4bit"]["vs_peers"]) == {"torchao-adamw4bit"}
