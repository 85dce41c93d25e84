"""The training-instability record of metrics.json (METHOD.md section 8)."""

from __future__ import annotations

import math

from benchmark.instability import training_instability


def _history(losses):
    return [{"epoch": e + 1, "train_ce": loss} for e, loss in enumerate(losses)]


def test_epochs_above_twice_the_running_minimum_are_flagged():
    # the collapse of the issue: 0.19 at epoch 3, back up to 1.7 at epoch 5
    record = training_instability(_history([2.3, 0.8, 0.19, 0.3, 1.7, 0.5, 0.2]))
    assert (record["threshold"], record["min_rise"]) == (2.0, 0.1)
    assert record["epochs"] == [5, 6]  # 1.7 / 0.19 and 0.5 / 0.19 > 2; 0.3 / 0.19 is not
    assert math.isclose(record["max_jump"], 1.7 / 0.19)


def test_a_steadily_falling_loss_has_no_flag_and_a_jump_below_one():
    record = training_instability(_history([2.0, 1.0, 0.5, 0.6]))
    assert record["epochs"] == []
    assert math.isclose(record["max_jump"], 1.2)  # 0.6 / 0.5
    assert training_instability(_history([2.0]))["max_jump"] is None


def test_non_finite_epochs_are_skipped_and_threshold_is_stated():
    record = training_instability(_history([1.0, 0.4, math.nan, 0.6]), threshold=1.2)
    assert record == {"threshold": 1.2, "min_rise": 0.1, "epochs": [4], "max_jump": 0.6 / 0.4}


def test_a_doubling_near_zero_is_noise_not_instability():
    """ring-32 on digits: train CE 0.041 at best, then 0.09 (2.2x, but 0.05 nats): not flagged;
    the same ratio from 0.2 (to 0.44, 0.24 nats) is."""
    record = training_instability(_history([2.3, 0.3, 0.041, 0.06, 0.0912, 0.07]))
    assert record["epochs"] == [] and math.isclose(record["max_jump"], 0.0912 / 0.041)
    assert training_instability(_history([2.3, 0.2, 0.44]))["epochs"] == [3]
    # exactly min_rise above the minimum counts (binary fractions: no rounding)
    assert training_instability(_history([1.0, 0.125, 0.375]), min_rise=0.25)["epochs"] == [3]
