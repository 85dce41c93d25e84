"""Training instability short of divergence: epochs where the training loss jumped back up.

A run can collapse without a NaN (the loss of one seed climbing from 0.19 to 1.7 mid-training,
METHOD.md section 8) and a table that averages it in silently misleads. Every run's
``metrics.json`` therefore carries ``instability``: the epochs whose mean training cross-entropy
rose above ``threshold`` times its running minimum over the earlier epochs, and the largest such
ratio over the run. The cross-entropy, not the total loss, so that runs with and without CCL
terms are judged alike.
"""

from __future__ import annotations

import math
from typing import Any

THRESHOLD = 2.0  # a loss twice its best so far is no longer noise around a plateau


def training_instability(history: list[dict[str, Any]], threshold: float = THRESHOLD
                         ) -> dict[str, Any]:
    """``{"threshold", "epochs", "max_jump"}`` from per-epoch records with ``train_ce``."""
    best = math.inf
    epochs: list[int] = []
    max_jump: float | None = None
    for record in history:
        loss = record.get("train_ce")
        if not isinstance(loss, float | int) or not math.isfinite(loss):
            continue  # a diverged epoch is the diverged status's business
        if best < math.inf:
            jump = loss / best if best > 0 else (math.inf if loss > 0 else 1.0)
            max_jump = jump if max_jump is None else max(max_jump, jump)
            if jump > threshold:
                epochs.append(int(record["epoch"]))
        best = min(best, loss)
    return {"threshold": threshold, "epochs": epochs, "max_jump": max_jump}
