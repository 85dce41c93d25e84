"""R5: input pipeline: producing one iteration's augmented batches for n agents vs the iteration.

Times, interleaved: producing a whole epoch of CIFAR-augmented ``[n, B, 3, 32, 32]`` batches
from a CIFAR-sized uint8 training set (divided by its iterations, so the per-epoch permutations
are included) and one DSGDm-N iteration of the swarm. Target (issue 8): <= 10%.

    python benchmarks/r5_input.py --threads 2
"""

from __future__ import annotations

from common import (
    agent_batches,
    cifar_batches,
    cifar_bundle,
    interleaved,
    make_swarm,
    parser,
    ratio,
    report,
    setup,
    spread,
)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train-size", type=int, default=50_000)
    args = p.parse_args(argv)
    device = setup(args)
    if args.tiny:
        args.agents, args.batch, args.train_size = 4, 4, 256
    n, b = args.agents, args.batch
    batches = agent_batches(cifar_bundle(args.train_size, 16), n, b, device)
    iterations = batches.iterations_per_epoch
    swarm = make_swarm(args, n, device, "dsgdm-n")
    xs, ys = cifar_batches(n, b, device)
    epoch = iter(range(10**9))

    def one_epoch() -> None:
        for _ in batches.epoch(next(epoch)):
            pass

    times = interleaved({"epoch": one_epoch, "step": lambda: swarm.step(xs, ys)},
                        device, args.warmup, args.rounds)
    times["batch"] = [t / iterations for t in times["epoch"]]
    return report("r5_input", {
        "agents": n, "batch": b, "model": args.model, "augment": "cifar",
        "iterations_per_epoch": iterations,
        "input_over_iteration": ratio(times, "batch", "step"),
        "batch_s": spread(times["batch"]), "step_s": spread(times["step"]),
        "target": 0.10,
    }, device)


if __name__ == "__main__":
    main()
