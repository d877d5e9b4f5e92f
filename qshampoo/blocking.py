"""View a parameter as a 2-D matrix and cut it into preconditioner blocks.

Size-1 dimensions are dropped; a tensor with two or more remaining dimensions is viewed as
``(shape[0], prod(shape[1:]))`` (a conv weight ``(out, in, kh, kw)`` becomes
``(out, in*kh*kw)``). Tensors with fewer than two remaining dimensions, or with no elements,
are not preconditioned. Each matrix dimension longer than ``max_dim`` is cut into chunks of
``max_dim``, the remainder last (3072 -> 1200, 1200, 672).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The 2-D shape a parameter of ``shape`` is preconditioned as, or None if it is not."""
    dims = [d for d in shape if d != 1]
    if len(dims) < 2 or math.prod(dims) == 0:
        return None
    return dims[0], math.prod(dims[1:])


def _chunks(length: int, max_dim: int) -> list[slice]:
    return [slice(s, min(s + max_dim, length)) for s in range(0, length, max_dim)]


@dataclass(frozen=True)
class Blocking:
    """How one parameter splits into blocks: ``rows x cols`` slices of its 2-D view."""

    shape2d: tuple[int, int]
    row_slices: tuple[slice, ...]
    col_slices: tuple[slice, ...]

    @classmethod
    def of(cls, shape: tuple[int, ...], max_dim: int) -> Blocking | None:
        s2 = matrix_shape(tuple(shape))
        if s2 is None:
            return None
        return cls(s2, tuple(_chunks(s2[0], max_dim)), tuple(_chunks(s2[1], max_dim)))

    @property
    def slices(self) -> list[tuple[slice, slice]]:
        """Block slices in row-major order."""
        return [(r, c) for r in self.row_slices for c in self.col_slices]

    def blocks(self, x: Tensor) -> list[Tensor]:
        """Views of the blocks of ``x`` (any tensor with ``prod(shape2d)`` elements)."""
        x2 = x.reshape(self.shape2d)
        return [x2[r, c] for r, c in self.slices]
