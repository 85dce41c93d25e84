"""The sampler of a study: Optuna's TPE, reseeded per session, never proposing a point twice.

- **Reseeded per session.** A process gets a seed derived from the study and from the number of
  trials the study already holds (:meth:`~benchmark.tuning.spec.Tuning.sampler_seed_for`). With
  one seed in every process, a resumed study replayed the first process's proposals and spent
  its budget on points it had already evaluated. A study run without interruption is one session
  with one seed, so it stays reproducible.
- **Distinct points.** A proposal equal to a point the study has evaluated (complete, pruned),
  is evaluating or has queued is drawn again, from TPE itself, so the search keeps its shape. The
  only point run twice is that of a killed or interrupted trial: its first attempt is FAIL and
  counts for nothing (:mod:`.study`).

TPE (multivariate, Optuna's default for one objective) proposes whole points once it has
``n_startup_trials`` finished trials, independent random values before; this wrapper asks it
for a whole point either way, so the check sees the point before the trial uses any of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ..config import RunConfig
from ..errors import UserError
from .spec import Tuning

# draws of one proposal before a space is declared exhausted: a float space never is, an integer
# one is refused up front when the budget exceeds its points (points_in), so this is a backstop
DRAWS = 200


def search_space(spec: Tuning, method: str) -> dict[str, BaseDistribution]:
    """The distribution of every hyperparameter ``method``'s study searches (integer options
    as integers), from the family's ``tuning.space``."""
    space: dict[str, BaseDistribution] = {}
    for name in spec.params_for(method):
        rng = spec.space[name]
        if RunConfig.model_fields[name].annotation is int:
            space[name] = IntDistribution(int(rng.low), int(rng.high), log=rng.log)
        else:
            space[name] = FloatDistribution(rng.low, rng.high, log=rng.log)
    return space


def points_in(space: dict[str, BaseDistribution]) -> int | None:
    """How many distinct points the space holds; None when that is unbounded (a float axis)."""
    if any(not isinstance(d, IntDistribution) for d in space.values()):
        return None
    return math.prod(d.high - d.low + 1 for d in space.values() if isinstance(d, IntDistribution))


def point_key(params: dict[str, Any]) -> tuple:
    """A point as a hashable key (``8`` and ``8.0`` are the same point)."""
    return tuple(sorted((name, float(value)) for name, value in params.items()))


def taken_points(trials: Iterable[FrozenTrial], but: int | None = None) -> set[tuple]:
    """Points the study has evaluated, is evaluating or has queued (a FAIL trial's point is
    free again: a killed trial's re-run is queued explicitly, anything else failed for
    nothing); ``but`` leaves one trial out (the one being sampled)."""
    taken = set()
    for t in trials:
        if t.number == but:
            continue
        if t.state == TrialState.WAITING:
            params = t.system_attrs.get("fixed_params") or {}
        elif t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            params = t.params
        else:
            continue
        if params:
            taken.add(point_key(params))
    return taken


class DistinctSampler(BaseSampler):
    """``inner`` (a seeded TPE) asked for whole points until one is new to the study."""

    def __init__(self, inner: BaseSampler, space: dict[str, BaseDistribution],
                 draws: int = DRAWS) -> None:
        self.inner, self.space, self.draws = inner, space, draws

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        fixed = trial.system_attrs.get("fixed_params") or {}
        free = {n: d for n, d in search_space.items() if n not in fixed}
        if not free:  # a queued point (the fixed protocol's, or a killed trial's re-run)
            return {}
        taken = taken_points(study.get_trials(deepcopy=False), but=trial.number)
        inner_space = {n: d for n, d in self.inner.infer_relative_search_space(study, trial).items()
                       if n in free}
        for _ in range(self.draws):
            point = self._draw(study, trial, free, inner_space)
            if point_key({**point, **fixed}) not in taken:
                return point
        raise UserError(f"study {study.study_name}: no point of tuning.space left that the study "
                        f"has not evaluated ({self.draws} draws); widen tuning.space or lower "
                        "--trials")

    def _draw(self, study: optuna.Study, trial: FrozenTrial, free: dict[str, BaseDistribution],
              inner_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        point = self.inner.sample_relative(study, trial, inner_space)
        for name, dist in free.items():  # TPE's startup trials: one random value per axis
            if name not in point:
                point[name] = self.inner.sample_independent(study, trial, name, dist)
        return point

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """A parameter outside the study's space (none today): TPE's own value."""
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
