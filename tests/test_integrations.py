"""The trainer integrations in examples/: Hugging Face Trainer and PyTorch Lightning.

Each runs only where its package is installed, and skips cleanly elsewhere.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from tests.robust_utils import single_thread  # noqa: F401 - an autouse fixture

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),  # inside pytorch_lightning
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def healthy(report):
    d = report["diagnostics"]
    assert d["nonfinite_steps"] == 0 and d["root_failures"] == 0 and d["cholesky_failures"] == 0
    assert d["quant_error"] is None or math.isfinite(d["quant_error"])


# -- Hugging Face transformers.Trainer --------------------------------------------------------
@pytest.fixture(scope="module")
def hf():
    if torch.get_default_device().type != "cpu":
        pytest.skip("the example pins use_cpu=True: QSHAMPOO_TEST_DEVICE does not apply")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return load_example("hf_trainer")


def test_hf_trainer_example_trains(hf, tmp_path):
    report = hf.main(["--steps", "80", "--out", str(tmp_path)])
    assert report["accuracy"] > 0.7
    healthy(report)


def test_hf_trainer_resumes_from_its_checkpoint_identically(hf, tmp_path):
    common = ["--steps", "30", "--min-quant-numel", "0"]
    full = hf.main([*common, "--save-steps", "15", "--out", str(tmp_path / "a")])
    ckpt = tmp_path / "a" / "checkpoint-15"
    assert (ckpt / "optimizer.pt").exists() and (ckpt / "scheduler.pt").exists()
    # another initialisation: only the checkpoint (model, optimizer, scheduler) can make it
    # identical
    resumed = hf.main(
        [*common, "--resume", str(ckpt), "--model-seed", "1", "--out", str(tmp_path / "b")]
    )
    for a, b in zip(full["model"].parameters(), resumed["model"].parameters(), strict=True):
        assert torch.equal(a, b)
    healthy(resumed)


# -- PyTorch Lightning ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lightning():
    if torch.get_default_device().type != "cpu":
        pytest.skip("the example pins accelerator='cpu': QSHAMPOO_TEST_DEVICE does not apply")
    if importlib.util.find_spec("lightning") is None:
        pytest.importorskip("pytorch_lightning")
    return load_example("lightning_module")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_lightning_example_trains(lightning, tmp_path, precision):
    report = lightning.main(["--steps", "80", "--precision", precision, "--out", str(tmp_path)])
    assert report["accuracy"] > 0.7
    healthy(report)


def test_lightning_resumes_from_its_checkpoint_identically(lightning, tmp_path):
    # 1797 digits in batches of 32: an epoch is 57 steps; resume at the epoch boundary
    common = ["--steps", "70", "--no-shuffle"]
    full = lightning.main([*common, "--save-every", "57", "--out", str(tmp_path / "a")])
    (ckpt,) = (tmp_path / "a").glob("*step=57.ckpt")
    resumed = lightning.main(
        [*common, "--resume", str(ckpt), "--seed", "1", "--out", str(tmp_path / "b")]
    )
    for a, b in zip(full["module"].parameters(), resumed["module"].parameters(), strict=True):
        assert torch.equal(a, b)
    healthy(resumed)
