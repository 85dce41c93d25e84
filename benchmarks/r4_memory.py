"""R4: peak resident memory of a training run: n=32 EvoNorm ResNet-20 agents, CIFAR-shaped data.

A fresh process holds a CIFAR-sized training set (50,000 uint8 images) and test set (10,000),
partitions it, builds the swarm, trains ``--iterations`` iterations with CIFAR augmentation and
evaluates every local model and the consensus model: everything a run keeps alive. (Evaluation
scores the first 1,000 test images: one evaluation batch, the same peak as the whole test set,
which stays resident, at a fraction of the time.) Peak RSS is this process's high-water mark,
``VmHWM`` of /proc/self/status (run it as its own process; R-peer does). Not ``ru_maxrss``: on
Linux a process started by ``subprocess`` inherits in ``ru_maxrss`` the RSS its parent had at the
fork (the forked copy's high-water mark survives the exec), which made a 1.4 GB run read 3.5 GB.
Target (issue 8): <= 2 GB at n=32.

    python benchmarks/r4_memory.py --threads 2
"""

from __future__ import annotations

from dataclasses import replace

import torch
from common import agent_batches, cifar_bundle, make_swarm, parser, report, setup


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (VmHWM; ru_maxrss where /proc is missing)."""
    from benchmark.memory import peak_bytes

    return peak_bytes(torch.device("cpu"))


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--method", default="dsgdm-n")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--train-size", type=int, default=50_000)
    p.add_argument("--test-size", type=int, default=10_000)
    args = p.parse_args(argv)
    device = setup(args)
    if args.tiny:
        args.agents, args.batch, args.iterations = 4, 4, 2
        args.train_size, args.test_size = 256, 64
    from benchmark.train import evaluate

    bundle = cifar_bundle(args.train_size, args.test_size)
    batches = agent_batches(bundle, args.agents, args.batch, device)
    swarm = make_swarm(args, args.agents, device, args.method, topology="ring")
    for t, (xs, ys) in enumerate(batches.epoch(0)):
        if t == args.iterations:
            break
        swarm.step(xs, ys)
    evaluate(swarm, replace(bundle, test=bundle.test.subset(range(min(1000, args.test_size)))))
    peak = peak_rss_bytes()
    figures = {
        "agents": args.agents, "batch": args.batch, "method": args.method, "model": args.model,
        "iterations": args.iterations, "train_size": args.train_size,
        "test_size": args.test_size, "n_params": swarm.params.shape[1],
        "peak_rss_gb": peak / 1e9, "target_gb": 2.0,
    }
    if device.type == "cuda":
        figures["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return report("r4_memory", figures, device)


if __name__ == "__main__":
    main()
