"""The Kronecker preconditioner of one parameter: its blocks, each with a left and right factor.

For a block ``G_b`` of the parameter's 2-D gradient view, the preconditioned block is
``L_hat @ G_b @ R_hat``; the blocks are re-assembled into the parameter's shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .blocking import Blocking
from .factors import Factor, FactorConfig, StepHyper, factor_view, make_factor


class ParamPreconditioner:
    """A view over ``state["precond"]``: ``[{"L": factor_state, "R": factor_state}, ...]``."""

    def __init__(self, blocking: Blocking, blocks: list[tuple[Factor, Factor]]):
        self.blocking = blocking
        self.blocks = blocks

    @classmethod
    def create(
        cls,
        blocking: Blocking,
        quant: str,
        config: FactorConfig,
        device: torch.device,
        eps: float,
        min_quant_numel: int,
    ) -> tuple[ParamPreconditioner, list[dict]]:
        """New factors for every block; returns the view and the state list to store."""
        blocks = []
        for rows, cols in blocking.slices:
            n, m = rows.stop - rows.start, cols.stop - cols.start
            blocks.append(
                tuple(make_factor(quant, k, config, device, eps, min_quant_numel) for k in (n, m))
            )
        stored = [{"L": left.state, "R": right.state} for left, right in blocks]
        return cls(blocking, blocks), stored

    @classmethod
    def view(cls, blocking: Blocking, stored: list[dict], config: FactorConfig):
        blocks = [(factor_view(b["L"], config), factor_view(b["R"], config)) for b in stored]
        return cls(blocking, blocks)

    def factors(self) -> list[Factor]:
        return [f for pair in self.blocks for f in pair]

    def update_statistics(self, grad: Tensor, hp: StepHyper) -> None:
        """Fold ``G_b G_b^T`` into each L and ``G_b^T G_b`` into each R (grad in fp32)."""
        for (left, right), g in zip(self.blocks, self.blocking.blocks(grad), strict=True):
            left.update_statistics(g @ g.T, hp)
            right.update_statistics(g.T @ g, hp)

    def precondition(self, grad: Tensor) -> Tensor:
        """``L_hat G_b R_hat`` for every block, as a new fp32 tensor of ``grad``'s shape."""
        g2 = grad.reshape(self.blocking.shape2d)
        if len(self.blocks) == 1:
            left, right = self.blocks[0]
            return (left.root() @ g2 @ right.root()).view(grad.shape)
        out = torch.empty_like(g2)
        for (left, right), (rows, cols) in zip(self.blocks, self.blocking.slices, strict=True):
            out[rows, cols] = left.root() @ g2[rows, cols] @ right.root()
        return out.view(grad.shape)
