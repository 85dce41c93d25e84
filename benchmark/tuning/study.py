"""One Optuna study per (family, method, alpha, graph): open, lock, check, resume, run the
missing trials.

- The trial budget is a *total*. Re-running the same command after a finished study adds no
  trial; after a crash it runs only the missing ones; a budget below what the study holds is
  refused (``best.json`` is left as it is). A trial left RUNNING by a killed process is marked
  FAIL and its point is queued again (run once more, counted once), so no point of the search is
  lost; an interrupted one (Ctrl-C, SIGTERM) is settled the same way before the process exits.
  That is only safe when no other process works on the study, so a process holds an exclusive
  lock on the journal for its whole life (a killed process releases it automatically).
- Every other trial evaluates a point the study has not seen: the sampler is reseeded per
  session and redraws a point the study holds (:mod:`.sampler`).
- The journal (Optuna's append-only JSON-lines file) is checked line by line before use: a torn
  last line (a process killed mid-append) is dropped; anything else that is not a record is
  refused with its line number, never cut.
- Resuming with other settings would mix two searches in one history: the first run records a
  fingerprint of every setting that changes results, later runs must match it.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import RunConfig, graph_label, graph_of, option_defaults, result_fields
from ..errors import ConfigError, UserError
from ..io import try_lock
from .objective import Objective, TrialInterrupted
from .outputs import best_summary, write_outputs
from .sampler import DistinctSampler, points_in, search_space
from .spec import Tuning
from .tracker import StudyTracker

# what the study objective is called in optuna-dashboard and in trials.csv
METRIC = "val_consensus_acc"
_BUDGET = ("trials",)  # a study may resume with a larger budget


@dataclass
class StudyResult:
    """What ``tune`` reports: the study, where the outputs went, and the best trial."""

    study: optuna.Study
    out_dir: Path
    best: dict[str, Any]


def study_dir(journal: str | Path) -> Path:
    """``studies/<family>/<method>/<graph>/alpha<a>.journal`` -> ``.../alpha<a>/`` (the
    outputs), after checking that the path can be a journal file."""
    journal = Path(journal)
    if journal.suffix != ".journal":
        raise ConfigError("--study", str(journal), "a path ending in .journal")
    if journal.is_dir():
        raise ConfigError("--study", str(journal), "a journal file", hint="it is a directory")
    for parent in journal.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError("--study", str(journal), "a path under a directory",
                                  hint=f"{parent} is a file")
            break
    return journal.with_suffix("")


def tune(config: RunConfig, spec: Tuning, journal: str | Path,
         trials: int | None = None) -> StudyResult:
    """Run the missing trials of a study, then write ``best.json``, ``trials.csv`` and plots."""
    out_dir = study_dir(journal)
    budget = trials if trials is not None else spec.trials
    if budget < 1:
        raise ConfigError("--trials", budget, "a positive integer")
    points = points_in(search_space(spec, config.method))
    if points is not None and budget > points:
        raise ConfigError("--trials", budget, f"at most {points}, the points of tuning.space "
                          f"for {', '.join(spec.params_for(config.method))}")
    journal = Path(journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(journal):
        study = open_study(journal, config, spec)
        done = len(finished_trials(study))
        if budget < done:  # nothing changed: the journal, best.json and MLflow stay as they are
            raise ConfigError("--trials", budget, f"at least {done}, the finished trials the "
                              f"study holds (a budget is a total of complete + pruned trials)",
                              hint=f"{journal} keeps them; use another --study path for a "
                              "smaller study")
        print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {study.study_name}: {done} of {budget} "
              f"trials finished; searching {', '.join(spec.params_for(config.method))}",
              flush=True)
        tracker = StudyTracker(study, config, spec)
        _settle_unfinished(study, tracker, say=True)
        missing = budget - done
        # the fixed points first, as far as the budget goes (no trial is left WAITING)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        for point in spec.start_points(config)[:max(0, missing - len(waiting))]:
            study.enqueue_trial(point, skip_if_exists=True)
        if missing > 0:
            try:
                study.optimize(Objective(config, spec, tracker), n_trials=missing,
                               gc_after_trial=False)
            except (TrialInterrupted, KeyboardInterrupt):
                # settled now, silently: the CLI's one line says how to resume
                _settle_unfinished(study, tracker, say=False)
                tracker.abort(KeyboardInterrupt())
                raise KeyboardInterrupt from None
            except BaseException as exc:  # a bug: the parent run says so
                tracker.abort(exc)
                raise
        best = best_summary(study, config, spec, journal, budget)
        files = write_outputs(study, config, spec, best, out_dir)
        tracker.close(best, files)
    return StudyResult(study, out_dir, best)


def storage(journal: str | Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def open_study(journal: str | Path, config: RunConfig, spec: Tuning) -> optuna.Study:
    """Create or load the study of a journal; refuse one created for another setting."""
    pruner: optuna.pruners.BasePruner
    if spec.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs)
    elif spec.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.epochs)
    else:
        pruner = optuna.pruners.NopPruner()
    store = storage(journal)
    existing = [s.study_name for s in store.get_all_studies()]
    # One study per journal: load the one it holds whatever its name, so a changed alpha or
    # method is caught by the fingerprint below instead of starting a second study in the file.
    name = existing[0] if existing else study_name(config)
    held = len(store.get_all_trials(store.get_study_id_from_name(name), deepcopy=False)
               ) if existing else 0
    tpe = optuna.samplers.TPESampler(seed=spec.sampler_seed_for(name, held))
    sampler = DistinctSampler(tpe, search_space(spec, config.method))
    if existing:  # loaded, not created again: opening a study writes nothing to its journal
        study = optuna.load_study(study_name=name, storage=store, sampler=sampler, pruner=pruner)
    else:
        study = optuna.create_study(storage=store, study_name=name, direction="maximize",
                                    sampler=sampler, pruner=pruner)
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, still there in 4.x
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])
    fingerprint = _fingerprint(config, spec)
    old = study.user_attrs.get("fingerprint")
    if old is None:
        study.set_user_attr("fingerprint", fingerprint)
        return study
    old = _results_only(old)
    # an option added to the schema (or by an algorithm registered) since the study began counts
    # as its default value, so a new option does not orphan every existing study, and an option
    # the method does not use is no difference (as for run checkpoints)
    defaults = {**_json_safe(option_defaults()),
                **_fingerprint(RunConfig.model_construct(), Tuning.model_construct())}
    for key in sorted({*old, *fingerprint} - config.unused_options()):
        before, now = old.get(key, defaults.get(key)), fingerprint.get(key, defaults.get(key))
        if before != now:
            raise UserError(
                f"study {journal}: created with {key}={before!r}, now {key}={now!r}; "
                f"resume with the same settings, use another --study path, or delete {journal} "
                "to start the study over"
            )
    return study


def study_name(config: RunConfig) -> str:
    """``digits-ccl-ring-n16-alpha0.01``: the study's name in its journal and the dashboard."""
    return (f"{config.family}-{config.method}-{graph_label(graph_of(config))}"
            f"-alpha{float(config.alpha)!r}")


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that use up the budget: complete and pruned (diverged ones included)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _fingerprint(config: RunConfig, spec: Tuning) -> dict[str, Any]:
    """The settings that change what a trial measures; the searched values and the budget are
    not settings, and machine options (threads, device, tracking...) may differ on a resume."""
    searched = set(spec.params_for(config.method)) if config.method else set()
    run = {k: v for k, v in config.model_dump(mode="json").items()
           if k in result_fields() and k not in searched}
    tuning = {f"tuning.{k}": v for k, v in spec.model_dump(mode="json").items()
              if k in result_fields(Tuning) and k not in _BUDGET}
    return _json_safe({**run, **tuning})


def _results_only(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """What an older journal recorded, less the options known today not to change results."""
    machine = {*(set(RunConfig.model_fields) - result_fields()),
               *(f"tuning.{k}" for k in set(Tuning.model_fields) - result_fields(Tuning))}
    return {k: v for k, v in fingerprint.items() if k not in machine}


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    """As the journal gives it back (tuples become lists)."""
    return json.loads(json.dumps(data))


# ---------------------------------------------------------------------------------------------
# the journal on disk


@contextmanager
def _exclusive(journal: Path) -> Iterator[None]:
    """Hold an exclusive lock on the journal while this process works on the study.

    Only then is a RUNNING trial found at start-up certainly a leftover of a killed process.
    ``flock`` is released by the kernel when the holder dies, so a crash never blocks a rerun.
    (Optuna's own lock, ``<journal>.lock``, only guards single appends.)
    """
    with open(journal, "ab+") as fh:  # closing it releases the lock
        if not try_lock(fh):
            raise UserError(f"study {journal} is being tuned by another process; "
                            "wait for it or use another --study path")
        check_journal(fh, journal)
        yield


def check_journal(fh, journal: Path) -> None:
    """Refuse a journal that holds anything but Optuna records, naming the line; drop only a
    torn last record (a process killed mid-append), which Optuna would otherwise glue to the
    next record and then reject the whole file."""
    fh.seek(0)
    data = fh.read()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for number, line in enumerate(lines, start=1):
        if not _is_record(line):
            _refuse(journal, number)
    if tail and not _is_torn_record(tail):
        _refuse(journal, len(lines) + 1)
    if tail:
        fh.truncate(len(data) - len(tail))
        print(f"study {journal}: dropped a half-written last record (line {len(lines) + 1})",
              flush=True)


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and "op_code" in record


def _is_torn_record(tail: bytes) -> bool:
    """The start of a record as Optuna writes them (``{"op_code":...``), cut short."""
    try:
        text = tail.decode("utf-8")
    except UnicodeDecodeError:
        return False
    head = '{"op_code":'
    return text.startswith(head) or head.startswith(text)


def _refuse(journal: Path, line: int) -> None:
    raise UserError(
        f"study {journal}: line {line} is not an Optuna journal record (garbage or binary data); "
        f"nothing was changed. To start the study over: rm {journal} (then rerun the command)")


def _settle_unfinished(study: optuna.Study, tracker: StudyTracker, say: bool) -> None:
    """Trials left RUNNING (by a killed process, or by this one when interrupted) -> FAIL, and
    their points queued again: each is re-run once and counts once."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        params = trial.system_attrs.get("fixed_params") or trial.params
        study.tell(trial.number, state=TrialState.FAIL)
        tracker.end_orphan(trial)
        if params:
            study.enqueue_trial(dict(params), user_attrs={"retry_of": trial.number})
        if say:
            print(f"trial {trial.number} was left RUNNING by a killed process: marked FAIL"
                  + (f", its parameters {dict(params)} queued again" if params else ""),
                  flush=True)
