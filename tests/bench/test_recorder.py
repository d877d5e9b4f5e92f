"""The recorder in a user's own loop, and the trainer callbacks, write the decision report; the
report page renders in headless Chromium."""

import json
import runpy
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from qshampoo.bench import Recorder, report_folder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name):
    return runpy.run_path(str(EXAMPLES / name))


def test_recorder_in_a_plain_loop(tmp_path):
    ex = example("recorder_loop.py")
    for name in ("adamw", "shampoo4bit"):
        for seed in (0, 1):
            r = ex["train"](str(tmp_path), name, seed, steps=30)
            assert len(r["losses"]) == 30 and len(r["evals"]) == 1
            assert r["memory"]["optimizer_peak_bytes"] >= r["memory"]["optimizer_state"]["total"]
            assert len(r["norms"]["grad"]) == len(r["norms"]["update_ratio"]) == 30
            assert r["time"]["train_s"] > 0
    runs = sorted(p.parent.parent.name for p in tmp_path.glob("runs/*/seed*/result.json"))
    assert runs == ["adamw", "adamw", "shampoo4bit", "shampoo4bit"]
    md = (tmp_path / "report.md").read_text()
    assert "— 4-bit Shampoo:" in md.splitlines()[2] and "| AdamW = 1.0 | 4-bit Shampoo |" in md
    # the same runs, reported again in Japanese
    report_folder(tmp_path, lang="ja")
    assert "4ビット Shampoo" in (tmp_path / "report.md").read_text()


def test_recorder_measures_what_the_optimizer_adds():
    """32-bit Shampoo holds more at its peak than AdamW; the state is part of the peak."""
    peaks = {}
    for name in ("adamw", "shampoo"):
        torch.manual_seed(0)
        model = torch.nn.Linear(256, 256)
        ex = example("recorder_loop.py")
        opt = ex["make_optimizer"](name, model.parameters(), lr=1e-3)
        rec = Recorder(optimizer=name).watch(opt)
        for _ in range(16):  # steps 2 and 15 (the roots' interval) are measured
            loss = model(torch.randn(8, 256)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss)
        r = rec.result()
        peaks[name] = r["memory"]["optimizer_peak_bytes"]
        assert peaks[name] >= r["memory"]["optimizer_state"]["total"] > 0
    assert peaks["shampoo"] > 2 * peaks["adamw"]


def test_hugging_face_callback(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    ex = example("recorder_hf.py")
    for name in ("adamw", "shampoo4bit"):
        ex["train"](str(tmp_path), name, 0, steps=20)
    r = json.loads((tmp_path / "runs/shampoo4bit/seed0/result.json").read_text())
    assert len(r["losses"]) == 20 and len(r["evals"]) >= 4
    assert r["metric"]["name"] == "eval_accuracy" and 0 < r["final"]["metric"] <= 1
    assert "— 4-bit Shampoo:" in (tmp_path / "report.md").read_text()


def test_lightning_callback(tmp_path):
    pytest.importorskip("lightning", reason="install the integrations extra")
    ex = example("recorder_lightning.py")
    for name in ("adamw", "shampoo4bit"):
        ex["train"](str(tmp_path), name, 0, steps=20)
    r = json.loads((tmp_path / "runs/shampoo4bit/seed0/result.json").read_text())
    assert len(r["losses"]) == 20 and len(r["evals"]) >= 4
    assert r["memory"]["optimizer_peak_bytes"] > 0
    assert "— 4-bit Shampoo:" in (tmp_path / "report.md").read_text()


def test_the_page_renders_in_chromium(tmp_path):
    """What a manager opens: the page, rendered by a browser, has its summary, tiles and plots."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    from qshampoo.bench.report import write_report

    helpers = runpy.run_path(str(Path(__file__).with_name("test_report.py")))
    META, fake_run = helpers["META"], helpers["fake_run"]  # noqa: N806

    runs = [
        fake_run(n, s, m + 0.003 * s, peak=p)
        for s in (0, 1)
        for n, m, p in (("adamw", 0.8, 2000), ("shampoo", 0.9, 16000), ("shampoo4bit", 0.899, 3000))
    ]
    write_report(tmp_path, {**META, "seeds": [0, 1], "budgets": []}, runs)
    page = (tmp_path / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    assert 'class="decision"' in dom and dom.count('class="tile"') == 4
    assert dom.count("<img") == 4 and "Adopt" in dom
    shot = tmp_path / "page.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2000", page],
        capture_output=True,
        timeout=120,
    )
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1200, 2000)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels[:400].std() > 0.05  # the top of the page is not blank
