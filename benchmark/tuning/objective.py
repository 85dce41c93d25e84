"""One trial: train with the suggested hyperparameters, report validation accuracy per epoch.

- The objective is the consensus model's accuracy on the **validation split** carved from the
  training set (``train.run(..., eval_split="val")``): the test set is never looked at, so the
  tuned values do not leak test information into the grid's numbers.
- Every evaluation epoch is reported to the pruner, but a trial is never pruned at its last
  epoch: it has trained the whole budget, so its value is final and it completes.
- A diverged training (METHOD.md section 8) is a *pruned* trial flagged ``diverged``: it counts
  towards the budget, TPE ranks it below every trial that kept learning, and the study goes on.
- An interrupt (Ctrl-C, SIGTERM) leaves the trial unfinished, never failed or pruned: it is run
  again on resume (:class:`TrialInterrupted`).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution

from ..config import RunConfig, build_config
from ..train import run
from .sampler import search_space
from .spec import Tuning


class TrialInterrupted(BaseException):
    """Ctrl-C or SIGTERM during a trial. Not a ``KeyboardInterrupt``: Optuna would catch that,
    record the trial FAIL (its point lost) and log a traceback. This passes through Optuna and
    leaves the trial RUNNING, as a killed process does; ``tune`` then settles it like a killed
    trial (FAIL, its point queued again) and the CLI says one line."""


class Objective:
    def __init__(self, config: RunConfig, spec: Tuning, tracker) -> None:
        self.config, self.spec, self.tracker = config, spec, tracker
        self.space = search_space(spec, config.method)

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """The method's hyperparameters, each from its range in ``tuning.space``."""
        params: dict[str, float] = {}
        for name, dist in self.space.items():
            if isinstance(dist, IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
            else:
                assert isinstance(dist, FloatDistribution)
                params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        return params

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._evaluate(trial)
        except KeyboardInterrupt:
            raise TrialInterrupted from None

    def _evaluate(self, trial: optuna.Trial) -> float:
        params = self.suggest(trial)
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None:
            print(f"trial {trial.number} re-runs trial {retry_of} (killed or interrupted): "
                  f"{params}", flush=True)
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
        except KeyboardInterrupt:
            state = "interrupted"
            raise
        finally:
            self.tracker.end_trial(child, state, trial)

    def _train(self, trial: optuna.Trial, config: RunConfig, child) -> float:
        def on_epoch(epoch: int, record: dict[str, Any]) -> None:
            if "consensus_acc" not in record:
                return
            trial.report(record["consensus_acc"], epoch)
            self.tracker.log_epoch(child, epoch, record)
            if epoch < config.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        metrics = run(config, None, eval_split="val", on_epoch=on_epoch)
        value = metrics.final_value("consensus_acc")
        if metrics.status == "diverged" or not math.isfinite(value):
            trial.set_user_attr("diverged", True)
            trial.set_user_attr("diverged_epoch", metrics.diverged_epoch)
            raise optuna.TrialPruned(f"diverged at epoch {metrics.diverged_epoch}")
        return float(value)
