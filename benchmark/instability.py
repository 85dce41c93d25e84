"""Training instability short of divergence: epochs where the training loss jumped back up.

A run can collapse without a NaN (the loss of one seed climbing from 0.19 to 1.7 mid-training,
METHOD.md section 8) and a table that averages it in silently misleads. Every run's
``metrics.json`` therefore carries ``instability``: the epochs whose mean training cross-entropy
rose above ``threshold`` times its running minimum over the earlier epochs *and* by at least
``min_rise`` nats above it, and the largest such ratio over the run. The cross-entropy, not the
total loss, so that runs with and without CCL terms are judged alike.

Why the absolute floor: near zero a ratio is noise. On the digits default, ring-32 (2-3 batches
per agent and epoch) settles at a train CE of 0.04-0.09 from epoch to epoch; by the ratio alone
every seed of every method there was "unstable" from epoch 40 on, a flag that meant nothing.
0.1 nats is 4% of the chance-level loss of 10 classes (ln 10 = 2.3); a real collapse (0.19 ->
1.7) rises by 1.5.
"""

from __future__ import annotations

import math
from typing import Any

THRESHOLD = 2.0  # a loss twice its best so far is no longer noise around a plateau...
MIN_RISE = 0.1  # ...when it is also this many nats above it (a ratio near zero is noise)


def training_instability(history: list[dict[str, Any]], threshold: float = THRESHOLD,
                         min_rise: float = MIN_RISE) -> dict[str, Any]:
    """``{"threshold", "min_rise", "epochs", "max_jump"}`` from per-epoch records with
    ``train_ce``."""
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
            if jump > threshold and loss - best >= min_rise:
                epochs.append(int(record["epoch"]))
        best = min(best, loss)
    return {"threshold": threshold, "min_rise": min_rise, "epochs": epochs, "max_jump": max_jump}
