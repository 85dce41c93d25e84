"""The ``tuning:`` section of a family file: the protocol, the search spaces and the one budget.

Every method of a grid gets the same budget (trials, epochs per trial, pruner) and searches its
own hyperparameters: a method without CCL searches ``baseline`` (default: ``lr``), a CCL preset
searches ``ccl`` (default: its own ``lambda_m`` / ``lambda_d``; add ``lr`` to search it too).
The ranges live in ``space``, one per hyperparameter, so every method that searches ``lr`` draws
it from the same range. Equal budgets are the point: a table in which only the proposed method
was tuned compares a tuned method against untuned ones.

This module imports neither Optuna nor torch: the workflow reads it to plan the DAG.
"""

from __future__ import annotations

import hashlib
import math
import operator
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from ..config import (
    MACHINE,
    RunConfig,
    build_config,
    numeric_options,
    parse_overrides,
    read_run_file,
)
from ..errors import ConfigError, check_distinct, no_bool_for_numbers, validation_error
from ..methods import METHODS

# The paper's CCL weights (METHOD.md section 5): the first point of every CCL study.
PAPER_LAMBDAS = {"lambda_m": 0.1, "lambda_d": 0.1}
PROTOCOLS = ("fixed", "tuned", "both")


class Range(BaseModel):
    """A search range: ``[low, high]`` (log-uniform by default) or ``{low, high, log}``."""

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    log: bool = True

    _numbers = field_validator("*", mode="before")(no_bool_for_numbers)

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        if isinstance(data, list | tuple) and len(data) == 2:
            return {"low": data[0], "high": data[1]}
        return data

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _default_space() -> dict[str, Range]:
    return {"lr": Range(low=1e-3, high=1.0), "lambda_m": Range(low=1e-3, high=1.0),
            "lambda_d": Range(low=1e-3, high=1.0)}


# The bounds a RunConfig field declares (pydantic keeps them as annotated_types metadata).
_BOUNDS = (("ge", ">=", operator.ge), ("gt", ">", operator.gt), ("le", "<=", operator.le),
           ("lt", "<", operator.lt))


def _within_limits(name: str, rng: Range, field: FieldInfo) -> None:
    """A range the option itself accepts end to end (``momentum: [0.5, 1.5]`` would reach
    trials with momentum >= 1, refused only once the study exists), with whole-number bounds
    for an integer option (its trials draw integers)."""
    limits = [(symbol, getattr(meta, attr), test) for meta in field.metadata
              for attr, symbol, test in _BOUNDS if hasattr(meta, attr)]
    if not all(test(v, bound) for v in (rng.low, rng.high) for _, bound, test in limits):
        own = " and ".join(f"{symbol} {bound}" for symbol, bound, _ in limits)
        raise ConfigError(f"tuning.space.{name}", [rng.low, rng.high],
                          f"a range within {name}'s own limits ({own})")
    if field.annotation is int and not (rng.low.is_integer() and rng.high.is_integer()):
        raise ConfigError(f"tuning.space.{name}", [rng.low, rng.high],
                          f"whole-number bounds ({name} is an integer option)")


class Tuning(BaseModel):
    """How a family's runs get their hyperparameters, and the Optuna studies that tune them.

    ``protocol: fixed``: every run uses the ``run:`` values (the paper's protocol); ``tuned``:
    every method uses the best values of its own study at its alpha on its graph
    (``studies/<family>/<method>/<graph>/alpha<a>/best.json``); ``both``: the two side by side
    (tuned runs under ``results/<family>/tuned/``). The other keys describe the studies, which
    train with the family's ``run:`` options and their graph's for ``epochs`` epochs each.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # how the grid uses the studies: changes nothing a study computes
    protocol: Literal["fixed", "tuned", "both"] = Field("fixed", json_schema_extra=MACHINE)
    trials: int = Field(20, ge=1)  # total budget per study: COMPLETE + PRUNED trials
    epochs: int | None = Field(None, ge=1)  # budget per trial; None = the run's epochs
    space: dict[str, Range] = Field(default_factory=_default_space)  # merged over the defaults
    baseline: list[str] = ["lr"]  # what a method without CCL searches
    ccl: list[str] = ["lambda_m", "lambda_d"]  # what a CCL preset searches (its own terms)
    val_fraction: float = Field(0.1, gt=0, le=0.5)  # used when the run config has none
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(3, ge=0)  # median pruner: trials that are never pruned
    warmup_epochs: int = Field(1, ge=0)  # median pruner: epochs before a trial may be pruned
    sampler_seed: int = Field(0, ge=0)  # mixed with the study and its session (sampler.py)
    enqueue_paper: bool = True  # the fixed protocol's point (paper lambdas, family lr) first

    _numbers = field_validator("*", mode="before")(no_bool_for_numbers)

    @field_validator("space", mode="before")
    @classmethod
    def _over_defaults(cls, space: Any) -> Any:
        """A family's ranges replace the defaults one by one (``space: {lr: [0.01, 0.5]}``)."""
        return {**_default_space(), **space} if isinstance(space, dict) else space

    @field_validator("space")
    @classmethod
    def _ranges(cls, space: dict[str, Range]) -> dict[str, Range]:
        numeric = numeric_options()  # the registered algorithms' numeric options included
        for name, rng in space.items():
            if name not in numeric:
                raise ConfigError(f"tuning.space.{name}", "(not a numeric run option)",
                                  list(numeric))
            finite = math.isfinite(rng.low) and math.isfinite(rng.high)
            if not finite or not rng.low < rng.high or rng.low < 0 or (rng.log and rng.low <= 0):
                allowed = ("finite [low, high] with 0 < low < high" if rng.log
                           else "finite [low, high] with 0 <= low < high")
                raise ConfigError(f"tuning.space.{name}", [rng.low, rng.high], allowed)
            _within_limits(name, rng, numeric[name])
        return space

    @field_validator("baseline", "ccl")
    @classmethod
    def _searched_once(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return check_distinct(f"tuning.{info.field_name}", v)  # twice: one name, two draws

    @model_validator(mode="after")
    def _declared(self) -> Tuning:
        for key in ("baseline", "ccl"):
            for name in getattr(self, key):
                if name not in self.space:
                    raise ConfigError(f"tuning.{key}", name,
                                      f"a hyperparameter with a range in tuning.space "
                                      f"({', '.join(self.space) or 'none'})")
        return self

    def params_for(self, method: str) -> tuple[str, ...]:
        """The hyperparameters ``method``'s study searches: a baseline its ``baseline`` list, a
        CCL preset its ``ccl`` list minus the lambdas the preset zeroes (ccl-mv: no lambda_d)."""
        terms = METHODS[method].ccl_terms
        if not terms:
            return tuple(self.baseline)
        lambdas = {"lambda_m", "lambda_d"}
        return tuple(p for p in self.ccl if p not in lambdas or p in terms)

    def start_points(self, config: RunConfig) -> list[dict[str, float]]:
        """The points a study tries first: the paper's lambdas with the family's other values
        (its fixed lr is trial 0 of every lr study), then the family's own fixed point if it
        differs. A point outside the space is left out."""
        names = self.params_for(config.method)
        family = {p: float(getattr(config, p)) for p in names}
        paper = {**family, **{p: v for p, v in PAPER_LAMBDAS.items() if p in family}}
        points = [paper] if self.enqueue_paper else []
        points += [family] if family != paper or not self.enqueue_paper else []
        return [pt for pt in points
                if pt and all(self.space[p].contains(v) for p, v in pt.items())]

    def sampler_seed_for(self, study: str, held: int) -> int:
        """The sampler's seed for a session of ``study`` (its name) that starts with ``held``
        trials: one per study, so methods, alphas and graphs do not all try the same points,
        and one per session, so a resumed study does not replay its first session's draws."""
        key = f"{self.sampler_seed}/{study}/{held}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:4], "big")


def build_spec(data: dict[str, Any]) -> Tuning:
    """A validated ``tuning:`` section; a mistake is one ``ConfigError`` naming the field."""
    if "lambdas" in data or "method" in data:
        old = "lambdas" if "lambdas" in data else "method"
        raise ConfigError(
            f"tuning.{old}", data[old], "(removed) tuning.protocol: fixed | tuned | both",
            hint="every method is now tuned with the same budget; 'lambdas: tuned' is "
                 "'protocol: tuned', and `tune` takes the method as method=<name>")
    for old in ("lambda_m", "lambda_d", "log"):
        if old in data:
            raise ConfigError(f"tuning.{old}", data[old], f"(moved) tuning.space.{old}"
                              if old != "log" else "(moved) tuning.space.<name>.log")
    try:
        return Tuning(**data)
    except ValidationError as err:
        raise validation_error(err, Tuning, prefix="tuning.") from None


def load_tuning(path, overrides: list[str] | None = None) -> tuple[RunConfig, Tuning]:
    """A config file + ``key=value`` overrides -> (base run config of a trial, tuning spec).

    The file is either a family file (``run:`` options, ``grid:`` axes, ``tuning:`` section) or
    a flat run config with an optional ``tuning:`` mapping. Overrides named ``tuning.<key>`` go
    to the tuning section, every other one to the run options (``method=qgm alpha=0.1``).
    """
    run_opts, tuning = read_run_file(path) if path is not None else ({}, {})
    for key, value in parse_overrides(overrides or []).items():
        if key.startswith("tuning."):
            tuning[key.removeprefix("tuning.")] = value
        else:
            run_opts[key] = value
    spec = build_spec(tuning)
    if spec.epochs is not None:
        run_opts["epochs"] = spec.epochs
    if not run_opts.get("val_fraction"):
        run_opts["val_fraction"] = spec.val_fraction
    config = build_config(run_opts)
    if not spec.params_for(config.method):
        raise ConfigError("method", config.method, "a method with something to search",
                          hint="tuning.baseline / tuning.ccl list nothing for it")
    return config, spec
