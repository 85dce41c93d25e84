"""A full run: data, partition, swarm, epochs, evaluation, checkpoints and ``metrics.json``.

The loop is deliberately plain: everything that makes a run reproducible lives elsewhere
(batches are a pure function of (seed, epoch, iteration); the swarm has no hidden randomness), so
a checkpoint only needs the swarm state, the epoch and the history to resume exactly.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import distributed, memory
from .checkpoint import Progress, RunDir
from .config import RunConfig, check_device
from .data import (
    AgentBatches,
    DatasetBundle,
    class_histogram,
    dirichlet_partition,
    load_dataset,
)
from .device import configure, environment, pick_device
from .errors import ConfigError, UserError
from .evaluation import accuracies
from .gpu_slots import claim_gpu
from .instability import training_instability
from .interrupts import deferred
from .methods import zeroed_lambdas
from .metrics import RunMetrics
from .models import build_model
from .run_output import EpochCallback, RunOutput
from .saved import model_spec, save_models
from .swarm import Swarm
from .timing import timed
from .topology import Topology
from .tracking import check_store, complete_record

# Training statistics stay on the device; the host reads them (one synchronisation) every this
# many iterations to stop a diverged run, so divergence is noticed at most this many iterations
# late (a diverged epoch's statistics are non-finite either way), and at every epoch's end.
CHECK_EVERY = 10


@dataclass
class Experiment:
    """Everything built from a config before the first iteration."""

    config: RunConfig
    bundle: DatasetBundle
    parts: list
    topology: Topology
    swarm: Swarm
    batches: AgentBatches
    estimated_memory: int | None = None  # bytes at the run's peak (benchmark.memory)


def build_experiment(config: RunConfig) -> Experiment:
    """Config -> data, partition, topology, identical initial models, swarm, batch source."""
    if config.threads:
        torch.set_num_threads(config.threads)
    # several GPUs visible and no slot given by the workflow: take a free one (benchmark.gpu_slots)
    claimed = None if config.distributed or config.device not in ("auto", "cuda") else \
        claim_gpu(config.gpu_slots_per_device or 1)
    device = claimed or pick_device(config.device)
    comm = None
    if config.distributed:  # join torchrun's process group: this rank simulates a shard of agents
        comm, device = distributed.setup(config.n_agents, config.device)
    configure(device)
    topology = config.graph()  # the one the config check used: built once per process
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
    model = build_model(**model_spec(config, bundle))
    # before the swarm takes the device: refuse a run that cannot fit its (share of the) device
    estimated = None if config.distributed else memory.estimate(config, model, bundle, device,
                                                                 topology)
    if estimated is not None and config.memory_check:
        memory.check(estimated, device)
    # the base optimiser's and the CCL loss's own typed options
    swarm = Swarm(
        model, topology, algorithm=config.algorithm_options, ccl=config.ccl_options,
        lr=config.lr_at(0), momentum=config.momentum, weight_decay=config.weight_decay,
        gamma=config.gamma, seed=config.seed, device=device, mixing=config.mixing,
        wd_skip_norm=config.wd_skip_norm, comm=comm, vectorize=config.vectorize,
        agent_threads=config.agent_threads, clip_grad_norm=config.clip_grad_norm,
    )
    batches = AgentBatches(
        bundle.train, parts, config.batch_size, bundle.augment, bundle.mean, bundle.std,
        seed=config.seed, device=device,
    )
    # the evaluated split held on the device once, not uploaded again at every evaluation; with
    # a validation split (tuning) the test split is never touched, not even to move it
    if bundle.val is not None:
        bundle.val = bundle.val.to(device)
    else:
        bundle.test = bundle.test.to(device)
    return Experiment(config, bundle, parts, topology, swarm, batches,
                      estimated and estimated.total)


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
    acc = accuracies(models, data, bundle.mean, bundle.std, swarm.device)
    for m in swarm.models:
        m.train()
    # sharded run: every rank's agents in agent order (each rank scores the consensus model too)
    local = torch.tensor([a for part in swarm.comm.all_gather_objects(acc[:-1]) for a in part])
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
    if swarm.cross_features is not None:
        swarm.cross_features.set_weight_scale(exp.config.lambda_scale_at(epoch))
    swarm.timer.reset()  # this epoch's phases only (written by _epoch as record["phases"])
    # per statistic, float64 on the device (the same sums as Python floats) and the iterations
    # that reported it: L_mv / L_dv only logged may be computed at some iterations only
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    count = 0
    for xs, ys in timed(exp.batches.epoch(epoch), swarm.timer, "data"):
        stats = swarm.step(xs, ys)
        for key, value in stats.items():
            sums[key] = sums[key] + value.double() if key in sums else value.double()
            counts[key] = counts.get(key, 0) + 1
        count += 1
        if progress is not None:
            progress.update(1)
        if count % CHECK_EVERY == 0 and not bool(torch.stack(list(sums.values())).isfinite()
                                                 .all()):
            break  # diverged: no point in finishing the epoch
    totals = dict(zip(sums, torch.stack(list(sums.values())).tolist() if sums else [],
                      strict=True))
    means = {("train_ce" if k == "ce" else k): v / counts[k] for k, v in totals.items()}
    means["lr"] = swarm.lr
    # communication of the iterations actually run (a diverged epoch stops early), by kind
    sent = swarm.bytes_sent()
    means["bytes_per_agent"] = sum(sent.values()) * count
    means.update({f"bytes_per_agent_{kind}": value * count for kind, value in sent.items()})
    return means


def run(
    config: RunConfig,
    out_dir: str | Path | None,
    eval_split: str = "test",
    on_epoch: EpochCallback | None = None,
    restart: bool = False,
) -> RunMetrics:
    """Train for ``config.epochs``; the result, also written to ``out_dir/metrics.json``.

    With ``out_dir``, the run is crash-safe (:mod:`benchmark.checkpoint`): it checkpoints every
    epoch, resumes from the checkpoint when restarted, and returns the existing metrics without
    training when the folder already holds this config's finished run. ``restart`` discards
    both and starts over. Every check happens before the first file is written.
    """
    store = RunDir(out_dir, config) if out_dir is not None else None  # writable? (no file yet)
    if store is not None and not restart:
        done = store.finished()
        if done is not None:
            print(f"{store.metrics}: finished run ({done.status}), nothing to do", flush=True)
            if config.tracking and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0
                _complete_record(store, done)
            return done
    check_device(config.device)  # cheap checks of the outside world before any data or file
    if config.tracking:
        check_store()
    progress = Progress()
    exp = build_experiment(config)
    # distributed: every rank trains its shard, rank 0 alone writes, logs and prints
    out = RunOutput(config, out_dir, store, on_epoch, speaks=exp.swarm.comm.is_main)
    resumed = store.load(exp.swarm) if store is not None and not restart else None
    if resumed is not None:  # a sharded run: every rank loaded its rows, one speaks
        resumed.started = progress.started
        progress = resumed
        out.say(f"resuming {store.path} after epoch {progress.epoch}/{config.epochs}")
    with out.session(restart):
        out.tracker.log_dataset(exp.bundle, exp.parts)
        status = _train_loop(exp, eval_split, progress, out)
        # the models and metrics.json (which names them) are written whole, or not at all: an
        # interrupt now waits for them (local writes), so a run trained to the end is complete
        with deferred():
            metrics = _metrics(exp, progress, status)
            if store is not None and status == "completed":  # every rank: the consensus model
                with store.writing():  # is a collective
                    metrics.models = save_models(exp, store.path)
            out.write_result(metrics)
        out.log_result(metrics)
    return metrics


def _complete_record(store: RunDir, metrics: RunMetrics) -> None:
    """A finished run's MLflow record, completed when an interrupt cut it short after
    ``metrics.json`` was written (:func:`benchmark.tracking.complete_record`), under the
    folder's lock, so never while the run's own process still writes it. A store that cannot
    be used is a warning: the result is in ``metrics.json`` either way."""
    try:
        with store.session():
            repaired = complete_record(store.config, store.path, metrics)
    except UserError as err:
        print(f"warning: its MLflow record was not checked: {err}", file=sys.stderr)
        return
    if repaired is not None:
        print(f"MLflow run {repaired}: the result logged, marked FINISHED", flush=True)


def _train_loop(exp: Experiment, eval_split: str, progress: Progress, out: RunOutput) -> str:
    """Epochs ``progress.epoch + 1 .. epochs``; returns the status ("completed" or "diverged")."""
    epochs, per_epoch = exp.config.epochs, exp.batches.iterations_per_epoch
    bar = out.progress_bar(epochs * per_epoch, progress.epoch * per_epoch)
    status = "completed"
    for epoch in range(progress.epoch, epochs):
        record, evaluation, diverged = _epoch(exp, epoch, eval_split, bar)
        _advance(progress, record, evaluation, diverged)
        if diverged:
            status = "diverged"
            out.diverged(epoch + 1)
            break
        if epoch + 1 < epochs:
            out.checkpoint(exp.swarm, progress)  # before logging: a printed epoch is a saved one
        out.epoch(record)
    bar.close()
    return status


def _epoch(
    exp: Experiment, epoch: int, eval_split: str, bar: tqdm
) -> tuple[dict[str, Any], dict[str, float] | None, bool]:
    """Train one epoch and evaluate when due: the epoch's record, the evaluation (None when not
    due or skipped) and whether the run diverged."""
    t0 = time.time()
    record: dict[str, Any] = {"epoch": epoch + 1, **train_epoch(exp, epoch, bar)}
    diverged = not _all_finite(record)
    evaluation = None
    if not diverged and _evaluation_due(exp.config, epoch):
        with exp.swarm.timer.phase("evaluation"):
            evaluation = evaluate(exp.swarm, exp.bundle, eval_split)
        record.update(evaluation)
        # finite losses but overflowing parameters (possible at the very last step)
        diverged = not math.isfinite(evaluation["consensus_distance"])
    record["phases"] = exp.swarm.timer.reset()  # seconds per phase (benchmark/timing.py)
    record["time_s"] = time.time() - t0
    return record, evaluation, diverged


def _evaluation_due(config: RunConfig, epoch: int) -> bool:
    return (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs


def _advance(
    progress: Progress, record: dict[str, Any], evaluation: dict[str, float] | None,
    diverged: bool,
) -> None:
    progress.history.append(record)
    progress.epoch = record["epoch"]
    if diverged:
        progress.final = {}  # no figures a table could average with the completed runs
    elif evaluation is not None:
        progress.final = evaluation


def _all_finite(record: dict[str, Any]) -> bool:
    return all(math.isfinite(v) for v in record.values() if isinstance(v, float))


def _metrics(exp: Experiment, progress: Progress, status: str) -> RunMetrics:
    config, swarm, topo = exp.config, exp.swarm, exp.topology
    history, final = progress.history, progress.final
    hist = class_histogram(exp.bundle.train.y.numpy(), exp.parts, exp.bundle.num_classes)
    bytes_sent = swarm.bytes_sent()
    return RunMetrics.parse({
        "status": status,
        "diverged_epoch": history[-1]["epoch"] if status == "diverged" else None,
        "config": config,
        "method": config.method,
        "algorithm": config.algorithm,
        "ccl": config.ccl,
        # the weights the preset forced to 0 (config holds the effective ones: one truth)
        "ccl_zeroed": zeroed_lambdas(config.method),
        "protocol": "tuned" if config.tuned else "fixed",
        "tuned": config.tuned.model_dump() if config.tuned else None,
        "topology": {
            "name": topo.name, "n_agents": topo.n, "diameter": topo.diameter,
            "spectral_gap": topo.spectral_gap(config.mixing), "mixing": config.mixing,
        },
        "n_params": swarm.params.shape[1],
        "iterations_per_epoch": exp.batches.iterations_per_epoch,
        "history": history,
        "final": final,
        "instability": training_instability(history),
        "partition": {"sizes": [len(p) for p in exp.parts], "histogram": hist.tolist()},
        "data": data_summary(exp.bundle),
        "communication": {
            "bytes_per_agent_per_iteration": bytes_sent,
            "bytes_per_agent_total": sum(r["bytes_per_agent"] for r in history),
        },
        "wall_time_s": progress.wall_time(),
        "resumed_after_epochs": progress.resumed_after,
        # this process's peak: CUDA allocator high-water mark, or the peak resident set on a CPU
        "memory": {"estimated_bytes": exp.estimated_memory,
                   "peak_bytes": memory.peak_bytes(swarm.device)},
        "environment": environment(swarm.device, swarm.vectorize, swarm.vectorize_reason),
        **_distributed_metrics(swarm),
    })


def data_summary(bundle: DatasetBundle) -> dict[str, Any]:
    """The ``data`` section of metrics.json (also the MLflow dataset input's profile)."""
    return {"name": bundle.name, "train_size": len(bundle.train),
            "val_size": len(bundle.val) if bundle.val is not None else None,
            "test_size": len(bundle.test), "sample_shape": list(bundle.sample_shape),
            "digest": bundle.digest}


def _distributed_metrics(swarm: Swarm) -> dict[str, Any]:
    """A sharded run's layout and the bytes its halo messages moved between processes."""
    comm = swarm.comm
    if not comm.distributed:
        return {}
    sent = comm.all_reduce_(torch.tensor(float(comm.bytes_sent), device=swarm.device))
    return {"distributed": {**comm.describe(), "bytes_between_processes": float(sent)}}
