"""The step's temporaries stay within ``memory_report()["workspace"]``, which
``max_workspace_bytes`` bounds, for every variant at a step where everything is due.

Temporaries are counted with ``qshampoo.peak.TensorPeak``: every tensor created inside
``step()``, net of the state tensors it replaces (deterministic, on any device). What it
cannot see, LAPACK's own workspace, the formulas add on top (``Factor.workspace_bytes``).
"""

from __future__ import annotations

import pytest
import torch

import qshampoo
from qshampoo.factors import FACTORS
from qshampoo.peak import TensorPeak, process_memory

VARIANTS = sorted(FACTORS)


def state_tensors(opt) -> list[torch.Tensor]:
    out = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(list(opt.state.values()))
    return out


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(300, 200), (200, 300), (130, 70), (70, 130), (130, 70), (64, 3, 3, 3), (200,)]
    shapes += [(2000, 3), (96, 96)]  # a long, thin one (one-sided) and a small square one
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


def due_step_peak(opt, params, seed=1) -> int:
    """The temporaries of one step where every statistic and root is due."""
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
    with TensorPeak(existing=state_tensors(opt)) as tp:
        opt.step()
    return tp.peak


CASES = [
    *[dict(quant=q) for q in VARIANTS],
    dict(quant="cholesky_ef", bits="auto", memory_budget=0.2),
    dict(quant="cholesky_ef", base="sgd", lr=0.01, nesterov=True),
    dict(quant="cholesky_ef", max_preconditioner_dim=100, maximize=True),
    dict(quant="cholesky_ef", bits=8, block_size=32),
    dict(quant="cholesky_ef", bits=3),
    dict(quant="naive", bits=3),
    dict(quant="none", dtype=torch.bfloat16),
    dict(quant="cholesky_ef", dtype=torch.bfloat16),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_a_due_step_stays_within_the_reported_workspace(kw):
    kw = dict(kw)
    params = make_params(kw.pop("dtype", torch.float32))
    opt = qshampoo.Shampoo(
        [{"params": params[:4]}, {"params": params[4:], "weight_decay": 0.01}],
        lr=kw.pop("lr", 1e-3),
        stat_interval=1,
        root_interval=1,
        min_quant_numel=1024,
        **kw,
    )
    for seed in (1, 2):  # the state exists, and is away from its initial value
        due_step_peak(opt, params, seed)
    peak = due_step_peak(opt, params, 3)
    workspace = opt.memory_report()["workspace"]
    assert 0 < peak <= workspace
    # the formulas bound what is allocated, with a margin, not by orders of magnitude
    assert workspace < 4 * peak + (1 << 20)


@pytest.mark.parametrize("quant", ["none", "cholesky_ef"])
def test_max_workspace_bytes_bounds_the_step(quant):
    """Twenty same-shaped layers: one batch each stage by default, batches of a few under a
    small bound; the step's temporaries follow the bound (one block alone may exceed it)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(128, 128, generator=g).requires_grad_() for _ in range(20)]
    peaks, reported = {}, {}
    for bound in (64 << 20, 1 << 20):
        opt = qshampoo.Shampoo(
            params, quant=quant, stat_interval=1, root_interval=1, max_workspace_bytes=bound
        )
        for seed in (1, 2):
            due_step_peak(opt, params, seed)
        peaks[bound] = due_step_peak(opt, params, 3)
        reported[bound] = opt.memory_report()["workspace"]
        assert peaks[bound] <= reported[bound]
    assert reported[1 << 20] <= 1 << 20
    assert peaks[1 << 20] < peaks[64 << 20] / 4


def test_one_block_larger_than_the_bound_is_done_alone_and_reported():
    p = torch.randn(400, 400, requires_grad=True)
    opt = qshampoo.Shampoo(
        [p], quant="cholesky_ef", stat_interval=1, root_interval=1, max_workspace_bytes=1024
    )
    due_step_peak(opt, [p], 1)
    peak = due_step_peak(opt, [p], 2)
    assert 1024 < peak <= opt.memory_report()["workspace"]


def test_tensor_peak_counts_what_is_alive_at_once():
    keep = torch.zeros(1000)
    with TensorPeak(existing=[keep]) as tp:
        a = torch.ones(1000)  # 4000 bytes
        b = a + 1  # 8000 alive
        del a
        c = b * 2  # 8000 alive
        b.add_(1)  # in place: nothing new
        view = c.view(10, 100)  # a view: nothing new
        del keep  # an existing tensor freed inside: -4000
        d = torch.ones(1000)  # 8000 alive
    assert tp.peak == 8000 and tp.live == 8000
    del b, c, view, d


@pytest.mark.skipif(process_memory()["anon"] is None, reason="needs Linux /proc")
def test_process_memory_splits_the_resident_memory():
    before = process_memory()
    assert before["anon"] + before["file"] <= before["rss"]
    # 64 MiB, written: resident and private; above glibc's largest mmap threshold (32 MiB),
    # so new pages, not free heap the process already holds
    x = torch.ones(16 << 20)
    after = process_memory()
    assert after["anon"] - before["anon"] >= x.nbytes * 0.9
    if after["heap_in_use"] is not None:  # glibc
        assert after["heap_in_use"] - before["heap_in_use"] >= x.nbytes
    del x


def test_workspace_validation():
    p = torch.randn(4, 4, requires_grad=True)
    for bad in (0, -1, 1.5, True, "64MiB"):
        with pytest.raises(ValueError, match="max_workspace_bytes"):
            qshampoo.Shampoo([p], max_workspace_bytes=bad)


@pytest.mark.parametrize(
    "kw",
    [
        dict(base="adamw", weight_decay=0.1),
        dict(base="sgd", momentum=0.9, nesterov=True, weight_decay=0.1),
        dict(base="sgd", momentum=0.0, weight_decay=0.1),
    ],
    ids=["adamw", "sgd-nesterov", "sgd-plain"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_base_update_in_row_chunks_is_the_whole_update(kw, dtype):
    """Under a small bound the base update runs a few rows at a time: the same parameters as
    in one piece (elementwise arithmetic), with its temporaries a chunk's size."""
    shapes = [(96, 40), (300,), (7, 5, 3)]
    runs = []
    for bound in (64 << 20, 1024):
        params = [
            torch.randn(s, generator=torch.Generator().manual_seed(i)).to(dtype)
            for i, s in enumerate(shapes)
        ]
        params = [p.requires_grad_() for p in params]
        opt = qshampoo.Shampoo(
            params, lr=0.1, stat_interval=1, root_interval=2, max_workspace_bytes=bound, **kw
        )
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = torch.randn(
                    p.shape, generator=torch.Generator().manual_seed(10 * step + i)
                ).to(dtype)
            opt.step()
        runs.append([p.detach().clone() for p in params])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("quant", ["cholesky_ef", "naive"])
def test_an_idle_step_decodes_roots_in_strips_within_its_round(monkeypatch, quant):
    """At a step where nothing is due, each large root is decoded a strip of rows at a time:
    the step's temporaries stay within its preconditioning round's reported bytes, and both
    are smaller than with the roots decoded whole."""
    from qshampoo.quant import blockwise

    g = torch.Generator().manual_seed(0)
    params = [torch.randn(600, 40, generator=g).requires_grad_()]
    peaks, rounds = {}, {}
    for strip in (1 << 40, 64 << 10):  # whole; one tile row (64 x 600 fp32: 150 KiB)
        monkeypatch.setattr(blockwise, "STRIP_BYTES", strip)
        opt = qshampoo.Shampoo(params, quant=quant, stat_interval=10, root_interval=50)
        due_step_peak(opt, params, 1)  # the first step: everything due
        peaks[strip] = due_step_peak(opt, params, 2)  # nothing due
        group = opt.param_groups[0]
        rounds[strip] = max(n for _, n in opt.store.distributor.plan(params, group, opt.store))
        assert peaks[strip] <= rounds[strip] <= opt.memory_report()["workspace"]
    assert peaks[64 << 10] < peaks[1 << 40] / 2
    assert rounds[64 << 10] < rounds[1 << 40]
