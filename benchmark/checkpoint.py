"""A run's output folder as crash-safe state: checkpoint, exact resume, finished-run detection.

A 200-epoch run that dies at epoch 180 must not cost 180 epochs, and a restarted run must not be
*silently different*. So at the end of every epoch the run saves, atomically, everything its
future depends on: the swarm state (all agents' parameters, optimiser and algorithm buffers,
norm buffers, learning rates, iteration counter), the metrics history, the wall time so far and
the RNG states. Batches are a pure function of ``(seed, epoch, iteration)`` (see
:mod:`benchmark.data.loader`), so the data order needs no state of its own; the RNG states are
cheap insurance for any code that draws from the global generators.

The folder ``<out>/`` holds, over a run's life:

- ``checkpoint.pt`` while the run is unfinished (``torch.save``; read back with
  ``weights_only=True``, so loading a file never executes code);
- ``metrics.json`` once it is finished (completed or diverged); the checkpoint is then deleted
  because the result says everything and checkpoints of a large swarm are gigabytes;
- ``.lock``, held (``flock``) while a process trains into the folder, so two processes never
  interleave their checkpoints. The kernel drops the lock when a process dies, even by SIGKILL;
- ``.benchmark-run``, the marker written first (the sha256 of the run's fingerprint): the
  folder is the suite's, so a later run may replace what is in it. A folder without it that
  holds anything but what a run writes before its marker (the lock, the workflow's ``log.txt``)
  is refused, unless it is a run folder of an earlier version (a ``metrics.json`` or
  ``checkpoint.pt`` of this suite): a run never replaces files the suite did not write.

A checkpoint carries the checksum of its content (:mod:`benchmark.checksum`), verified before
anything is restored from it: a damaged file is refused, never trained on.

Every saved state carries the *result-relevant* part of the config (:func:`fingerprint`). A
checkpoint or ``metrics.json`` written by another config is never loaded or kept silently: it is
a :class:`~benchmark.errors.CheckpointError` naming the differing fields and offering
``--restart``.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checksum import checksum_matches, with_checksum
from .config import RunConfig, option_defaults, result_fields
from .errors import CheckpointError, ConfigError, UserError
from .io import (
    WriteError,
    atomic_open,
    atomic_write_text,
    check_writable_dir,
    check_writable_file,
    try_lock,
)
from .metrics import RunMetrics

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
LOCK = ".lock"
MARKER = ".benchmark-run"
# what a run folder may hold before its marker: the lock (taken before the marker is written)
# and the workflow's log, which the job's shell opens before the run starts
BEFORE_MARKER = frozenset({LOCK, "log.txt"})
FORMAT = 2  # 2: with a checksum; 1 (no checksum, earlier versions) is still read
RESTART_HINT = "run the same command with --restart to discard it and start over"


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """The config fields that determine a run's numbers (:func:`~benchmark.config.result_fields`;
    machine options such as ``device`` or ``vectorize`` may change on resume), JSON-normal."""
    return json.loads(json.dumps(config.model_dump(include=set(result_fields()))))


def config_difference(saved: dict[str, Any], config: RunConfig) -> list[str]:
    """``["lr: 0.05 -> 0.1", ...]`` between a saved fingerprint and ``config``.

    A field the saved state does not know (added to the schema later, or an algorithm
    registered since) counts as its default, so adding an option does not invalidate every
    finished run of a grid; an option ``config`` does not use (another algorithm's, another
    graph's: held at its default) is no difference, whatever an older file saved for it.
    """
    saved = _relevant(saved)  # older files also fingerprinted some machine options
    current = fingerprint(config)
    defaults = json.loads(json.dumps(option_defaults()))
    unused = config.unused_options()
    changes = []
    for key in sorted((set(saved) | set(current)) - unused):
        old = saved.get(key, defaults.get(key))
        new = current.get(key, "(unknown option)")
        if old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


@dataclass
class Progress:
    """Where a run stands: what a checkpoint saves and what a resumed run starts from."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)  # the latest evaluation
    elapsed_before_s: float = 0.0  # wall time of earlier sessions of this run
    resumed_after: list[int] = field(default_factory=list)  # epochs at which sessions restarted
    started: float = field(default_factory=time.time)  # this session, not saved

    def wall_time(self) -> float:
        return self.elapsed_before_s + time.time() - self.started


# -- RNG states ---------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python generator states, as ``weights_only``-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# -- the output folder -----------------------------------------------------------------------------
class RunDir:
    """The output folder of one run. Construction checks it is writable; it creates nothing.

    Nothing is written before :meth:`session` is entered, which the run does only once the
    config, the data and any checkpoint have been validated: a bad input leaves no file behind.
    """

    def __init__(self, out: str | Path, config: RunConfig) -> None:
        self.path = check_writable_dir(out, "out")
        self.config = config
        self.checkpoint = self.path / CHECKPOINT
        self.metrics = self.path / METRICS
        for name in (CHECKPOINT, METRICS, LOCK, MARKER):  # what is there must be what a run writes
            check_writable_file(self.path / name, "out")
        _check_ours(self.path)

    # -- reading (before any work) --------------------------------------------------------------
    def finished(self) -> RunMetrics | None:
        """The metrics of a finished run of this config, None if there is none.

        Raises :class:`CheckpointError` when ``metrics.json`` is unreadable or belongs to a
        different config: overwriting a result silently would be as bad as reusing it.
        """
        if not self.metrics.is_file():
            return None
        try:
            metrics = RunMetrics.load(self.metrics)
        except UserError as err:
            raise CheckpointError(f"unreadable result: {err}; {RESTART_HINT}") from None
        changes = config_difference(fingerprint(metrics.config), self.config)
        if changes:
            raise CheckpointError(
                f"{self.metrics}: a finished run of a different config ({'; '.join(changes)}); "
                f"{RESTART_HINT}, or choose another --out"
            )
        return metrics

    def load(self, swarm) -> Progress | None:
        """Restore ``swarm`` and the RNGs from the checkpoint; None when there is none.

        Any doubt (unreadable, truncated, other format, other config, shapes that do not fit
        this model or algorithm) is a :class:`CheckpointError`: never load a state half-way.
        """
        if not self.checkpoint.is_file():
            return None
        where = f"checkpoint {self.checkpoint}"
        try:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means the file cannot be trusted
            reason = _first_sentence(err)
            raise CheckpointError(
                f"{where}: cannot be read, truncated or corrupted ({reason}); {RESTART_HINT}"
            ) from None
        if not isinstance(state, dict) or state.get("format") not in (1, FORMAT):
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(
                f"{where}: format {found!r}, this version reads formats 1 and {FORMAT}; "
                f"{RESTART_HINT}"
            )
        if state["format"] == FORMAT and checksum_matches(state) is not True:
            raise CheckpointError(
                f"{where}: damaged (its content no longer matches the checksum written with it, "
                f"so no epoch is resumed from it); {RESTART_HINT}"
            )
        changes = config_difference(state["config"], self.config)
        if changes:
            raise CheckpointError(
                f"{where}: written by a different config ({'; '.join(changes)}); "
                f"{RESTART_HINT}, or choose another --out"
            )
        progress = state["progress"]
        if not 0 < progress["epoch"] < self.config.epochs:
            raise CheckpointError(
                f"{where}: epoch {progress['epoch']} outside 1..{self.config.epochs - 1}; "
                f"{RESTART_HINT}"
            )
        try:
            swarm.load_state_dict(state["swarm"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(
                f"{where}: does not fit this model/algorithm ({_first_sentence(err)}); "
                f"{RESTART_HINT}"
            ) from None
        restore_rng(state["rng"])
        return Progress(
            epoch=progress["epoch"],
            history=progress["history"],
            final=progress["final"],
            elapsed_before_s=progress["elapsed_s"],
            resumed_after=[*progress["resumed_after"], progress["epoch"]],
        )

    # -- writing (inside a session) -------------------------------------------------------------
    @contextmanager
    def session(self, restart: bool = False) -> Iterator[RunDir]:
        """Create the folder and hold its lock; with ``restart`` drop earlier state first."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = open(self.path / LOCK, "a")  # noqa: SIM115 - held for the whole session
        except OSError as err:
            raise ConfigError("out", str(self.path), "a writable directory", err.strerror) from None
        try:
            if not try_lock(lock):
                raise UserError(
                    f"out: {self.path} is in use by another running process; wait for it or "
                    f"choose another --out"
                )
            self._mark()
            for stale in self.path.glob(f".{CHECKPOINT}.*.tmp"):  # a write killed mid-way
                stale.unlink(missing_ok=True)
            for stale in self.path.glob(f".{METRICS}.*.tmp"):
                stale.unlink(missing_ok=True)
            if restart:
                self.checkpoint.unlink(missing_ok=True)
                self.metrics.unlink(missing_ok=True)
            yield self
        finally:
            lock.close()  # releases the flock

    def _mark(self) -> None:
        """Write the marker (:data:`MARKER`) before anything else: the folder is the suite's
        from now on. It names the config's fingerprint by its sha256 (a few bytes: it is
        written even where a checkpoint would not fit)."""
        text = json.dumps(fingerprint(self.config), sort_keys=True)
        marker = json.dumps({"written_by": "benchmark", "fingerprint_sha256":
                             hashlib.sha256(text.encode()).hexdigest()}) + "\n"
        path = self.path / MARKER
        if not path.is_file() or path.read_text(errors="replace") != marker:
            with self.writing():
                atomic_write_text(path, marker)

    def save(self, swarm_state: dict[str, Any], progress: Progress) -> None:
        """Checkpoint ``Swarm.state_dict()`` after ``progress.epoch`` completed epochs
        (temporary file + rename)."""
        state = {
            "format": FORMAT,
            "config": fingerprint(self.config),
            "progress": {
                "epoch": progress.epoch,
                "history": progress.history,
                "final": progress.final,
                "elapsed_s": progress.wall_time(),
                "resumed_after": progress.resumed_after,
            },
            "swarm": swarm_state,
            "rng": capture_rng(),
        }
        with self.writing(), atomic_open(self.checkpoint) as fh:
            torch.save(with_checksum(state), fh)

    def finish(self, metrics: RunMetrics) -> None:
        """Write ``metrics.json`` atomically, then drop the checkpoint it supersedes."""
        with self.writing():
            metrics.save(self.metrics)
        self.checkpoint.unlink(missing_ok=True)


    @contextmanager
    def writing(self) -> Iterator[None]:
        """Writes into the folder (checkpoint, models, metrics.json): a failed one
        (:class:`~benchmark.io.WriteError`: disk full, file size limit...) says whether a run can
        resume; the temporary file is gone and the last checkpoint intact."""
        try:
            yield
        except WriteError as err:
            then = ("the last checkpoint is intact: fix the cause and run the same command again "
                    "to resume" if self.checkpoint.is_file()
                    else "no epoch was saved: fix the cause and run the same command again")
            raise UserError(f"{err}; {then}") from None


def _first_sentence(err: BaseException) -> str:
    """Keep one line: library errors (torch's zip reader) run to a paragraph."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text.split(". ")[0] if text else type(err).__name__


def _relevant(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config without its machine options (a key the schema no longer has is kept, so
    it shows up as a difference)."""
    machine = RunConfig.model_fields.keys() - result_fields()
    return {k: v for k, v in config.items() if k not in machine}


def _check_ours(path: Path) -> None:
    """Refuse an ``--out`` folder holding files the suite did not write (module docstring)."""
    if not path.is_dir() or (path / MARKER).is_file():
        return
    found = sorted(p.name for p in path.iterdir() if p.name not in BEFORE_MARKER)
    if not found or _earlier_run(path):
        return
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise ConfigError("out", str(path), f"a new or empty folder, or a run folder of this suite "
                      f"(with {MARKER})", hint=f"it holds {shown} and nothing says a run wrote "
                      "them; a run would replace files there")


def _earlier_run(path: Path) -> bool:
    """A run folder of a version before the marker: a ``metrics.json`` or ``checkpoint.pt`` in
    the suite's layout (whether it can be used is for :meth:`RunDir.finished` and
    :meth:`RunDir.load` to say)."""
    try:
        metrics = json.loads((path / METRICS).read_text())
        if isinstance(metrics, dict) and {"status", "config", "history"} <= metrics.keys():
            return True
    except (OSError, ValueError):
        pass
    try:  # memory-mapped: the tensors are not read
        state = torch.load(path / CHECKPOINT, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a checkpoint this suite can read: not one of its own
        return False
    return isinstance(state, dict) and {"format", "config", "swarm"} <= state.keys()

