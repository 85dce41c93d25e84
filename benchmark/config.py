"""One validated schema for every run option.

A run is fully described by a :class:`RunConfig`: YAML file first, then ``key=value`` overrides
from the command line. Every mistake becomes a :class:`~benchmark.errors.ConfigError` naming the
field, the bad value and what is allowed (with the closest valid name for typos), so a grid fails
in its first second rather than after an hour.
"""

from __future__ import annotations

import math
import re
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
from pydantic.fields import FieldInfo

from .algorithms import (
    PLUGINS,
    Algorithm,
    Options,
    OptionValue,
    algorithm_class,
    option_owners,
)
from .algorithms.ccl import FEATURE_DISTANCES, CCLOptions
from .data.partition import SCHEMES
from .data.registry import dataset_row
from .errors import (
    ConfigError,
    UserError,
    check_distinct,
    no_bool_for_numbers,
    unknown_key,
    validation_error,
)
from .methods import METHODS, resolve_method, zeroed_lambdas
from .models.norms import EVONORM_STYLES, NORMS
from .names import check_name
from .schema import MACHINE, changes_results
from .schema import result_fields as _model_result_fields
from .strict_yaml import Refused, load_yaml, read_yaml
from .topology import GRAPH_OPTIONS, MIXING_RULES, Topology, build_topology

if TYPE_CHECKING:
    from .stability import Verdict


def result_fields(model: type[BaseModel] | None = None) -> frozenset[str]:
    """The fields of ``model`` (default :class:`RunConfig`, with every registered algorithm's
    options) that change a run's numbers (:mod:`benchmark.schema`)."""
    if model is not None and model is not RunConfig:
        return _model_result_fields(model)
    return _model_result_fields(RunConfig) | {
        name for name, cls in option_owners().items()
        if changes_results(cls.options_type.model_fields[name])}


def option_defaults() -> dict[str, Any]:
    """Every run option's default, the registered algorithms' options included."""
    values = RunConfig.model_construct().model_dump()
    for cls in option_owners().values():
        values.update(cls.options_type().model_dump())
    return values


def numeric_options() -> dict[str, FieldInfo]:
    """The run options that hold a number (what a tuning space may search), by name, with the
    field that declares each (its bounds limit a search range)."""
    fields = dict(RunConfig.model_fields)
    fields.update((name, cls.options_type.model_fields[name])
                  for name, cls in option_owners().items())
    return {name: f for name, f in fields.items() if f.annotation in (float, int)}


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


# What a study is tuned for besides its method and alpha: the graph and its gossip (a study per
# grid topology entry, README "Tuning"). Not the seed: a random graph's draw is not the point.
GRAPH_FIELDS = ("topology", "n_agents", "torus_rows", "degree", "mixing", "gamma")


def graph_of(config: RunConfig) -> dict[str, Any]:
    """The run's graph as a study's ``best.json`` records it."""
    return {k: getattr(config, k) for k in GRAPH_FIELDS}


def graph_label(graph: dict[str, Any]) -> str:
    """``ring-n16``, as in run and study paths (``graph``: topology, n_agents and any more)."""
    return f"{graph.get('topology')}-n{graph.get('n_agents')}"


class TunedFrom(BaseModel):
    """Where a run's tuned hyperparameters came from (``train --tuned best.json``): the values,
    already applied to the run's own fields, and the study that chose them."""

    model_config = ConfigDict(extra="forbid")

    values: dict[str, float]
    study: str
    # the graph the study tuned on (GRAPH_FIELDS; None in files written before studies named
    # it): always the run's own, tuned values are never carried to another graph
    graph: dict[str, Any] | None = None
    val_samples: int | None = None  # the study's validation split (None: not recorded)

    def other_graph(self, config: RunConfig) -> str | None:
        """What says these values were not tuned on ``config``'s graph (None when they were):
        another graph, another setting of it, or a study that did not record its graph."""
        if self.graph is None:
            return "its study did not record the graph it tuned on"
        differ = {k: v for k, v in self.graph.items() if getattr(config, k, v) != v}
        if not differ:
            return None
        if {"topology", "n_agents"} & set(differ):
            return f"tuned on {graph_label(self.graph)}, not on {graph_label(graph_of(config))}"
        return "tuned with " + ", ".join(f"{k}={v!r} (this run: {getattr(config, k)!r})"
                                         for k, v in differ.items())


class RunConfig(BaseModel):
    """Everything that defines one training run (see METHOD.md section 5 for the paper's values)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    # the registered algorithms' own options (qgm_variant, relay_tree, ...): declared by each
    # algorithm (benchmark.algorithms), checked and normalised by _known_keys and _one_truth
    __pydantic_extra__: dict[str, OptionValue] = Field(init=False)

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
    # read by one graph each (topology.GRAPH_OPTIONS); a run on another graph holds the default
    torus_rows: int | None = None
    degree: int = Field(3, ge=1)
    mixing: Literal[MIXING_RULES] = "uniform"
    gamma: float = Field(1.0, gt=0, le=1)
    # a gossip-momentum setting whose zero-gradient iteration diverges is refused (stability.py)
    # unless this is set, e.g. to show the divergence on purpose
    allow_unstable: bool = Field(False, json_schema_extra={"changes_results": False})
    # method: a preset (benchmark.methods); its algorithm's options are the extra fields above
    method: str = "dsgdm-n"
    lambda_m: float = Field(0.01, ge=0)
    lambda_d: float = Field(0.01, ge=0)
    log_cross_features: bool | None = None
    # a run that only logs the CCL terms (a method without CCL, log_cross_features: true)
    # computes them every this many iterations, its epoch's L_mv / L_dv being their mean over
    # those: the same measure sampled, at 1/k of the cost of its no-grad passes (which cost as
    # much as the training forward/backward on MNIST-1D); CCL presets compute them every
    # iteration regardless (their loss needs them). 1 = every iteration.
    log_cross_features_every: int = Field(1, ge=1)
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

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        """A key that is neither a field nor a registered algorithm's option is refused (the
        ``extra="forbid"`` of a fixed schema), naming the closest known key."""
        if isinstance(data, dict):
            known = [*cls.model_fields, *option_owners()]
            for key in data:
                if key not in known:
                    raise unknown_key(str(key), str(key), known)
        return data

    @field_validator("dataset", "model", "topology", "method")
    @classmethod
    def _known_name(cls, v: str, info: ValidationInfo) -> str:
        allowed = list(_registry(info.field_name))
        if info.field_name == "method" and v not in allowed and not get_close_matches(
                str(v), allowed, n=1):  # no typo in sight: maybe a plugin not named
            raise ConfigError("method", v, allowed, hint=f"a plugin's method? name its module "
                              f"in the environment variable {PLUGINS}")
        return _choice(info.field_name, v, allowed)

    @field_validator("family")
    @classmethod
    def _family_name(cls, v: str) -> str:
        """A folder under results/ and studies/, a part of report file names, an MLflow
        experiment and a word in the workflow's shell commands: an identifier."""
        return check_name("family", v)

    @field_validator("lr_milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in v):
            raise ConfigError(
                "lr_milestones", v, "fractions of the epochs strictly between 0 and 1"
            )
        return sorted(check_distinct("lr_milestones", v))  # one given twice decays twice

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not DEVICE.fullmatch(v):
            raise ConfigError("device", v, "auto, cpu, cuda, cuda:N (N a GPU index) or mps")
        return v

    @model_validator(mode="after")
    def _one_truth(self, info: ValidationInfo) -> RunConfig:
        """The config holds what the run uses, so options that do not apply to it can neither
        split nor mix report cells or checkpoints: another algorithm's options and another
        graph's (``degree`` off random-regular) hold their defaults, and a preset's inactive
        lambdas are 0 (``ccl-mv`` zeroes ``lambda_d``; a method without CCL zeroes both). A bad
        value is refused first, whoever it belongs to; ``__dict__`` skips re-validation."""
        extra = self.__pydantic_extra__
        values: dict[str, OptionValue] = {}
        for cls in {*option_owners().values(), algorithm_class(self.algorithm)}:
            given = {k: v for k, v in extra.items() if k in cls.options_type.model_fields}
            if cls.name != self.algorithm and info.context == STORED:
                given = {}  # an old file's unused option: its value no longer matters
            options = cls.options_type.parse(given)  # a ConfigError naming a bad value
            values.update((options if cls.name == self.algorithm
                           else cls.options_type()).model_dump())
        extra.clear()
        extra.update(dict(sorted(values.items())))
        self.__dict__.update({option: RunConfig.model_fields[option].default
                              for option in self.unused_graph_options()})
        self.__dict__.update({k: 0.0 for k in zeroed_lambdas(self.method)})
        return self

    @model_validator(mode="after")
    def _whole_config(self, info: ValidationInfo) -> RunConfig:
        """Checks across fields, cheapest first: the data size before the n x n graph."""
        if info.context == STORED:
            return self
        # the dataset's row at these options: image_size and synthetic options it takes
        data = dataset_row(self.dataset, self.image_size, self.synthetic)
        _check_model_takes_the_data(self.model, self.dataset, data.kind)
        _check_agents_fit_the_data(self)
        if not self.allow_unstable:
            _check_stable(self)
        return self

    # derived views -------------------------------------------------------------------------
    @property
    def algorithm(self) -> str:
        return resolve_method(self.method, self.lambda_m, self.lambda_d)[0]

    @property
    def algorithm_class(self) -> type[Algorithm[Options]]:
        return algorithm_class(self.algorithm)

    @property
    def algorithm_options(self) -> Options:
        """The run's algorithm's typed options (what ``Swarm`` builds it from)."""
        options = self.algorithm_class.options_type
        return options.parse({k: self.__pydantic_extra__[k] for k in options.model_fields})

    @property
    def ccl(self) -> dict[str, float] | None:
        return resolve_method(self.method, self.lambda_m, self.lambda_d)[1]

    @property
    def ccl_options(self) -> CCLOptions | None:
        """The CCL loss's typed options: the preset's weights, or both 0 when cross-features
        are only logged (``log_cross_features``); None when the run computes none."""
        if self.ccl is None and not self.log_cross_features:
            return None
        weights = self.ccl or {"lambda_m": 0.0, "lambda_d": 0.0}
        return CCLOptions(**weights, feature_distance=self.feature_distance,
                          log_every=self.log_cross_features_every)

    def graph(self) -> Topology:
        """The run's communication graph (built once per process: ``build_topology`` caches)."""
        return build_topology(self.topology, self.n_agents, seed=self.seed,
                              rows=self.torus_rows, degree=self.degree)

    def unused_graph_options(self) -> list[str]:
        return [option for option, graph in GRAPH_OPTIONS.items() if graph != self.topology]

    def unused_options(self) -> frozenset[str]:
        """The options this run does not read, held at their defaults (``_one_truth``): other
        algorithms' and other graphs' options, and the lambdas its preset zeroes."""
        own = self.algorithm_class.options_type.model_fields
        return frozenset({*(k for k in option_owners() if k not in own),
                          *self.unused_graph_options(), *zeroed_lambdas(self.method)})

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


def _check_model_takes_the_data(model: str, dataset: str, kind: str) -> None:
    """A model takes the kind of samples the dataset holds (images, 1-D signals); else one line
    naming the models that fit and the other pairs."""
    from .data.registry import DATASETS
    from .models import REGISTRY, models_taking
    from .samples import DESCRIBED

    if kind in REGISTRY[model].kinds:
        return
    pairs = []
    for other in DESCRIBED:
        if other != kind:
            datasets = [d for d in DATASETS if dataset_row(d).kind == other]
            pairs.append(f"{DESCRIBED[other]} ({', '.join(datasets)}) take "
                         f"{', '.join(models_taking(other))}")
    raise ConfigError("model", model, models_taking(kind),
                      hint=f"dataset {dataset} holds {DESCRIBED[kind]}; " + "; ".join(pairs))


def stability_verdict(config: RunConfig) -> Verdict | None:
    """The zero-gradient iteration's verdict on this run's setting (:mod:`benchmark.stability`;
    numpy and the graph, imported on use)."""
    from .stability import assess

    return assess(config.algorithm_class, config.algorithm_options, config.graph(),
                  mixing=config.mixing, gamma=config.gamma, momentum=config.momentum,
                  lr=config.lr)


def _check_stable(config: RunConfig) -> None:
    """Refuse a setting whose zero-gradient iteration diverges, or that nothing checks."""
    verdict = stability_verdict(config)
    if verdict is None or verdict.stable:
        return
    where = (f"{config.method} ({verdict.label.replace('-', ' ')}, momentum "
             f"{config.momentum:g}) on {config.topology}-{config.n_agents} with {config.mixing} "
             "mixing")
    hint = "set allow_unstable: true to run it anyway"
    if verdict.radius is None:
        raise ConfigError("allow_unstable", False, f"true for {where}: its algorithm "
                          f"{config.algorithm!r} declares no stability analysis, so nothing "
                          "checks that its gossip settles")
    if verdict.gamma_max is None:
        raise ConfigError("gamma", config.gamma, f"a gamma where {where} settles (the "
                          f"measured spectral radius of its zero-gradient iteration is "
                          f"{verdict.radius:.3f} at gamma {config.gamma:g}; no closed form)",
                          hint=hint)
    below = math.floor(verdict.gamma_max * 1e4) / 1e4  # conservative: every gamma below is stable
    raise ConfigError(
        "gamma", config.gamma,
        f"below {below:g} for {where} (the gossip-momentum iteration diverges above it: "
        f"spectral radius {verdict.radius:.3f} at gamma {config.gamma:g})", hint=hint)


def _check_agents_fit_the_data(config: RunConfig) -> None:
    """Every agent needs at least one training sample (known without loading the data)."""
    from .data.registry import train_samples

    samples = train_samples(config.dataset, config.synthetic, config.val_fraction,
                            config.image_size)
    if config.n_agents > samples:
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
