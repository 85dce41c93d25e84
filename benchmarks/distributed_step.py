"""Time per iteration of one run in one process against the same run on K gloo processes.

Same swarm, same batches: the single process simulates all n agents, once with one thread and
once with ``--threads``; ``torchrun --nproc_per_node K`` runs K ranks of ``threads / K`` threads,
each simulating n/K agents and exchanging boundary rows (the halo) every iteration. Rounds
alternate the measurements because the machines this runs on are shared and loads drift; the
summary is the median over rounds of each ratio distributed / single.

    python benchmarks/distributed_step.py                    # lenet5, ring of 8, dsgdm-n and ccl
    python benchmarks/distributed_step.py --model resnet20 --image-size 32 --channels 3

Prints one line per measurement, then ``BENCH {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmark.models import build_model
from benchmark.swarm import Swarm
from benchmark.topology import build_topology

CCL = {"lambda_m": 0.01, "lambda_d": 0.01}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--topology", default="ring")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--methods", default="dsgdm-n,ccl", help="dsgdm-n, qgm or ccl (qgm + CCL)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--procs", type=int, default=2, help="K, the number of ranks")
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all (split over ranks)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # JSON output path of a torchrun rank
    return p.parse_args(argv)


def _swarm(args: argparse.Namespace, method: str, comm=None) -> Swarm:
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_channels=args.channels,
                        image_size=args.image_size)
    algorithm = "qgm" if method == "ccl" else method
    return Swarm(model, build_topology(args.topology, args.agents), algorithm=algorithm,
                 ccl=CCL if method == "ccl" else None, lr=0.01, device="cpu", comm=comm)


def _batches(args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    shape = (args.agents, args.batch, args.channels, args.image_size, args.image_size)
    return [(torch.randn(shape, generator=g), torch.randint(0, 10, shape[:2], generator=g))
            for _ in range(4)]


def _time_steps(swarm: Swarm, batches, args: argparse.Namespace, barrier=lambda: None) -> float:
    """Seconds per iteration over ``args.iters`` iterations after ``args.warmup``."""
    for t in range(args.warmup):
        swarm.step(*batches[t % len(batches)])
    barrier()
    start = time.perf_counter()
    for t in range(args.iters):
        swarm.step(*batches[t % len(batches)])
    barrier()
    return (time.perf_counter() - start) / args.iters


def worker(args: argparse.Namespace) -> None:
    """One torchrun rank: every method, timed between barriers; rank 0 writes the results."""
    import torch.distributed as dist

    from benchmark.distributed import setup

    torch.set_num_threads(max(1, args.threads // args.procs))
    out = {}
    for method in args.methods.split(","):
        comm, _ = setup(args.agents, "cpu")
        swarm = _swarm(args, method, comm)
        before = comm.bytes_sent
        seconds = _time_steps(swarm, _batches(args), args, dist.barrier)
        sent = torch.tensor(float(comm.bytes_sent - before))
        dist.all_reduce(sent)
        out[method] = {"s_per_iter": seconds,
                       "bytes_per_iter": float(sent) / (args.iters + args.warmup)}
    if dist.get_rank() == 0:
        Path(args.worker).write_text(json.dumps(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_round(args: argparse.Namespace, argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        torchrun = Path(sys.executable).parent / "torchrun"
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // args.procs))}
        subprocess.run([str(torchrun), "--nproc_per_node", str(args.procs), "--master_addr",
                        "127.0.0.1", "--master_port", str(_free_port()), __file__, *argv,
                        "--worker", str(out)], check=True, env=env, capture_output=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.worker:
        worker(args)
        return
    methods = args.methods.split(",")
    variants = sorted({1, args.threads})  # single-process thread counts
    single = {(m, k): [] for m in methods for k in variants}
    sharded: dict[str, list[float]] = {m: [] for m in methods}
    sent: dict[str, float] = {}
    for r in range(args.rounds):
        for m in methods:
            for k in variants:
                torch.set_num_threads(k)
                single[m, k].append(_time_steps(_swarm(args, m), _batches(args), args))
        result = distributed_round(args, argv)
        for m in methods:
            sharded[m].append(result[m]["s_per_iter"])
            sent[m] = result[m]["bytes_per_iter"]
            singles = ", ".join(f"{k} thread(s) {single[m, k][-1] * 1e3:.1f}" for k in variants)
            print(f"round {r + 1}: {m}: single {singles} ms/iter; K={args.procs} gloo "
                  f"{sharded[m][-1] * 1e3:.1f} ms/iter", flush=True)
    summary = {"agents": args.agents, "topology": args.topology, "model": args.model,
               "procs": args.procs, "threads": args.threads, "cpus": os.cpu_count(),
               "load_avg_1m": os.getloadavg()[0]}
    for m in methods:
        summary[m] = {"distributed_ms": statistics.median(sharded[m]) * 1e3,
                      "halo_bytes_per_iter": sent[m]}
        for k in variants:
            ratios = [d / s for d, s in zip(sharded[m], single[m, k], strict=True)]
            summary[m][f"single_{k}t_ms"] = statistics.median(single[m, k]) * 1e3
            summary[m][f"ratio_vs_{k}t"] = [statistics.median(ratios), min(ratios), max(ratios)]
            print(f"{m}: K={args.procs} / single with {k} thread(s) = "
                  f"{statistics.median(ratios):.2f} (rounds: {min(ratios):.2f}..{max(ratios):.2f})",
                  flush=True)
        print(f"{m}: halo {sent[m] / 1e6:.3f} MB/iter", flush=True)
    print("BENCH " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
