import json

import pytest

from qshampoo.bench.grid import GridError, Relative, base_hparams, parse_grid, settings
from qshampoo.bench.report import rerender
from qshampoo.bench.summary import paired, pooled_noise
from qshampoo.bench.tasks import get_task
from qshampoo.cli import COMMANDS, main

STEPS = 12


def _sweep_args(out, *extra, grids=("ef_decay=0,0.9", "bits=4,8")):
    return [
        "sweep",
        "--task",
        "digits",
        *[arg for grid in grids for arg in ("--grid", grid)],
        "--references",
        "adamw",
        "--seeds",
        "2",
        "--steps",
        str(STEPS),
        "--out",
        str(out),
        "--no-progress",
        "--no-isolate",
        *extra,
    ]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "rep"
    assert main(_sweep_args(out)) == 0
    return out


def test_two_by_two_sweep_writes_the_report(swept):
    for name in ("report.md", "report.html", "results.json", "quality.png", "kpi.png"):
        assert (swept / name).stat().st_size > 0
    doc = json.loads((swept / "results.json").read_text())
    assert doc["meta"]["steps"] == STEPS
    labels = [s["label"] for s in doc["meta"]["settings"]]
    assert labels == [
        "ef_decay=0, bits=4",
        "ef_decay=0, bits=8",
        "ef_decay=0.9, bits=4",
        "ef_decay=0.9, bits=8",
    ]
    assert [s["default"] for s in doc["meta"]["settings"]] == [False, False, True, False]
    # 4 settings x 2 seeds + the reference x 2 seeds, each run with its own settings.
    assert len(doc["runs"]) == 10
    run = next(r for r in doc["runs"] if r["entry"] == "ef_decay=0, bits=8")
    assert run["hparams"]["ef_decay"] == 0.0 and run["hparams"]["bits"] == 8
    assert set(doc["summary"]) == {*labels, "adamw"}
    # 8-bit codes take more memory than 4-bit ones.
    pre = {k: s["state_bytes"]["preconditioners"] for k, s in doc["summary"].items()}
    assert pre["ef_decay=0, bits=8"] > pre["ef_decay=0, bits=4"] > pre["adamw"] == 0
    md = (swept / "report.md").read_text()
    assert "| ef_decay=0.9, bits=4 (default) |" in md and "| AdamW (reference) |" in md
    # the sections benchmarks/sweep_results.py reads, and the findings in results.json
    assert "\n## Results\n" in md and "\n## Per seed\n" in md
    assert doc["findings"].startswith("The best mean final test accuracy: ")
    assert "Against the default (ef_decay=0.9, bits=4), seed by seed:" in doc["findings"]
    assert doc["meta"]["noise"]["dof"] == 4  # (5 entries - 1) x (2 seeds - 1)
    assert doc["summary"]["ef_decay=0, bits=4"]["vs_default"]["n"] == 2


def test_resume_reuses_finished_runs_and_runs_only_new_points(swept, capsys):
    before = json.loads((swept / "results.json").read_text())
    capsys.readouterr()
    args = _sweep_args(swept, "--resume")
    args[args.index("ef_decay=0,0.9")] = "ef_decay=0,0.5,0.9"
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("finished earlier") == 10
    trained = [line for line in err.splitlines() if "test accuracy" in line]
    assert len(trained) == 4 and all("ef_decay=0.5" in line for line in trained)
    after = json.loads((swept / "results.json").read_text())
    old = {(r["entry"], r["optimizer"], r["seed"]): r["final"] for r in before["runs"]}
    new = {(r["entry"], r["optimizer"], r["seed"]): r["final"] for r in after["runs"]}
    assert all(new[k] == v for k, v in old.items()) and len(new) == 14


def test_reuse_takes_identical_runs_from_another_folder(swept, tmp_path, capsys):
    out = tmp_path / "other"
    args = _sweep_args(out, "--reuse", str(swept), grids=("block_size=64,128",))
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    # The default point (block 64 = ef_decay 0.9, bits 4) and the reference are the same runs.
    assert err.count("reused") == 4
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["meta"]["reused_runs"]) == 4
    assert "were taken from earlier folders" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "grid, message",
    [
        (["ef_decay"], "expected KEY=V1,V2"),
        (["ef_decay=0,,0.9"], "empty value"),
        (["ef_decay="], "empty value"),
        (["foo=1,2"], "unknown setting 'foo'"),
        (["bits=4,x"], "bits takes integers"),
        (["ef_decay=high"], "ef_decay takes numbers"),
        (["stat_interval=steps/0"], "positive number after 'steps/'"),
        (["stat_interval=often"], "integers or steps/K"),
        (["bits=4,4"], "listed twice"),
        (["bits=4", "bits=8"], "given twice"),
        (["bits=4", "ef_decay=0", "block_size=64"], "at most 2"),
        ([], "give at least one --grid"),
        (["bits=4=8"], "expected KEY=V1,V2"),
    ],
)
def test_grid_parser_rejects_malformed_grids(grid, message):
    with pytest.raises(GridError, match=None) as e:
        parse_grid(grid)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "grid, message",
    [
        ("bits=5", "shampoo4bit at bits=5: invalid bits=5: must be one of (3, 4, 8) or 'auto'"),
        ("ef_decay=1.5", "invalid ef_decay=1.5: must be in [0, 1)"),
        ("codebook=linear3", "invalid codebook='linear3': must be one of"),
        ("stat_interval=0", "invalid stat_interval=0: must be an integer >= 1"),
        ("lr=-1", "invalid lr=-1.0: must be >= 0"),
    ],
)
def test_values_the_optimizer_refuses_are_refused_before_any_run(tmp_path, capsys, grid, message):
    out = tmp_path / "rep"
    assert main(["sweep", "--task", "digits", "--grid", grid, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_malformed_grid_is_one_line_on_the_command_line(tmp_path, capsys):
    rc = main(["sweep", "--task", "digits", "--grid", "bits=four", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == "qshampoo sweep: error: --grid 'bits=four': bits takes integers, got 'four'"
    rc = main(["sweep", "--task", "digits", "--optimizer", "adamw", "--grid", "bits=4,8"])
    assert rc == 2
    assert "optimizer 'adamw' does not take 'bits'" in capsys.readouterr().err
    rc = main(["sweep", "--task", "digits", "--grid", "bits=4,8", "--hp", "shampoo4bit.bits=3"])
    assert rc == 2
    assert "set by both --grid and --hp" in capsys.readouterr().err


def test_grid_values_and_relative_intervals():
    axes = parse_grid(["stat_interval=steps/50,steps/10,3", "codebook=linear2,dynamic_tree"])
    assert axes[0].values == [Relative(50.0), Relative(10.0), 3]
    assert axes[0].resolved(500) == [10, 50, 3]
    assert axes[0].resolved(40) == [1, 4, 3]
    assert axes[0].resolved(100) == [2, 10, 3]
    assert axes[0].resolved(150) == [3, 15]  # steps/50 and 3 meet: one point
    task = get_task("digits")
    base = base_hparams(task, "shampoo4bit", 500, {})
    # Every sweepable key is written out, so the default point has one fingerprint everywhere.
    assert base["ef_decay"] == 0.9 and base["block_size"] == 64 and base["stat_interval"] == 10
    points = settings(axes, base, 500)
    assert len(points) == 6
    assert [p.default for p in points] == [True, False, False, False, False, False]
    assert (
        points[3].hparams["stat_interval"] == 50 and points[3].hparams["codebook"] == "dynamic_tree"
    )


def test_paired_differences():
    p = paired({0: 0.90, 1: 0.85, 2: 0.88}, {0: 0.89, 1: 0.84, 2: 0.86})
    assert p["n"] == 3 and p["mean"] == pytest.approx(0.04 / 3)
    # The seeds' spread (0.05) cancels: the interval is that of the differences only.
    # differences 0.01, 0.01, 0.02: sample std 0.00577, standard error 0.00333, t(2) = 4.303
    assert p["hi"] - p["mean"] == pytest.approx(4.303 * 0.0057735 / 3**0.5, rel=1e-3)
    assert paired({0: 0.9}, {0: 0.8})["lo"] is None
    assert paired({0: 0.9}, {}) is None
    # with a pooled run-to-run variance: t(dof) * sqrt(2 sigma2 / n)
    p = paired({0: 0.9}, {0: 0.8}, noise=(0.01, 4))
    assert p["hi"] - p["mean"] == pytest.approx(2.776 * (2 * 0.01) ** 0.5, rel=1e-3)


def test_pooled_noise_of_an_additive_model():
    # setting effect + seed effect and nothing else: no noise left.
    exact = {"a": {0: 1.0, 1: 2.0, 2: 3.0}, "b": {0: 1.5, 1: 2.5, 2: 3.5}}
    assert pooled_noise(exact) == (0.0, 2)
    # One cell off by 0.3 in a 2 x 2 table: residuals +-0.075, one degree of freedom.
    table = {"a": {0: 1.0, 1: 2.0}, "b": {0: 1.5, 1: 2.8}}
    sigma2, dof = pooled_noise(table)
    assert dof == 1 and sigma2 == pytest.approx(4 * 0.075**2)
    # A configuration that lacks a seed of the others is left out; one seed: not estimable.
    assert pooled_noise({**table, "c": {0: 9.0}}) == (sigma2, 1)
    assert pooled_noise({"a": {0: 1.0}, "b": {0: 2.0}}) == (None, 0)


def test_rerender_keeps_the_recorded_run(swept):
    before = json.loads((swept / "results.json").read_text())
    doc = rerender(swept)
    assert doc["meta"]["command"] == before["meta"]["command"]
    assert doc["meta"]["date"] == before["meta"]["date"]
    assert doc["versions"] == before["versions"]
    assert "Δ vs default [95 % CI]" in (swept / "report.md").read_text()
    rerender(swept, "ja")
    assert "既定値との差" in (swept / "report.md").read_text()


def test_sweep_is_registered():
    assert "sweep" in [c.name for c in COMMANDS]
