"""The training-instability record of metrics.json (METHOD.md section 8)."""

from __future__ import annotations

import math

from benchmark.instability import training_instability


def _history(losses):
    return [{"epoch": e + 1, "train_ce": loss} for e, loss in enumerate(losses)]


def test_epochs_above_twice_the_running_minimum_are_flagged():
    # the collapse of the issue: 0.19 at epoch 3, back up to 1.7 at epoch 5
    record = training_instability(_history([2.3, 0.8, 0.19, 0.3, 1.7, 0.5, 0.2]))
    assert record["threshold"] == 2.0
    assert record["epochs"] == [5, 6]  # 1.7 / 0.19 and 0.5 / 0.19 > 2; 0.3 / 0.19 is not
    assert math.isclose(record["max_jump"], 1.7 / 0.19)


def test_a_steadily_falling_loss_has_no_flag_and_a_jump_below_one():
    record = training_instability(_history([2.0, 1.0, 0.5, 0.6]))
    assert record["epochs"] == []
    assert math.isclose(record["max_jump"], 1.2)  # 0.6 / 0.5
    assert training_instability(_history([2.0]))["max_jump"] is None


def test_non_finite_epochs_are_skipped_and_threshold_is_stated():
    record = training_instability(_history([1.0, 0.4, math.nan, 0.5]), threshold=1.2)
    assert record == {"threshold": 1.2, "epochs": [4], "max_jump": 0.5 / 0.4}
