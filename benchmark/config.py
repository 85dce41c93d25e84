"""One validated schema for every run option.

A run is fully described by a :class:`RunConfig`: YAML file first, then ``key=value`` overrides
from the command line. Every mistake becomes a :class:`~benchmark.errors.ConfigError` naming the
field, the bad value and what is allowed (with the closest valid name for typos), so a grid fails
in its first second rather than after an hour.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .algorithms.ccl import FEATURE_DISTANCES
from .algorithms.qgm import QGM_VARIANTS
from .algorithms.relaysgd import RELAY_NORMS
from .data.partition import SCHEMES
from .data.registry import synthetic_options
from .errors import ConfigError, UserError, no_bool_for_numbers, validation_error
from .methods import METHODS, resolve_method, zeroed_lambdas
from .models.norms import EVONORM_STYLES, NORMS
from .strict_yaml import Refused, load_yaml, read_yaml
from .topology import MIXING_RULES, SPANNING_TREES

# Option metadata: a field declared with ``json_schema_extra=MACHINE`` says where or how fast a
# run goes, or where its inputs live, but changes none of its numbers. Every other field changes
# results. The checkpoint fingerprint, a study's resume check and the workflow's rerun trigger
# all read this one flag (:func:`result_fields`); mark every new field accordingly.
MACHINE = {"changes_results": False}


def result_fields(model: type[BaseModel] | None = None) -> frozenset[str]:
    """The fields of ``model`` (default :class:`RunConfig`) that change a run's numbers."""
    model = model or RunConfig
    return frozenset(
        name for name, info in model.model_fields.items()
        if (info.json_schema_extra or {}).get("changes_results", True)
    )


# Validating a config that was already run (the ``config`` of a metrics.json) skips the checks
# that refuse a *setting* on this machine or with this version's rules: a report must read it.
STORED = {"stored": True}
# What the libraries can hold: numpy/scikit-learn seeds are 32-bit, torch thread counts C ints;
# every graph is also a dense n x n mixing matrix (and its spectrum), so n is bounded too.
MAX_SEED = 2**32 - 1
MAX_AGENTS = 4096
MAX_THREADS = 4096
MAX_IMAGE_SIZE = 1024
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# the forward/backward paths of benchmark.forward_backward, defined here because config sits
# below the swarm layer (tests/test_architecture.py)
VECTORIZE: tuple[str, ...] = ("auto", "loop", "vmap")


class TunedFrom(BaseModel):
    """Where a run's tuned hyperparameters came from (``train --tuned best.json``): the values,
    already applied to the run's own fields, and the study that chose them."""

    model_config = ConfigDict(extra="forbid")

    values: dict[str, float]
    study: str
    # the graph the study tuned on ({topology, n_agents}; None for studies that did not say):
    # the report marks a run on another graph
    graph: dict[str, str | int] | None = None


class RunConfig(BaseModel):
    """Everything that defines one training run (see METHOD.md section 5 for the paper's values)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    _numbers = field_validator("*", mode="before")(no_bool_for_numbers)

    # experiment family: the MLflow experiment and the results/ sub-folder
    family: str = Field("default", json_schema_extra=MACHINE)
    # data
    dataset: str = "digits"
    data_dir: str = Field("data", min_length=1, json_schema_extra=MACHINE)
    download: bool = Field(False, json_schema_extra=MACHINE)
    image_size: int | None = Field(None, gt=0, le=MAX_IMAGE_SIZE)
    synthetic: dict[str, Any] | None = None
    val_fraction: float = Field(0.0, ge=0.0, le=0.5)
    partition: Literal[SCHEMES] = "lin"
    alpha: float = Field(1.0, gt=0)
    # model
    model: str = "lenet5"
    norm: Literal[NORMS] | None = None  # None: the model's own default
    # hardsigmoid: the authors' EvoNorm-S0; sigmoid-v: learnable-v gate everywhere; standard:
    # the EvoNorm paper's layout (models/norms.py)
    evonorm_style: Literal[EVONORM_STYLES] = "hardsigmoid"
    # graph and gossip
    topology: str = "ring"
    n_agents: int = Field(16, ge=1)
    torus_rows: int | None = None
    degree: int = Field(3, ge=1)
    mixing: Literal[MIXING_RULES] = "uniform"
    gamma: float = Field(1.0, gt=0, le=1)
    # a gossip-momentum setting whose zero-gradient iteration diverges is refused (stability.py)
    # unless this is set, e.g. to show the divergence on purpose
    allow_unstable: bool = Field(False, json_schema_extra={"changes_results": False})
    # method
    method: str = "dsgdm-n"
    lambda_m: float = Field(0.01, ge=0)
    lambda_d: float = Field(0.01, ge=0)
    qgm_variant: Literal[QGM_VARIANTS] = "aketi"
    relay_tree: Literal[SPANNING_TREES] = "auto"
    relay_norm: Literal[RELAY_NORMS] = "counts"
    log_cross_features: bool | None = None
    feature_distance: Literal[FEATURE_DISTANCES] = "squared"
    # CCL safety options, off by default and not the paper's (METHOD.md section 4.2)
    clip_grad_norm: float | None = Field(None, gt=0)
    lambda_warmup_epochs: int = Field(0, ge=0)
    # optimisation
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.05, ge=0)
    lr_milestones: list[float] = [0.5, 0.75]
    lr_decay: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    wd_skip_norm: bool = False
    # run
    eval_every: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # machine options below: CPU/CUDA kernels, thread counts and the vmap path may differ in
    # the last float bits, never in what is computed; a run may resume on another machine
    device: str = Field("auto", json_schema_extra=MACHINE)
    threads: int | None = Field(None, ge=1, le=MAX_THREADS, json_schema_extra=MACHINE)
    # forward/backward over agents: a Python loop, or one torch.func.vmap pass (GPU); auto
    # measures both on CUDA and keeps the faster (loop on a CPU and for BatchNorm models)
    vectorize: Literal[VECTORIZE] = Field("auto", json_schema_extra=MACHINE)
    # CPU: agents' forward/backward spread over this many worker threads (1 intra-op thread
    # each); ~1.1x faster than one 2-thread loop on 2 cores; 1 = the plain loop (default)
    agent_threads: int = Field(1, ge=1, le=MAX_THREADS, json_schema_extra=MACHINE)
    # runs sharing one GPU (workflow slots; a run's memory share is 1/k of its GPU): README
    # "Several runs per GPU"; `--config gpu_slots_per_device=k` overrides it for a workflow
    gpu_slots_per_device: int | None = Field(None, ge=1, json_schema_extra=MACHINE)
    # refuse, before writing anything, a run whose estimated peak memory (benchmark.memory)
    # exceeds its device or its slot's share; false runs it anyway
    memory_check: bool = Field(True, json_schema_extra=MACHINE)
    tracking: bool = Field(True, json_schema_extra=MACHINE)
    # trained models kept in the run folder and MLflow (benchmark/saved.py): the consensus
    # model, every agent's model too, or nothing
    save_models: Literal["consensus", "all", "none"] = Field("consensus",
                                                             json_schema_extra=MACHINE)
    # MLflow artifacts learning_curves.png and partition.png of this run: about 1.5 CPU-s of
    # drawing per run, more than a digits run's training (the family report draws every run)
    run_figures: bool = Field(True, json_schema_extra=MACHINE)
    # a sharded run computes the single-process run's numbers (tests/test_distributed.py)
    distributed: bool = Field(False, json_schema_extra=MACHINE)
    # the tuned protocol's provenance (None = the fixed protocol); the values themselves are in
    # the fields above, so this changes no result
    tuned: TunedFrom | None = Field(None, json_schema_extra=MACHINE)

    @field_validator("dataset", "model", "topology", "method")
    @classmethod
    def _known_name(cls, v: str, info: ValidationInfo) -> str:
        return _choice(info.field_name, v, _registry(info.field_name))

    @field_validator("lr_milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v):
            raise ConfigError(
                "lr_milestones", v, "fractions of the epochs strictly between 0 and 1"
            )
        return sorted(v)

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not DEVICE.fullmatch(v):
            raise ConfigError("device", v, "auto, cpu, cuda, cuda:N (N a GPU index) or mps")
        return v

    @model_validator(mode="after")
    def _whole_config(self, info: ValidationInfo) -> RunConfig:
        """Checks across fields, cheapest first: the data size before the n x n graph."""
        if info.context == STORED:
            return self
        if self.dataset == "synthetic":
            synthetic_options(self.synthetic or {}, self.image_size)
        _check_agents_fit_the_data(self)
        if not self.allow_unstable:
            from .stability import check_stable  # numpy + the graph: imported on use

            check_stable(self)
        return self

    @model_validator(mode="after")
    def _effective_weights(self) -> RunConfig:
        """One truth: the config holds the CCL weights the run uses, so a preset's inactive
        lambdas are 0 (``ccl-mv`` zeroes ``lambda_d``; a method without CCL zeroes both). After
        the field checks, so a bad value is still refused; ``__dict__`` skips re-validation."""
        self.__dict__.update({k: 0.0 for k in zeroed_lambdas(self.method)})
        return self

    # derived views -------------------------------------------------------------------------
    @property
    def algorithm(self) -> str:
        return resolve_method(self.method, self.lambda_m, self.lambda_d)[0]

    @property
    def ccl(self) -> dict[str, float] | None:
        return resolve_method(self.method, self.lambda_m, self.lambda_d)[1]

    def lr_at(self, epoch: int) -> float:
        """Learning rate of a 0-based epoch: linear warm-up, then x lr_decay at each milestone."""
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / (self.warmup_epochs + 1)
        passed = sum(epoch >= m for m in self.milestone_epochs)
        return self.lr * self.lr_decay**passed

    def lambda_scale_at(self, epoch: int) -> float:
        """Factor on both CCL weights in a 0-based epoch: the linear ``lambda_warmup_epochs`` ramp
        (the same shape as the learning-rate warm-up), then 1."""
        if epoch < self.lambda_warmup_epochs:
            return (epoch + 1) / (self.lambda_warmup_epochs + 1)
        return 1.0

    @property
    def milestone_epochs(self) -> list[int]:
        """0-based epochs from which each decay applies: ``int(m * epochs)`` as in the authors'
        code, but never 0 (the first epoch always trains at the full rate)."""
        return [max(int(m * self.epochs), 1) for m in self.lr_milestones]


def _registry(field: str):
    """The valid names of a named-choice field; imported on use, since those packages pull in
    torch/torchvision and nothing else in this module needs them."""
    from .data import DATASETS
    from .models import MODELS
    from .topology import TOPOLOGIES

    return {"dataset": DATASETS, "model": MODELS, "topology": TOPOLOGIES, "method": METHODS}[field]


def _check_agents_fit_the_data(config: RunConfig) -> None:
    """Every agent needs at least one training sample (known without loading the data)."""
    from .data.sizes import train_samples

    samples = train_samples(config.dataset, config.synthetic, config.val_fraction)
    if samples is not None and config.n_agents > samples:
        raise ConfigError("n_agents", config.n_agents, f"at most {samples} (the training "
                          f"samples of {config.dataset} to share among the agents)")
    if config.n_agents > MAX_AGENTS:
        raise ConfigError("n_agents", config.n_agents, f"at most {MAX_AGENTS} (the mixing "
                          "matrix is a dense n x n array)")


def check_device(device: str) -> None:
    """Refuse, in one line, a device this machine does not have; called before a run builds
    anything (the schema only checks the name: a config may be planned on a login node)."""
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(device.partition(":")[2] or 0) >= count:
            here = ["auto", "cpu", *(["cuda"] if count else []),
                    *(f"cuda:{i}" for i in range(count))]
            build = (f"CUDA {torch.version.cuda}" if torch.version.cuda
                     else "a build without CUDA")
            raise ConfigError("device", device, here,
                              hint=f"torch {torch.__version__} ({build}) sees {count} GPU(s)")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", device, ["auto", "cpu"], hint="no Apple GPU (mps) here")


def _choice(field: str, value: str, allowed) -> str:
    if value not in allowed:
        raise ConfigError(field, value, list(allowed))
    return value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> dict; values are read as YAML (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        shown = repr(pair if len(pair) <= 80 else pair[:77] + "...")
        if not sep or not key:
            raise UserError(f"override {shown}: expected key=value")
        try:
            out[key.strip()] = load_yaml(raw) if raw != "" else None
        except Refused as err:  # a key twice, an alias bomb: never taken for a plain string
            raise UserError(f"override {shown}: {err}") from None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def build_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig(**data)
    except ValidationError as err:
        raise validation_error(err, RunConfig) from None


def read_run_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run options and the ``tuning:`` section of a config file (train and tune read it so).

    A family file (``run:`` options + ``grid:`` axes, :mod:`benchmark.grid`) gives its ``run:``
    section, named after the file unless it names its family; any other file holds run options
    and an optional ``tuning:`` mapping.
    """
    data = read_yaml(path)
    tuning = data.pop("tuning", None) or {}
    if not isinstance(tuning, dict):
        raise ConfigError("tuning", tuning, "a mapping of tuning options")
    if "run" not in data and "grid" not in data:
        return data, tuning
    run = data.get("run") or {}
    if not isinstance(run, dict):
        raise ConfigError("run", run, "a mapping of run options")
    return {"family": Path(path).stem, **run}, tuning


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Config file (optional) + ``key=value`` overrides -> a validated :class:`RunConfig`."""
    data = read_run_file(path)[0] if path is not None else {}
    data.update(parse_overrides(overrides or []))
    return build_config(data)
