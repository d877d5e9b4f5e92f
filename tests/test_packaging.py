"""The package as users install it: metadata, version, license, the public submodules, the
command line's ``--version``, and the one-line error for a missing optional dependency.

The built wheel itself is checked by ``make dist-check`` (CI), which installs it into a fresh
venv and runs ``.ci/smoke_installed.py`` there.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qshampoo
from qshampoo import _extras, cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r)[0].lower() for r in reqs}


# -- metadata ----------------------------------------------------------------------------------
def test_the_version_is_written_once(pyproject):
    project = pyproject["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "qshampoo.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev)?\d*", qshampoo.__version__)


def test_license_is_the_full_apache_2_text(pyproject):
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert pyproject["project"]["license-files"] == ["LICENSE"]


def test_the_package_is_typed(pyproject):
    assert (ROOT / "qshampoo" / "py.typed").exists()
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["qshampoo"]
    assert "Typing :: Typed" in pyproject["project"]["classifiers"]


def test_the_torch_floor_is_the_one_ci_tests(pyproject):
    """pyproject's `torch>=X` and the torch `make test-oldest` installs are the same version."""
    (torch_req,) = [r for r in pyproject["project"]["dependencies"] if r.startswith("torch")]
    floor = re.fullmatch(r"torch>=([\d.]+)", torch_req)[1]
    tested = re.search(r"^OLDEST_TORCH := torch==([\d.]+)$", (ROOT / "Makefile").read_text(), re.M)
    assert tested and tested[1] in (floor, f"{floor}.0")


def test_the_extras_are_the_ones_the_error_names(pyproject):
    extras = pyproject["project"]["optional-dependencies"]
    for extra, modules in _extras.EXTRAS.items():
        assert set(modules.values()) == _requirement_names(extras[extra]), extra


def test_ci_pins_the_integrations_but_never_torch(pyproject):
    lines = (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert "torch" not in pins
    assert _requirement_names(pyproject["project"]["optional-dependencies"]["integrations"]) <= set(
        pins
    )


# -- import qshampoo ---------------------------------------------------------------------------
def test_import_gives_the_public_submodules_and_nothing_heavy():
    """A fresh interpreter: `qshampoo.metrics` (and quant, precision) work without importing
    them by name, and the harness and the optional dependencies stay out."""
    code = (
        "import sys, torch, qshampoo\n"
        "A = torch.eye(32) + 0.1 * torch.ones(32, 32)\n"
        "nre, ae = qshampoo.metrics.inverse_root_error(A)\n"
        "q = qshampoo.quant.quantize(torch.randn(8, 64))\n"
        "assert qshampoo.quant.dequantize(q).shape == (8, 64)\n"
        "assert qshampoo.precision.PrecisionConfig\n"
        "print(nre >= 0, ae >= 0)\n"
        "heavy = ('qshampoo.bench', 'matplotlib', 'sklearn', 'transformers', 'accelerate',"
        " 'lightning')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or"
        " m.startswith('qshampoo.bench')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["True True", "[]"]


# -- the command line --------------------------------------------------------------------------
def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"qshampoo {qshampoo.__version__} (torch {torch.__version__})"
    )


@pytest.fixture
def without(monkeypatch):
    """Make modules look uninstalled to :mod:`qshampoo._extras`."""

    def hide(*modules: str) -> None:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name in modules else real(name, *a),
        )

    return hide


def test_bench_without_its_extra_is_one_line(without, capsys, tmp_path):
    without("matplotlib", "tqdm", "sklearn")
    status = cli.main(["bench", "--steps", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [
        "qshampoo bench: error: this needs the optional dependencies of qshampoo[bench] "
        "(not installed: matplotlib, tqdm, scikit-learn): pip install 'qshampoo[bench]'"
    ]
    assert not (tmp_path / "r").exists()  # refused before anything ran


def test_the_core_commands_need_no_extra(without, capsys):
    without("matplotlib", "tqdm", "sklearn")
    assert cli.main(["memory", "--models", "vgg19-cifar100"]) == 0
    assert "vgg19-cifar100" in capsys.readouterr().out


def test_an_unforeseen_missing_extra_module_is_one_line(monkeypatch, capsys):
    """`spectral` needs scikit-learn only for its captured matrix; the import error that would
    escape becomes the same one line."""

    def run(**kw):
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")

    monkeypatch.setattr("qshampoo.bench.spectral.run", run)
    assert cli.main(["spectral"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "qshampoo spectral: error: this needs the optional dependencies of qshampoo[bench] "
        "(not installed: scikit-learn): pip install 'qshampoo[bench]'"
    ]


def test_other_import_errors_are_not_disguised(monkeypatch):
    def run(**kw):
        raise ModuleNotFoundError("No module named 'qshampoo.nothing'", name="qshampoo.nothing")

    monkeypatch.setattr("qshampoo.bench.spectral.run", run)
    with pytest.raises(ModuleNotFoundError, match="qshampoo.nothing"):
        cli.main(["spectral"])
