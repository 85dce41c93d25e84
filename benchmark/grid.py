"""Experiment families: the schema of ``config/<family>.yaml`` and its expansion into runs.

A family file holds a ``run:`` mapping (base options, keys of :class:`~benchmark.config.RunConfig`),
a ``grid:`` mapping of axes and an optional ``tuning:`` section::

    run:   {family: cifar10, dataset: cifar10, model: resnet20, epochs: 200, ...}
    grid:
      alpha: [0.01, 0.1, 1.0]
      topologies: [{topology: ring, n_agents: 16}, {topology: paper-dyck, n_agents: 32, gamma: 0.9}]
      methods: [dsgdm-n, qgm, ccl]
      seeds: [0, 1, 2]
      datasets: [{dataset: cifar10, model: resnet20}]     # optional; default: the run's pair
      blocks:                                             # optional: more runs, see Grid.blocks
        - {topologies: [{topology: ring, n_agents: 32}], methods: [dsgdm-n, ccl], alpha: [0.1]}
    tuning: {protocol: both, trials: 20, epochs: 50}      # optional; see benchmark.tuning.spec

The whole family is validated here, before any job starts: an empty or mistyped axis, an unknown
method or topology, an impossible graph size, or any run option that :class:`RunConfig` rejects
is one :class:`~benchmark.errors.UserError` line naming the file and the field
(``config/x.yaml: grid.topologies[2].n_agents: ...``).
Nothing here reads data or imports Snakemake: the Snakefile imports this module to plan the DAG,
so ``snakemake -n`` over the paper grid costs only this validation.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .config import RunConfig, TunedFrom, build_config, graph_label, graph_of, read_yaml
from .errors import (
    ConfigError,
    UserError,
    check_distinct,
    no_bool_for_numbers,
    validation_error,
)
from .io import read_text
from .methods import METHODS
from .names import ALLOWED, check_name, inside
from .topology import GRAPH_OPTIONS, TOPOLOGIES, build_topology
from .tuning.spec import PROTOCOLS, Tuning, build_spec

# Where the workflow writes runs; a run's folder under it encodes every axis of the grid. Runs of
# the tuned protocol live under ``<family>/tuned/``, so the two protocols never share a folder.
RESULTS_ROOT = "results"
RUN_PATH = "{family}/{dataset}/{model}/{topology}-n{n_agents}/alpha{alpha}/{method}/seed{seed}"
TUNED_DIR = "tuned"
# One Optuna study per (family, method, graph, alpha): its journal and, beside it, a folder of
# outputs; the graph is a topology entry of the grid, named as in run paths (ring-n16).
STUDIES_ROOT = "studies"
STUDY_PATH = "{family}/{method}/{graph}/alpha{alpha}"


class _Entry(BaseModel):
    """An axis entry: its named keys plus any other run option that varies with it."""

    model_config = ConfigDict(extra="allow")

    @property
    def options(self) -> dict[str, Any]:
        """Every key of the entry as run options (named fields first, then the extras)."""
        return self.model_dump(exclude_none=True)


class TopologyEntry(_Entry):
    """A graph and its size; per-topology settings (``gamma``, ``torus_rows``...) ride along."""

    topology: str
    n_agents: int = Field(ge=1)

    _numbers = field_validator("*", mode="before")(no_bool_for_numbers)

    @property
    def label(self) -> str:
        return graph_label(self.options)


class DataEntry(_Entry):
    """A dataset/model pair; dataset-specific options (``lr``, ``image_size``...) ride along."""

    dataset: str
    model: str


AXES = ("alpha", "topologies", "methods", "seeds", "datasets")


class Grid(BaseModel):
    """The axes of a family; the runs are their full product, plus the product of each block.

    ``blocks`` give other axes to part of the family (e.g. every method on one graph, three of
    them on more graphs and sizes) without the full product: each block is a mapping of axes,
    an axis it leaves out is the grid's own, its alphas are among the grid's (a tuned study
    exists per grid alpha), and no two products may name the same run.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    alpha: list[float] = Field(min_length=1)
    topologies: list[TopologyEntry] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    datasets: list[DataEntry] | None = Field(None, min_length=1)
    blocks: list[dict[str, Any]] = []
    _products: list[tuple[str, Grid]] = PrivateAttr(default_factory=list)
    _numbers = field_validator("*", mode="before")(no_bool_for_numbers)

    def products(self) -> list[tuple[str, Grid]]:
        """(``grid`` or ``grid.blocks[i]``, the axes of that product), the grid's own first."""
        return self._products

    @model_validator(mode="after")
    def _expand_blocks(self) -> Grid:
        own = self.model_copy(update={"blocks": []})
        self._products = [("grid", own)] + [
            (f"grid.blocks[{i}]", self._block(i, raw)) for i, raw in enumerate(self.blocks)]
        return self

    def _block(self, i: int, raw: Any) -> Grid:
        where = f"grid.blocks[{i}]"
        if not isinstance(raw, dict) or not raw or "blocks" in raw:
            raise ConfigError(where, raw, f"a mapping of some of {', '.join(AXES)}")
        try:
            block = Grid(**{**{k: getattr(self, k) for k in AXES}, **raw})
        except (ValidationError, ConfigError) as err:
            error = (validation_error(err, Grid, prefix=f"{where}.")
                     if isinstance(err, ValidationError) else err)
            if error.field.startswith("grid.") and not error.field.startswith(where):
                # our own validators name the main grid's field: name the block's instead
                field = error.field.replace("grid.", f"{where}.", 1)
                error.args = (str(error).replace(error.field, field, 1),)
                error.field = field
            raise error from None
        extra = [a for a in block.alpha if a not in self.alpha]
        if extra:
            raise ConfigError(f"{where}.alpha", extra[0], f"values of grid.alpha {self.alpha}")
        return block

    @field_validator("alpha")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        bad = [a for a in v if not a > 0]
        if bad:
            raise ConfigError("grid.alpha", bad[0], "positive numbers")
        return v

    @field_validator("alpha", "methods", "seeds")
    @classmethod
    def _distinct(cls, v: list, info: ValidationInfo) -> list:
        """``alpha: [0.1, 1.0e-1]`` would be one run path twice: name the axis and the value."""
        return check_distinct(f"grid.{info.field_name}", v)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if s < 0]
        if bad:
            raise ConfigError("grid.seeds", bad[0], "integers >= 0")
        return v

    @field_validator("topologies")
    @classmethod
    def _known_topologies(cls, v: list[TopologyEntry]) -> list[TopologyEntry]:
        for i, entry in enumerate(v):
            if entry.topology not in TOPOLOGIES:
                raise ConfigError(f"grid.topologies[{i}].topology", entry.topology, TOPOLOGIES)
        return v

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in METHODS:
                raise ConfigError("grid.methods", name, list(METHODS))
        return v


class FamilyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    run: dict[str, Any] = {}
    grid: Grid
    tuning: Tuning = Tuning()

@dataclass(frozen=True)
class RunSpec:
    """One job of the grid: where it writes and which options it overrides on the family file."""

    family: str
    config_path: str
    overrides: dict[str, Any]
    config: RunConfig = field(repr=False, compare=False)
    tuned: str | None = None  # best.json whose values this run uses (the tuned protocol)

    @property
    def protocol(self) -> str:
        return "tuned" if self.tuned else "fixed"

    @property
    def run_dir(self) -> str:
        return f"{RESULTS_ROOT}/{run_path(self.config, self.protocol)}"

    @property
    def metrics_path(self) -> str:
        return f"{self.run_dir}/metrics.json"

    @property
    def override_args(self) -> list[str]:
        """``key=value`` arguments for ``python -m benchmark train`` (read back as YAML)."""
        return [f"{k}={_yaml_scalar(v)}" for k, v in self.overrides.items()]

    def train_command(self, python: str = "python", threads: int | None = None) -> str:
        """The shell command the workflow runs for this job (without redirections)."""
        args = [python, "-m", "benchmark", "train", "--config", self.config_path,
                "--out", self.run_dir]
        if self.tuned is not None:
            args += ["--tuned", self.tuned]
        args += self.override_args
        if threads is not None:
            args.append(f"threads={threads}")
        return shlex.join(args)


@dataclass(frozen=True)
class StudySpec:
    """One study of the tuned protocol: a method at an alpha on one graph of the grid, i.e. a
    topology entry with every option it sets (``gamma``...); the runs of that method, alpha and
    graph use its values, and no other run does."""

    family: str
    config_path: str
    method: str
    alpha: float
    graph: dict[str, Any]  # the topology entry's options: topology, n_agents, gamma...

    @property
    def label(self) -> str:
        return graph_label(self.graph)

    @property
    def journal(self) -> str:
        return study_path(self.family, self.method, self.label, self.alpha)

    @property
    def best(self) -> str:
        return study_path(self.family, self.method, self.label, self.alpha, "/best.json")

    @property
    def log(self) -> str:
        """Every attempt's output, appended (not a Snakemake output: it survives a rerun)."""
        return study_path(self.family, self.method, self.label, self.alpha, ".log")

    @property
    def override_args(self) -> list[str]:
        """``key=value`` arguments of ``python -m benchmark tune`` on the family file."""
        options = {"method": self.method, "alpha": self.alpha, **self.graph}
        return [f"{k}={_yaml_scalar(v)}" for k, v in options.items()]

    def tune_command(self, python: str = "python", threads: int | None = None) -> str:
        """The shell command the workflow runs for this study (without redirections)."""
        args = [python, "-m", "benchmark", "tune", "--config", self.config_path,
                "--study", self.journal, *self.override_args]
        if threads is not None:
            args.append(f"threads={threads}")
        return shlex.join(args)


@dataclass
class Family:
    """A validated family file and its runs, in grid order (datasets, topologies, alpha, methods,
    seeds), so tables and the job list read the same way as the YAML."""

    name: str
    path: str
    spec: FamilyFile
    runs: list[RunSpec]

    @cached_property
    def by_dir(self) -> dict[str, RunSpec]:
        return {r.run_dir: r for r in self.runs}

    @cached_property
    def studies(self) -> list[StudySpec]:
        """Every study of the family (tuned protocol): one per method, alpha and graph of its
        runs, in grid order."""
        return _studies(self.name, self.path, self.spec.grid)

    @cached_property
    def by_best(self) -> dict[str, StudySpec]:
        return {s.best: s for s in self.studies}

    @property
    def base(self) -> RunConfig:
        return build_config(self.spec.run)


def format_float(x: float) -> str:
    """The path form of a float: ``repr`` so that ``float(format_float(x)) == x`` exactly."""
    return repr(float(x))


def run_path(config: RunConfig, protocol: str = "fixed") -> str:
    """``<family>/<dataset>/<model>/<topology>-n<agents>/alpha<a>/<method>/seed<s>``; the tuned
    protocol's runs under ``<family>/tuned/``."""
    family = f"{config.family}/{TUNED_DIR}" if protocol == "tuned" else config.family
    path = RUN_PATH.format(
        family=family, dataset=config.dataset, model=config.model,
        topology=config.topology, n_agents=config.n_agents, alpha=format_float(config.alpha),
        method=config.method, seed=config.seed,
    )
    inside(RESULTS_ROOT, path, "run path")
    return path


def study_path(family: str, method: str, graph: str, alpha: float,
               suffix: str = ".journal") -> str:
    """``studies/<family>/<method>/<graph>/alpha<a>.journal`` (``suffix="/best.json"``: its
    result), ``graph`` as in run paths (``ring-n16``)."""
    path = STUDY_PATH.format(family=family, method=method, graph=graph,
                             alpha=format_float(alpha)) + suffix
    inside(STUDIES_ROOT, path, "study path")
    return f"{STUDIES_ROOT}/{path}"


def tuned_from(best_json: str | Path, config: RunConfig) -> dict[str, Any]:
    """``{"values", "study", "graph", "val_samples"}`` from a study's ``best.json`` (the fields of
    :class:`~benchmark.config.TunedFrom`), refusing a study of another
    family, method, alpha or graph (a learning rate tuned for alpha 1 says nothing about alpha
    0.01, one tuned on a ring of 16 nothing about an exponential graph)."""
    path = Path(best_json)
    try:
        best = json.loads(read_text(path, "--tuned"))
        values = {k: float(v) for k, v in best["values"].items()}
        found = (best["family"], best["method"], float(best["alpha"]))
        tuned = TunedFrom(values=values, study=str(best["study"]), graph=best.get("graph"),
                          val_samples=best.get("val_samples"))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise UserError(f"--tuned {path}: not a readable tuning result "
                        f"({type(err).__name__}: {err}); run `python -m benchmark tune` first"
                        ) from None
    if found != (config.family, config.method, config.alpha):
        raise ConfigError("--tuned", str(path), f"a study of family {config.family!r}, method "
                          f"{config.method} at alpha {config.alpha:g}",
                          hint=f"it is {found[0]!r}, {found[1]} at alpha {found[2]:g}")
    elsewhere = tuned.other_graph(config)
    if elsewhere is not None:
        label = graph_label(graph_of(config))
        raise ConfigError("--tuned", str(path), f"a study of this run's graph, {label} "
                          f"({study_path(config.family, config.method, label, config.alpha)})",
                          hint=elsewhere)
    return tuned.model_dump()


def tuned_config(config: RunConfig, best_json: str | Path,
                 explicit: dict[str, Any] | None = None) -> RunConfig:
    """``config`` with the values of a study's ``best.json`` (:func:`tuned_from`), which replace
    those of its config file (the family's ``run:`` values are the fixed protocol's).

    A value given explicitly (``explicit``: the command line's ``key=value``) for a key the study
    tuned is refused, never silently dropped: a run at ``lr=0.3`` is not a tuned run, and a tuned
    run labelled with an lr it did not use misleads."""
    tuned = tuned_from(best_json, config)
    both = [key for key in (explicit or {}) if key in tuned["values"]]
    if both:
        key = both[0]
        raise ConfigError(key, (explicit or {})[key], f"no value with --tuned, whose study "
                          f"tuned {', '.join(tuned['values'])} ({best_json})",
                          hint=f"drop {key}=... to train at the tuned value, or drop --tuned "
                          "for a run of the fixed protocol")
    return build_config({**config.model_dump(), **tuned["values"], "tuned": tuned})


def load_family(path: str | Path, protocol: str | None = None) -> Family:
    """Read, validate and expand one family file; every run's config is validated too.

    ``protocol`` (``fixed`` / ``tuned`` / ``both``) overrides the file's ``tuning.protocol``: the
    workflow's switch (``snakemake <targets> --config protocol=tuned``) without editing the file.
    """
    path = Path(path)
    if protocol is not None and protocol not in PROTOCOLS:
        raise ConfigError("--config protocol", protocol, PROTOCOLS)
    try:
        return _load_family(path, protocol)
    except UserError as err:
        if str(path) in str(err):  # it names the file already (e.g. the YAML reader's)
            raise
        # same type and fields (a ConfigError stays one), the file named in the message
        located = type(err).__new__(type(err))
        located.__dict__.update(err.__dict__)
        located.args = (f"{path}: {err}",)
        raise located from None


def _load_family(path: str | Path, protocol: str | None = None) -> Family:
    """Validate and expand (errors are prefixed with the path by :func:`load_family`)."""
    path = Path(path)
    raw = read_yaml(path)
    tuning = raw.get("tuning") or {}
    if not isinstance(tuning, dict):
        raise ConfigError("tuning", tuning, "a mapping of tuning options")
    tuning = {**tuning, **({"protocol": protocol} if protocol else {})}
    raw = {**raw, "tuning": build_spec(tuning)}  # first: an old spelling gets its own line
    try:
        spec = FamilyFile(**raw)
    except ValidationError as err:
        raise validation_error(err, FamilyFile) from None  # load_family adds the file name
    run = dict(spec.run)
    named = "family" in run  # if the file does not name its family, every job must say it
    name = run.setdefault("family", path.stem)
    try:
        check_name("run.family", name)
    except ConfigError:
        if named:
            raise
        raise ConfigError("run.family", name, ALLOWED, hint=f"unset, so the file name "
                          f"{path.name} names the family; rename the file or set run.family"
                          ) from None
    protocols = ["fixed", "tuned"] if spec.tuning.protocol == "both" else [spec.tuning.protocol]
    if "tuned" in protocols:
        for method in {s.method: None for s in _studies(name, str(path), spec.grid)}:
            if not spec.tuning.params_for(method):
                raise ConfigError("tuning.baseline" if not METHODS[method].ccl_terms
                                  else "tuning.ccl", [], f"something to search for {method}")
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for prefix, grid in spec.grid.products():
        for d_idx, data in enumerate(grid.datasets or [None]):
            for t_idx, topo in enumerate(grid.topologies):
                where = f"{prefix}.topologies[{t_idx}]"
                _check_graph(topo, {**run, **(data.options if data else {})}, where)
                for alpha, method, protocol, seed in itertools.product(
                        grid.alpha, grid.methods, protocols, grid.seeds):
                    overrides = {
                        **({} if named else {"family": name}),
                        **(data.options if data else {}), **topo.options,
                        "alpha": alpha, "method": method, "seed": seed,
                    }
                    ctx = f"{prefix}.datasets[{d_idx}] / {where}" if data else where
                    config = _run_config(run, overrides, ctx, path)
                    tuned = (study_path(name, method, topo.label, alpha, "/best.json")
                             if protocol == "tuned" else None)
                    if tuned is not None:
                        entries = {where: topo.options,
                                   f"{prefix}.datasets[{d_idx}]": data.options if data else {}}
                        _check_not_tuned(entries, spec.tuning.params_for(method), method)
                    spec_ = RunSpec(name, str(path), overrides, config, tuned)
                    if spec_.run_dir in seen:
                        raise ConfigError(
                            where, topo.options, "entries that give distinct run paths",
                            hint=f"{spec_.run_dir} already comes from {seen[spec_.run_dir]}",
                        )
                    seen[spec_.run_dir] = ctx
                    runs.append(spec_)
    return Family(name, str(path), spec, runs)


def _studies(family: str, path: str, grid: Grid) -> list[StudySpec]:
    """One study per (method, alpha, graph) the grid's products call for, in grid order. A graph
    (``ring-n16``) must mean one topology entry wherever it meets a method and alpha: its
    study tunes with that entry's options (``gamma``...) and serves all of those runs."""
    found: dict[tuple[str, float, str], tuple[StudySpec, str]] = {}
    for prefix, grid_ in grid.products():
        for t_idx, topo in enumerate(grid_.topologies):
            where = f"{prefix}.topologies[{t_idx}]"
            for method, alpha in itertools.product(grid_.methods, grid_.alpha):
                study = StudySpec(family, path, method, alpha, topo.options)
                first = found.setdefault((method, alpha, topo.label), (study, where))
                if first[0].graph != study.graph:
                    raise ConfigError(
                        where, topo.options, f"the options of {first[1]} for {topo.label} "
                        f"({first[0].graph}), or another size or topology",
                        hint=f"{method} at alpha {alpha:g} has one study per graph")
    return [study for study, _ in found.values()]


class WorkflowOptions(BaseModel):
    """The workflow's own options, ``snakemake <targets> --config key=value`` (or a profile's
    ``config:``): every key the Snakefile and ``workflow/rules/*.smk`` read, and only those, so
    a typo (``protcol=both``) is one line naming the closest key, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    family_dir: str = Field("config", min_length=1)  # the family files (*.yaml)
    protocol: Literal[PROTOCOLS] | None = None  # overrides every family's tuning.protocol
    gpu_slots_per_device: int | None = Field(None, ge=1)  # runs sharing one GPU
    gpu_threads: int = Field(2, ge=1)  # CPU threads of a GPU job
    cluster: Literal["slurm"] | None = None  # profiles/slurm: jobs run on the cluster's nodes
    preload: bool = True  # the fork server that imports the suite once (benchmark/preload.py)

    _numbers = field_validator("*", mode="before")(no_bool_for_numbers)


def workflow_options(config: dict[str, Any]) -> WorkflowOptions:
    """Snakemake's ``config`` dict validated: a mistake is one ``--config key: ...`` line."""
    if "lambdas" in config:
        raise UserError("--config lambdas: renamed; use --config protocol=fixed|tuned|both "
                        "(tuned: every method tuned with the same budget)")
    try:
        return WorkflowOptions(**config)
    except ValidationError as err:
        raise validation_error(err, WorkflowOptions, prefix="--config ") from None


def load_families(config_dir: str | Path = "config", protocol: str | None = None
                  ) -> dict[str, Family]:
    """Every ``*.yaml`` family in a folder, by name; two files claiming one name is an error."""
    config_dir = Path(config_dir)
    files = sorted(config_dir.glob("*.yaml"))
    if not files:
        raise UserError(f"config: no family files (*.yaml) in {config_dir}/")
    families: dict[str, Family] = {}
    for file in files:
        family = load_family(file, protocol)
        if family.name in families:
            raise ConfigError(
                "run.family", family.name, "one file per family",
                hint=f"both {families[family.name].path} and {file} use it",
            )
        families[family.name] = family
    return families


def _check_graph(topo: TopologyEntry, run: dict[str, Any], where: str) -> None:
    """Build the graph now so an impossible size fails at planning time, not in a job (with
    the options this graph reads: another graph's are held at their defaults, as in a run)."""
    options = {k: v for k, v in {**run, **topo.options}.items()
               if GRAPH_OPTIONS.get(k, topo.topology) == topo.topology}
    try:
        build_topology(
            topo.topology, topo.n_agents, seed=0, rows=options.get("torus_rows"),
            degree=options.get("degree", 3),
        )
    except ConfigError as err:
        raise ConfigError(f"{where}.{err.field}", err.value, err.allowed) from None


def _check_not_tuned(entries: dict[str, dict[str, Any]], tuned: tuple[str, ...],
                     method: str) -> None:
    """An axis entry (``entries``: where -> its options) may not set what a tuned run takes from
    its study (``train --tuned`` refuses the pair): refused when the family is planned."""
    for where, options in entries.items():
        for key in tuned:
            if key in options:
                raise ConfigError(f"{where}.{key}", options[key], f"no value on an axis entry "
                                  f"of a tuned grid: the tuned runs of {method} take {key} from "
                                  "their study", hint="set it under run: (a study's first "
                                  "point) or use tuning.protocol: fixed")


def _run_config(run: dict[str, Any], overrides: dict[str, Any], ctx: str,
                path: Path) -> RunConfig:
    """One run's config; a mistake in a key the family's ``run:`` section sets (and the axes do
    not) is named where it is written, ``run.<key>``, any other after the axis entry ``ctx``
    that makes the run (a typo under ``run:`` read as ``grid.topologies[0]: ...``)."""
    try:
        return build_config({**run, **overrides})
    except ConfigError as err:
        key = re.split(r"[.\[]", err.field, maxsplit=1)[0]
        where = "run." if key in run and key not in overrides else f"{ctx}: "
        raise UserError(f"{path}: {where}{err}") from None


def _yaml_scalar(value: Any) -> str:
    """A value as ``parse_overrides`` reads it back (YAML), floats exact."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_float(value)
    if value is None:
        return "null"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
