"""The preconditioner store: every Kronecker factor of one optimizer, behind one iterator.

The factors' state lives inside the optimizer state (so ``state_dict()`` saves it), as
``state[p]["precond"]``:

- a list over the parameter's blocks of ``{"L": factor state, "R": factor state}`` (a side
  left out by ``max_factor_ratio`` has no entry);
- ``{"<block index>": block}`` for the blocks this process holds, when blocks are split across
  ranks (``qshampoo.distributed``): a ``torch.distributed.checkpoint`` key such as
  ``precond.3.L.stat`` then names the same block whether one process or its owner saved it;
- ``{"shard<coordinate>": blocks}`` for the local shard of an FSDP2 (DTensor) parameter.

:class:`PreconditionerStore` is the one place that creates, views, loads and walks that state
(``entries()``: parameter, group, block, side, factor), and that runs the batched work on it
(statistics, roots, preconditioning) within the step's workspace (``qshampoo.workspace``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import kernels
from .base import chunk_rows
from .blocking import Blocking
from .factors import (
    FACTORS,
    Factor,
    FactorConfig,
    Fp32Factor,
    StepHyper,
    factor_view,
    fold_failures,
    make_factor,
)
from .layout import factor_config, param_blocking
from .precision import AUTO_BITS
from .workspace import batches, largest

if TYPE_CHECKING:
    from .distributed import Distributor

SIDES = ("L", "R")
MiB = 1 << 20


@dataclass(frozen=True)
class FactorEntry:
    """One factor, and where it sits."""

    index: int  # the parameter's position over all param groups
    group: int  # its param group
    param: Tensor
    block: int
    side: str  # "L" (rows) or "R" (columns)
    factor: Factor


#: a block's factors (None: a side left out by ``max_factor_ratio``)
Pair = tuple["Factor | None", "Factor | None"]
#: one block to precondition: ``(left, G_b, right)``, ``G_b`` a 2-D view of the gradient
Job = tuple["Factor | None", Tensor, "Factor | None"]


class ParamPreconditioner:
    """The factors of one parameter's blocks (None for a block another rank holds)."""

    def __init__(self, blocking: Blocking, blocks: list[Pair | None]):
        self.blocking = blocking
        self.blocks = blocks
        self.held = [i for i, b in enumerate(blocks) if b is not None]

    def factors(self) -> list[Factor]:
        return [f for pair in self.blocks if pair is not None for f in pair if f is not None]

    def statistics_jobs(self, grad: Tensor) -> list[tuple[Factor, Tensor]]:
        """``(L, G_b)`` and ``(R, G_b^T)`` for each held block (views of ``grad``): the
        statistics update folds ``G G^T`` of each into its factor."""
        out = []
        for pair, g in zip(self.blocks, self.blocking.blocks(grad), strict=True):
            if pair is not None:
                for f, x in zip(pair, (g, g.T), strict=True):
                    if f is not None:
                        out.append((f, x))
        return out

    def jobs(self, grad: Tensor) -> list[tuple[int, Job]]:
        """``(block index, (left, G_b, right))`` for every held block."""
        g2 = grad.reshape(self.blocking.shape2d)
        slices = self.blocking.slices
        return [(i, (self.blocks[i][0], g2[slices[i]], self.blocks[i][1])) for i in self.held]

    def assemble(self, blocks: dict[int, Tensor], shape: torch.Size) -> Tensor:
        """The preconditioned ``blocks`` (by block index; all of them) as one fp32 tensor of
        ``shape``."""
        if len(blocks) == 1:
            return next(iter(blocks.values())).reshape(shape)
        out = torch.empty(self.blocking.shape2d, dtype=torch.float32, device=blocks[0].device)
        for b, sl in enumerate(self.blocking.slices):
            out[sl] = blocks[b]
        return out.view(shape)


class PreconditionerStore:
    """Every factor of one optimizer (read live from its ``state`` and ``param_groups``).

    ``distributor`` decides which blocks this process holds; ``max_workspace_bytes`` bounds the
    temporaries of each batched stage.
    """

    def __init__(self, optimizer: Any, distributor: Distributor, max_workspace_bytes: int):
        self._opt = optimizer
        self.distributor = distributor
        self.max_workspace_bytes = max_workspace_bytes
        self._views: dict[Tensor, tuple[Any, ParamPreconditioner]] = {}
        #: whether a factor may have Cholesky failures counted on the device (an
        #: accelerator's statistics steps) that the optimizer has not checked yet
        self.failures_pending = True

    @property
    def share(self) -> int:
        """Bytes for each of the two parts of a preconditioning round, its directions and its
        batches: a quarter of the workspace, so that the steps where nothing is due (all but
        one in ``root_interval``) stay within half of what a statistics or root step may take."""
        return self.max_workspace_bytes // 4

    # -- creation and views ------------------------------------------------------------------
    def create(self, p: Tensor, st: dict, group: dict) -> None:
        """Fresh factors (statistics ``eps I``, roots ``I``) for the blocks this process holds,
        stored as ``st["precond"]`` (nothing for a parameter that is not preconditioned)."""
        blocking = param_blocking(p, group)
        if blocking is None:
            return
        held = self.distributor.held(p)
        blocks = new_blocks(
            blocking,
            group["quant"],
            factor_config(group),
            p.device,
            group["matrix_eps"],
            group["min_quant_numel"],
            held,
        )
        states = [None if b is None else pair_state(b) for b in blocks]
        stored: list | dict = states if held is None else held_dict(states)
        st["precond"] = self.distributor.wrap_stored(p, stored)
        self._views[p] = (st["precond"], ParamPreconditioner(blocking, blocks))

    def view(self, p: Tensor, group: dict | None = None) -> ParamPreconditioner | None:
        """The factors of ``p`` (None if it has no preconditioner state)."""
        st = self._opt.state.get(p)
        stored = st.get("precond") if st else None
        if stored is None:
            return None
        cached = self._views.get(p)
        if cached is None or cached[0] is not stored:  # e.g. after load_state_dict
            group = group if group is not None else self._group_of(p)
            blocking = param_blocking(p, group)
            config = factor_config(group)
            blocks = [
                None if b is None else pair_view(b, config)
                for b in block_list(self.distributor.unwrap_stored(p, stored), len(blocking.slices))
            ]
            cached = self._views[p] = (stored, ParamPreconditioner(blocking, blocks))
        return cached[1]

    def fold_failures(self) -> bool:
        """Add the Cholesky failures counted on the device to every factor's counters (one
        host read; ``factors.base.fold_failures``); returns whether there were any."""
        return fold_failures(e.factor for e in self.entries())

    def forget_views(self) -> None:
        self._views.clear()

    def _group_of(self, p: Tensor) -> dict:
        for group in self._opt.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise KeyError("parameter not in this optimizer")

    def entries(self) -> Iterator[FactorEntry]:
        """Every factor this process holds, in parameter, block and side order."""
        i = -1
        for g, group in enumerate(self._opt.param_groups):
            for p in group["params"]:
                i += 1
                pre = self.view(p, group)
                if pre is None:
                    continue
                for b, pair in enumerate(pre.blocks):
                    if pair is None:  # held by another rank
                        continue
                    for side, f in zip(SIDES, pair, strict=True):
                        if f is not None:
                            yield FactorEntry(i, g, p, b, side, f)

    def place_loaded(self, i: Any, p: Tensor, st: dict, group: dict) -> bool:
        """Fit a loaded parameter state (a copy, not in the optimizer yet) to this process:
        keep the blocks it holds, refusing missing ones with ``ValueError``. Returns True when
        the state has no preconditioner (``qshampoo.distributed.drop_preconditioners``): fresh
        factors are to be made (``create``) once it is loaded."""
        if st.get("precond") is None:
            return True
        st["precond"] = self.distributor.held_blocks(i, p, st["precond"], group)
        return False

    def describe(self, p: Tensor) -> str:
        """``parameter #i (param group g, shape (...))``: where a parameter sits."""
        i = 0
        for g, group in enumerate(self._opt.param_groups):
            for q in group["params"]:
                if q is p:
                    return f"parameter #{i} (param group {g}, shape {tuple(p.shape)})"
                i += 1
        return f"parameter of shape {tuple(p.shape)}"

    # -- the batched work, within the workspace --------------------------------------------
    def update_statistics(
        self,
        jobs: list[tuple[Factor, Tensor]],
        hp: StepHyper,
        finite: list[Tensor] | None = None,
    ) -> None:
        update_statistics(jobs, hp, self.max_workspace_bytes, finite)

    def update_roots(self, factors: list[Factor], hp: StepHyper) -> None:
        update_roots(factors, hp, self.max_workspace_bytes)

    def precondition(self, jobs: list[Job], compiled: bool = False, sink=None) -> list[Tensor]:
        """``precondition`` within ``share`` bytes (the directions of a round take as much,
        ``Distributor.rounds``)."""
        return precondition(jobs, self.share, compiled, sink)

    # -- memory --------------------------------------------------------------------------------
    def sized_jobs(self, p: Tensor, group: dict) -> list[tuple]:
        """``(left, block shape, right)`` of every block of ``p`` (held here or not), with
        stand-ins for the factors that know their class, order and width: what the workspace
        formulas read. Depends on shapes and settings alone."""
        blocking = param_blocking(p, group)
        if blocking is None:
            return []
        config = factor_config(group)
        out = []
        for (rows, cols), orders in zip(blocking.slices, blocking.orders, strict=True):
            left, right = (None if n is None else SizedFactor.of(group, n, config) for n in orders)
            out.append((left, (rows.stop - rows.start, cols.stop - cols.start), right))
        return out

    def round_bytes(self, params: list[Tensor], group: dict, jobs: list[tuple]) -> int:
        """What one round of preconditioning allocates: the directions of ``params``, the
        largest batch its ``jobs`` (``sized_jobs`` computed here) form or, after the batches
        have freed theirs, the largest base update."""
        whole = bool(group["compile"]) or kernels.enabled(params[0])

        def cost(job) -> int:
            return job_cost(job, whole)

        temps = largest(batches(jobs, _job_key, cost, self.share), cost)
        update = max(update_bytes(p, group, self.share) for p in params)
        return sum(4 * p.numel() for p in params) + max(temps, update)

    def workspace(self) -> int:
        """The most bytes a step allocates on top of the state, for the current parameters:
        the largest batch of statistics or root updates as the batches are formed, or the
        largest round of preconditioning and base updates (``Distributor.plan``), each from
        the formulas of the factor classes (``Factor.workspace_bytes``)."""
        factors, most = [], 0
        budget = self.max_workspace_bytes
        for group in self._opt.param_groups:
            params = [p for p in group["params"] if param_blocking(p, group) is not None]
            for p in group["params"]:
                if param_blocking(p, group) is None:
                    most = max(most, update_bytes(p, group, self.share, preconditioned=False))
                held = self.distributor.held(p)
                for b, (left, shape, right) in enumerate(self.sized_jobs(p, group)):
                    if held is None or b in held:
                        for f in (left, right):
                            if f is not None:
                                factors.append((f, _block_copy(p, shape)))
            for _, nbytes in self.distributor.plan(params, group, self):
                most = max(most, nbytes)
        for phase in ("statistics", "roots"):

            def cost(item, phase=phase):
                f, copy = item
                return f.workspace(phase) + (copy if phase == "statistics" else 0)

            found = batches(factors, lambda item: item[0].batch_key(), cost, budget)
            most = max(most, largest(found, cost))
        return most


class SizedFactor:
    """A factor's class, order and width without its state: what the workspace formulas read."""

    def __init__(self, cls: type[Factor], order: int, config: FactorConfig):
        self.cls, self.order, self.config = cls, order, config

    @classmethod
    def of(cls, group: dict, order: int, config: FactorConfig) -> SizedFactor:
        kind = FACTORS[group["quant"]] if order * order >= group["min_quant_numel"] else Fp32Factor
        if config.adaptive:  # the widest it may become
            config = FactorConfig(AUTO_BITS[-1], config.block_size, config.codebook, True)
        return cls(kind, order, config)

    def workspace(self, phase: str, whole: bool = False) -> int:
        return self.cls.workspace_bytes(phase, self.order, self.config, whole)

    def batch_key(self) -> tuple:
        return (self.cls, self.order, self.config.bits)


def update_bytes(p: Tensor, group: dict, max_bytes: int, preconditioned: bool = True) -> int:
    """Temporaries of one parameter's grafting and base update, made ``max_bytes`` rows at a
    time (``base.in_chunks``): per chunk, AdamW's denominator (SGD: the decayed direction, and
    Nesterov's) and an fp32 copy of a narrower parameter; with ``nonfinite="skip"``, the
    direction with a skipped step's zeros too (AdamW: and, for a float64 parameter, the
    float64 numerator; SGD: the decayed or Nesterov direction and its masked copy at once);
    and, not preconditioned, the whole gradient as fp32 (a copy if narrower, or negated to
    maximize)."""
    wide = p.dtype in (torch.float32, torch.float64)
    skip = group["nonfinite"] == "skip"
    if group["base"] == "adamw":
        count = 1 + skip * (1 + 2 * (p.dtype == torch.float64))
    else:
        count = 1 + bool(group["nesterov"] or (skip and group["weight_decay"] != 0))
    count += not wide
    row = math.prod(p.shape[1:])
    chunk = 4 * min(p.numel(), chunk_rows(p, max_bytes) * row)
    whole = 0 if preconditioned else 4 * p.numel() * ((not wide) or bool(group["maximize"]))
    return chunk * count + whole


def _block_copy(p: Tensor, shape: tuple[int, int]) -> int:
    """An fp32 copy of one block for its gram, when the gradient is narrower than fp32."""
    return 0 if p.dtype in (torch.float32, torch.float64) else 4 * shape[0] * shape[1]


def statistics_cost(job: tuple[Factor, Tensor]) -> int:
    """Bytes one ``(factor, G)`` job adds to a batch of statistics updates."""
    f, g = job
    copy = 0 if g.dtype in (torch.float32, torch.float64) else 4 * g.numel()
    return f.workspace("statistics") + copy


def update_statistics(
    jobs: list[tuple[Factor, Tensor]],
    hp: StepHyper,
    budget: int,
    finite: list[Tensor] | None = None,
) -> None:
    """Fold ``G G^T`` into the statistics of each ``(factor, G)`` job (``G`` ``(order, m)``,
    any strides and float dtype), same-format factors together, in batches whose temporaries
    (``Factor.workspace_bytes("statistics")``, the grams included) fit in ``budget`` bytes.

    ``finite``: None, or per job a 0-d bool device tensor (an accelerator's step, which reads
    nothing back): a job where it is False leaves its factor as it was
    (``Factor.update_statistics_batch``)."""
    flags = [None] * len(jobs) if finite is None else finite
    for batch in batches(
        list(zip(jobs, flags, strict=True)),
        key=lambda j: j[0][0].batch_key(),
        cost=lambda j: j[0][0].workspace("statistics"),
        budget=budget,
    ):
        keep = None if finite is None else torch.stack([k for _, k in batch])
        # the grams are handed over (no reference kept here): the update may free them early
        type(batch[0][0][0]).update_statistics_batch(
            [f for (f, _), _ in batch], gram_batch([g for (_, g), _ in batch]), hp, keep
        )


def gram_batch(blocks: list[Tensor]) -> Tensor:
    """``G G^T`` of each block ``G`` ``(n, m_i)`` (any float dtype), as one ``(B, n, n)`` fp32
    tensor."""
    n = blocks[0].shape[0]
    out = torch.empty(len(blocks), n, n, dtype=torch.float32, device=blocks[0].device)
    for o, g in zip(out, blocks, strict=True):
        g = g.float()
        torch.mm(g, g.T, out=o)
    return out


def update_roots(factors: list[Factor], hp: StepHyper, budget: int) -> None:
    """Recompute the inverse roots of ``factors``, same-format ones together, in batches whose
    temporaries (``Factor.workspace_bytes("roots")``) fit in ``budget`` bytes."""
    for batch in batches(
        factors, key=lambda f: f.batch_key(), cost=lambda f: f.workspace("roots"), budget=budget
    ):
        type(batch[0]).compute_roots(batch, hp)


def precondition(
    jobs: list[Job], budget: int, compiled: bool = False, sink=None
) -> list[Tensor] | None:
    """``L_hat G_b R_hat`` of each ``(left, G_b, right)`` job (a side left out multiplies by
    nothing), as 2-D fp32 tensors; same-format jobs in batches whose temporaries (the dense
    roots as they are decoded, ``Factor.workspace_bytes("precondition")``, and three ``(n, m)``
    products) fit in ``budget`` bytes. ``compiled``: dequantize whole roots with the
    ``torch.compile``d kernel.

    Returns the blocks in job order, or, with ``sink``, calls ``sink(i, block)`` as each batch
    is done (a view of the batch's output: copy it to let the batch go) and returns None.
    """
    out: list[Tensor] = [None] * len(jobs)  # type: ignore[list-item]
    if sink is None:
        sink = out.__setitem__
    whole = compiled or (bool(jobs) and kernels.enabled(jobs[0][1]))
    for batch in batches(
        range(len(jobs)),
        key=lambda i: _job_key(jobs[i]),
        cost=lambda i: job_cost(jobs[i], whole),
        budget=budget,
    ):
        left, _, right = jobs[batch[0]]
        G = _stack([jobs[i][1] for i in batch]).float()
        if left is not None:
            G = type(left).multiply_roots([jobs[i][0] for i in batch], G, True, compiled)
        if right is not None:
            G = type(right).multiply_roots([jobs[i][2] for i in batch], G, False, compiled)
        for j, i in enumerate(batch):
            sink(i, G[j])
        del G
    return out if sink == out.__setitem__ else None


def _job_key(job) -> tuple:
    left, g, right = job
    shape = tuple(g.shape) if isinstance(g, Tensor) else tuple(g)
    return (
        None if left is None else left.batch_key(),
        shape,
        None if right is None else right.batch_key(),
    )


def job_cost(job, whole: bool = False) -> int:
    """Bytes one preconditioning job adds to its batch: its roots as they are decoded (whole,
    or a strip of rows at a time: ``whole``, see ``Factor.workspace_bytes``) and three
    ``(n, m)`` fp32 products (the stacked block, ``L G``, ``L G R``)."""
    left, g, right = job
    n, m = g.shape if isinstance(g, Tensor) else g
    cost = 3 * 4 * n * m
    for f in (left, right):
        if f is not None:
            cost += f.workspace("precondition", whole)
    return cost


def _stack(tensors: list[Tensor]) -> Tensor:
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


# -- the stored form of a parameter's blocks ------------------------------------------------------
def new_blocks(
    blocking: Blocking,
    quant: str,
    config: FactorConfig,
    device: torch.device,
    eps: float,
    min_quant_numel: int,
    held: Collection[int] | None = None,
) -> list[Pair | None]:
    """New factors for the ``held`` blocks (all when None), None for the others."""
    out: list[Pair | None] = []
    for i, orders in enumerate(blocking.orders):
        if held is not None and i not in held:
            out.append(None)
            continue
        out.append(
            tuple(
                None if n is None else make_factor(quant, n, config, device, eps, min_quant_numel)
                for n in orders
            )
        )
    return out


def pair_state(pair: Pair) -> dict:
    return {side: f.state for side, f in zip(SIDES, pair, strict=True) if f is not None}


def pair_view(stored: dict, config: FactorConfig) -> Pair:
    return tuple(factor_view(stored[side], config) if side in stored else None for side in SIDES)


def block_list(stored: list[dict] | dict[str, dict], n: int) -> list[dict | None]:
    """The stored blocks as a list of ``n`` entries, None where a block is not held."""
    if isinstance(stored, list):
        return list(stored)
    return [stored.get(str(i)) for i in range(n)]


def held_dict(states: list[dict | None]) -> dict[str, dict]:
    """``{"<index>": block}`` for the held (not None) entries of a block list."""
    return {str(i): b for i, b in enumerate(states) if b is not None}
