"""The trainer integrations in examples/: Hugging Face Trainer, accelerate, PyTorch Lightning.

Each runs only where its package is installed, and skips cleanly elsewhere; `make test`
installs them (the `integrations` extra, at the versions in .ci/constraints.txt).
"""

from __future__ import annotations

import gc
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qshampoo
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
    # the Trainer built qshampoo from optimizer_cls_and_kwargs, with its own param groups (no
    # weight decay on biases and norms) and its own linear schedule, which ends at 0
    opt = report["optimizer"]
    assert type(opt) is qshampoo.Shampoo
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert all(g["lr"] == 0.0 for g in opt.param_groups)


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


# -- Hugging Face accelerate -----------------------------------------------------------------
@pytest.fixture(scope="module")
def acc():
    if torch.get_default_device().type != "cpu":
        pytest.skip("the test runs the example with --cpu: QSHAMPOO_TEST_DEVICE does not apply")
    pytest.importorskip("accelerate")
    return load_example("accelerate_train")


def test_accelerate_example_trains(acc, tmp_path):
    report = acc.main(["--cpu", "--steps", "80", "--out", str(tmp_path)])
    assert report["accuracy"] > 0.7
    healthy(report)


def test_accelerate_resumes_from_save_state_identically(acc, tmp_path):
    common = ["--cpu", "--steps", "30", "--min-quant-numel", "0"]
    full = acc.main([*common, "--save-steps", "15", "--out", str(tmp_path / "a")])
    state = tmp_path / "a" / "step-15"
    # another initialisation: only the saved state (model, optimizer, scheduler, data position)
    # can make it identical
    resumed = acc.main(
        [*common, "--resume", str(state), "--model-seed", "1", "--out", str(tmp_path / "b")]
    )
    for a, b in zip(full["model"].parameters(), resumed["model"].parameters(), strict=True):
        assert torch.equal(a, b)
    healthy(resumed)


def test_accelerate_launch_on_two_processes_splits_the_preconditioners(acc, tmp_path):
    """`accelerate launch` with two CPU processes (DDP over gloo): it trains, and each rank holds
    only the preconditioner blocks it owns."""
    one = acc.main(["--cpu", "--steps", "1", "--out", str(tmp_path / "one")])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", str(EXAMPLES / "accelerate_train.py")]
    cmd += ["--cpu", "--steps", "80", "--out", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    line = re.search(
        r"processes=2: accuracy ([\d.]+), preconditioners (\d+) bytes on this rank, "
        r"skipped steps 0, root failures 0",
        run.stdout,
    )
    assert line, run.stdout[-3000:]
    assert float(line[1]) > 0.7
    assert 0 < int(line[2]) < one["memory"]["preconditioners"]


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


# -- what does not work: FSDP1 (and DeepSpeed) flatten the parameters ---------------------------
def _fsdp1_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    seen = {}
    for use_orig_params in (False, True):
        torch.manual_seed(0)
        layers = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 10))
        model = FSDP(layers, device_id=torch.device("cpu"), use_orig_params=use_orig_params)
        opt = qshampoo.Shampoo(model.parameters(), lr=1e-3, stat_interval=1, root_interval=1)
        model(torch.randn(8, 64)).sum().backward()
        opt.step()
        shapes = [tuple(p.shape) for g in opt.param_groups for p in g["params"]]
        seen[use_orig_params] = (shapes, opt.memory_report()["preconditioners"])
        del model, opt
    torch.save(seen, f"{out}/{rank}.pt")
    # FSDP1's collectives must be finished and released on both ranks before the group goes:
    # gloo work still held at interpreter exit aborts the process ("terminate called without
    # an active exception", seen in 2 of 4 full runs)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.skipif(
    not torch.distributed.is_available() or torch.get_default_device().type != "cpu",
    reason="gloo processes on the CPU: QSHAMPOO_TEST_DEVICE does not apply",
)
def test_fsdp1_leaves_nothing_to_precondition(tmp_path):
    """FSDP1 (`FullyShardedDataParallel`: Trainer's `fsdp` at fsdp_version 1, Lightning's
    FSDPStrategy) hands the optimizer 1-D shards of flattened parameters, with use_orig_params
    False or True, so qshampoo preconditions nothing and is only its base optimizer
    (docs/robustness.md). FSDP2 (`fully_shard`) keeps the shapes: tests/test_distributed.py."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp1_rank, args=(port, str(tmp_path)), nprocs=2)
    for rank in range(2):
        for shapes, preconditioner_bytes in torch.load(tmp_path / f"{rank}.pt").values():
            assert all(len(s) == 1 for s in shapes), shapes
            assert preconditioner_bytes == 0
