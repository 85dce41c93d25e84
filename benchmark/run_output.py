"""What a run writes, logs and prints, and which process does it.

A sharded run (``distributed=true``) has one process per rank, all of them training. Exactly one
(rank 0) speaks: it holds the run folder's lock, writes checkpoints and ``metrics.json``, logs to
MLflow and prints. The other ranks only take part in the collectives: a checkpoint gathers every
rank's rows to rank 0. A single-process run is rank 0 of one. The training loop hands every
record to a :class:`RunOutput` and never asks which rank it is on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .checkpoint import Progress, RunDir
from .config import RunConfig
from .metrics import RunMetrics
from .swarm import Swarm
from .tracking import NullTracker, track_run

EpochCallback = Callable[[int, dict[str, Any]], None]


class RunOutput:
    """Checkpoints, ``metrics.json``, MLflow, log lines and the caller's epoch callback."""

    def __init__(
        self, config: RunConfig, out_dir: str | Path | None, store: RunDir | None,
        on_epoch: EpochCallback | None, speaks: bool,
    ) -> None:
        self.config, self.out_dir, self.store = config, out_dir, store
        self.on_epoch, self.speaks = on_epoch, speaks
        self.interactive = sys.stderr.isatty()  # a terminal gets the progress bar, a log lines
        self.tracker: Any = NullTracker()

    @contextmanager
    def session(self, restart: bool = False) -> Iterator[RunOutput]:
        """Rank 0: the run folder's lock and an MLflow run, ended however the run ends."""
        session = (self.store.session(restart) if self.store is not None and self.speaks
                   else nullcontext())
        tracked = self.config if self.speaks else self.config.model_copy(
            update={"tracking": False})
        with session, track_run(tracked, self.out_dir) as tracker:
            self.tracker = tracker
            yield self

    def say(self, line: str) -> None:
        if self.speaks:
            print(line, flush=True)

    def progress_bar(self, total: int, initial: int) -> tqdm:
        return tqdm(total=total, initial=initial, desc=self.config.method,
                    disable=not self.interactive or not self.speaks)

    def checkpoint(self, swarm: Swarm, progress: Progress) -> None:
        """Save after ``progress.epoch`` epochs; every rank must call it (a collective)."""
        if self.store is None:
            return
        state = swarm.state_dict()  # sharded: every rank sends its rows, rank 0 receives them
        if self.speaks:
            self.store.save(state, progress)

    def epoch(self, record: dict[str, Any]) -> None:
        """A finished (and checkpointed) epoch: logged, printed, then the callback.

        The callback runs on every rank: it may stop the run (a pruned trial), and every rank
        must stop with it."""
        self.tracker.log_epoch(record["epoch"], record)
        if not self.interactive:
            self.say(epoch_line(record, self.config.epochs))
        if self.on_epoch is not None:
            self.on_epoch(record["epoch"], record)

    def diverged(self, epoch: int) -> None:
        if not self.interactive:
            self.say(f"epoch {epoch}/{self.config.epochs} | diverged (non-finite loss)")

    def write_result(self, metrics: RunMetrics) -> None:
        """``metrics.json``, which drops the checkpoint: from now on the run is complete."""
        if self.store is not None and self.speaks:
            self.store.finish(metrics)

    def log_result(self, metrics: RunMetrics) -> None:
        """The MLflow result (final figures, artifacts); cut short, a rerun completes it."""
        self.tracker.log_result(metrics)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.4g}",
             f"ce {record['train_ce']:.4f}"]
    for key, label in (("l_mv", "L_mv"), ("l_dv", "L_dv")):
        if key in record:
            parts.append(f"{label} {record[key]:.4g}")
    if "consensus_acc" in record:
        parts.append(f"consensus {record['consensus_acc']:.2f}%")
        parts.append(f"local {record['local_acc_mean']:.2f}±{record['local_acc_std']:.2f}%")
    parts.append(f"{record['time_s']:.1f}s")
    return " | ".join(parts)
