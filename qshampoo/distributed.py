"""Shampoo under ``torch.distributed``: preconditioner work and memory split across ranks.

**Replicated parameters (DDP).** Every rank sees the same, already all-reduced gradient. The
preconditioner blocks of all parameters are assigned to ranks once, by a balanced greedy
cost model computed from shapes alone (so every rank derives the same assignment without
communicating). A rank keeps statistics and roots only for the blocks it owns, updates them,
computes ``L_hat G_b R_hat`` for them, and one ``all_gather_into_tensor`` per param group and
step gives every rank every preconditioned block. Grafting and the base update then run on
every rank, identically. The result equals single-process Shampoo on the same gradient.

**Sharded parameters (FSDP2, DTensor).** Each rank runs Shampoo on its local shard as if the
shard were the parameter (blocking, preconditioning and grafting per shard); the optimizer
step does not communicate. Base-optimizer state is kept as DTensors laid out like the
parameter, so ``torch.distributed.checkpoint`` can reshard it.

See ``docs/distributed.md`` for the numerics, memory and checkpoint behaviour.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .blocking import Blocking
from .checkpoint import with_checksums
from .memory import factor_bytes


# -- sharded (DTensor) parameters -------------------------------------------------------------
def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor, without importing ``torch.distributed.tensor`` (~1 s):
    until something has imported it, nothing can be a DTensor."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def local(t: Tensor) -> Tensor:
    """The local tensor of a DTensor (sharing its storage), or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def like_param(p: Tensor, t: Tensor) -> Tensor:
    """Wrap ``t``, a tensor shaped like ``local(p)``, as a DTensor laid out like ``p``."""
    if not is_dtensor(p):
        return t
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        t, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
    )


def shard_key(p: Tensor) -> str:
    """Name of the shard of ``p`` this rank holds: its mesh coordinate along sharded dims.

    Ranks that hold the same shard (replicas, as in HSDP) get the same name, so a distributed
    checkpoint stores their identical preconditioner state once.
    """
    coord = p.device_mesh.get_coordinate() or []
    parts = [str(c) for c, pl in zip(coord, p.placements, strict=True) if pl.is_shard()]
    return "shard" + "_".join(parts)


def is_shard_state(stored: Any) -> bool:
    """Whether a stored ``state["precond"]`` is per-shard (FSDP2): ``{"shard<k>": blocks}``."""
    return isinstance(stored, dict) and any(k.startswith("shard") for k in stored)


# -- the cost model and the assignment of blocks to ranks --------------------------------------
def block_costs(blocking: Blocking, group: dict) -> list[tuple[int, int]]:
    """``(bytes, root flops)`` of each block: both factors' stored state (``qshampoo.memory``'s
    formulas, which ``memory_report()`` equals) and ``n^3 + m^3``."""
    out = []
    for rows, cols in blocking.slices:
        n, m = rows.stop - rows.start, cols.stop - cols.start
        nbytes = sum(
            sum(
                factor_bytes(
                    group["quant"],
                    k,
                    bits=group["bits"],
                    block_size=group["block_size"],
                    min_quant_numel=group["min_quant_numel"],
                ).values()
            )
            for k in (n, m)
        )
        out.append((nbytes, n**3 + m**3))
    return out


def assign_blocks(
    costs: Sequence[tuple[int, int]], world: int, loads: list[list[int]] | None = None
) -> list[int]:
    """Owner rank of each block: greedy longest-processing-time on a two-part cost.

    A block's cost is its share of all bytes plus its share of all root flops (each part
    normalised by the total over ``loads`` and ``costs``, so neither dominates by units).
    Blocks go in decreasing cost to the rank with the least load so far (ties: lower rank,
    then earlier block), so the result depends only on the costs. ``loads`` (per rank
    ``[bytes, flops]``) carries earlier assignments and is updated in place.
    """
    if loads is None:
        loads = [[0, 0] for _ in range(world)]
    total_b = max(1, sum(c[0] for c in costs) + sum(ld[0] for ld in loads))
    total_f = max(1, sum(c[1] for c in costs) + sum(ld[1] for ld in loads))

    def norm(b: float, f: float) -> float:
        return b / total_b + f / total_f

    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-norm(*costs[i]), i)):
        r = min(range(world), key=lambda r: (norm(*loads[r]), r))
        owners[i] = r
        loads[r][0] += costs[i][0]
        loads[r][1] += costs[i][1]
    return owners


class BlockSharding:
    """Which rank owns which preconditioner block, and the exchange of preconditioned blocks.

    Only replicated (non-DTensor) parameters are split; every rank of ``group`` must see the
    same gradient for them (as under DDP).
    """

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self._owners: dict[Tensor, tuple[int, ...]] = {}
        self.loads = [[0, 0] for _ in range(self.world)]

    def update_plan(self, param_groups: list[dict]) -> None:
        """Assign the blocks of parameters not assigned yet (all of them, the first time).

        Parameters added later (``add_param_group``) are assigned on top of the existing
        loads, so blocks that already have state never move.
        """
        new, costs = [], []
        for group in param_groups:
            for p in group["params"]:
                if p in self._owners or is_dtensor(p) or not group["precondition"]:
                    continue
                blocking = Blocking.of(tuple(p.shape), group["max_preconditioner_dim"])
                if blocking is None:
                    continue
                c = block_costs(blocking, group)
                new.append((p, len(c)))
                costs.extend(c)
        if not new:
            return
        owners = assign_blocks(costs, self.world, self.loads)
        start = 0
        for p, k in new:
            self._owners[p] = tuple(owners[start : start + k])
            start += k

    def owners(self, p: Tensor) -> tuple[int, ...] | None:
        """Owner rank of each block of ``p``; None when ``p``'s blocks are not split."""
        return self._owners.get(p)

    def held(self, p: Tensor) -> set[int] | None:
        """Indices of ``p``'s blocks this rank owns; None when it holds all of them."""
        owners = self._owners.get(p)
        if owners is None:
            return None
        return {i for i, r in enumerate(owners) if r == self.rank}

    @torch.no_grad()
    def precondition(
        self, items: list[tuple[Tensor, Tensor, Any]], compiled: bool = False
    ) -> list[Tensor]:
        """Preconditioned gradients of split parameters, identical on every rank.

        ``items``: ``(param, grad, ParamPreconditioner)`` in the same order on every rank.
        Each rank writes its own blocks' ``L_hat G_b R_hat`` into one flat fp32 buffer,
        padded to the longest rank's; ``all_gather_into_tensor`` collects all buffers, and
        each rank unpacks them into full tensors of the gradients' shapes.
        """
        # What each rank sends: its blocks, in (item, block) order.
        layout: list[list[tuple[int, int, int]]] = [[] for _ in range(self.world)]
        for j, (p, _, pre) in enumerate(items):
            slices = pre.blocking.slices
            for b, r in enumerate(self._owners[p]):
                rows, cols = slices[b]
                layout[r].append((j, b, (rows.stop - rows.start) * (cols.stop - cols.start)))
        sizes = [sum(n for _, _, n in lay) for lay in layout]
        width = max(sizes)
        device = items[0][1].device
        send = torch.zeros(width, dtype=torch.float32, device=device)
        offset = 0
        for _, g, pre in items:
            for block in pre.precondition_held(g, compiled):
                send[offset : offset + block.numel()].view_as(block).copy_(block)
                offset += block.numel()
        assert offset == sizes[self.rank], "owned blocks do not match the plan"
        recv = torch.empty(self.world * width, dtype=torch.float32, device=device)
        dist.all_gather_into_tensor(recv, send, group=self.group)

        outs = [torch.empty(pre.blocking.shape2d, device=device) for _, _, pre in items]
        for r in range(self.world):
            offset = r * width
            for j, b, n in layout[r]:
                rows, cols = items[j][2].blocking.slices[b]
                outs[j][rows, cols] = recv[offset : offset + n].view(
                    rows.stop - rows.start, cols.stop - cols.start
                )
                offset += n
        return [o.view(g.shape) for o, (_, g, _) in zip(outs, items, strict=True)]


def make_sharding(distributed: bool | None, process_group: Any) -> BlockSharding | None:
    """Resolve the ``distributed`` / ``process_group`` keywords of ``Shampoo``."""
    if distributed not in (None, True, False):
        raise ValueError(
            f"invalid distributed={distributed!r}: must be None (on when torch.distributed is "
            "initialized with more than one rank), True or False"
        )
    if process_group is not None and (
        not dist.is_available() or not isinstance(process_group, dist.ProcessGroup)
    ):
        raise ValueError(
            f"invalid process_group={process_group!r}: must be a torch.distributed "
            "ProcessGroup (or None for the default group)"
        )
    if distributed is False:
        if process_group is not None:
            raise ValueError(
                "invalid process_group: it is only used with distributed=None or True, "
                "not distributed=False"
            )
        return None
    if not (dist.is_available() and dist.is_initialized()):
        if distributed:
            raise ValueError(
                "invalid distributed=True: torch.distributed is not initialized; call "
                "torch.distributed.init_process_group() before creating the optimizer"
            )
        return None
    if distributed is None and dist.get_world_size(process_group) == 1:
        return None
    return BlockSharding(process_group)


# -- checkpoints ----------------------------------------------------------------------------------
def consolidated_state_dict(optimizer: Any, dst: int = 0) -> dict | None:
    """A single-process ``state_dict()`` with every rank's blocks, on rank ``dst``.

    A collective: every rank of the optimizer's process group must call it. Returns the full
    state dict (tensors on CPU) on ``dst`` and None elsewhere. The result loads into a
    single-process optimizer or into a distributed one of any world size (each rank then
    keeps only the blocks it owns). ``dst`` is a rank of the optimizer's process group.
    """
    if any(is_dtensor(p) for g in optimizer.param_groups for p in g["params"]):
        raise ValueError(
            "consolidated_state_dict() gathers the blocks of replicated (DDP) parameters; "
            "FSDP2 (DTensor) state is per shard: save it with torch.distributed.checkpoint"
        )
    sd = optimizer.state_dict()
    sharding = getattr(optimizer, "_sharding", None)
    if sharding is None or sharding.world == 1:
        return sd
    # each rank's blocks of split parameters: {param id: {"<block index>": block}}
    mine = {
        i: _to_cpu(st["precond"])
        for i, st in sd["state"].items()
        if isinstance(st.get("precond"), dict) and not is_shard_state(st["precond"])
    }
    gathered: list | None = [None] * sharding.world if sharding.rank == dst else None
    group_dst = dist.get_global_rank(sharding.group, dst) if sharding.group is not None else dst
    dist.gather_object(mine, gathered, dst=group_dst, group=sharding.group)
    if gathered is None:
        return None
    state = {i: dict(st) for i, st in sd["state"].items()}
    for i in mine:
        merged = {k: v for part in gathered for k, v in part[i].items()}
        state[i]["precond"] = [merged[str(b)] for b in range(len(merged))]
    return with_checksums({**sd, "state": _to_cpu(state)})


def _to_cpu(obj):
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def drop_preconditioners(optim_state_dict: dict) -> dict:
    """A copy of an optimizer state dict without the preconditioner state (in place of each
    parameter's ``"precond"`` entry: nothing).

    Loading the result (for instance as the template of ``torch.distributed.checkpoint.load``,
    which then reads only what remains) keeps the step counts and the base optimizer's state
    and gives every parameter fresh preconditioners, as at the start of training. This is the
    way to change the world size under FSDP2, where the preconditioners belong to the old
    shards (see ``docs/distributed.md``).
    """
    state = {
        k: {kk: vv for kk, vv in st.items() if kk != "precond"}
        for k, st in optim_state_dict["state"].items()
    }
    out = {**optim_state_dict, "state": state}
    return with_checksums(out) if "checksums" in out else out
