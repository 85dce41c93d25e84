"""``python -m benchmark plan FAMILY``: what a family's grid costs on this machine.

Runs and training iterations come from the family file alone (no data read): a run does
``epochs x ceil(shard / batch_size)`` iterations, a shard being ``floor(train / n_agents)``
samples (``mean`` for the ``raw`` partition), with the official training-set sizes below. A
tuned family adds its studies at their full trial budget (pruning only makes them cheaper).

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
from .errors import UserError

# training-set sizes (official splits; digits: 1797 minus its fixed 20% test split)
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "fmnist": 60_000, "imagenette": 9_469,
               "imagenet": 1_281_167, "digits": 1_437}
# channels, image size (None: the run's image_size), classes, augmentation: what calibrate's
# stand-in data need to cost what the real data cost
DATA_SHAPES = {"cifar10": (3, 32, 10, "cifar"), "cifar100": (3, 32, 100, "cifar"),
               "fmnist": (1, 28, 10, "none"), "imagenette": (3, 32, 10, "imagenette"),
               "imagenet": (3, 224, 1000, "imagenette"), "digits": (1, 28, 10, "none")}
CALIBRATION = "calibration.json"


@dataclass(frozen=True)
class Workload:
    """What sets the cost of one iteration (seed, alpha and lambdas do not)."""

    dataset: str
    image_size: int | None
    model: str
    norm: str | None
    batch_size: int
    method: str
    log_cross_features: bool | None
    topology: str
    n_agents: int

    @classmethod
    def of(cls, config: RunConfig) -> Workload:
        return cls(config.dataset, config.image_size, config.model, config.norm,
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
    if config.dataset == "synthetic":
        from .data.registry import SYNTHETIC_DEFAULTS

        train = int({**SYNTHETIC_DEFAULTS, **(config.synthetic or {})}["train_size"])
    else:
        train = TRAIN_SIZES[config.dataset]
    train -= math.ceil(train * config.val_fraction)  # the validation split carved out of it
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
            return cls(**data)
        except (ValueError, TypeError, RecursionError) as err:  # (JSON nested too deep)
            raise UserError(f"calibration {path}: not readable ({type(err).__name__}: {err}); "
                            f"run `python -m benchmark calibrate` again") from None

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
    device_hours: float | None  # None: nothing could be estimated
    how: dict[str, int]  # runs and studies by source: timed, scaled, missing

    @property
    def complete(self) -> bool:
        return self.how.get("missing", 0) == 0


def plan_family(family, calibration: Calibration | None, root: str | Path = ".") -> Plan:
    """Counts and device-hours of a family's runs still to do, and of its studies."""
    from .grid import best_path

    todo = [r for r in family.runs if not (Path(root) / r.metrics_path).exists()]
    jobs = [(r.config, 1) for r in todo]
    studies = [(m, a) for m, a in family_studies(family)
               if not (Path(root) / best_path(family.name, m, a)).exists()]
    jobs += [(study_config(family, m, a), family.spec.tuning.trials) for m, a in studies]
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
                study_iterations=study_its,
                device_hours=seconds / 3600 if how.keys() - {"missing"} else None, how=how)


def family_studies(family) -> list[tuple[str, float]]:
    """(method, alpha) of the studies the family runs (none under the fixed protocol)."""
    return family.studies if family.spec.tuning.protocol != "fixed" else []


def study_config(family, method: str, alpha: float) -> RunConfig:
    """The run a trial of one of the family's studies trains (benchmark.tuning's reading)."""
    from .tuning.spec import load_tuning

    return load_tuning(family.path, [f"method={method}", f"alpha={alpha!r}"])[0]


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
        lines.append(f"  + {plan.studies} tuning studies: at most {plan.study_iterations:,} "
                     f"iterations (full trial budget; pruning makes it less)")
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
