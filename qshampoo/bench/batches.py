"""Deterministic, resumable batching.

Every training batch is a pure function of ``(seed, step)``: the sample order of epoch ``e`` is a
permutation drawn from a generator seeded with ``(seed, e)``, and a language-model batch draws its
windows from a generator seeded with ``(seed, step)``. Resuming at step ``k`` therefore needs no
saved sampler state and yields exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

# Indices are made on the CPU whatever the default device: the data they index lives there
# (a CUDA tensor takes CPU indices too).
_CPU = torch.device("cpu")
_MIX = 1_000_003  # an odd prime to mix (seed, index) into one generator seed


def _generator(seed: int, index: int) -> torch.Generator:
    g = torch.Generator(_CPU)
    g.manual_seed((int(seed) * _MIX + int(index)) % (2**63 - 1))
    return g


class ClassificationBatches:
    """Mini-batches of ``(x, y)`` sampled without replacement, one fresh permutation per epoch.

    ``x`` and ``y`` are tensors with the sample on the first dim, or ``y`` is omitted and
    ``x`` is a map-style dataset (``len`` and ``__getitem__`` returning ``(input, target)``),
    collated with :func:`torch.utils.data.default_collate`.
    """

    def __init__(self, x, y=None, *, batch_size: int, drop_last: bool = True):
        self.x, self.y = x, y
        self.n = len(x)
        if self.n == 0:
            raise ValueError("the training data is empty")
        self.batch_size = min(int(batch_size), self.n)
        self.drop_last = drop_last
        self.steps_per_epoch = (
            self.n // self.batch_size if drop_last else math.ceil(self.n / self.batch_size)
        )
        self._perm_epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def _take(self, index: torch.Tensor):
        if self.y is not None:
            return self.x[index], self.y[index]
        from torch.utils.data import default_collate

        return default_collate([self.x[int(i)] for i in index])

    def permutation(self, seed: int, epoch: int) -> torch.Tensor:
        if self._perm_epoch != (seed, epoch):
            g = _generator(seed, epoch)
            self._perm = torch.randperm(self.n, generator=g, device=_CPU)
            self._perm_epoch = (seed, epoch)
        return self._perm

    def batch(self, seed: int, step: int):
        epoch, i = divmod(int(step), self.steps_per_epoch)
        perm = self.permutation(seed, epoch)
        return self._take(perm[i * self.batch_size : (i + 1) * self.batch_size])

    def eval_indices(self, limit: int | None = None) -> torch.Tensor:
        """All samples, or ``limit`` of them spread evenly over the set (so a set sorted by
        class is still sampled fairly)."""
        if limit is None or limit >= self.n:
            return torch.arange(self.n, device=_CPU)
        return torch.linspace(0, self.n - 1, int(limit), device=_CPU).round().long().unique()

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator:
        """Fixed-order batches over :meth:`eval_indices`."""
        index = self.eval_indices(limit)
        for start in range(0, len(index), batch_size):
            yield self._take(index[start : start + batch_size])

    def eval_size(self, limit: int | None = None) -> int:
        return len(self.eval_indices(limit))


class TokenWindows:
    """Language-model batches: ``(x, y)`` windows of ``block`` tokens, ``y`` shifted by one."""

    def __init__(self, tokens: torch.Tensor, *, block: int, batch_size: int):
        if tokens.ndim != 1:
            raise ValueError("tokens must be a 1-D tensor of ids")
        if len(tokens) <= block + 1:
            raise ValueError(f"the text ({len(tokens)} tokens) is shorter than one window")
        self.tokens = tokens
        self.block = int(block)
        self.batch_size = int(batch_size)
        self.n = len(tokens) - self.block - 1
        # One "epoch" = as many windows as there are tokens; only used to convert --epochs.
        self.steps_per_epoch = max(1, len(tokens) // (self.block * self.batch_size))
        self._offsets = torch.arange(self.block + 1, device=_CPU)

    def _windows(self, starts: torch.Tensor):
        w = self.tokens[starts[:, None] + self._offsets]
        return w[:, :-1], w[:, 1:]

    def batch(self, seed: int, step: int):
        g = _generator(seed, step)
        starts = torch.randint(0, self.n + 1, (self.batch_size,), generator=g, device=_CPU)
        return self._windows(starts)

    def eval_starts(self, limit: int | None) -> torch.Tensor:
        """Non-overlapping windows from the start of the text; ``limit`` windows at most,
        evenly spread over the text when there are more."""
        starts = torch.arange(0, self.n + 1, self.block, device=_CPU)
        if limit is not None and len(starts) > limit:
            pick = torch.linspace(0, len(starts) - 1, int(limit), device=_CPU).round().long()
            starts = starts[pick]
        return starts

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator:
        starts = self.eval_starts(limit)
        for i in range(0, len(starts), batch_size):
            yield self._windows(starts[i : i + batch_size])

    def eval_size(self, limit: int | None = None) -> int:
        return len(self.eval_starts(limit))
