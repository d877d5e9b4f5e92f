"""Parameters on a GPU while the default device stays the CPU, as in a user's script: the state
follows the parameters, a GPU step computes the CPU step, checkpoints move between devices,
``memory_report()`` is what the CUDA allocator holds, mixed precision, and the whole step
compiled by inductor (Triton kernels). Skipped without CUDA; ``QSHAMPOO_TEST_DEVICE=cuda``
runs the rest of the suite on the GPU (tests/conftest.py)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import qshampoo
from tests.robust_utils import VARIANTS, all_finite, leaves, variant_kwargs
from tests.test_conformance import compiled_step_trains_like_eager

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CPU, GPU = torch.device("cpu"), torch.device("cuda")
KW = dict(lr=1e-2, stat_interval=2, root_interval=4)


def net_on(device: torch.device, seed: int = 0) -> nn.Module:
    """Factors of orders 48 and 40 (layer 1), 10 and 48 (layer 2)."""
    torch.manual_seed(seed)
    with torch.device(CPU):  # the same initial weights on every device
        net = nn.Sequential(nn.Linear(40, 48), nn.Tanh(), nn.Linear(48, 10))
    return net.to(device)


def batch(step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """64 inputs and the classes a fixed linear teacher gives them (a task the net can learn);
    the same on every device."""
    teacher = torch.randn(40, 10, generator=torch.Generator().manual_seed(0), device=CPU)
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(1000 + step), device=CPU)
    return x.to(device), (x @ teacher).argmax(1).to(device)


def train(net: nn.Module, opt: torch.optim.Optimizer, steps: range) -> float:
    device = next(net.parameters()).device
    for k in steps:
        x, y = batch(k, device)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return loss.item()


def shampoo(net: nn.Module, quant: str, **kw) -> qshampoo.Shampoo:
    return qshampoo.Shampoo(net.parameters(), **variant_kwargs(quant, **KW, **kw))


@pytest.mark.parametrize("quant", VARIANTS)
def test_state_lives_on_the_parameters_device(quant):
    net = net_on(GPU)
    opt = shampoo(net, quant)
    train(net, opt, range(5))
    tensors = [(path, v) for st in opt.state.values() for path, v in leaves(st)]
    assert tensors and all(v.device.type == GPU.type for _, v in tensors if torch.is_tensor(v))
    assert all_finite(opt)


@pytest.mark.parametrize("quant", VARIANTS)
@pytest.mark.parametrize(("src", "dst"), [(CPU, GPU), (GPU, CPU)], ids=["cpu-gpu", "gpu-cpu"])
def test_checkpoint_moves_between_devices_and_the_next_step_agrees(quant, src, dst):
    """Train on ``src``, save, load onto ``dst``; one more step (nothing due) on each: the
    roots are the same codes, so the two updates differ by float rounding only."""
    net = net_on(src)
    opt = shampoo(net, quant)
    train(net, opt, range(4))  # statistics at 2 and 4, roots at 4
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    moved = net_on(dst)
    moved.load_state_dict(net.state_dict())
    opt_moved = shampoo(moved, quant)
    opt_moved.load_state_dict(torch.load(buf, map_location=dst, weights_only=True))
    assert all(
        v.device.type == dst.type
        for st in opt_moved.state.values()
        for _, v in leaves(st)
        if torch.is_tensor(v)
    )
    train(net, opt, range(4, 5))
    train(moved, opt_moved, range(4, 5))
    for a, b in zip(net.parameters(), moved.parameters(), strict=True):
        torch.testing.assert_close(b.cpu(), a.cpu(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("quant", VARIANTS)
def test_training_on_the_gpu_matches_the_cpu(quant):
    """30 steps (15 statistics, 7 root updates) on each device from the same weights and data."""
    runs = {}
    for device in (CPU, GPU):
        net = net_on(device)
        runs[device.type] = (train(net, shampoo(net, quant), range(30)), net)
    (cpu_loss, cpu_net), (gpu_loss, gpu_net) = runs["cpu"], runs["cuda"]
    assert gpu_loss == pytest.approx(cpu_loss, rel=0.02)
    if quant == "none":  # no codes to flip: the trajectories stay within float rounding
        for a, b in zip(cpu_net.parameters(), gpu_net.parameters(), strict=True):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("quant", VARIANTS)
def test_memory_report_is_what_the_allocator_holds(quant):
    """The state's bytes by ``memory_report()`` against ``torch.cuda.memory_allocated``: at
    least as many (no tensor unaccounted for), and no more than the allocator's rounding of
    each tensor to 512 bytes (no hidden buffer kept between steps)."""

    def stepped() -> tuple[qshampoo.Shampoo, int]:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        opt = qshampoo.Shampoo(net.parameters(), quant=quant, **KW)  # default sizes: 256x256
        opt.step()
        torch.cuda.synchronize()
        return opt, torch.cuda.memory_allocated() - before

    with torch.device(GPU):
        net = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 128))
        net(torch.randn(32, 256)).square().mean().backward()
    stepped()  # index caches and workspaces built once per process, not per optimizer
    opt, held = stepped()
    report = opt.memory_report()["total"]
    n_tensors = sum(torch.is_tensor(v) for st in opt.state.values() for _, v in leaves(st))
    assert report <= held <= report + 512 * n_tensors, (report, held, n_tensors)


@pytest.mark.parametrize("quant", ["none", "cholesky_ef"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_with_grad_scaler_trains(quant, dtype):
    net = net_on(GPU)
    opt = shampoo(net, quant)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    losses = []
    for k in range(30):
        x, y = batch(k % 4, GPU)
        opt.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            loss = nn.functional.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4])
    assert all(p.dtype == torch.float32 for p in net.parameters()) and all_finite(opt)


@pytest.mark.parametrize("quant", VARIANTS)
def test_compiled_step_with_inductor_trains_like_eager(quant):
    """The conformance test of the compiled step, on the GPU, compiled to Triton kernels."""
    with torch.device(GPU):
        compiled_step_trains_like_eager(quant, "adamw", backend="inductor")
