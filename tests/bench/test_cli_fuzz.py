"""A fuzz test of the command line's flags (issue 22): every invocation either runs — here a dry
run: everything is checked, the training and the tables are stubbed out — or exits with status
2 and one line on stderr, never a traceback, and a refused invocation creates nothing."""

import contextlib
import io
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qshampoo import cli
from qshampoo.bench import memory_table, spectral, suite

pytestmark = pytest.mark.slow

VALUES = {
    "--task": ["digits", "digits", "fashion-mnist", "shakespeare", "imagenet"],
    "--optimizers": ["adamw", "adamw,shampoo4bit", "adamw,adamw", "sgd,shampoo", "", ",", "adam"],
    "--seeds": ["1", "2", "0", "-1", "1,1", "3,", "a", "1.5", "0,4294967296", "2,5", ""],
    "--steps": ["1", "5", "0", "-3", "x", "1e3", "999999999999"],
    "--epochs": ["0.5", "nan", "inf", "-1", "0", "x", "1e-9"],
    "--device": ["cpu", "auto", "tpu", "cuda", "cuda:7", "meta", "", "cpu:0"],
    "--hp": [
        "adamw.lr=0.01",
        "*.lr=-1",
        "shampoo4bit.bits=5",
        "shampoo4bit.bits=8",
        "lr=3",
        "x.y=1",
        "*.betas=[0.9]",
        "*.betas=5",
        "shampoo4bit.ef_decay=2",
        "*.stat_interval=0",
        "adamw.foo=1",
        "*.eps=NaN",
        '*.weight_decay="a"',
    ],
    "--eval-every": ["0", "-1", "5", "x"],
    "--threads": ["0", "1", "-2", "x"],
    "--budgets": ["none", "0.5", "1", "0", "x", "0.5,2", "nan", "0.3,0.6"],
    "--lang": ["en", "ja", "fr"],
    "--data-dir": ["/nonexistent", "DIR"],
    "--out": ["NEW", "FILE", "FILE/sub", "/proc/qshampoo-fuzz/out", "DIR"],
    "--grid": [
        "ef_decay=0,0.5",
        "bits=5",
        "bits=4,8",
        "codebook=nf4",
        "stat_interval=steps/0",
        "stat_interval=steps/50,3",
        "foo=1",
        "lr=",
        "bits=4,4",
        "block_size=0",
        "lr=1e-3,-1",
    ],
    "--optimizer": ["shampoo4bit", "adamw", "xyz"],
    "--references": ["none", "adamw", "xyz", ""],
    "--reuse": ["/nonexistent", "DIR"],
    "--bits": ["0", "2", "3", "4", "5", "8", "16", "x"],
    "--block-size": ["0", "-1", "64", "x"],
    "--max-preconditioner-dim": ["-1", "0", "1200", "x"],
    "--models": ["", "gpt5", "llama-130m"],
    "--sizes": ["0", "-4", "8", "x", "1,2", ""],
    "--codebook": ["nf4", "linear2", "dynamic_tree"],
    "--updates": ["0", "-1", "1", "20", "x"],
    "--stat-decay": ["0", "0.9", "1", "-0.1", "nan", "x"],
    "--ef-decay": ["0", "0.9", "1", "2", "nan", "x"],
}
SWITCHES = ["--resume", "--overwrite", "--validation", "--no-isolate", "--no-progress", "--list"]
FLAGS = {
    "bench": ["--task", "--optimizers", "--seeds", "--steps", "--epochs", "--device", "--hp"]
    + ["--eval-every", "--threads", "--budgets", "--lang", "--data-dir", "--out"],
    "sweep": ["--task", "--grid", "--optimizer", "--references", "--reuse", "--seeds", "--steps"]
    + ["--epochs", "--device", "--hp", "--out", "--lang"],
    "memory": ["--bits", "--block-size", "--max-preconditioner-dim", "--models"],
    "spectral": ["--sizes", "--bits", "--block-size", "--codebook", "--updates", "--stat-decay"]
    + ["--ef-decay"],
}


@st.composite
def invocations(draw):
    command = draw(st.sampled_from([*FLAGS, "report"]))
    if command == "report":
        return ["report", draw(st.sampled_from(["/nonexistent", "DIR"]))]
    argv = [command]
    for flag in draw(st.lists(st.sampled_from(FLAGS[command]), max_size=6)):
        argv += [flag, draw(st.sampled_from(VALUES[flag]))]
    if command in ("bench", "sweep"):
        argv += draw(st.lists(st.sampled_from(SWITCHES[:5] + SWITCHES[5:] * (command == "bench"))))
    return argv


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "file").write_text("not a folder")
    (root / "dir").mkdir()
    return root


@pytest.fixture(scope="module", autouse=True)
def dry_run():
    """Checks run for real; the training, the spectral table and the memory table do not."""
    patch = pytest.MonkeyPatch()
    patch.setattr(suite, "execute", lambda plan: plan.out)
    patch.setattr(spectral, "run", lambda **kw: "(table)")
    patch.setattr(memory_table, "memory_rows", lambda models, **kw: [])
    patch.setattr(memory_table, "markdown", lambda rows: "(table)")
    yield
    patch.undo()


COUNTER = itertools.count()


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=invocations())
def test_every_invocation_runs_or_is_refused_in_one_line(places, argv):
    new = places / f"new{next(COUNTER)}"
    here = {"NEW": str(new), "FILE": str(places / "file"), "DIR": str(places / "dir")}
    argv = [here.get(a.split("/")[0], a.split("/")[0]) + a[len(a.split("/")[0]) :] for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    err = err.getvalue()
    assert "Traceback" not in err, (argv, err)
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2:
        assert err.count("\n") == 1 and err.strip(), (argv, err)
        assert not new.exists(), argv  # a refusal creates nothing
    assert sorted(p.name for p in (places / "dir").iterdir()) == [], argv
    assert Path(places / "file").read_text() == "not a folder"
