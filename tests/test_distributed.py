"""qshampoo under torch.distributed: 2 gloo processes on loopback (CPU).

One spawned job (DDP for every variant, checkpoints, FSDP2) saves what each rank saw; the
tests compare that with single-process runs done here. One job keeps the file fast.
"""

from __future__ import annotations

import functools
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import qshampoo
from qshampoo.checkpoint import with_checksums
from qshampoo.distributed import assign_blocks, consolidated_state_dict, drop_preconditioners
from qshampoo.factors import FACTORS
from qshampoo.memory import state_bytes

pytestmark = pytest.mark.skipif(
    torch.get_default_device().type != "cpu",
    reason="gloo processes on the CPU: QSHAMPOO_TEST_DEVICE does not apply",
)

WORLD = 2
VARIANTS = sorted(FACTORS)
STEPS, SAVE_AT = 6, 3
BATCH = 64
# Small blocks so each weight is cut into several; 32x32 factors get quantized.
KW = dict(
    lr=1e-2,
    stat_interval=1,
    root_interval=2,
    max_preconditioner_dim=32,
    min_quant_numel=1024,
    weight_decay=0.01,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """This process computes with one thread, as the ranks do: BLAS kernels may round
    differently with more threads (seen on an AMD EPYC), and a 4-bit code flipped by that
    grows past the tolerances of the comparisons below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- shared helpers (also run inside the spawned processes) -----------------------------------
@functools.lru_cache(maxsize=1)
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )


def batch(x, y, step: int, rank: int | None = None):
    """Batch ``step`` of the full data; ``rank`` takes its half of it."""
    g = torch.Generator(torch.get_default_device()).manual_seed(1000 + step)
    idx = torch.randint(0, len(y), (BATCH,), generator=g)
    if rank is not None:
        idx = idx.chunk(WORLD)[rank]
    return x[idx], y[idx]


def train(model, opt, x, y, steps, rank=None):
    """``rank``: this rank's half of each batch (under DDP); None: the full batch, whose
    gradient is accumulated over the same two halves, so it is summed as DDP sums it."""
    for k in steps:
        xb, yb = batch(x, y, k, rank)
        opt.zero_grad()
        if rank is not None:
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
        else:
            for xh, yh in zip(xb.chunk(WORLD), yb.chunk(WORLD), strict=True):
                (torch.nn.functional.cross_entropy(model(xh), yh) / WORLD).backward()
        opt.step()


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _init(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, timeout: float = 120.0) -> None:
    """Run ``fn(rank, port, *args)`` in WORLD processes; fail (not hang) past ``timeout``."""
    ctx = mp.spawn(fn, args=(_free_port(), *args), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            raise TimeoutError(f"{fn.__name__} did not finish in {timeout} s")


def _job(rank: int, port: int, out: str) -> None:
    _init(rank, port)
    x, y = torch.load(f"{out}/digits.pt")
    _ddp_part(rank, out, x, y)
    _fsdp_part(rank, out, x, y)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """(output folder, what each rank saved)."""
    out = str(tmp_path_factory.mktemp("dist"))
    torch.save(digits(), f"{out}/digits.pt")  # loaded by the workers (no sklearn import there)
    spawn(_job, out)
    return out, [torch.load(f"{out}/rank{r}.pt", weights_only=False) for r in range(WORLD)]


# -- DDP, every variant, and checkpoints --------------------------------------------------------
def _ddp_part(rank: int, out: str, x, y) -> None:
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    result = {}
    for quant in VARIANTS:
        runs = {}
        for mode in (None, False):  # split (auto) and every-rank-computes-everything
            model = torch.nn.parallel.DistributedDataParallel(make_model())
            opt = qshampoo.Shampoo(model.parameters(), quant=quant, distributed=mode, **KW)
            train(model, opt, x, y, range(STEPS), rank)
            runs[mode] = (flat_params(model), opt.memory_report())
        result[quant] = {"split": runs[None], "replicated": runs[False]}

    # Checkpoints: save after SAVE_AT steps, go on; reload into fresh objects, go on again.
    quant = "cholesky_ef" if "cholesky_ef" in FACTORS else "none"
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    opt = qshampoo.Shampoo(model.parameters(), quant=quant, **KW)
    train(model, opt, x, y, range(SAVE_AT), rank)
    dcp_dir = os.path.join(out, "dcp")
    dist.checkpoint.save(
        {"model": model.module.state_dict(), "optim": get_optimizer_state_dict(model, opt)},
        checkpoint_id=dcp_dir,
    )
    full = consolidated_state_dict(opt)
    if rank == 0:
        torch.save({"model": model.module.state_dict(), "optim": full}, f"{out}/full.pt")
    per_rank = opt.state_dict()
    others = [None] * WORLD  # each rank's state dict, copied (pickled) before it moves on
    dist.all_gather_object(others, per_rank)
    train(model, opt, x, y, range(SAVE_AT, STEPS), rank)
    continued = flat_params(model)
    result["refused"] = _load_other_ranks(opt, others[1 - rank])

    model2 = torch.nn.parallel.DistributedDataParallel(make_model(seed=1))
    opt2 = qshampoo.Shampoo(model2.parameters(), quant=quant, **KW)
    sd = {"model": model2.module.state_dict(), "optim": get_optimizer_state_dict(model2, opt2)}
    dist.checkpoint.load(sd, checkpoint_id=dcp_dir)
    model2.module.load_state_dict(sd["model"])
    set_optimizer_state_dict(model2, opt2, optim_state_dict=sd["optim"])
    train(model2, opt2, x, y, range(SAVE_AT, STEPS), rank)

    # The consolidated (single-process) state dict loads into 2 ranks; each keeps its blocks.
    dist.barrier()  # full.pt is written
    ckpt = torch.load(f"{out}/full.pt", weights_only=True)
    model3 = torch.nn.parallel.DistributedDataParallel(make_model(seed=1))
    model3.module.load_state_dict(ckpt["model"])
    opt3 = qshampoo.Shampoo(model3.parameters(), quant=quant, **KW)
    opt3.load_state_dict(ckpt["optim"])
    loaded_bytes = opt3.memory_report()["preconditioners"]
    train(model3, opt3, x, y, range(SAVE_AT, STEPS), rank)
    result["ckpt"] = {
        "quant": quant,
        "continued": continued,
        "dcp_resumed": flat_params(model2),
        "full_resumed": flat_params(model3),
        "bytes": (opt.memory_report()["preconditioners"], loaded_bytes),
        "held": {i: list(st["precond"]) for i, st in per_rank["state"].items() if "precond" in st},
    }
    result["add_group"] = _add_group_part()
    torch.save(result, f"{out}/rank{rank}.pt")


def _load_other_ranks(opt, other: dict) -> tuple[str, bool]:
    """Load the other rank's state dict (its blocks, not this rank's): the refusal's message,
    and whether the optimizer is unchanged after it."""
    from tests.robust_utils import same, snapshot

    before = snapshot(opt)
    try:
        opt.load_state_dict(other)
    except ValueError as e:
        return str(e), same(snapshot(opt), before)
    return "", same(snapshot(opt), before)


def _add_group_part():
    """A param group added after some steps: its blocks are assigned on top of the others."""
    finals = []
    for mode in (None, False):
        g = torch.Generator(torch.get_default_device()).manual_seed(5)
        a = torch.randn(40, 24, generator=g, requires_grad=True)
        b = torch.randn(30, 20, generator=g, requires_grad=True)
        opt = qshampoo.Shampoo(
            [a], lr=0.01, distributed=mode, max_preconditioner_dim=16, root_interval=1
        )
        for k in range(4):
            if k == 2:
                opt.add_param_group({"params": [b], "stat_interval": 1})
            for p in (a, b):
                p.grad = torch.randn(p.shape, generator=g)  # the same on both ranks
            opt.step()
        finals.append(torch.cat([a.detach().flatten(), b.detach().flatten()]))
    return finals


@functools.lru_cache
def single_run(quant: str, steps=range(STEPS)):
    x, y = digits()
    model = make_model()
    opt = qshampoo.Shampoo(model.parameters(), quant=quant, **KW)
    train(model, opt, x, y, steps)
    return flat_params(model), opt.memory_report()


@pytest.mark.parametrize("quant", VARIANTS)
def test_ddp_split_equals_single_process_full_batch(ranks, quant):
    _, ranks = ranks
    expected, _ = single_run(quant)
    for r in ranks:
        split, _ = r[quant]["split"]
        replicated, _ = r[quant]["replicated"]
        # The split exchange reproduces every-rank-computes-everything bit for bit ...
        torch.testing.assert_close(split, replicated, **EXACT)
        # ... and equals one process stepping on the full batch.
        torch.testing.assert_close(split, expected, **TOL)
    torch.testing.assert_close(ranks[0][quant]["split"][0], ranks[1][quant]["split"][0])


@pytest.mark.parametrize("quant", VARIANTS)
def test_ddp_preconditioner_memory_is_split(ranks, quant):
    _, ranks = ranks
    _, single = single_run(quant, steps=range(1))
    per_rank = [r[quant]["split"][1] for r in ranks]
    pre = [m["preconditioners"] for m in per_rank]
    assert sum(pre) == single["preconditioners"]  # every block once, on exactly one rank
    assert max(pre) <= 0.6 * single["preconditioners"]  # and the halves are balanced
    for m in per_rank:
        assert m["base_state"] == single["base_state"]  # base state stays replicated
    for r in ranks:  # distributed=False keeps everything on every rank
        assert r[quant]["replicated"][1]["preconditioners"] == single["preconditioners"]


def test_dcp_round_trip_continues_identically(ranks):
    _, ranks = ranks
    for r in ranks:
        torch.testing.assert_close(r["ckpt"]["dcp_resumed"], r["ckpt"]["continued"], **EXACT)


def test_consolidated_state_dict_loads_into_two_ranks(ranks):
    _, ranks = ranks
    for r in ranks:
        torch.testing.assert_close(r["ckpt"]["full_resumed"], r["ckpt"]["continued"], **EXACT)
        before, loaded = r["ckpt"]["bytes"]
        assert loaded == before  # blocks owned by the other rank were not kept


def test_other_ranks_state_dict_is_refused_and_changes_nothing(ranks):
    _, ranks = ranks
    for r in ranks:
        message, unchanged = r["refused"]
        assert "lacks preconditioner block" in message
        assert unchanged


def test_add_param_group_mid_run(ranks):
    _, ranks = ranks
    for r in ranks:
        split, replicated = r["add_group"]
        torch.testing.assert_close(split, replicated, **EXACT)


def test_per_rank_state_dict_holds_only_its_blocks(ranks):
    _, ranks = ranks
    model = make_model()
    opt = qshampoo.Shampoo(model.parameters(), **KW)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    full = {i: len(st["precond"]) for i, st in opt.state_dict()["state"].items() if "precond" in st}
    held = [r["ckpt"]["held"] for r in ranks]
    assert held[0].keys() == held[1].keys() == full.keys()
    for i, n in full.items():
        assert sorted(held[0][i] + held[1][i], key=int) == [str(b) for b in range(n)]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_checkpoint_loads_into_a_single_process(ranks):
    """World size 2 -> 1 through torch.distributed.checkpoint (no process group here)."""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    out, ranks = ranks
    quant = ranks[0]["ckpt"]["quant"]
    x, y = digits()
    model = make_model(seed=1)
    opt = qshampoo.Shampoo(model.parameters(), quant=quant, **KW)
    sd = {"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opt)}
    dist.checkpoint.load(sd, checkpoint_id=os.path.join(out, "dcp"), no_dist=True)
    model.load_state_dict(sd["model"])
    set_optimizer_state_dict(model, opt, optim_state_dict=sd["optim"])
    assert all(b for st in opt.state.values() for b in st.get("precond", []))
    train(model, opt, x, y, range(SAVE_AT, STEPS))
    torch.testing.assert_close(flat_params(model), ranks[0]["ckpt"]["continued"], **TOL)


def test_consolidated_state_dict_loads_into_a_single_process(ranks):
    out, ranks = ranks
    quant = ranks[0]["ckpt"]["quant"]
    x, y = digits()
    ckpt = torch.load(f"{out}/full.pt", weights_only=True)
    model = make_model(seed=1)
    model.load_state_dict(ckpt["model"])
    opt = qshampoo.Shampoo(model.parameters(), quant=quant, **KW)
    opt.load_state_dict(ckpt["optim"])
    train(model, opt, x, y, range(SAVE_AT, STEPS))
    torch.testing.assert_close(flat_params(model), ranks[0]["ckpt"]["continued"], **TOL)


TOL = dict(rtol=1e-4, atol=1e-5)
EXACT = dict(rtol=0, atol=0)


# -- FSDP2 ----------------------------------------------------------------------------------------
FSDP_STEPS = 30
FSDP_QUANT = "cholesky_ef" if "cholesky_ef" in FACTORS else "none"
FSDP_KW = dict(lr=1e-2, stat_interval=1, root_interval=5, quant=FSDP_QUANT)


def _fsdp_part(rank: int, out: str, x, y) -> None:
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    def sharded(seed, mesh=None):
        model = make_model(seed)
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    model = sharded(0)
    opt = qshampoo.Shampoo(model.parameters(), **FSDP_KW)
    with torch.no_grad():
        loss0 = torch.nn.functional.cross_entropy(model(x), y).item()
    train(model, opt, x, y, range(FSDP_STEPS), rank)
    with torch.no_grad():
        out_all = model(x)
        loss = torch.nn.functional.cross_entropy(out_all, y).item()
        acc = (out_all.argmax(1) == y).float().mean().item()
    report = opt.memory_report()

    # DCP round trip at the same world size.
    dcp_dir = os.path.join(out, "fsdp_dcp")
    dist.checkpoint.save(
        {"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opt)},
        checkpoint_id=dcp_dir,
    )
    train(model, opt, x, y, range(FSDP_STEPS, FSDP_STEPS + 3), rank)
    continued = torch.cat([p.to_local().detach().reshape(-1) for p in model.parameters()])
    model2 = sharded(1)
    opt2 = qshampoo.Shampoo(model2.parameters(), **FSDP_KW)
    sd = {"model": model2.state_dict(), "optim": get_optimizer_state_dict(model2, opt2)}
    dist.checkpoint.load(sd, checkpoint_id=dcp_dir)
    model2.load_state_dict(sd["model"])
    set_optimizer_state_dict(model2, opt2, optim_state_dict=sd["optim"])
    w2 = next(iter(model2.parameters()))
    saved_moment = opt2.state[w2]["base"]["exp_avg"].full_tensor()  # gathered from both ranks
    train(model2, opt2, x, y, range(FSDP_STEPS, FSDP_STEPS + 3), rank)
    resumed = torch.cat([p.to_local().detach().reshape(-1) for p in model2.parameters()])

    # World size 2 -> 1: each rank alone reloads the checkpoint without the preconditioners.
    solo = [dist.new_group([r]) for r in range(WORLD)][rank]
    model3 = sharded(1, DeviceMesh.from_group(solo, "cpu"))
    opt3 = qshampoo.Shampoo(model3.parameters(), **FSDP_KW)
    sd = {
        "model": model3.state_dict(),
        "optim": drop_preconditioners(get_optimizer_state_dict(model3, opt3)),
    }
    dist.checkpoint.load(sd, checkpoint_id=dcp_dir, process_group=solo)
    model3.load_state_dict(sd["model"])
    set_optimizer_state_dict(model3, opt3, optim_state_dict=sd["optim"])
    w3 = next(iter(model3.parameters()))
    st3 = opt3.state[w3]  # on the 1-rank mesh the local tensor is the whole moment
    moments = (saved_moment, st3["base"]["exp_avg"].to_local().clone(), st3["step"])
    train(model3, opt3, x, y, range(FSDP_STEPS, FSDP_STEPS + 3))
    orders = [(b["L"]["order"], b["R"]["order"]) for b in opt3.state[w3]["precond"]["shard0"]]
    result = torch.load(f"{out}/rank{rank}.pt", weights_only=False)
    result["fsdp"] = {
        "loss0": loss0,
        "loss": loss,
        "acc": acc,
        "report": report,
        "continued": continued,
        "resumed": resumed,
        "world1": {"moments": moments, "orders": orders},
    }
    torch.save(result, f"{out}/rank{rank}.pt")


def test_fsdp2_trains_digits(ranks):
    _, ranks = ranks
    for r in (r["fsdp"] for r in ranks):
        assert r["loss"] < 0.3 * r["loss0"]
        assert r["acc"] > 0.9


def test_fsdp2_memory_report_counts_the_local_shard(ranks):
    _, ranks = ranks
    shapes = [tuple(p.shape) for p in make_model().parameters()]
    for rank, r in enumerate(ranks):
        # fully_shard cuts dim 0 like torch.chunk; each rank is preconditioned as its shard
        local = [(torch.empty(s[0]).chunk(WORLD)[rank].numel(), *s[1:]) for s in shapes]
        expected = state_bytes(local, quant=FSDP_QUANT)
        for key in ("preconditioners", "base_state", "total"):
            assert r["fsdp"]["report"][key] == expected[key]


def test_fsdp2_checkpoint_loads_at_another_world_size_without_preconditioners(ranks):
    _, ranks = ranks
    for r in (r["fsdp"]["world1"] for r in ranks):
        saved, loaded, step = r["moments"]
        assert loaded.shape == (64, 64)
        torch.testing.assert_close(loaded, saved, **EXACT)  # the base state was resharded
        assert step == FSDP_STEPS
        assert r["orders"] == [(64, 64)]  # fresh preconditioners for the whole weight


def test_fsdp2_dcp_round_trip_continues_identically(ranks):
    _, ranks = ranks
    for r in (r["fsdp"] for r in ranks):
        torch.testing.assert_close(r["resumed"], r["continued"], **EXACT)


# -- no processes needed --------------------------------------------------------------------------
def test_assignment_is_balanced_and_deterministic():
    costs = [(8 * n * n, n**3) for n in (64, 64, 32, 32, 16, 16, 16, 16, 8)]
    owners = assign_blocks(costs, 2)
    assert owners == assign_blocks(costs, 2)
    loads = [sum(c[0] for c, r in zip(costs, owners, strict=True) if r == k) for k in range(2)]
    assert max(loads) <= 0.55 * sum(loads)
    assert assign_blocks(costs, 1) == [0] * len(costs)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"distributed": "yes"}, "distributed"),
        ({"distributed": True}, "distributed"),  # torch.distributed is not initialized here
        ({"process_group": "world"}, "process_group"),
    ],
)
def test_invalid_distributed_keywords_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        qshampoo.Shampoo([torch.zeros(3, 3, requires_grad=True)], **kwargs)


def _stepped_optimizer():
    w = torch.randn(40, 24, requires_grad=True)
    opt = qshampoo.Shampoo([w], max_preconditioner_dim=16, stat_interval=1, root_interval=1)
    w.grad = torch.randn(40, 24)
    opt.step()
    return w, opt


def test_one_ranks_state_dict_is_refused_by_a_single_process():
    w, opt = _stepped_optimizer()
    sd = opt.state_dict()
    blocks = sd["state"][0]["precond"]
    sd["state"][0]["precond"] = {"0": blocks[0], "3": blocks[3]}  # what a rank would save
    sd = with_checksums(sd)  # as that rank's own state_dict() would carry them
    w2 = w.detach().clone().requires_grad_()
    with pytest.raises(ValueError, match="consolidated_state_dict"):
        qshampoo.Shampoo([w2], max_preconditioner_dim=16).load_state_dict(sd)


def test_state_without_preconditioners_restarts_them():
    w, opt = _stepped_optimizer()
    w2 = w.detach().clone().requires_grad_()
    opt2 = qshampoo.Shampoo([w2], max_preconditioner_dim=16, stat_interval=1, root_interval=1)
    opt2.load_state_dict(drop_preconditioners(opt.state_dict()))
    st = opt2.state[w2]
    assert st["step"] == 1 and torch.equal(st["base"]["exp_avg"], opt.state[w]["base"]["exp_avg"])
    assert len(st["precond"]) == 6 and all(
        torch.equal(b["L"]["root"], torch.eye(16)) for b in st["precond"][:1]
    )
