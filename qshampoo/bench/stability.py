"""Stability measures computed from a run's histories: loss spikes, non-finite losses, and how far
the gradient norm strays from its typical value."""

from __future__ import annotations

import math
import statistics

SPIKE_WINDOW = 25
SPIKE_MADS = 6.0
SPIKE_RISE = 0.25


def finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def loss_spikes(
    losses: list[float],
    window: int = SPIKE_WINDOW,
    mads: float = SPIKE_MADS,
    rise: float = SPIKE_RISE,
) -> list[int]:
    """Indices of the steps whose training loss is a *spike*.

    A step ``t`` (with at least ``window`` finite losses before it) spikes when its loss exceeds
    the median ``m`` of the previous ``window`` finite losses by more than ``mads`` robust
    standard deviations (``1.4826 * MAD`` of that window) **and** by more than ``rise * m``.
    The first condition ignores ordinary mini-batch noise, the second the wobbles of a loss
    close to zero. Calibrated so that a learning rate ×10 for a few steps is flagged and
    ordinary runs are not (``tests/bench/test_stability.py``). Non-finite losses are counted
    separately.
    """
    out, recent = [], []
    for t, loss in enumerate(losses):
        if loss is None or not math.isfinite(loss):
            continue
        if len(recent) >= window:
            m = statistics.median(recent)
            sigma = 1.4826 * statistics.median(abs(v - m) for v in recent)
            if loss - m > mads * sigma and loss - m > rise * m:
                out.append(t)
        recent.append(loss)
        if len(recent) > window:
            recent.pop(0)
    return out


def nonfinite_count(losses: list[float]) -> int:
    return sum(1 for v in losses if v is None or not math.isfinite(v))


def peak_ratio(values: list[float], skip: float = 0.05) -> float | None:
    """The largest value over the median, after the first ``skip`` of the run (a gradient norm
    is large while the learning rate warms up): how far the run strayed from its typical step."""
    vals = finite(values[int(len(values) * skip) :])
    if not vals or statistics.median(vals) <= 0:
        return None
    return max(vals) / statistics.median(vals)
