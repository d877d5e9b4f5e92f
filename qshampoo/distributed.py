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

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .blocking import Blocking
from .checkpoint import with_checksums
from .dtensor import is_dtensor, is_shard_state, like_param, local, shard_key
from .layout import param_blocking
from .memory import factor_bytes
from .store import block_list, held_dict
from .workspace import batches


# -- the cost model and the assignment of blocks to ranks --------------------------------------
def block_costs(blocking: Blocking, group: dict) -> list[tuple[int, int]]:
    """``(bytes, root flops)`` of each block: its factors' stored state (``qshampoo.memory``'s
    formulas, which ``memory_report()`` equals) and the sum of their orders cubed."""
    out = []
    for orders in blocking.orders:
        kept = [k for k in orders if k is not None]
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
            for k in kept
        )
        out.append((nbytes, sum(k**3 for k in kept)))
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


class Distributor:
    """Where the preconditioner work runs, for one optimizer: the single-process placement.

    Every block of a replicated parameter is held and computed here. A DTensor (FSDP2)
    parameter is preconditioned per local shard, as if the shard were the parameter: its
    factors are stored under the shard's name (``shard_key``), and its base-optimizer state is
    kept as DTensors laid out like the parameter. The optimizer's step only calls this
    interface; ``BlockSplit`` splits the blocks across the ranks of a process group instead.
    """

    world = 1
    rank = 0

    def update_plan(self, param_groups: list[dict]) -> None:
        """Bring the placement up to date with the param groups (new parameters)."""

    def held(self, p: Tensor) -> set[int] | None:
        """Indices of ``p``'s blocks this process keeps; None when it keeps all of them."""
        return None

    # -- where a parameter's factors are stored ------------------------------------------------
    def wrap_stored(self, p: Tensor, stored: list | dict) -> list | dict:
        """What ``state[p]["precond"]`` holds for ``p``'s blocks ``stored``."""
        return {shard_key(p): stored} if is_dtensor(p) else stored

    def unwrap_stored(self, p: Tensor, stored: list | dict) -> list | dict:
        return stored[shard_key(p)] if is_dtensor(p) else stored

    def held_blocks(self, i: Any, p: Tensor, stored: list | dict, group: dict) -> list | dict:
        """The loaded blocks of ``p`` (saved as parameter id ``i``) that this process keeps,
        as they are to be stored; refuse missing ones."""
        sharded_state = is_shard_state(stored)
        if is_dtensor(p) or sharded_state:
            if not (is_dtensor(p) and sharded_state and shard_key(p) in stored):
                raise ValueError(
                    f"the state of parameter {i!r} holds preconditioners for "
                    f"{sorted(stored) if sharded_state else 'a plain (not DTensor) parameter'}"
                    f", not for {shard_key(p) if is_dtensor(p) else 'a plain parameter'!r}: "
                    "FSDP2 keeps one preconditioner per local shard, so it loads only into the "
                    "same device mesh and sharding (see docs/distributed.md)"
                )
            return stored
        held = self.held(p)
        blocks = block_list(stored, len(param_blocking(p, group).slices))
        for b, entry in enumerate(blocks):
            if held is not None and b not in held:
                blocks[b] = None  # owned by another rank: do not keep its memory here
            elif not entry:
                raise ValueError(
                    f"the state of parameter {i!r} lacks preconditioner block {b}: it is one "
                    "rank's state_dict() from a distributed run, which holds only that rank's "
                    "blocks. Load per-rank state dicts at the same world size, or save with "
                    "torch.distributed.checkpoint or qshampoo.distributed."
                    "consolidated_state_dict() to load at another world size"
                )
        return blocks if held is None else held_dict(blocks)

    # -- the step ----------------------------------------------------------------------------
    def precondition(
        self, items: list[tuple], group: dict, store: Any, finish, compiled: bool
    ) -> None:
        """Precondition the gradients of ``items`` (``(param, grad, ParamPreconditioner)`` of
        one param group) and call ``finish(j, direction)`` for each item ``j`` as soon as its
        whole direction (fp32, the gradient's shape) is known.

        Items are done in rounds whose directions and batch temporaries fit in the store's
        workspace, so the directions of all parameters are never held at once.
        """
        for rnd in self.rounds([p for p, _, _ in items], group, store):
            jobs, where, directions = [], [], {}
            for j in rnd:
                _, g, pre = items[j]
                if len(pre.blocks) > 1:
                    directions[j] = g.new_empty(pre.blocking.shape2d, dtype=torch.float32)
                for b, job in pre.jobs(g):
                    jobs.append(job)
                    where.append((j, b))

            def sink(k: int, block: Tensor, where=where, directions=directions) -> None:
                j, b = where[k]
                if j in directions:  # written into its place; the batch's output can go
                    directions[j][items[j][2].blocking.slices[b]] = block
                else:  # the parameter's only block: its direction
                    directions[j] = block

            store.precondition(jobs, compiled, sink)
            del jobs
            for j in rnd:
                finish(j, directions.pop(j).view(items[j][1].shape))

    def rounds(self, params: list[Tensor], group: dict, store: Any) -> list[list[int]]:
        """Consecutive positions of ``params`` (of one group) preconditioned together: as many
        parameters as their directions fit in ``store.share`` bytes (one alone if it needs
        more); the batches of their jobs take as much."""
        return batches(
            range(len(params)),
            lambda _: None,
            lambda j: 4 * params[j].numel(),
            store.share,
        )

    def _round_bytes(self, params: list[Tensor], group: dict, store: Any) -> int:
        jobs = [job for p in params for job in store.sized_jobs(p, group)]
        return store.round_bytes(params, group, jobs)

    def plan(self, params: list[Tensor], group: dict, store: Any) -> list[tuple[list[int], int]]:
        """The rounds ``precondition`` forms for ``params``, each with the bytes it takes."""
        return [
            (rnd, self._round_bytes([params[j] for j in rnd], group, store))
            for rnd in self.rounds(params, group, store)
        ]

    def base_update(self, update, p: Tensor, direction: Tensor, state: dict, step, **kw) -> None:
        """Apply the base optimizer's ``update`` to ``p`` along ``direction`` (a DTensor's
        local shard, with its state's local tensors)."""
        if not is_dtensor(p):
            update(p, direction, state, step, **kw)
            return
        view = {key: local(v) for key, v in state.items()}
        update(local(p), direction, view, step, **kw)
        state.update({key: like_param(p, v) for key, v in view.items() if key not in state})


class BlockSplit(Distributor):
    """Blocks of replicated parameters split across the ranks of a process group (DDP).

    Every rank must see the same gradient for them (as under DDP). Blocks are assigned by a
    balanced greedy cost model from shapes alone, so every rank derives the same assignment;
    a rank keeps and computes only its blocks, and one ``all_gather_into_tensor`` per round
    gives every rank every preconditioned block. DTensor parameters stay per shard.
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
                if p in self._owners or is_dtensor(p):
                    continue
                blocking = param_blocking(p, group)
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
        owners = self._owners.get(p)
        if owners is None:
            return None
        return {i for i, r in enumerate(owners) if r == self.rank}

    @torch.no_grad()
    def precondition(
        self, items: list[tuple], group: dict, store: Any, finish, compiled: bool
    ) -> None:
        """As ``Distributor.precondition``; the blocks of split parameters are computed by
        their owners and exchanged, one ``all_gather_into_tensor`` per round (the rounds are
        the same on every rank: they depend on the parameters' shapes, in the same order)."""
        split = [j for j, (p, _, _) in enumerate(items) if self._owners.get(p) is not None]
        mine = [j for j in range(len(items)) if self._owners.get(items[j][0]) is None]
        if mine:
            super().precondition(
                [items[j] for j in mine], group, store, lambda k, d: finish(mine[k], d), compiled
            )
        if not split:
            return
        shared = [items[j] for j in split]
        for rnd in self.rounds([p for p, _, _ in shared], group, store):
            done = self._exchange([shared[j] for j in rnd], store, compiled)
            for j, d in zip(rnd, done, strict=True):
                finish(split[j], d)
                del d

    def rounds(self, params: list[Tensor], group: dict, store: Any) -> list[list[int]]:
        """As ``Distributor.rounds`` for parameters split across ranks, the same on every rank
        (from shapes and the assignment alone): a round's directions, the exchange's send
        buffer and the gathered buffers of every rank (each padded to the rank that owns the
        most of the round) fit in ``store.share`` bytes; the batches of this rank's jobs take
        as much."""
        if not params or self._owners.get(params[0]) is None:
            return super().rounds(params, group, store)
        share = store.share
        found: list[list[int]] = []
        rnd: list[int] = []
        entries, directions = [0] * self.world, 0
        for j, p in enumerate(params):
            mine = [0] * self.world
            for (_, (n, m), _), r in zip(store.sized_jobs(p, group), self._owners[p], strict=True):
                mine[r] += n * m
            e = [a + b for a, b in zip(entries, mine, strict=True)]
            d = directions + 4 * p.numel()
            if rnd and d + 4 * (self.world + 1) * max(e) > share:
                found.append(rnd)
                rnd, e, d = [], mine, 4 * p.numel()
            rnd.append(j)
            entries, directions = e, d
        if rnd:
            found.append(rnd)
        return found

    def _round_bytes(self, params: list[Tensor], group: dict, store: Any) -> int:
        if self._owners.get(params[0]) is None:
            return super()._round_bytes(params, group, store)
        entries, jobs = [0] * self.world, []
        for p in params:
            for job, r in zip(store.sized_jobs(p, group), self._owners[p], strict=True):
                entries[r] += job[1][0] * job[1][1]
                if r == self.rank:
                    jobs.append(job)
        exchange = 4 * (self.world + 1) * max(entries)
        return store.round_bytes(params, group, jobs) + exchange

    def plan(self, params: list[Tensor], group: dict, store: Any) -> list[tuple[list[int], int]]:
        split = [j for j, p in enumerate(params) if self._owners.get(p) is not None]
        mine = [j for j, p in enumerate(params) if self._owners.get(p) is None]
        out = []
        for part in (mine, split):
            for rnd, nbytes in super().plan([params[j] for j in part], group, store):
                out.append(([part[k] for k in rnd], nbytes))
        return out

    def _exchange(self, items: list[tuple], store: Any, compiled: bool) -> list[Tensor]:
        """Each rank writes its own blocks' ``L_hat G_b R_hat`` into one flat fp32 buffer,
        padded to the longest rank's; ``all_gather_into_tensor`` collects all buffers, and
        each rank unpacks them into full tensors of the gradients' shapes."""
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
        jobs = [job for _, g, pre in items for _, job in pre.jobs(g)]
        starts, offset = [], 0
        for _, g, _ in jobs:
            starts.append(offset)
            offset += g.numel()
        assert offset == sizes[self.rank], "owned blocks do not match the plan"

        def sink(k: int, block: Tensor, send=send) -> None:  # into place; the batch can go
            send[starts[k] : starts[k] + block.numel()].view_as(block).copy_(block)

        store.precondition(jobs, compiled, sink)
        del jobs
        recv = torch.empty(self.world * width, dtype=torch.float32, device=device)
        dist.all_gather_into_tensor(recv, send, group=self.group)
        del send
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


def make_distributor(distributed: bool | None, process_group: Any) -> Distributor:
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
        return Distributor()
    if not (dist.is_available() and dist.is_initialized()):
        if distributed:
            raise ValueError(
                "invalid distributed=True: torch.distributed is not initialized; call "
                "torch.distributed.init_process_group() before creating the optimizer"
            )
        return Distributor()
    if distributed is None and dist.get_world_size(process_group) == 1:
        return Distributor()
    return BlockSplit(process_group)


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
    sharding = optimizer.store.distributor
    if not isinstance(sharding, BlockSplit):
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
