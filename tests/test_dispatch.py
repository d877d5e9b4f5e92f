"""Dispatched operators and host synchronisations of a step (``qshampoo.dispatch``): the GPU
proxy a CPU counts exactly. The statistics and root updates are batched, so their operator
count does not grow with the number of same-shaped factors. As an accelerator runs it
(``qshampoo.optimizer._reads_are_free`` switched off) a plain step and a statistics step read
nothing back from the device; on the CPU, where a read is free, the factor code reads one flag
per batch at a statistics step (whether every Cholesky factorisation succeeded).

In the CPU-path tests ``qshampoo/optimizer.py``'s own checks (the non-finite gradient check)
are left out of the sync counts: they belong to the step's reliability checks, counted on
their own (tests/test_reliability.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qshampoo
import qshampoo.optimizer
from qshampoo.dispatch import DispatchCounter

OPTIMIZER = "qshampoo/optimizer.py"
STATES = {"plain": 3, "stats": 10, "roots": 50}


def count_step(quant: str, layers: int, state: str, width: int = 64, **kwargs) -> DispatchCounter:
    """One ``step()`` of ``layers`` same-shaped linear layers in ``state``, counted after a
    first step built the state and one step of that state the caches (``kwargs``: more
    optimizer keywords)."""
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    net(torch.randn(16, width)).square().mean().backward()
    opt = qshampoo.Shampoo(
        net.parameters(), quant=quant, stat_interval=10, root_interval=50, **kwargs
    )
    opt.step()
    for counted in (False, True):
        for p in net.parameters():
            opt.state[p]["step"] = STATES[state] - 1
        if not counted:
            opt.step()
            continue
        with DispatchCounter() as count:
            opt.step()
    return count


def test_counter_sees_syncs_and_views():
    x = torch.randn(8)
    with DispatchCounter() as c:
        x.sum().item()
        x.tolist()
        x[x > 0]
        (x > 0).nonzero()
        bool(x.sum() > 0)
        x.view(2, 4)
    assert c.syncs == 5
    assert c.by_op["aten.view.default"] == 1 and c.views >= 1
    assert c.kernels == c.ops - c.views
    assert all(" at " in key for key in c.where_syncs)
    assert torch.Tensor.tolist is not None and x.tolist() == x.tolist()  # restored


def test_counter_attributes_syncs_to_files():
    x = torch.randn(4)
    with DispatchCounter() as c:
        x.sum().item()
    assert c.syncs == 1 and c.syncs_outside(OPTIMIZER) == 1


@pytest.mark.parametrize("quant", ["none", "cholesky", "cholesky_ef"])
def test_plain_step_reads_nothing_back(quant):
    c = count_step(quant, 2, "plain")
    assert c.syncs_outside(OPTIMIZER) == 0, c.where_syncs


@pytest.mark.parametrize("quant", ["cholesky", "cholesky_ef"])
def test_statistics_step_syncs_once_per_batch_at_most(quant):
    # on the CPU, one batch (every factor has order 64): the Cholesky check reads one flag
    c = count_step(quant, 4, "stats")
    assert c.syncs_outside(OPTIMIZER) <= 1, c.where_syncs


ACCELERATOR_CASES = [
    *[(quant, {}) for quant in ("none", "naive", "eigen", "cholesky", "cholesky_ef")],
    ("cholesky_ef", {"bits": 3}),
    ("cholesky_ef", {"bits": 8}),
    ("cholesky_ef", {"cholesky_damping": "subtract"}),
    ("cholesky_ef", {"bits": "auto", "memory_budget": 0.5}),
    ("naive", {"bits": "auto", "memory_budget": 0.5}),
]


@pytest.mark.parametrize("state", ["plain", "stats"])
@pytest.mark.parametrize(("quant", "kwargs"), ACCELERATOR_CASES)
def test_an_accelerator_reads_nothing_back_at_plain_and_statistics_steps(
    quant, kwargs, state, monkeypatch
):
    """As an accelerator runs it (the skip and the statistics decided on the device), no host
    synchronisation anywhere in a plain or a statistics step, shell included: not for a
    non-finite gradient, a Cholesky factorisation's outcome (counted on the device) or, under
    ``bits="auto"``, the precision policy's signals (copied to the host asynchronously; the
    counted step is the second statistics step, which plans from the first one's copy)."""
    monkeypatch.setattr(qshampoo.optimizer, "_reads_are_free", lambda device: False)
    c = count_step(quant, 2, state, **kwargs)
    assert c.syncs == 0, c.where_syncs


@pytest.mark.parametrize("quant", ["cholesky", "cholesky_ef"])
def test_statistics_operators_do_not_grow_with_same_shaped_layers(quant):
    """The low-bit part of a statistics update is batched: from 1 to 6 same-shaped layers its
    operator count grows no more than 32-bit Shampoo's (whose growth is one gram per block)."""

    def statistics_ops(q: str, layers: int) -> int:
        return count_step(q, layers, "stats").ops - count_step(q, layers, "plain").ops

    growth = statistics_ops(quant, 6) - statistics_ops(quant, 1)
    growth32 = statistics_ops("none", 6) - statistics_ops("none", 1)
    assert growth <= growth32, (growth, growth32)


@pytest.mark.parametrize("quant", ["cholesky", "cholesky_ef"])
def test_root_operators_do_not_grow_with_same_shaped_layers(quant):
    """The new roots of a batch are quantized in one pass (``store_roots``)."""

    def root_ops(q: str, layers: int) -> int:
        return count_step(q, layers, "roots").ops - count_step(q, layers, "stats").ops

    growth = root_ops(quant, 6) - root_ops(quant, 1)
    growth32 = root_ops("none", 6) - root_ops("none", 1)
    assert growth <= growth32, (growth, growth32)


def test_a_cpu_plain_step_decides_the_skip_on_the_host(monkeypatch):
    """On the CPU a plain step reads its gradients' flags (a read of memory, free) instead of
    deciding a non-finite gradient's skip on the device: no masked direction (``where``), and
    no more operators than before the device-side skip was written (41 for one 256-wide
    layer, 32-bit, at 7207926: benchmarks/RESULTS.md, issue 19); the device-side skip, as an
    accelerator runs it, dispatches more."""
    cpu = count_step("none", 1, "plain", width=256)
    monkeypatch.setattr(qshampoo.optimizer, "_reads_are_free", lambda device: False)
    device = count_step("none", 1, "plain", width=256)
    where = "aten.where.self"  # (grafting selects one: the direction's norm may be 0)
    assert cpu.by_op[where] < device.by_op[where], (cpu.by_op, device.by_op)
    assert cpu.ops <= 41 < device.ops, (cpu.ops, device.ops)
