"""MLflow logging of runs (placeholder interface; the workflow issue fills it in).

``train.run`` uses exactly this interface::

    with track_run(config, out_dir) as tracker:   # a no-op tracker when config.tracking is False
        tracker.log_epoch(epoch, record)          # per-epoch metrics, step=epoch
        tracker.log_result(metrics)               # final figures + artifacts (metrics.json, ...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class NullTracker:
    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        pass

    def log_result(self, metrics: dict[str, Any]) -> None:
        pass


@contextmanager
def track_run(config, out_dir: str | Path | None) -> Iterator[NullTracker]:
    yield NullTracker()
