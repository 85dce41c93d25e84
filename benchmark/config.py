"""One validated schema for every run option.

A run is fully described by a :class:`RunConfig`: YAML file first, then ``key=value`` overrides
from the command line. Every mistake becomes a :class:`~benchmark.errors.ConfigError` naming the
field, the bad value and what is allowed (with the closest valid name for typos), so a grid fails
in its first second rather than after an hour.
"""

from __future__ import annotations

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

from .errors import ConfigError, UserError, validation_error
from .methods import METHODS, resolve_method

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


class RunConfig(BaseModel):
    """Everything that defines one training run (see METHOD.md section 5 for the paper's values)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # experiment family: the MLflow experiment and the results/ sub-folder
    family: str = Field("default", json_schema_extra=MACHINE)
    # data
    dataset: str = "digits"
    data_dir: str = Field("data", json_schema_extra=MACHINE)
    download: bool = Field(False, json_schema_extra=MACHINE)
    image_size: int | None = Field(None, gt=0)
    synthetic: dict[str, Any] | None = None
    val_fraction: float = Field(0.0, ge=0.0, le=0.5)
    partition: Literal["lin", "raw", "iid"] = "lin"
    alpha: float = Field(1.0, gt=0)
    # model
    model: str = "lenet5"
    norm: str | None = None
    # hardsigmoid: the authors' EvoNorm-S0; sigmoid-v: learnable-v gate everywhere; standard:
    # the EvoNorm paper's layout (models/norms.py)
    evonorm_style: Literal["hardsigmoid", "sigmoid-v", "standard"] = "hardsigmoid"
    # graph and gossip
    topology: str = "ring"
    n_agents: int = Field(16, ge=1)
    torus_rows: int | None = None
    degree: int = Field(3, ge=1)
    mixing: Literal["uniform", "metropolis"] = "uniform"
    gamma: float = Field(1.0, gt=0, le=1)
    # a gossip-momentum setting whose zero-gradient iteration diverges is refused (stability.py)
    # unless this is set, e.g. to show the divergence on purpose
    allow_unstable: bool = Field(False, json_schema_extra={"changes_results": False})
    # method
    method: str = "dsgdm-n"
    lambda_m: float = Field(0.01, ge=0)
    lambda_d: float = Field(0.01, ge=0)
    qgm_variant: Literal["aketi", "lin"] = "aketi"
    relay_tree: Literal["auto", "chain", "bfs", "double-binary"] = "auto"
    relay_norm: Literal["counts", "world"] = "counts"
    log_cross_features: bool | None = None
    feature_distance: Literal["squared", "normalized"] = "squared"
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
    seed: int = Field(0, ge=0)
    # machine options below: CPU/CUDA kernels, thread counts and the vmap path may differ in
    # the last float bits, never in what is computed; a run may resume on another machine
    device: str = Field("auto", json_schema_extra=MACHINE)
    threads: int | None = Field(None, ge=1, json_schema_extra=MACHINE)
    # forward/backward over agents: a Python loop, or one torch.func.vmap pass (GPU); auto
    # measures both on CUDA and keeps the faster (loop on a CPU and for BatchNorm models)
    vectorize: Literal["auto", "loop", "vmap"] = Field("auto", json_schema_extra=MACHINE)
    # CPU: agents' forward/backward spread over this many worker threads (1 intra-op thread
    # each); ~1.1x faster than one 2-thread loop on 2 cores; 1 = the plain loop (default)
    agent_threads: int = Field(1, ge=1, json_schema_extra=MACHINE)
    # runs sharing one GPU (workflow slots; a run's memory share is 1/k of its GPU): README
    # "Several runs per GPU"; `--config gpu_slots_per_device=k` overrides it for a workflow
    gpu_slots_per_device: int | None = Field(None, ge=1, json_schema_extra=MACHINE)
    # refuse, before writing anything, a run whose estimated peak memory (benchmark.memory)
    # exceeds its device or its slot's share; false runs it anyway
    memory_check: bool = Field(True, json_schema_extra=MACHINE)
    tracking: bool = Field(True, json_schema_extra=MACHINE)
    # a sharded run computes the single-process run's numbers (tests/test_distributed.py)
    distributed: bool = Field(False, json_schema_extra=MACHINE)

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

    @model_validator(mode="after")
    def _stable_gossip(self) -> RunConfig:
        if not self.allow_unstable:
            from .stability import check_stable  # numpy + the graph: imported on use

            check_stable(self)
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


def _choice(field: str, value: str, allowed) -> str:
    if value not in allowed:
        raise ConfigError(field, value, list(allowed))
    return value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> dict; values are read as YAML (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"override {pair!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", exc)
        raise UserError(f"config: malformed YAML in {path}{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config: {path} must hold a mapping of option: value, got {type(data).__name__}"
        )
    return data


def build_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig(**data)
    except ValidationError as err:
        raise validation_error(err, RunConfig) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Config file (optional) + ``key=value`` overrides -> a validated :class:`RunConfig`."""
    data = read_yaml(path) if path else {}
    if isinstance(data.get("run"), dict) and "grid" in data:
        # a family file (benchmark.grid): its run: section holds the base options of every job
        data = {"family": Path(path).stem, **data["run"]}
    data.update(parse_overrides(overrides or []))
    return build_config(data)
