import json

import pytest

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
    # the candidate (here 32-bit Shampoo: no 4-bit one) trains its half schedule where its full
    # one reached AdamW's accuracy: a shorter one is assumed not to do better than the full one
    full = [r for r in doc["runs"] if "budget" not in r]
    final = {(r["optimizer"], r["seed"]): r["final"]["metric"] for r in full}
    reached = final[("shampoo", 0)] >= final[("adamw", 0)]
    budget = [(r["optimizer"], r["completed_steps"]) for r in doc["runs"] if r.get("budget")]
    assert budget == ([("shampoo", 6)] if reached else [])
    assert main(["report", str(out), "--lang", "ja"]) == 0
    assert "付録" in (out / "report.md").read_text()
    assert main(["report", str(tmp_path / "none")]) == 2
    assert main([*args, "--budgets", "2"]) == 2


# --------------------------------------------------------------------------------------------
# Refusals: one line, exit status 2, nothing created or replaced (issue 22 items 3, 5, 7)
# --------------------------------------------------------------------------------------------


def refused(capsys, args, *expected) -> str:
    """``main(args)`` refuses with exit status 2 and one line on stderr holding ``expected``."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qshampoo") and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_resume_with_other_settings_replaces_nothing_unless_asked(tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["bench", "--task", "digits", "--optimizers", "adamw", "--seeds", "1", "--steps", "8"]
    args += ["--out", str(out), "--no-progress", "--no-isolate", "--budgets", "none"]
    assert main(args) == 0
    result = out / "runs" / "adamw" / "seed0" / "result.json"
    files = {p: p.read_bytes() for p in (result, out / "report.md", out / "results.json")}

    other = [*args, "--resume", "--hp", "adamw.lr=0.5"]
    refused(
        capsys, other, "runs/adamw/seed0", "other settings (hparams.lr 0.1 -> 0.5)", "--overwrite"
    )
    refused(capsys, args, "already holds runs", "--resume", "--overwrite")  # not even the same
    assert {p: p.read_bytes() for p in files} == files
    assert main([*args, "--resume"]) == 0  # the same settings: reused
    assert result.read_bytes() == files[result]

    assert main([*other, "--overwrite"]) == 0
    assert json.loads(result.read_text())["hparams"]["lr"] == 0.5


@pytest.mark.parametrize("bits", ["0", "2", "5", "16"])
def test_memory_refuses_the_widths_the_optimizer_refuses(capsys, bits):
    refused(capsys, ["memory", "--bits", bits], f"invalid bits={bits}: must be one of (3, 4, 8)")


def test_a_seed_listed_twice_is_refused(tmp_path, capsys):
    args = ["bench", "--task", "digits", "--seeds", "1,1", "--out", str(tmp_path / "r")]
    refused(capsys, args, "seed 1 is listed twice")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--optimizers", "shampoo4bit", "--hp", "shampoo4bit.bits=5"], "invalid bits=5"),
        (["--optimizers", "adamw", "--hp", "*.betas=[0.9]"], "adamw: "),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--device", "meta"], "--device 'meta'"),
        (["--epochs", "nan"], "--epochs must be a positive number"),
        (["--steps", "0"], "--steps must be an integer >= 1"),
        (["--seeds", "1.5"], "--seeds '1.5'"),
        (["--eval-every", "0"], "--eval-every must be an integer >= 1"),
        (["--threads", "-1"], "--threads must be an integer >= 1"),
        (["--budgets", "2"], "--budgets: every fraction must be in (0, 1)"),
        (["--optimizers", ","], "no optimizer to run"),
        (["--lang", "fr"], "argument --lang: invalid choice"),
    ],
)
def test_bad_flags_are_one_line_and_create_nothing(tmp_path, capsys, args, expected):
    out = tmp_path / "rep"
    refused(capsys, ["bench", "--task", "digits", "--out", str(out), *args], expected)
    assert not out.exists()


def test_an_out_that_cannot_be_a_folder_is_refused_before_anything_is_created(tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("x")
    base = ["bench", "--task", "digits", "--device", "tpu"]  # a later check would fail too
    refused(capsys, [*base, "--out", str(file)], f"--out {file}: {file} is a file")
    refused(capsys, [*base, "--out", str(file / "sub")], "is a file, not a folder")
    refused(capsys, [*base[:3], "--out", "/proc/qshampoo-test/out"], "cannot create a folder in")
    # the device is checked before anything is created, too
    refused(capsys, [*base, "--out", str(tmp_path / "new" / "rep")], "--device 'tpu'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["memory", "--block-size", "0"], "invalid block_size=0: must be an integer >= 1"),
        (["memory", "--max-preconditioner-dim", "-1"], "invalid max_preconditioner_dim=-1"),
        (["memory", "--models", "gpt5"], "--models: choose from"),
        (["spectral", "--sizes", "0"], "--sizes takes matrix orders >= 1"),
        (["spectral", "--sizes", "-4"], "--sizes takes matrix orders >= 1"),
        (["spectral", "--sizes", "64,x"], "--sizes takes matrix orders >= 1"),
        (["spectral", "--sizes", "8", "--no-real", "--codebook", "nf4"], "invalid codebook='nf4'"),
        (["spectral", "--sizes", "8", "--no-real", "--bits", "5"], "invalid bits=5"),
        (["spectral", "--sizes", "8", "--updates", "0"], "--updates must be >= 1, got 0"),
        (["spectral", "--sizes", "8", "--stat-decay", "nan"], "--stat-decay must be in [0, 1)"),
        (["spectral", "--sizes", "8", "--stat-decay", "1"], "--stat-decay must be in [0, 1)"),
        (["spectral", "--sizes", "8", "--ef-decay", "1"], "invalid ef_decay=1.0: must be in"),
        (["spectral", "--sizes", "8", "--ef-decay", "nan"], "invalid ef_decay=nan"),
        (["memory", "--bits", "four"], "argument --bits: invalid int value: 'four'"),
        (["sweep", "--task", "digits", "--grid", "block_size=0"], "invalid block_size=0"),
        (["report", "/nonexistent/folder"], "is not a readable report folder"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_other_commands_refuse_in_one_line(capsys, args, expected):
    refused(capsys, args, expected)
