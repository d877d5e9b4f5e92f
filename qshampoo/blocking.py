"""View a parameter as a 2-D matrix and cut it into preconditioner blocks.

Size-1 dimensions are dropped; a tensor with two or more remaining dimensions is viewed as
``(shape[0], prod(shape[1:]))`` (a conv weight ``(out, in, kh, kw)`` becomes
``(out, in*kh*kw)``). Tensors with fewer than two remaining dimensions, or with no elements,
are not preconditioned. Each matrix dimension longer than ``max_dim`` is cut into chunks of
``max_dim``, the remainder last (3072 -> 1200, 1200, 672).

A block of ``n x m`` gets a left factor of order ``n`` and a right one of order ``m``, unless
one side is much longer than the other: a side whose factor would hold more than
``max_factor_ratio`` times the block's entries (``n > max_factor_ratio * m``) is left out, and
the block is preconditioned on the other side only (``G R_hat`` or ``L_hat G``). An embedding
of 100000 x 2 would otherwise get factors of order 1200 for blocks of 2400 entries.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
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


#: Shampoo's default ``max_factor_ratio``: no factor holds more than 16 times its block's
#: entries, so a parameter's preconditioners hold at most 32 times its own size (both sides)
DEFAULT_MAX_FACTOR_RATIO = 16.0


def warn_large_factors(
    shapes: Iterable[tuple[int, ...]], max_dim: int, ratio: float | None
) -> None:
    """Warn once, naming the first such shape, when ``ratio`` (a user's ``max_factor_ratio``)
    gives some block a factor that the default ratio would leave out."""
    if ratio is not None and ratio <= DEFAULT_MAX_FACTOR_RATIO:
        return
    for shape in shapes:
        blocking = Blocking.of(tuple(shape), max_dim, ratio)
        if blocking is None:
            continue
        default = Blocking.of(tuple(shape), max_dim, DEFAULT_MAX_FACTOR_RATIO).orders
        for (r, c), (n, m), (dn, dm) in zip(blocking.slices, blocking.orders, default, strict=True):
            extra = [k for k, d in ((n, dn), (m, dm)) if k is not None and d is None]
            if extra:
                entries = (r.stop - r.start) * (c.stop - c.start)
                warnings.warn(
                    f"max_factor_ratio={ratio} gives a parameter of shape {tuple(shape)} a "
                    f"factor of order {extra[0]} for a block of {entries} entries "
                    f"({extra[0] ** 2 / entries:.0f}x its size); the default "
                    f"{DEFAULT_MAX_FACTOR_RATIO:g} preconditions such a block on its short side "
                    "only",
                    UserWarning,
                    stacklevel=4,
                )
                return


def kept_sides(n: int, m: int, max_factor_ratio: float | None) -> tuple[bool, bool]:
    """Whether an ``n x m`` block gets its left (order ``n``) and right (order ``m``) factor:
    each unless it would hold more than ``max_factor_ratio`` times the block's entries. At
    least one side is kept whenever ``max_factor_ratio >= 1``."""
    if max_factor_ratio is None:
        return True, True
    return n <= max_factor_ratio * m, m <= max_factor_ratio * n


@dataclass(frozen=True)
class Blocking:
    """How one parameter splits into blocks: ``rows x cols`` slices of its 2-D view, and which
    sides of each block are preconditioned."""

    shape2d: tuple[int, int]
    row_slices: tuple[slice, ...]
    col_slices: tuple[slice, ...]
    max_factor_ratio: float | None = None

    @classmethod
    def of(
        cls, shape: tuple[int, ...], max_dim: int, max_factor_ratio: float | None = None
    ) -> Blocking | None:
        s2 = matrix_shape(tuple(shape))
        if s2 is None:
            return None
        rows, cols = tuple(_chunks(s2[0], max_dim)), tuple(_chunks(s2[1], max_dim))
        return cls(s2, rows, cols, max_factor_ratio)

    @property
    def slices(self) -> list[tuple[slice, slice]]:
        """Block slices in row-major order."""
        return [(r, c) for r in self.row_slices for c in self.col_slices]

    @property
    def orders(self) -> list[tuple[int | None, int | None]]:
        """Per block, the orders of its left and right factors (None: that side is left out)."""
        out = []
        for r, c in self.slices:
            n, m = r.stop - r.start, c.stop - c.start
            left, right = kept_sides(n, m, self.max_factor_ratio)
            out.append((n if left else None, m if right else None))
        return out

    def blocks(self, x: Tensor) -> list[Tensor]:
        """Views of the blocks of ``x`` (any tensor with ``prod(shape2d)`` elements)."""
        x2 = x.reshape(self.shape2d)
        return [x2[r, c] for r, c in self.slices]
