"""SIGTERM (what `kill` and job schedulers send) ends `qshampoo bench` and the run it spawned,
and leaves a folder that `--resume` finishes (issue 22 item 4). A real process tree: the parent
as `python -m qshampoo`, the run in its spawned child, `os.kill` from here."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from qshampoo.cli import main


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left


def test_sigterm_ends_the_run_and_leaves_a_resumable_folder(tmp_path):
    out = tmp_path / "rep"
    args = ["bench", "--task", "digits", "--optimizers", "adamw", "--seeds", "1", "--steps"]
    args += ["3000", "--eval-every", "10", "--budgets", "none", "--threads", "1"]
    args += ["--no-progress", "--out", str(out)]
    parent = subprocess.Popen(
        [sys.executable, "-m", "qshampoo", *args], stderr=subprocess.PIPE, text=True
    )
    run = out / "runs" / "adamw" / "seed0"
    deadline = time.monotonic() + 180
    while not (run / "checkpoint.pt").exists():
        assert parent.poll() is None, parent.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint after 180 s"
        time.sleep(0.1)
    spawned = children(parent.pid)
    assert spawned  # the run trains in a process of its own

    os.kill(parent.pid, signal.SIGTERM)
    assert parent.wait(timeout=60) == 143
    err = parent.stderr.read()
    assert "terminated" in err and "--resume" in err and "Traceback" not in err
    deadline = time.monotonic() + 20  # the resource tracker leaves when its pipe closes
    while any(alive(pid) for pid in spawned) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in spawned)

    # nothing writes into the folder any more; the run is unfinished, its checkpoint complete
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    time.sleep(2)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert not (run / "result.json").exists()
    assert main([*args, "--resume", "--no-isolate"]) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["resumed_from"] >= 10 and result["completed_steps"] == 3000
