"""``metrics.json``: the result of one run, as one typed model.

:func:`benchmark.train.run` builds a :class:`RunMetrics` and writes it; every reader (the CLI,
checkpoint's finished-run check, MLflow tracking, tuning, the report) loads it back with
:meth:`RunMetrics.load` and reads typed attributes. A file of another version or a foreign JSON
file fails there, in one line naming the file and the field, instead of deep in a reader.

The file's layout is the one the suite always wrote; sections added later are optional (absent
in older files, ``null`` when a run has nothing to say). Add a new section here, optional with a
default, and the file stays readable both ways.

Its values are checked on every read, not only its shape, since a hand-edited or damaged file
would otherwise be tabled or taken for a finished run: every number is finite (except the
losses of the epoch a diverged run stopped in), accuracies lie in [0, 100], and a completed run
has its final figures and its last epoch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
)

from .config import STORED, RunConfig, TunedFrom
from .errors import ConfigError, UserError, validation_error
from .io import atomic_write_json

Status = Literal["completed", "diverged"]


class NotRunMetrics(UserError):
    """A file that is not a ``metrics.json`` of this version: ``<file>: <problem>``."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source, self.problem = source, problem


Percent = Annotated[float, Field(ge=0, le=100)]  # an accuracy


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TopologySummary(_Section):
    name: str
    n_agents: int
    diameter: int
    spectral_gap: float
    mixing: str


class Evaluation(_Section):
    """Accuracies (%) of the local models and the consensus model on one split."""

    local_acc_mean: Percent
    local_acc_std: Percent
    consensus_acc: Percent
    consensus_distance: float = Field(ge=0)


class EpochRecord(BaseModel):
    """One epoch of the history, as :mod:`benchmark.train` writes it: the training means, the
    bytes sent, the seconds per phase and, on evaluated epochs, the evaluation. What an epoch
    did not compute (the CCL terms of a run without cross-features, an evaluation) is absent
    from the file, not null; files of older versions lack ``bytes_per_agent`` and ``phases``.
    """

    # bytes_per_agent_<kind> (parameters, class_statistics...): the extra keys, all numbers
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float] = Field(init=False)

    epoch: StrictInt
    lr: float
    train_ce: float  # NaN or inf in the epoch a run diverged
    l_mv: float | None = None  # mean over agents, when cross-features are computed
    l_dv: float | None = None
    bytes_per_agent: float | None = None  # this epoch's, every kind
    phases: dict[str, float] | None = None  # seconds per phase (benchmark/timing.py)
    time_s: float | None = None
    local_acc_mean: Percent | None = None  # the evaluation (Evaluation's fields)
    local_acc_std: Percent | None = None
    consensus_acc: Percent | None = None
    consensus_distance: float | None = None

    @model_serializer(mode="wrap")
    def _absent_not_null(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    def non_finite(self) -> list[str]:
        """The keys of this record's numbers that are NaN or infinite."""
        numbers = {**self.model_dump(exclude={"phases"}),
                   **{f"phases.{k}": v for k, v in (self.phases or {}).items()}}
        return [k for k, v in numbers.items()
                if isinstance(v, float | int) and not math.isfinite(v)]

    @property
    def bytes_by_kind(self) -> dict[str, float]:
        """``{kind: bytes}`` of the ``bytes_per_agent_<kind>`` entries."""
        prefix = "bytes_per_agent_"
        return {k.removeprefix(prefix): v for k, v in self.__pydantic_extra__.items()
                if k.startswith(prefix)}


class PartitionSummary(_Section):
    sizes: list[int]  # training samples per agent
    histogram: list[list[int]]  # agents x classes


class Communication(_Section):
    bytes_per_agent_per_iteration: dict[str, float]  # by kind (parameters, class_statistics...)
    bytes_per_agent_total: float


class DistributedLayout(_Section):
    world_size: int
    backend: str
    shards: list[list[int]]  # [first, last + 1) agents of each rank
    bytes_between_processes: float


class Instability(_Section):
    """Epochs whose training loss jumped above ``threshold`` times its running minimum and by
    ``min_rise`` nats (:mod:`benchmark.instability`; files written before the floor have none);
    ``max_jump`` is None before a second finite epoch."""

    threshold: float
    min_rise: float | None = None
    epochs: list[int]
    max_jump: float | None = Field(None, allow_inf_nan=True)  # inf: a rise from a loss of 0


class Environment(_Section):
    """Where the run went: device, GPU, library versions and the forward/backward path."""

    device: str
    gpu_name: str | None = None
    torch: str | None = None
    cuda: str | None = None
    vectorize: str | None = None
    vectorize_reason: str | None = None
    # on the CPU: why a GPU the machine has was not used (benchmark/device.py), else None
    cpu_fallback: str | None = None


class DataSummary(_Section):
    """The data a run trained on: its registry name, split sizes, one sample's shape and a
    digest of the samples (``DatasetBundle.digest``: sha256 of the loaded tensors, MNIST-1D's of
    its generated arrays; None for ImageNet's lazy splits, which are never hashed)."""

    name: str
    train_size: int  # after carving the validation split
    val_size: int | None = None
    test_size: int
    sample_shape: list[int]  # [C, H, W] images, [C, L] 1-D signals
    digest: str | None = None


class Memory(_Section):
    estimated_bytes: int | None = None
    peak_bytes: int | None = None


class RunMetrics(_Section):
    """Everything one run wrote: status, resolved config, graph, history, final figures."""

    status: Status
    diverged_epoch: int | None = None
    config: RunConfig
    method: str
    algorithm: str
    ccl: dict[str, float] | None
    ccl_zeroed: list[str] | None = None  # the lambdas the preset forces to 0 (config holds 0)
    topology: TopologySummary
    n_params: int
    iterations_per_epoch: int
    history: list[EpochRecord]
    final: Evaluation | None  # the last evaluation; none for a diverged run (written as {})
    partition: PartitionSummary
    communication: Communication
    wall_time_s: float = Field(ge=0)
    resumed_after_epochs: list[int] = []
    # optional sections (absent in files of older versions)
    distributed: DistributedLayout | None = None
    instability: Instability | None = None
    environment: Environment | None = None
    memory: Memory | None = None
    data: DataSummary | None = None
    protocol: Literal["fixed", "tuned"] = "fixed"
    tuned: TunedFrom | None = None  # the values taken from a study, its journal and graph
    # saved model files relative to the run folder (benchmark/saved.py): "consensus" and, with
    # save_models: all, "agents" (one file per agent, in agent order)
    models: dict[str, str | list[str]] | None = None

    @field_validator("final", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == {} else v

    @field_serializer("final")
    def _none_is_empty(self, v: Evaluation | None) -> dict[str, float]:
        return v.model_dump() if v is not None else {}

    def _check_values(self) -> None:
        """What a reader relies on besides the types: finite history numbers (a diverged run's
        last epoch aside), and a completed run's final figures and last epoch."""
        last = len(self.history) - 1
        for i, record in enumerate(self.history):
            bad = record.non_finite()
            if bad and not (self.status == "diverged" and i == last):
                raise ConfigError(f"history[{i}].{bad[0]}", math.nan, "a finite number (only "
                                  "the epoch a diverged run stopped in may hold NaN or inf)")
        if self.status == "completed":
            if self.final is None:
                raise ConfigError("final", {}, "the final figures of a completed run")
            ran = self.history[-1].epoch if self.history else 0
            if ran != self.config.epochs:
                raise ConfigError("history", f"{ran} epochs", f"the {self.config.epochs} "
                                  "epochs of a completed run (config.epochs)")

    # -- derived views -------------------------------------------------------------------------
    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def final_value(self, key: str) -> float:
        """A final figure (``consensus_acc``...), NaN when the run diverged."""
        return getattr(self.final, key) if self.final is not None else math.nan

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, NaN kept as NaN (a diverged history keeps its non-finite losses)."""
        return self.model_dump()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RunMetrics:
        """Read and validate a ``metrics.json``; one :class:`NotRunMetrics` line naming the file
        and the field when it is unreadable, of another version or not a metrics file at all."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise NotRunMetrics(str(path), f"cannot read ({err.strerror or err})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise NotRunMetrics(str(path), f"not valid JSON ({err})") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Any, source: str = "metrics") -> RunMetrics:
        if not isinstance(data, dict):
            raise NotRunMetrics(source, f"not a run's metrics (a JSON {type(data).__name__}, "
                                "expected an object)")
        try:
            metrics = cls.model_validate(data, context=STORED)
        except ValidationError as err:
            raise NotRunMetrics(source, "not a valid run's metrics.json: "
                                f"{validation_error(err, cls)}") from None
        except ConfigError as err:  # one of RunConfig's own checks, on the stored config
            raise NotRunMetrics(source, f"not a valid run's metrics.json: config.{err}") from None
        try:
            metrics._check_values()
        except ConfigError as err:
            raise NotRunMetrics(source, f"not a valid run's metrics.json: {err}") from None
        return metrics
