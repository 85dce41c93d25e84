"""``python -m benchmark calibrate``: seconds per iteration of every workload the families use,
timed on this machine's device, into ``calibration.json`` (read by ``python -m benchmark plan``).

A workload (:class:`benchmark.plan.Workload`: model, data shape, batch, method, graph, agents) is
timed with the real training path (``build_experiment``: swarm, batch source, augmentation) on
stand-in data of the dataset's shape, so no dataset needs to be present: ``warmup`` untimed
iterations (CUDA: kernel selection, the vectorize choice), then ``iterations`` timed ones.
``--concurrency 1,2,4,8`` also measures how much k runs sharing one GPU gain over one: k worker
processes run the same workload, start together (a file barrier) and count iterations for a
fixed time; the speed-up is their total throughput over one worker's. Timings of a device merge
into an existing file of the same device (a partial calibration can be completed later).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .config import RunConfig, build_config
from .data.registry import dataset_row
from .plan import Calibration, Workload, family_studies, study_config

# how long concurrent workers wait for each other to be ready (building a workload on a busy
# machine takes seconds): a worker that died must not leave the others waiting for ever
BARRIER_S = 600


def workloads(families, agents: set[int] | None = None) -> list[RunConfig]:
    """One config per distinct workload of the families' runs and studies (first seen)."""
    seen: dict[str, RunConfig] = {}
    for family in families:
        configs = [r.config for r in family.runs]
        configs += [study_config(study) for study in family_studies(family)]
        for config in configs:
            if agents is None or config.n_agents in agents:
                seen.setdefault(Workload.of(config).key, config)
    return list(seen.values())


def stand_in(config: RunConfig, steps: int, **machine) -> RunConfig:
    """``config`` on random data of its dataset's shape, enough for ``steps`` iterations
    (synthetic images held as uint8 like the image sets, signals as float like MNIST-1D)."""
    if config.dataset == "synthetic":
        synthetic = dict(config.synthetic or {})
    else:  # the registry row's sample shape, classes and augmentation cost what the data cost
        data = dataset_row(config.dataset, config.image_size)
        channels, size = data.sample_shape[0], data.sample_shape[-1]
        synthetic = {"channels": channels, "num_classes": data.num_classes,
                     "augment": data.augment,
                     ("image_size" if data.kind == "image" else "length"): size}
    synthetic.update(train_size=config.n_agents * config.batch_size * steps, test_size=16)
    return build_config({**config.model_dump(), "dataset": "synthetic", "image_size": None,
                         "synthetic": synthetic, "partition": "iid", "val_fraction": 0.0,
                         "tracking": False, "distributed": False, **machine})


def _steps(exp) -> Iterator[None]:
    """Swarm iterations on the experiment's batches, epoch after epoch, forever."""
    epoch = 0
    while True:
        for xs, ys in exp.batches.epoch(epoch):
            exp.swarm.step(xs, ys)
            yield
        epoch += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_workload(config: RunConfig, iterations: int, warmup: int, **machine) -> dict:
    """Seconds per iteration (and the CUDA peak memory) of one workload."""
    from .train import build_experiment

    exp = build_experiment(stand_in(config, iterations + warmup, **machine))
    device = exp.swarm.device
    steps = _steps(exp)
    for _ in range(warmup):
        next(steps)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iterations):
        next(steps)
    _sync(device)
    entry = {"workload": json.loads(Workload.of(config).key),
             "seconds_per_iteration": (time.perf_counter() - start) / iterations,
             "iterations": iterations}
    if device.type == "cuda":
        entry["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return entry


def concurrency(config: RunConfig, ks: list[int], seconds: float, **machine) -> dict[str, float]:
    """Throughput of k concurrent runs of ``config`` relative to one run, for each k."""
    totals: dict[int, float] = {}
    for k in sorted(set(ks) | {1}):
        threads = max(1, min(2, (os.cpu_count() or 1) // k))  # GPU runs need few CPU threads
        spec = json.dumps(stand_in(config, 8, **{"threads": threads, **machine}).model_dump())
        with tempfile.TemporaryDirectory() as barrier:
            workers = [subprocess.Popen(
                [sys.executable, "-m", "benchmark.calibrate", spec, barrier, str(k), str(i),
                 str(seconds)], stdout=subprocess.PIPE, text=True) for i in range(k)]
            try:
                outs = [w.communicate(timeout=BARRIER_S + 10 * seconds)[0] for w in workers]
            finally:  # interrupted (or one worker hung): no worker outlives the calibration
                for worker in workers:
                    if worker.poll() is None:
                        worker.kill()
                        worker.wait()
        if any(w.returncode for w in workers):
            raise RuntimeError(f"a calibration worker failed (k={k})")
        totals[k] = sum(float(out.split()[-1]) for out in outs)
        print(f"  {k} concurrent: {totals[k]:.2f} iterations/s in all", flush=True)
    return {str(k): totals[k] / totals[1] for k in sorted(totals)}


def _worker(spec: str, barrier: str, k: int, index: int, seconds: float) -> None:
    """One of k concurrent runs: warm up, wait for the others, count iterations for a while."""
    from .train import build_experiment

    exp = build_experiment(build_config(json.loads(spec)))
    steps = _steps(exp)
    for _ in range(2):
        next(steps)
    _sync(exp.swarm.device)
    Path(barrier, f"ready{index}").touch()
    deadline = time.monotonic() + BARRIER_S
    while len(list(Path(barrier).glob("ready*"))) < k:
        if time.monotonic() > deadline:  # a sibling died before it got ready
            sys.exit(f"calibration worker {index}: the other {k - 1} never got ready")
        time.sleep(0.01)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(steps)
        count += 1
    _sync(exp.swarm.device)
    print(count / (time.perf_counter() - start))


def calibrate(families, out: str | Path, iterations: int = 2, warmup: int = 1,
              agents: set[int] | None = None, device: str | None = None,
              threads: int | None = None,
              concurrency_ks: list[int] | None = None, concurrency_s: float = 10.0,
              time_each: bool = True) -> Calibration:
    """Time every workload of ``families`` and write (or complete) the calibration file."""
    from .swarm import pick_device

    machine = {k: v for k, v in (("device", device), ("threads", threads)) if v}
    configs = workloads(families, agents)
    dev = pick_device(device or (configs[0].device if configs else "auto"))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    cal = Calibration(dev.type, name, datetime.date.today().isoformat())
    if Path(out).exists():
        old = Calibration.load(out)
        if (old.device, old.device_name) == (cal.device, cal.device_name):
            cal.entries, cal.concurrency = old.entries, old.concurrency
    for i, config in enumerate(configs if time_each else []):
        entry = time_workload(config, iterations, warmup, **machine)
        cal.entries = [e for e in cal.entries if e["workload"] != entry["workload"]] + [entry]
        print(f"[{i + 1}/{len(configs)}] {config.model} {config.topology}-n{config.n_agents} "
              f"{config.method} b{config.batch_size}: {entry['seconds_per_iteration']:.4f} s/it",
              flush=True)
        cal.save(out)  # a partial calibration survives an interruption
    if concurrency_ks and configs:
        typical = min(configs, key=lambda c: abs(c.n_agents - 16))  # the paper's usual size
        print(f"concurrency: {typical.model} {typical.topology}-n{typical.n_agents} "
              f"{typical.method}", flush=True)
        cal.concurrency.update(concurrency(typical, concurrency_ks, concurrency_s, **machine))
        cal.save(out)
    return cal


def main(argv: list[str]) -> None:
    _worker(argv[0], argv[1], int(argv[2]), int(argv[3]), float(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
