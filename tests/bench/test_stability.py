import math

from qshampoo.bench.stability import loss_spikes, nonfinite_count


def test_smooth_noisy_decrease_has_no_spikes():
    losses = [2.0 * math.exp(-t / 100) + 0.05 * ((t * 7919) % 13 - 6) / 6 for t in range(400)]
    assert loss_spikes(losses) == []


def test_a_jump_is_a_spike():
    losses = [1.0 + 0.01 * (t % 3) for t in range(100)]
    losses[60] = 3.0
    assert loss_spikes(losses) == [60]


def test_wobbles_near_zero_are_not_spikes():
    losses = [2.3] * 25 + [0.01 + 0.001 * (t % 2) for t in range(100)]
    losses[80] = 0.04  # 4x the median, but tiny compared with the initial loss
    assert loss_spikes(losses) == []


def test_nonfinite_are_counted_not_spikes():
    losses = [1.0] * 30 + [float("nan"), float("inf")] + [1.0] * 5
    assert nonfinite_count(losses) == 2
    assert loss_spikes(losses) == []
