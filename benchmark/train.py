"""A full run: data, partition, swarm, epochs, evaluation, checkpoints and ``metrics.json``.

The loop is deliberately plain: everything that makes a run reproducible lives elsewhere
(batches are a pure function of (seed, epoch, iteration); the swarm has no hidden randomness), so
a checkpoint only needs the swarm state, the epoch and the history to resume exactly.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .config import RunConfig
from .data import AgentBatches, DatasetBundle, class_histogram, dirichlet_partition, eval_batches
from .data import load_dataset
from .errors import ConfigError
from .io import atomic_write_json
from .models import build_model
from .swarm import Swarm, pick_device
from .topology import Topology, build_topology
from .tracking import track_run

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class Experiment:
    """Everything built from a config before the first iteration."""

    config: RunConfig
    bundle: DatasetBundle
    parts: list
    topology: Topology
    swarm: Swarm
    batches: AgentBatches


def build_experiment(config: RunConfig) -> Experiment:
    """Config -> data, partition, topology, identical initial models, swarm, batch source."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    topology = build_topology(
        config.topology, config.n_agents, seed=config.seed, rows=config.torus_rows,
        degree=config.degree,
    )
    bundle = load_dataset(
        config.dataset, data_dir=config.data_dir, download=config.download,
        val_fraction=config.val_fraction, seed=config.seed, image_size=config.image_size,
        synthetic=config.synthetic,
    )
    labels = bundle.train.y.numpy()
    parts = dirichlet_partition(
        labels, config.n_agents, config.alpha, seed=config.seed, scheme=config.partition
    )
    smallest = min(len(p) for p in parts)
    if config.batch_size > smallest:
        raise ConfigError(
            "batch_size", config.batch_size, f"at most the smallest shard size ({smallest})"
        )
    torch.manual_seed(config.seed)
    model = build_model(
        config.model, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
        norm=config.norm, image_size=bundle.image_size,
    )
    swarm = Swarm(
        model, topology, algorithm=config.algorithm, ccl=config.ccl, lr=config.lr_at(0),
        momentum=config.momentum, weight_decay=config.weight_decay, gamma=config.gamma,
        seed=config.seed, device=device, mixing=config.mixing, wd_skip_norm=config.wd_skip_norm,
        log_cross_features=config.log_cross_features, qgm_variant=config.qgm_variant,
        relay_tree=config.relay_tree, relay_norm=config.relay_norm,
        feature_distance=config.feature_distance,
    )
    batches = AgentBatches(
        bundle.train, parts, config.batch_size, bundle.augment, bundle.mean, bundle.std,
        seed=config.seed, device=device,
    )
    return Experiment(config, bundle, parts, topology, swarm, batches)


@torch.inference_mode()
def evaluate(swarm: Swarm, bundle: DatasetBundle, split: str = "test") -> dict[str, float]:
    """Accuracy of every local model and of the consensus model on one split (no augmentation)."""
    data = getattr(bundle, split)
    if data is None:
        raise ConfigError("val_fraction", 0, f"> 0 to evaluate on the '{split}' split")
    consensus = swarm.consensus_model()
    models = [*swarm.models, consensus]
    for m in models:
        m.eval()
    correct = torch.zeros(len(models), device=swarm.device)
    total = 0
    for x, y in eval_batches(data, bundle.mean, bundle.std, device=swarm.device):
        for k, m in enumerate(models):
            correct[k] += (m(x)[1].argmax(dim=1) == y).sum()
        total += len(y)
    for m in swarm.models:
        m.train()
    acc = (correct / total * 100).tolist()
    local = torch.tensor(acc[:-1])
    return {
        "local_acc_mean": float(local.mean()),
        "local_acc_std": float(local.std(unbiased=False)),
        "consensus_acc": acc[-1],
        "consensus_distance": swarm.consensus_distance(),
    }


def train_epoch(exp: Experiment, epoch: int, progress: tqdm | None = None) -> dict[str, float]:
    """One pass over every shard; returns the epoch's mean statistics (NaN/inf kept as such)."""
    swarm = exp.swarm
    swarm.set_lr(exp.config.lr_at(epoch))
    sums: dict[str, float] = {}
    count = 0
    for xs, ys in exp.batches.epoch(epoch):
        stats = swarm.step(xs, ys)
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
        if progress is not None:
            progress.update(1)
        if not math.isfinite(sums["ce"]):
            break  # diverged: no point in finishing the epoch
    means = {("train_ce" if k == "ce" else k): v / count for k, v in sums.items()}
    means["lr"] = swarm.lr
    return means


def run(
    config: RunConfig,
    out_dir: str | Path | None,
    eval_split: str = "test",
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train for ``config.epochs`` and (when ``out_dir`` is given) write ``metrics.json``."""
    started = time.time()
    exp = build_experiment(config)
    with track_run(config, out_dir) as tracker:
        history, final, status = _train_loop(exp, eval_split, on_epoch, tracker)
        metrics = _metrics(exp, history, final, status, time.time() - started)
        if out_dir is not None:
            atomic_write_json(Path(out_dir) / "metrics.json", metrics)
        tracker.log_result(metrics)
    return metrics


def _train_loop(exp: Experiment, eval_split: str, on_epoch: EpochCallback | None, tracker):
    config = exp.config
    history: list[dict[str, Any]] = []
    status, final = "completed", {}
    interactive = sys.stderr.isatty()
    bar = tqdm(total=config.epochs * exp.batches.iterations_per_epoch, disable=not interactive,
               desc=config.method)
    for epoch in range(config.epochs):
        t0 = time.time()
        record: dict[str, Any] = {"epoch": epoch + 1, **train_epoch(exp, epoch, bar)}
        if not math.isfinite(record["train_ce"]):
            status = "diverged"
            record["time_s"] = time.time() - t0
            history.append(record)
            break
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            final = evaluate(exp.swarm, exp.bundle, eval_split)
            record.update(final)
        record["time_s"] = time.time() - t0
        history.append(record)
        tracker.log_epoch(epoch + 1, record)
        if not interactive:
            print(_epoch_line(record, config.epochs), flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
    bar.close()
    return history, final, status


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.4g}",
             f"ce {record['train_ce']:.4f}"]
    for key, label in (("l_mv", "L_mv"), ("l_dv", "L_dv")):
        if key in record:
            parts.append(f"{label} {record[key]:.4g}")
    if "consensus_acc" in record:
        parts.append(f"consensus {record['consensus_acc']:.2f}%")
        parts.append(f"local {record['local_acc_mean']:.2f}±{record['local_acc_std']:.2f}%")
    parts.append(f"{record['time_s']:.1f}s")
    return " | ".join(parts)


def _metrics(exp: Experiment, history, final, status, wall) -> dict[str, Any]:
    config, swarm, topo = exp.config, exp.swarm, exp.topology
    hist = class_histogram(exp.bundle.train.y.numpy(), exp.parts, exp.bundle.num_classes)
    bytes_sent = swarm.bytes_sent()
    return {
        "status": status,
        "diverged_epoch": history[-1]["epoch"] if status == "diverged" else None,
        "config": config.model_dump(),
        "method": config.method,
        "algorithm": config.algorithm,
        "ccl": config.ccl,
        "topology": {
            "name": topo.name, "n_agents": topo.n, "diameter": topo.diameter,
            "spectral_gap": topo.spectral_gap(config.mixing), "mixing": config.mixing,
        },
        "n_params": swarm.params.shape[1],
        "iterations_per_epoch": exp.batches.iterations_per_epoch,
        "history": history,
        "final": final,
        "partition": {"sizes": [len(p) for p in exp.parts], "histogram": hist.tolist()},
        "communication": {
            "bytes_per_agent_per_iteration": bytes_sent,
            "bytes_per_agent_total": sum(bytes_sent.values())
            * exp.batches.iterations_per_epoch * len(history),
        },
        "wall_time_s": wall,
    }
