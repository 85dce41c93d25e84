"""``python -m benchmark plan FAMILY``: what a family's grid costs on this machine.

Runs and training iterations come from the family file alone (no data read): a run does
``epochs x ceil(shard / batch_size)`` iterations, a shard being ``floor(train / n_agents)``
samples (``mean`` for the ``raw`` partition), with the training-set sizes of the dataset
registry's rows. A tuned family adds its studies (one per method, alpha and graph) at their full
trial budget (pruning only makes them cheaper).

Device time needs seconds per iteration, measured by ``python -m benchmark calibrate`` on this
machine (:mod:`benchmark.calibrate`, a JSON file): a run timed there counts as is; a run whose
agent count was not timed is scaled linearly in agents from the nearest timed count of the same
workload (per-iteration work is per agent; the same graph first, else any graph: a degree
changes only CCL's share); anything else is reported as not estimated. Only
training iterations are counted (evaluation and checkpoints add a few percent).
Wall time = device time / (GPUs x speed-up of k concurrent runs on one GPU), the speed-up being
measured by ``calibrate --concurrency``; without it, the range between no gain and k-fold.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .data.registry import dataset_row, train_samples
from .errors import UserError

CALIBRATION = "calibration.json"


@dataclass(frozen=True)
class Workload:
    """What sets the cost of one iteration (seed, alpha and lambdas do not)."""

    dataset: str
    sample_shape: tuple[int, ...]  # one input sample at the run's options ([C, H, W] / [C, L])
    model: str
    norm: str | None
    batch_size: int
    method: str
    log_cross_features: bool | None
    topology: str
    n_agents: int

    @classmethod
    def of(cls, config: RunConfig) -> Workload:
        shape = dataset_row(config.dataset, config.image_size, config.synthetic).sample_shape
        return cls(config.dataset, shape, config.model, config.norm,
                   config.batch_size, config.method, config.log_cross_features, config.topology,
                   config.n_agents)

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def family_key(self, topology: bool = True) -> str:
        """The workload without its agent count (and graph): timings scale between counts."""
        drop = {"n_agents": None, **({} if topology else {"topology": None})}
        return json.dumps({**asdict(self), **drop}, sort_keys=True)


def iterations(config: RunConfig) -> int:
    """Training iterations of a run: epochs x iterations per epoch (as AgentBatches counts)."""
    # the training split (the registry row's size) less the validation split carved out of it
    train = train_samples(config.dataset, config.synthetic, config.val_fraction,
                          config.image_size)
    shard = train / config.n_agents if config.partition == "raw" else train // config.n_agents
    return config.epochs * math.ceil(shard / config.batch_size)


@dataclass
class Calibration:
    """Seconds per iteration by workload, measured on one device (``calibration.json``)."""

    device: str
    device_name: str
    created: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    concurrency: dict[str, float] = field(default_factory=dict)  # k -> throughput / one run's

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        from .io import read_text

        try:  # bounded: a FIFO or /dev/zero given as the file is named, never read forever
            data = json.loads(read_text(path, "calibration", limit=64 << 20))
            calibration = cls(**data)
        except (ValueError, TypeError, RecursionError) as err:  # (JSON nested too deep)
            raise UserError(f"calibration {path}: not readable ({type(err).__name__}: {err}); "
                            f"run `python -m benchmark calibrate` again") from None
        if any("image_size" in e.get("workload", {}) for e in calibration.entries):
            raise UserError(f"calibration {path}: written by an older version (workloads keyed "
                            f"by image_size, not sample_shape); run `python -m benchmark "
                            f"calibrate` again")
        return calibration

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_json

        atomic_write_json(path, asdict(self))

    def seconds(self, work: Workload) -> tuple[float, str] | None:
        """Seconds per iteration of ``work`` and how they were found ("timed" / "scaled")."""
        timed = {json.dumps(e["workload"], sort_keys=True): e["seconds_per_iteration"]
                 for e in self.entries}
        if work.key in timed:
            return timed[work.key], "timed"
        for topology in (True, False):  # the same graph first, else any graph
            same = [e for e in self.entries if Workload(**e["workload"]).family_key(topology)
                    == work.family_key(topology)]
            if same:
                break
        else:
            return None
        near = min(same, key=lambda e: abs(e["workload"]["n_agents"] - work.n_agents))
        return near["seconds_per_iteration"] * work.n_agents / near["workload"]["n_agents"], \
            "scaled"


@dataclass
class Plan:
    runs: int
    done: int
    run_iterations: int
    studies: int
    study_iterations: int
    studies_by_graph: dict[str, int]  # the studies to do per graph (ring-n16: 6...)
    device_hours: float | None  # None: nothing could be estimated
    how: dict[str, int]  # runs and studies by source: timed, scaled, missing

    @property
    def complete(self) -> bool:
        return self.how.get("missing", 0) == 0


def plan_family(family, calibration: Calibration | None, root: str | Path = ".") -> Plan:
    """Counts and device-hours of a family's runs still to do, and of its studies."""
    todo = [r for r in family.runs if not (Path(root) / r.metrics_path).exists()]
    jobs = [(r.config, 1) for r in todo]
    studies = [s for s in family_studies(family) if not (Path(root) / s.best).exists()]
    jobs += [(study_config(s), family.spec.tuning.trials) for s in studies]
    by_graph: dict[str, int] = {}
    for study in studies:
        by_graph[study.label] = by_graph.get(study.label, 0) + 1
    how: dict[str, int] = {}
    seconds = 0.0
    for config, repeats in jobs:
        found = calibration.seconds(Workload.of(config)) if calibration else None
        source = found[1] if found else "missing"
        how[source] = how.get(source, 0) + 1
        if found:
            seconds += found[0] * iterations(config) * repeats
    study_its = sum(iterations(c) * k for c, k in jobs[len(todo):])
    return Plan(runs=len(family.runs), done=len(family.runs) - len(todo),
                run_iterations=sum(iterations(r.config) for r in todo), studies=len(studies),
                study_iterations=study_its, studies_by_graph=by_graph,
                device_hours=seconds / 3600 if how.keys() - {"missing"} else None, how=how)


def family_studies(family) -> list:
    """The studies (``grid.StudySpec``) the family runs: none under the fixed protocol."""
    return family.studies if family.spec.tuning.protocol != "fixed" else []


def study_config(study) -> RunConfig:
    """The run a trial of a study (``grid.StudySpec``) trains (benchmark.tuning's reading)."""
    from .tuning.spec import load_tuning

    return load_tuning(study.config_path, study.override_args)[0]


def wall_hours(device_hours: float, gpus: int, slots: int,
               concurrency: dict[str, float]) -> tuple[float, float, str]:
    """(low, high) wall-clock hours on ``gpus`` GPUs with ``slots`` runs each, and why."""
    speedup = concurrency.get(str(slots))
    if slots == 1:
        return device_hours / gpus, device_hours / gpus, "one run per device"
    if speedup is not None:
        hours = device_hours / (gpus * speedup)
        return hours, hours, f"measured speed-up of {slots} concurrent runs: {speedup:.2f}x"
    return (device_hours / (gpus * slots), device_hours / gpus,
            f"{slots} concurrent runs not measured (calibrate --concurrency): between "
            f"{slots}-fold and no gain")


def describe(name: str, plan: Plan, calibration: Calibration | None, source: str,
             gpus: int, slots: list[int]) -> list[str]:
    """The lines ``python -m benchmark plan`` prints."""
    lines = [f"{name}: {plan.runs} runs ({plan.done} done), {plan.run_iterations:,} training "
             f"iterations to do"]
    if plan.studies:
        graphs = ", ".join(f"{g} {k}" for g, k in plan.studies_by_graph.items())
        lines.append(f"  + {plan.studies} tuning studies, one per method, alpha and graph "
                     f"({graphs}): at most {plan.study_iterations:,} iterations (full trial "
                     "budget; pruning makes it less)")
    if calibration is None:
        lines.append(f"no calibration ({source} not found): device time unknown; run "
                     f"`python -m benchmark calibrate` on the machine that will run the grid")
        return lines
    lines.append(f"calibration: {source} ({calibration.device}, {calibration.device_name}, "
                 f"{calibration.created}); jobs " + ", ".join(
                     f"{k} {v}" for k, v in sorted(plan.how.items())))
    if plan.device_hours is None:
        lines.append("device time unknown: no job of this family matches the calibration")
        return lines
    partial = "" if plan.complete else " (jobs not estimated excluded)"
    lines.append(f"device time: {plan.device_hours:.1f} h of one {calibration.device} running "
                 f"one job{partial}")
    for k in slots:
        low, high, why = wall_hours(plan.device_hours, gpus, k, calibration.concurrency)
        span = f"{low:.1f} h" if low == high else f"{low:.1f}-{high:.1f} h"
        lines.append(f"wall time on {gpus} device(s) x {k} slot(s): {span} ({why})")
    return lines
