"""Stability measures computed from a run's training-loss history."""

from __future__ import annotations

import math
import statistics

SPIKE_WINDOW = 25
SPIKE_RATIO = 2.0
SPIKE_MADS = 6.0
SPIKE_MIN_RISE = 0.10


def loss_spikes(
    losses: list[float],
    window: int = SPIKE_WINDOW,
    ratio: float = SPIKE_RATIO,
    mads: float = SPIKE_MADS,
    min_rise: float = SPIKE_MIN_RISE,
) -> list[int]:
    """Indices of the steps whose training loss is a *spike*.

    A step ``t`` (with at least ``window`` finite losses before it) spikes when its loss is both
    more than ``ratio`` times the median ``m`` of the previous ``window`` finite losses and more
    than ``mads`` robust standard deviations above it (``1.4826 * MAD`` of that window), and
    rises above it by more than ``min_rise`` times the initial loss (the median of the first
    ``window`` losses). The first two conditions ignore ordinary mini-batch noise, the third
    the relative wobbles of a loss close to zero. Non-finite losses are counted separately.
    """
    out, recent = [], []
    initial = None
    for t, loss in enumerate(losses):
        if loss is None or not math.isfinite(loss):
            continue
        if len(recent) >= window:
            m = statistics.median(recent)
            if initial is None:
                initial = m
            sigma = 1.4826 * statistics.median(abs(v - m) for v in recent)
            if loss > ratio * m and loss > m + mads * sigma and loss - m > min_rise * initial:
                out.append(t)
        recent.append(loss)
        if len(recent) > window:
            recent.pop(0)
    return out


def nonfinite_count(losses: list[float]) -> int:
    return sum(1 for v in losses if v is None or not math.isfinite(v))
