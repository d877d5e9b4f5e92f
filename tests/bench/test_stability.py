import math

from qshampoo.bench.stability import loss_spikes, nonfinite_count


def test_smooth_noisy_decrease_has_no_spikes():
    losses = [2.0 * math.exp(-t / 100) + 0.05 * ((t * 7919) % 13 - 6) / 6 for t in range(400)]
    assert loss_spikes(losses) == []


def test_a_jump_is_a_spike():
    losses = [1.0 + 0.01 * (t % 3) for t in range(100)]
    losses[60] = 3.0
    assert loss_spikes(losses) == [60]


def test_a_small_rise_of_a_flat_loss_is_not_a_spike():
    losses = [1.0 + 0.0001 * (t % 2) for t in range(100)]
    losses[80] = 1.2  # many MADs above, but only 20 % of the median
    assert loss_spikes(losses) == []


def test_nonfinite_are_counted_not_spikes():
    losses = [1.0] * 30 + [float("nan"), float("inf")] + [1.0] * 5
    assert nonfinite_count(losses) == 2
    assert loss_spikes(losses) == []


def test_an_injected_instability_is_flagged(digits_task, digits_data, tmp_path):
    """A learning rate x10 for three steps is what the spike rule must catch; the same run
    without it has no spike."""
    from qshampoo.bench.runner import RunSpec, train_run

    def run(extra):
        hp = digits_task.hyperparameters("adamw", 150)
        spec = RunSpec(digits_task, "adamw", 0, 150, hp, str(tmp_path / str(bool(extra))))
        spec.progress, spec.extra = False, extra
        return train_run(spec, digits_data)["stability"]

    calm, hit = run({}), run({"lr_boost": (100, 102, 10.0)})
    assert calm["loss_spikes"] == 0
    assert hit["loss_spikes"] > 0 and 101 <= hit["spike_steps"][0] <= 105
