"""Shared pieces of the performance scripts (``benchmarks/r*.py``): timing, sizes, reporting.

Why interleaved rounds: the machines these run on are shared, so absolute times drift by tens of
percent within a minute. Every script times the things it compares *alternately* (round r runs A,
then B, then C, ...) and reports the median of the per-round ratios, with the spread (min, max and
the quartiles) over rounds, so a burst of someone else's load hits numerator and denominator alike.

Every script prints human-readable lines, then exactly one line ``BENCH {json}`` as its summary
(the smoke test and the README's tables read that line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models import build_model
from benchmark.swarm import Swarm
from benchmark.topology import build_topology

SUMMARY_PREFIX = "BENCH "
CIFAR_SHAPE = (3, 32, 32)


# -- command line ------------------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    """Options every script shares; each script adds its own sizes (with small ``--tiny`` ones)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all cores; figures in README use 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each measured thing")
    p.add_argument("--rounds", type=int, default=7, help="timed interleaved rounds")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes and an MLP: checks the script runs, measures nothing useful")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.model, args.warmup, args.rounds = "mlp", 1, 2
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.manual_seed(0)
    return device


# -- timing ------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the work it launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, rounds: int,
    after_warmup: Callable[[], Any] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, timed alternately in ``rounds`` rounds after warm-up."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    if after_warmup is not None:
        after_warmup()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and range of a list of measurements."""
    values = sorted(values)
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2],
            "min": values[0], "max": values[-1]}


def ratio(times: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    """Spread of the per-round ratio ``num / den`` (rounds are interleaved, see module doc)."""
    return spread([a / b for a, b in zip(times[num], times[den], strict=True)])


# -- workloads ---------------------------------------------------------------------------------
def make_model(name: str, device: torch.device, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=10, in_channels=3, image_size=32).to(device)


def add_path_arguments(p: argparse.ArgumentParser, vectorize: bool = True) -> None:
    """The Swarm's forward/backward path options, shared by the scripts that build swarms."""
    if vectorize:
        p.add_argument("--vectorize", default=None,
                       help="auto, loop or vmap (default: the Swarm's)")
    p.add_argument("--agent-threads", type=int, default=1, help="Swarm agent_threads")


def make_swarm(args: argparse.Namespace, n: int, device: torch.device, method: str = "dsgdm-n",
               topology: str = "ring", **options: Any) -> Swarm:
    """A swarm of ``n`` fresh models of ``args.model`` (EvoNorm ResNet-20 unless ``--tiny``),
    on the path ``--vectorize`` / ``--agent-threads`` ask for (when the script has them)."""
    from benchmark.methods import resolve_method

    if getattr(args, "agent_threads", None) is not None:
        options.setdefault("agent_threads", args.agent_threads)
    if getattr(args, "vectorize", None) is not None:
        options.setdefault("vectorize", args.vectorize)

    algorithm, ccl = resolve_method(method, 0.1, 0.1)
    return Swarm(make_model(args.model, device), build_topology(topology, n), algorithm=algorithm,
                 ccl=ccl, lr=0.1, momentum=0.9, weight_decay=1e-4, device=device, **options)


def cifar_batches(n: int, batch: int, device: torch.device, seed: int = 1):
    """Random CIFAR-shaped ``xs [n, B, 3, 32, 32]`` and labels ``ys [n, B]``."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, batch, *CIFAR_SHAPE, generator=g).to(device)
    ys = torch.randint(0, 10, (n, batch), generator=g).to(device)
    return xs, ys


def cifar_bundle(train_size: int, test_size: int, augment: str = "cifar", seed: int = 2):
    """A CIFAR-shaped dataset held as CIFAR is (uint8 images, CIFAR-10 statistics), random pixels.

    Built here rather than with ``dataset: synthetic`` because that one draws float images first,
    whose transient copies would inflate the peak-memory figure (R4) beyond what CIFAR costs.
    """
    from benchmark.data import DatasetBundle, Split

    g = torch.Generator().manual_seed(seed)

    def split(size: int) -> Split:
        x = torch.randint(0, 256, (size, *CIFAR_SHAPE), generator=g, dtype=torch.uint8)
        return Split(x, torch.arange(size) % 10)

    return DatasetBundle("cifar-shaped", split(train_size), None, split(test_size), 10,
                         CIFAR_SHAPE, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), augment)


def agent_batches(bundle, n: int, batch: int, device: torch.device, alpha: float = 0.1):
    """``AgentBatches`` over a Dirichlet (``lin``) partition of ``bundle``'s training split."""
    from benchmark.data import AgentBatches, dirichlet_partition

    parts = dirichlet_partition(bundle.train.y.numpy(), n, alpha, seed=0, scheme="lin")
    return AgentBatches(bundle.train, parts, batch, bundle.augment, bundle.mean, bundle.std,
                        seed=0, device=device)


def single_model_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One model's forward + backward + Nesterov SGD step on one batch: the physical floor."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x)[1], y).backward()
        opt.step()

    return step


def bare_loop(models: list[nn.Module], xs: torch.Tensor, ys: torch.Tensor) -> Callable[[], None]:
    """Independent models, forward + backward each on its own batch, nothing else: the floor."""

    def run() -> None:
        for i, m in enumerate(models):
            m.zero_grad(set_to_none=True)
            F.cross_entropy(m(xs[i])[1], ys[i]).backward()

    return run


def forward_only(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def phase_shares(swarm: Swarm) -> dict[str, float]:
    """Share of each phase in the swarm's timed iterations so far (and reset the timer)."""
    totals = swarm.timer.reset()
    busy = sum(totals.values()) or 1.0
    return {name: seconds / busy for name, seconds in totals.items() if seconds > 0}


# -- reporting ---------------------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    """Where and under what load the figures were taken (load average: other users' work)."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def report(name: str, figures: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Print the figures, one per line, then the one-line JSON summary."""
    summary = {"benchmark": name, **figures, "machine": machine(device)}
    for key, value in figures.items():
        if isinstance(value, dict) and "median" in value:
            print(f"{key:>28}: {value['median']:.4g}  (q1 {value['q1']:.4g}, q3 {value['q3']:.4g},"
                  f" min {value['min']:.4g}, max {value['max']:.4g})")
        else:
            print(f"{key:>28}: {value}")
    print(SUMMARY_PREFIX + json.dumps(summary, default=float), flush=True)
    return summary
