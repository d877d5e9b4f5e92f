import json

from qshampoo.cli import COMMANDS, main


def test_bench_on_digits_end_to_end(tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["bench", "--task", "digits", "--optimizers", "adamw,sgd", "--seeds", "2"]
    args += ["--steps", "20", "--out", str(out), "--no-progress", "--no-isolate"]
    args += ["--budgets", "none"]
    assert main(args) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["steps"] == 20 and doc["meta"]["seeds"] == [0, 1]
    assert doc["meta"]["command"].startswith("qshampoo bench --task digits")
    assert sorted({(r["optimizer"], r["seed"]) for r in doc["runs"]}) == [
        ("adamw", 0),
        ("adamw", 1),
        ("sgd", 0),
        ("sgd", 1),
    ]
    md = (out / "report.md").read_text()
    assert "| AdamW |" in md and "| SGD |" in md and "## Appendix" in md
    assert (out / "report.html").exists()

    # --resume reuses the finished runs: same numbers, no retraining.
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["final"] for r in again["runs"]] == [r["final"] for r in doc["runs"]]
    assert "finished earlier" in capsys.readouterr().err


def test_epochs_and_overrides(tmp_path):
    out = tmp_path / "rep"
    args = ["bench", "--task", "digits", "--optimizers", "adamw", "--seeds", "1"]
    args += ["--epochs", "0.5", "--out", str(out), "--no-progress", "--no-isolate"]
    args += ["--hp", "adamw.lr=0.002", "--hp", "*.weight_decay=0"]
    assert main(args) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["steps"] == 11  # half of 1438 // 64 = 22 batches
    assert doc["runs"][0]["hparams"]["lr"] == 0.002
    assert doc["runs"][0]["hparams"]["weight_decay"] == 0


def test_missing_data_is_a_message_not_a_traceback(tmp_path, capsys):
    rc = main(["bench", "--data-dir", str(tmp_path), "--optimizers", "adamw", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err
    assert "Traceback" not in err


def test_bad_flags(tmp_path, capsys):
    base = ["bench", "--task", "digits", "--out", str(tmp_path), "--no-progress"]
    assert main([*base, "--optimizers", "adam"]) == 2
    assert "unknown optimizer 'adam'" in capsys.readouterr().err
    assert main([*base, "--seeds", "0"]) == 2
    assert main([*base, "--hp", "lr=3"]) == 2
    assert main([*base, "--steps", "5", "--epochs", "1"]) == 2


def test_list(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "shampoo4bit" in out and "digits" in out


def test_commands_table():
    assert "bench" in [c.name for c in COMMANDS]
    assert main([]) == 2


def test_python_dash_m(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "qshampoo", "bench", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "--resume" in r.stdout and "--optimizers" in r.stdout


def test_misspelt_override_is_an_error(tmp_path, capsys):
    base = ["bench", "--task", "digits", "--out", str(tmp_path), "--no-progress", "--steps", "2"]
    assert main([*base, "--optimizers", "adamw", "--hp", "adamw.stat_interval=3"]) == 2
    assert "takes 'stat_interval'" in capsys.readouterr().err
    assert main([*base, "--optimizers", "adamw", "--hp", "*.ef_decy=0"]) == 2
    assert "ef_decy" in capsys.readouterr().err


def test_report_command_rewrites_a_folder_in_japanese(tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["bench", "--task", "digits", "--optimizers", "adamw,shampoo", "--seeds", "1"]
    args += ["--steps", "12", "--out", str(out), "--no-progress", "--no-isolate"]
    assert main([*args, "--budgets", "0.5"]) == 0
    doc = json.loads((out / "results.json").read_text())
    budget = [r for r in doc["runs"] if r.get("budget") == 0.5]
    assert [(r["optimizer"], r["completed_steps"]) for r in budget] == [("shampoo", 6)]
    assert main(["report", str(out), "--lang", "ja"]) == 0
    assert "付録" in (out / "report.md").read_text()
    assert main(["report", str(tmp_path / "none")]) == 2
    assert main([*args, "--budgets", "2"]) == 2
