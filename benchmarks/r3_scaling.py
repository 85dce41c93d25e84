"""R3: scaling in the number of agents: a DSGDm-N iteration at 2n agents against n (same B).

Targets (issue 8): time(2n) / time(n) <= 2.10, and gossip + optimiser update <= 5% of an
iteration at 2n agents (from the swarm's own phase timer).

    python benchmarks/r3_scaling.py --threads 2
"""

from __future__ import annotations

from common import (
    add_path_arguments,
    cifar_batches,
    interleaved,
    make_swarm,
    parser,
    phase_shares,
    ratio,
    report,
    setup,
    spread,
)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=16, help="the smaller swarm (the other is 2x)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--method", default="dsgdm-n")
    add_path_arguments(p)
    args = p.parse_args(argv)
    device = setup(args)
    if args.tiny:
        args.agents, args.batch = 4, 4
    n, b = args.agents, args.batch
    small = make_swarm(args, n, device, args.method)
    large = make_swarm(args, 2 * n, device, args.method)
    xs_small, ys_small = cifar_batches(n, b, device)
    xs_large, ys_large = cifar_batches(2 * n, b, device)
    fns = {"small": lambda: small.step(xs_small, ys_small),
           "large": lambda: large.step(xs_large, ys_large)}
    times = interleaved(fns, device, args.warmup, args.rounds, after_warmup=large.timer.reset)
    shares = phase_shares(large)
    overhead = shares.get("communication", 0.0) + shares.get("update", 0.0)
    return report("r3_scaling", {
        "agents": [n, 2 * n], "batch": b, "method": args.method, "model": args.model,
        "vectorize": large.vectorize, "agent_threads": large.agent_threads,
        "large_over_small": ratio(times, "large", "small"),
        "gossip_update_share": overhead,
        "phase_shares_large": shares,
        "small_s": spread(times["small"]), "large_s": spread(times["large"]),
        "targets": {"large_over_small": 2.10, "gossip_update_share": 0.05},
    }, device)


if __name__ == "__main__":
    main()
