"""The Kronecker preconditioner of one parameter: its blocks, each with a left and right factor.

For a block ``G_b`` of the parameter's 2-D gradient view, the preconditioned block is
``L_hat @ G_b @ R_hat``; the blocks are re-assembled into the parameter's shape.

Under ``torch.distributed`` a rank may hold only some of the blocks (see ``qshampoo.distributed``);
it then stores them in a dict keyed by the block's index as a string, ``{"0": ..., "3": ...}``.
A ``torch.distributed.checkpoint`` key such as ``precond.3.L.stat`` then names the same block
whether it was saved by one process (a list) or by the rank that owns it (a dict).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

import torch
from torch import Tensor

from .blocking import Blocking
from .factors import Factor, FactorConfig, factor_view, make_factor


class ParamPreconditioner:
    """A view over ``state["precond"]``: ``[{"L": factor_state, "R": factor_state}, ...]``, or
    ``{"<block index>": {"L": ..., "R": ...}}`` for the blocks this rank holds.

    ``held`` lists the indices of the blocks whose factors this process keeps (all of them
    unless the blocks are split across ranks).
    """

    def __init__(self, blocking: Blocking, blocks: list[tuple[Factor, Factor] | None]):
        self.blocking = blocking
        self.blocks = blocks
        self.held = [i for i, b in enumerate(blocks) if b is not None]

    @classmethod
    def create(
        cls,
        blocking: Blocking,
        quant: str,
        config: FactorConfig,
        device: torch.device,
        eps: float,
        min_quant_numel: int,
        held: Collection[int] | None = None,
    ) -> tuple[ParamPreconditioner, list[dict] | dict[str, dict]]:
        """New factors for the ``held`` blocks; returns the view and the state to store
        (a list over all blocks when ``held`` is None, else a dict over the held ones)."""
        blocks: list[tuple[Factor, Factor] | None] = []
        for i, (rows, cols) in enumerate(blocking.slices):
            if held is not None and i not in held:
                blocks.append(None)
                continue
            n, m = rows.stop - rows.start, cols.stop - cols.start
            blocks.append(
                tuple(make_factor(quant, k, config, device, eps, min_quant_numel) for k in (n, m))
            )
        states = [None if b is None else {"L": b[0].state, "R": b[1].state} for b in blocks]
        return cls(blocking, blocks), states if held is None else held_dict(states)

    @classmethod
    def view(cls, blocking: Blocking, stored: list[dict] | dict[str, dict], config: FactorConfig):
        blocks = [
            (factor_view(b["L"], config), factor_view(b["R"], config)) if b else None
            for b in block_list(stored, len(blocking.slices))
        ]
        return cls(blocking, blocks)

    def factors(self) -> list[Factor]:
        return [f for pair in self.blocks if pair is not None for f in pair]

    def statistics_jobs(self, grad: Tensor) -> list[tuple[Factor, Tensor]]:
        """``(L, G_b)`` and ``(R, G_b^T)`` for each held block (views of the fp32 ``grad``):
        ``factors.update_statistics`` folds ``G G^T`` of each into its factor."""
        return [
            job
            for pair, g in zip(self.blocks, self.blocking.blocks(grad), strict=True)
            if pair is not None
            for job in ((pair[0], g), (pair[1], g.T))
        ]

    def jobs(self, grad: Tensor) -> list[tuple[Factor, Tensor, Factor]]:
        """``(left, G_b, right)`` for every held block (``G_b`` a 2-D view of ``grad``)."""
        g2 = grad.reshape(self.blocking.shape2d)
        slices = self.blocking.slices
        return [(self.blocks[i][0], g2[slices[i]], self.blocks[i][1]) for i in self.held]

    def assemble(self, blocks: list[Tensor], grad: Tensor) -> Tensor:
        """The preconditioned blocks of every block, in block order, as ``grad``'s shape."""
        if len(self.held) != len(self.blocks):
            raise RuntimeError(
                "this preconditioner holds only some of its blocks (it belongs to an optimizer "
                "that splits blocks across ranks, see qshampoo.distributed)"
            )
        if len(blocks) == 1:
            return blocks[0].reshape(grad.shape)
        out = torch.empty(self.blocking.shape2d, dtype=torch.float32, device=grad.device)
        for b, sl in zip(blocks, self.blocking.slices, strict=True):
            out[sl] = b
        return out.view(grad.shape)

    def precondition(self, grad: Tensor, compiled: bool = False) -> Tensor:
        """``L_hat G_b R_hat`` for every block, as a new fp32 tensor of ``grad``'s shape.

        Needs every block; with blocks split across ranks use ``precondition_held``.
        """
        return self.assemble(precondition_blocks(self.jobs(grad), compiled), grad)

    def precondition_held(self, grad: Tensor, compiled: bool = False) -> list[Tensor]:
        """``L_hat G_b R_hat`` for the held blocks only, in block order (2-D fp32 tensors)."""
        return precondition_blocks(self.jobs(grad), compiled)


def precondition_blocks(
    jobs: list[tuple[Factor, Tensor, Factor]], compiled: bool = False
) -> list[Tensor]:
    """``L_hat @ G_b @ R_hat`` for each ``(left, G_b, right)`` job, as 2-D fp32 tensors.

    Jobs whose factors share class, order and storage format (``Factor.batch_key``) are done
    together: their roots are dequantized in one batched pass (``Factor.dense_roots``) and
    multiplied with batched matmuls, so the cost per step does not grow with the number of
    same-shaped blocks in Python calls.
    ``compiled`` selects the ``torch.compile``d dequantization kernel.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (left, _, right) in enumerate(jobs):
        groups[left.batch_key(), right.batch_key()].append(i)
    out: list[Tensor] = [None] * len(jobs)  # type: ignore[list-item]
    for idx in groups.values():
        left, right = jobs[idx[0]][0], jobs[idx[0]][2]
        L = type(left).dense_roots([jobs[i][0] for i in idx], compiled)
        R = type(right).dense_roots([jobs[i][2] for i in idx], compiled)
        G = jobs[idx[0]][1][None] if len(idx) == 1 else torch.stack([jobs[i][1] for i in idx])
        P = torch.bmm(torch.bmm(L, G), R)
        for j, i in enumerate(idx):
            out[i] = P[j]
    return out


def block_list(stored: list[dict] | dict[str, dict], n: int) -> list[dict | None]:
    """The stored blocks as a list of ``n`` entries, None where a block is not held."""
    if isinstance(stored, list):
        return list(stored)
    return [stored.get(str(i)) for i in range(n)]


def held_dict(states: list[dict | None]) -> dict[str, dict]:
    """``{"<index>": block}`` for the held (not None) entries of a block list."""
    return {str(i): b for i, b in enumerate(states) if b is not None}
