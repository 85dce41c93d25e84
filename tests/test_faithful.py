"""Defaults follow the authors' released code (METHOD.md, "Differences from the authors' code")."""

from __future__ import annotations

import pytest

from benchmark.config import RunConfig


@pytest.mark.parametrize(("epochs", "milestones"), [
    (1, [1, 1]),        # int(0.5) = 0 would decay before the only epoch trains: never
    (10, [5, 7]),       # int(7.5) = 7 (rounding gave 8)
    (50, [25, 37]),     # the tuning budget: int(37.5) = 37 (rounding gave 38)
    (200, [100, 150]),
])
def test_lr_milestones_are_int_of_the_fraction_and_never_before_the_first_epoch(epochs,
                                                                                milestones):
    config = RunConfig(epochs=epochs, lr=0.1, lr_milestones=[0.5, 0.75], lr_decay=0.1)
    assert config.milestone_epochs == milestones
    rates = [config.lr_at(e) for e in range(epochs)]
    assert rates[0] == 0.1
    expected = [0.1 * 0.1 ** sum(e >= m for m in milestones) for e in range(epochs)]
    assert rates == pytest.approx(expected, rel=1e-12)
    if epochs == 50:
        assert rates[36] == pytest.approx(0.01) and rates[37] == pytest.approx(0.001)
