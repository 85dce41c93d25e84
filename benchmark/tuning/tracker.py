"""MLflow for a study: the parent run is the study, a child run (``mlflow.parentRunId``) a trial.

Written through :mod:`benchmark.tracking`'s public API (lock retries, batched writes), as
training runs are; the inner training runs with ``tracking=False`` so nothing is logged twice.
As for training runs, a study the workflow starts logs to the family's experiment and one
started by hand to ``<family>-manual``; the parent is named after the study (``ccl ring-16
a0.01 study``), each child after its study and trial (``ccl ring-16 a0.01 trial 3``), so names
stay unambiguous in an experiment holding many studies.
The parent run id lives in the study, so a resumed study keeps logging under the same parent
(in the same experiment; a study resumed from elsewhere gets a parent in its new experiment).
A trial's MLflow status is FINISHED when it trained (complete, or pruned: its ``state`` tag says
which), FAILED when it crashed or its process was killed; the parent ends FINISHED with
``best.json`` and the plots as artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from ..config import RunConfig
from .spec import Tuning

VAL_KEYS = ("consensus_acc", "local_acc_mean", "local_acc_std")
# MLflow status of a trial's child run by the trial's end state (else FAILED)
_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED"}


class StudyTracker:
    """A no-op when the run config says ``tracking: false``."""

    def __init__(self, study: optuna.Study, config: RunConfig, spec: Tuning) -> None:
        self.study, self.config = study, config
        self.store = None
        if not config.tracking:
            return
        from .. import tracking

        self.tracking = tracking
        self.store = tracking.client()
        self.experiment = tracking.experiment_id(self.store, tracking.experiment_name(config))
        self.setting = tracking.setting_name(config)
        parent_id = study.user_attrs.get("mlflow_run_id")
        if parent_id is not None and self._experiment_of(parent_id) == self.experiment:
            self.parent = tracking.MlflowTracker(self.store, parent_id, config)
            tracking.retry(lambda: self.store.update_run(parent_id, status="RUNNING"),
                           "update_run")
            return
        tags = {"kind": "study", "family": config.family, "alpha": config.alpha,
                "method": config.method, "dataset": config.dataset, "model": config.model,
                "topology": config.topology, "n_agents": config.n_agents,
                "searched": ",".join(spec.params_for(config.method)),
                "study": study.study_name, "origin": tracking.origin()}
        self.parent = self._create(f"{self.setting} study", tags)
        study.set_user_attr("mlflow_run_id", self.parent.run_id)
        params = {**{f"tuning.{k}": v for k, v in tracking.flatten(spec.model_dump()).items()},
                  "method": config.method, "alpha": config.alpha, "epochs": config.epochs,
                  "lr": config.lr, "val_fraction": config.val_fraction, "seed": config.seed}
        self.parent.log_batch(params=sorted(params.items()))

    def _create(self, name: str, tags: dict[str, Any]):
        return self.tracking.MlflowTracker.create(self.store, self.experiment, name, tags,
                                                  self.config)

    def _run(self, run_id: str):
        """The MLflow run; None when it is gone (deleted, or another store)."""
        try:
            return self.tracking.retry(lambda: self.store.get_run(run_id), "get_run")
        except Exception:  # deleted, or another tracking store: start a fresh parent
            return None

    def _experiment_of(self, run_id: str) -> str | None:
        run = self._run(run_id)
        return run.info.experiment_id if run is not None else None

    def _status(self, run_id: str) -> str | None:
        run = self._run(run_id)
        return run.info.status if run is not None else None

    def start_trial(self, trial: optuna.Trial, params: dict[str, float]):
        """A child run under the study's parent (None when tracking is off)."""
        if self.store is None:
            return None
        tags = {"mlflow.parentRunId": self.parent.run_id, "kind": "trial",
                "trial": trial.number, "state": "running", "alpha": self.config.alpha,
                "method": self.config.method}
        if trial.user_attrs.get("retry_of") is not None:
            tags["retry_of"] = trial.user_attrs["retry_of"]
        child = self._create(f"{self.setting} trial {trial.number}", tags)
        trial.set_user_attr("mlflow_run_id", child.run_id)
        child.log_batch(params=sorted(params.items()))
        return child

    def log_epoch(self, child, epoch: int, record: dict[str, Any]) -> None:
        """Per-epoch metrics; the accuracies are validation ones, and named so."""
        if child is not None:
            child.log_epoch(epoch, {(f"val_{k}" if k in VAL_KEYS else k): v
                                    for k, v in record.items()})

    def end_trial(self, child, state: str, trial: optuna.Trial) -> None:
        if child is None:
            return
        tags = [("state", state)]
        if trial.user_attrs.get("diverged"):
            tags.append(("diverged", "true"))
        child.log_batch(tags=tags)
        child.end(_STATUS.get(state, "FAILED"))

    def end_orphan(self, trial: FrozenTrial) -> None:
        """Close the child run of a trial whose process was killed (it stayed RUNNING); an
        interrupted trial's run, already ended KILLED, stays as it is."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        if self.store is not None and run_id is not None and self._status(run_id) == "RUNNING":
            orphan = self.tracking.MlflowTracker(self.store, run_id, self.config)
            orphan.log_batch(tags=[("state", "failed")])
            orphan.end("FAILED", "process killed during the trial; parameters re-queued")

    def abort(self, exc: BaseException) -> None:
        """End the parent run KILLED (interrupt) or FAILED (error); a rerun reopens it."""
        if self.store is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            self.parent.end(status, f"{type(exc).__name__}: {exc}")

    def close(self, best: dict[str, Any], files: list[Path]) -> None:
        """The best values and trial counts as metrics, best.json and the plots as artifacts."""
        if self.store is None:
            return
        figures = {"value": best["value"], "n_complete": best["n_complete"],
                   "n_pruned": best["n_pruned"], "n_failed": best["n_failed"], **best["values"]}
        self.parent.log_batch(metrics=[(f"best_{k}", float(v), 0) for k, v in figures.items()
                                       if v is not None])
        self.parent.log_files(files)
        self.parent.end("FINISHED")
