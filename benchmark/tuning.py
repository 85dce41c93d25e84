"""Optuna studies that tune the CCL weights (``lambda_m``, ``lambda_d``) for one (family, alpha).

The paper fixed both weights at 0.1; the best weight plausibly depends on how heterogeneous the
data is, so the suite tunes them per Dirichlet alpha. One study = one journal file under
``studies/`` (Optuna's journal storage: a plain append-only file, safe to copy, easy to resume).

Design choices, and why:

- The objective is the consensus model's accuracy on the **validation split** carved from the
  training set (``train.run(..., eval_split="val")``): the test set is never looked at, so the
  tuned weights do not leak test information into the grid's numbers.
- The trial budget is a *total*. Re-running the same command after a finished study adds no
  trial; after a crash it runs only the missing ones. A trial left RUNNING by a killed process is
  marked FAIL and its parameters are queued again, so no point of the search is lost. That is
  only safe when no other process works on the study, so a process holds an exclusive lock on
  the journal for its whole life (a killed process releases it automatically).
- A diverged training (METHOD.md section 8: CCL with large lambdas explodes on digits) is a
  *pruned* trial, flagged ``diverged``: it counts towards the budget, TPE ranks it below every
  trial that kept learning, and the study goes on.
- MLflow: one parent run per study, one child run per trial (``mlflow.parentRunId``), written
  through :mod:`benchmark.tracking`'s client (no global "active run" state leaks into the
  training code); the inner training runs with ``tracking=False`` so nothing is logged twice.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from .config import RunConfig, build_config, parse_overrides, read_run_file, result_fields
from .errors import ConfigError, UserError, validation_error
from .grid import Tuning, format_float
from .io import atomic_write_json, atomic_write_text, try_lock
from .train import run

PAPER_LAMBDAS = {"lambda_m": 0.1, "lambda_d": 0.1}


def build_spec(data: dict[str, Any]) -> Tuning:
    """A validated ``tuning:`` section (schema: :class:`benchmark.grid.Tuning`); mistakes become
    one-line ``ConfigError`` s."""
    try:
        return Tuning(**data)
    except ValidationError as err:
        raise validation_error(err, Tuning, prefix="tuning.") from None


def load_tuning(path: str | Path | None, overrides: list[str] | None = None
                ) -> tuple[RunConfig, Tuning]:
    """A config file + ``key=value`` overrides -> (base run config of a trial, tuning spec).

    The file is either a family file (``run:`` options, ``grid:`` axes, ``tuning:`` section) or
    a flat run config with an optional ``tuning:`` mapping. Overrides named ``tuning.<key>`` go
    to the tuning section, every other one to the run options (e.g. ``alpha=0.1``).
    """
    run_opts, tuning = read_run_file(path) if path is not None else ({}, {})
    for key, value in parse_overrides(overrides or []).items():
        if key.startswith("tuning."):
            tuning[key.removeprefix("tuning.")] = value
        else:
            run_opts[key] = value
    spec = build_spec(tuning)
    run_opts["method"] = spec.method
    if spec.epochs is not None:
        run_opts["epochs"] = spec.epochs
    if not run_opts.get("val_fraction"):
        run_opts["val_fraction"] = spec.val_fraction
    run_opts["tracking"] = run_opts.get("tracking", True)
    return build_config(run_opts), spec


# ---------------------------------------------------------------------------------------------
# the study


@dataclass
class StudyResult:
    """What ``tune`` reports: the study, where the outputs went, and the best trial."""

    study: optuna.Study
    out_dir: Path
    best: dict[str, Any]


def study_dir(journal: str | Path) -> Path:
    """``studies/<family>/alpha<a>.journal`` -> ``studies/<family>/alpha<a>/`` (outputs)."""
    journal = Path(journal)
    if journal.suffix != ".journal":
        raise ConfigError("--study", str(journal), "a path ending in .journal")
    return journal.with_suffix("")


def tune(config: RunConfig, spec: Tuning, journal: str | Path,
         trials: int | None = None) -> StudyResult:
    """Run the missing trials of a study, then write ``best.json``, ``trials.csv`` and plots."""
    out_dir = study_dir(journal)
    budget = trials if trials is not None else spec.trials
    if budget < 1:
        raise ConfigError("--trials", budget, "a positive integer")
    journal = Path(journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(journal):
        study = open_study(journal, config, spec)
        tracker = StudyTracker(study, config, spec)
        _recover_killed(study, tracker)
        paper = {k: PAPER_LAMBDAS[k] for k in spec.terms}
        if spec.enqueue_paper and all(_in_space(spec, k, v) for k, v in paper.items()):
            study.enqueue_trial(paper, skip_if_exists=True)
        missing = budget - len(finished_trials(study))
        if missing > 0:
            try:
                study.optimize(_Objective(config, spec, tracker), n_trials=missing,
                               gc_after_trial=False)
            except BaseException as exc:  # a bug or an interrupt: the parent run says so
                tracker.abort(exc)
                raise
        best = best_summary(study, config, spec, journal, budget)
        write_outputs(study, spec, best, out_dir)
        tracker.close(best)
    return StudyResult(study, out_dir, best)


def storage(journal: str | Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def open_study(journal: str | Path, config: RunConfig, spec: Tuning) -> optuna.Study:
    """Create or load the study of a journal; refuse one created for another setting.

    Resuming with a different alpha, model or search space would silently mix two searches in
    one history, so the first run records a fingerprint and later runs must match it.
    """
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
    # One study per journal: load the one it holds whatever its name, so a changed alpha is
    # caught by the fingerprint below instead of starting a second study in the same file.
    study = optuna.create_study(
        storage=store, study_name=existing[0] if existing else study_name(config),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=spec.sampler_seed), pruner=pruner,
        load_if_exists=True,
    )
    fingerprint = _fingerprint(config, spec)
    old = study.user_attrs.get("fingerprint")
    if old is None:
        study.set_user_attr("fingerprint", fingerprint)
    else:
        old = _results_only(old)  # older journals also recorded machine options
        # an option added to the schema since the study began counts as its default value,
        # so a new option does not orphan every existing study (as for run checkpoints)
        defaults = _fingerprint(RunConfig.model_construct(), Tuning.model_construct())
        for key in sorted({*old, *fingerprint}):
            before, now = old.get(key, defaults.get(key)), fingerprint.get(key, defaults.get(key))
            if before != now:
                raise UserError(
                    f"study {journal}: created with {key}={before!r}, now {key}={now!r}; "
                    "resume with the same settings or use another --study path"
                )
    return study


def study_name(config: RunConfig) -> str:
    return f"{config.family}-alpha{format_float(config.alpha)}"


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that use up the budget: complete and pruned (diverged ones included)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _fingerprint(config: RunConfig, spec: Tuning) -> dict[str, Any]:
    data = {**config.model_dump(mode="json"), **{f"tuning.{k}": v for k, v in
                                                 spec.model_dump(mode="json").items()}}
    for key in ("lambda_m", "lambda_d", "tuning.trials"):
        data.pop(key)  # the searched values and the budget (it may grow), not settings
    return _results_only(data)


def _results_only(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Settings that change what a trial measures (:func:`benchmark.config.result_fields`): a
    study may resume with other machine options."""
    keep = {*result_fields(), *(f"tuning.{k}" for k in result_fields(Tuning))}
    return {k: v for k, v in fingerprint.items() if k in keep}


def _in_space(spec: Tuning, name: str, value: float) -> bool:
    low, high = getattr(spec, name)
    return low <= value <= high


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
        _repair_torn_tail(fh)
        yield


def _repair_torn_tail(fh) -> None:
    """Drop a half-written last record (a process killed mid-append): Optuna would otherwise
    read the next appended record glued to it and reject the whole journal."""
    size = fh.seek(0, os.SEEK_END)
    if size == 0:
        return
    fh.seek(0)
    data = fh.read()
    if not data.endswith(b"\n"):
        fh.truncate(data.rfind(b"\n") + 1)


def _recover_killed(study: optuna.Study, tracker: StudyTracker) -> None:
    """Trials left RUNNING by a killed process -> FAIL, and their parameters queued again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        params = trial.system_attrs.get("fixed_params") or trial.params
        study.tell(trial.number, state=TrialState.FAIL)
        tracker.end_orphan(trial)
        if params:
            study.enqueue_trial(dict(params), user_attrs={"retry_of": trial.number})


class _Objective:
    """One trial: train with the suggested lambdas, report validation accuracy per epoch."""

    def __init__(self, config: RunConfig, spec: Tuning, tracker: StudyTracker) -> None:
        self.config, self.spec, self.tracker = config, spec, tracker

    def __call__(self, trial: optuna.Trial) -> float:
        params = {name: trial.suggest_float(name, *getattr(self.spec, name), log=self.spec.log)
                  for name in self.spec.terms}
        config = build_config({**self.config.model_dump(), **params, "tracking": False})
        child = self.tracker.start_trial(trial, params)
        state = "failed"
        try:
            value = self._train(trial, config, child)
            state = "complete"
            return value
        except optuna.TrialPruned:
            state = "pruned"
            raise
        finally:
            self.tracker.end_trial(child, state, trial)

    def _train(self, trial: optuna.Trial, config: RunConfig, child) -> float:
        def on_epoch(epoch: int, record: dict[str, Any]) -> None:
            if "consensus_acc" not in record:
                return
            trial.report(record["consensus_acc"], epoch)
            self.tracker.log_epoch(child, epoch, record)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        metrics = run(config, None, eval_split="val", on_epoch=on_epoch)
        value = metrics.final_value("consensus_acc")
        if metrics.status == "diverged" or not math.isfinite(value):
            trial.set_user_attr("diverged", True)
            trial.set_user_attr("diverged_epoch", metrics.diverged_epoch)
            raise optuna.TrialPruned(f"diverged at epoch {metrics.diverged_epoch}")
        return float(value)


# ---------------------------------------------------------------------------------------------
# outputs


def best_summary(study: optuna.Study, config: RunConfig, spec: Tuning, journal: Path,
                 budget: int) -> dict[str, Any]:
    """The content of ``best.json``: best lambdas, their validation accuracy, trial counts."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"study {journal}: no complete trial (all pruned, diverged or failed); "
                        "narrow tuning.lambda_m / tuning.lambda_d or lower lr")
    best = study.best_trial
    lambdas = {"lambda_m": config.lambda_m, "lambda_d": config.lambda_d, **best.params}
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    return {
        "family": config.family,
        "alpha": config.alpha,
        "method": spec.method,
        **lambdas,
        "value": best.value,
        "metric": "validation consensus accuracy (%)",
        "best_trial": best.number,
        "n_complete": counts["complete"],
        "n_pruned": counts["pruned"],
        "n_failed": counts["fail"],
        "n_diverged": sum(bool(t.user_attrs.get("diverged")) for t in study.trials),
        "trials_budget": budget,
        "epochs": config.epochs,
        "paper_value": _paper_value(complete, spec),
        "study": str(journal),
    }


def _paper_value(complete: list[FrozenTrial], spec: Tuning) -> float | None:
    """Validation accuracy of the paper's (0.1, 0.1), when it completed: the point to beat."""
    for t in complete:
        if all(math.isclose(t.params.get(k, math.nan), PAPER_LAMBDAS[k]) for k in spec.terms):
            return t.value
    return None


def write_outputs(study: optuna.Study, spec: Tuning, best: dict[str, Any], out_dir: Path
                  ) -> None:
    """``best.json`` (what the grid reads), ``trials.csv`` and the two plots, all atomic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    atomic_write_text(out_dir / "trials.csv", frame.to_csv(index=False))
    plot_history(study, out_dir / "history.png")
    plot_sensitivity(study, spec, out_dir / "sensitivity.png")
    atomic_write_json(out_dir / "best.json", best)  # last: its presence means "all written"


def plot_history(study: optuna.Study, path: Path) -> None:
    """Value of every complete trial in trial order, the running best, and pruned trials' last
    reported value (Optuna's own history plot leaves pruned trials out, hiding the pruner)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
              if t.intermediate_values]
    if complete:
        xs = [t.number for t in complete]
        ys = [t.value for t in complete]
        ax.scatter(xs, ys, label="complete", color="C0", zorder=3)
        running = [max(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, running, where="post", color="C3", label="best so far")
    if pruned:
        ax.scatter([t.number for t in pruned],
                   [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="grey", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation consensus accuracy (%)")
    ax.set_title(f"{study.study_name}: optimisation history")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_sensitivity(study: optuna.Study, spec: Tuning, path: Path) -> None:
    """lambda_m x lambda_d over the whole search space, every trial coloured by its value;
    pruned/diverged/failed trials as hollow markers, the paper's point as a cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    trials = [t for t in study.trials if {"lambda_m", "lambda_d"} <= set(t.params)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    if complete:
        points = ax.scatter([t.params["lambda_m"] for t in complete],
                            [t.params["lambda_d"] for t in complete],
                            c=[t.value for t in complete], cmap="viridis", s=50,
                            edgecolors="black", zorder=3)
        fig.colorbar(points, ax=ax, label="validation consensus accuracy (%)")
        best = study.best_trial
        ax.scatter([best.params["lambda_m"]], [best.params["lambda_d"]], marker="*", s=250,
                   color="C3", zorder=4, label="best")
    if others:
        ax.scatter([t.params["lambda_m"] for t in others], [t.params["lambda_d"] for t in others],
                   facecolors="none", edgecolors="grey", s=50, label="pruned / diverged / failed")
    ax.scatter([PAPER_LAMBDAS["lambda_m"]], [PAPER_LAMBDAS["lambda_d"]], marker="+", s=120,
               color="black", label="paper (0.1, 0.1)")
    if spec.log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(*spec.lambda_m)
    ax.set_ylim(*spec.lambda_d)
    ax.set_xlabel("lambda_m")
    ax.set_ylabel("lambda_d")
    ax.set_title(f"{study.study_name}: sensitivity")
    ax.legend(loc="best", fontsize="small")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """Render to memory, then write atomically (a killed job leaves no truncated PNG)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    from .io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())


def best_table(best_files: list[str | Path]) -> Any:
    """One row per study: family, alpha, best lambdas, value, trial counts (sorted by alpha)."""
    import pandas as pd

    rows = [json.loads(Path(p).read_text()) for p in best_files]
    columns = ["family", "alpha", "method", "lambda_m", "lambda_d", "value", "paper_value",
               "n_complete", "n_pruned", "n_failed", "epochs"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["family", "alpha"]).reset_index(drop=True)


def write_best_table(best_files: list[str | Path], out: str | Path) -> None:
    """``<out>.csv`` and ``<out>.md``: the table of best lambdas per alpha."""
    frame = best_table(best_files)
    out = Path(out)
    atomic_write_text(out.with_suffix(".csv"), frame.to_csv(index=False))
    atomic_write_text(out.with_suffix(".md"), frame.to_markdown(index=False, floatfmt=".4g") + "\n")


# ---------------------------------------------------------------------------------------------
# MLflow


class StudyTracker:
    """Parent run = the study, child run = a trial; a no-op when the run config says
    ``tracking: false``. The parent run id lives in the study, so a resumed study keeps
    logging its trials under the same parent. Every write goes through
    :mod:`benchmark.tracking` (SQLite lock retries, batched metrics), as training runs do."""

    VAL_KEYS = ("consensus_acc", "local_acc_mean", "local_acc_std")

    def __init__(self, study: optuna.Study, config: RunConfig, spec: Tuning) -> None:
        self.study, self.config = study, config
        self.client = None
        if not config.tracking:
            return
        from .tracking import MlflowTracker, client, experiment_id, retry

        self._tracker, self._retry = MlflowTracker, retry
        self.client = client()
        self.experiment_id = experiment_id(self.client, config.family)
        parent_id = study.user_attrs.get("mlflow_run_id")
        if parent_id is not None and self._exists(parent_id):
            self.parent = MlflowTracker(self.client, parent_id, config)
            retry(lambda: self.client.update_run(parent_id, status="RUNNING"), "update_run")
            return
        tags = {"kind": "study", "family": config.family, "alpha": config.alpha,
                "method": spec.method, "dataset": config.dataset, "model": config.model,
                "topology": config.topology, "n_agents": config.n_agents}
        self.parent = self._create(study.study_name, tags)
        study.set_user_attr("mlflow_run_id", self.parent.run_id)
        params = {**{f"tuning.{k}": v for k, v in spec.model_dump().items()},
                  "alpha": config.alpha, "epochs": config.epochs, "lr": config.lr,
                  "val_fraction": config.val_fraction, "seed": config.seed}
        self.parent.log_batch(params=sorted(params.items()))

    def _create(self, name: str, tags: dict[str, Any]):
        return self._tracker.create(self.client, self.experiment_id, name, tags, self.config)

    def _exists(self, run_id: str) -> bool:
        try:
            self._retry(lambda: self.client.get_run(run_id), "get_run")
        except Exception:  # deleted, or another tracking store: start a fresh parent
            return False
        return True

    def start_trial(self, trial: optuna.Trial, params: dict[str, float]):
        """A child run under the study's parent (None when tracking is off)."""
        if self.client is None:
            return None
        tags = {"mlflow.parentRunId": self.parent.run_id, "kind": "trial",
                "trial": trial.number, "state": "running", "alpha": self.config.alpha}
        if trial.user_attrs.get("retry_of") is not None:
            tags["retry_of"] = trial.user_attrs["retry_of"]
        child = self._create(f"trial-{trial.number}", tags)
        trial.set_user_attr("mlflow_run_id", child.run_id)
        child.log_batch(params=sorted(params.items()))
        return child

    def log_epoch(self, child, epoch: int, record: dict[str, Any]) -> None:
        """Per-epoch metrics; the accuracies are validation ones, and named so."""
        if child is not None:
            child.log_epoch(epoch, {(f"val_{k}" if k in self.VAL_KEYS else k): v
                                    for k, v in record.items()})

    def end_trial(self, child, state: str, trial: optuna.Trial) -> None:
        if child is None:
            return
        tags = [("state", state)]
        if trial.user_attrs.get("diverged"):
            tags.append(("diverged", "true"))
        child.log_batch(tags=tags)
        child.end({"complete": "FINISHED", "pruned": "KILLED"}.get(state, "FAILED"))

    def end_orphan(self, trial: FrozenTrial) -> None:
        """Close the child run of a trial whose process was killed (it stayed RUNNING)."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        if self.client is not None and run_id is not None and self._exists(run_id):
            orphan = self._tracker(self.client, run_id, self.config)
            orphan.log_batch(tags=[("state", "failed")])
            orphan.end("FAILED", "process killed during the trial; parameters re-queued")

    def abort(self, exc: BaseException) -> None:
        """End the parent run KILLED (interrupt) or FAILED (error); a rerun reopens it."""
        if self.client is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.parent.end(status, f"{type(exc).__name__}: {exc}")

    def close(self, best: dict[str, Any]) -> None:
        if self.client is None:
            return
        keys = ("value", "lambda_m", "lambda_d", "n_complete", "n_pruned", "n_failed")
        self.parent.log_batch(metrics=[(f"best_{k}", float(best[k]), 0) for k in keys
                                    if best.get(k) is not None])
        self.parent.end("FINISHED")
