"""vmap vs loop, and CCL's overhead on each path: ``Swarm.step`` of 16 and 32 agents, alternately.

For each swarm size four swarms (DSGDm-N and CCL, each on the loop and the vmap path) are timed
in interleaved rounds on the same batch; reported are the per-round ratios loop / vmap (> 1: vmap
is faster) and CCL / DSGDm-N on each path (CCL's overhead), with the median step times.

    python benchmarks/vmap_ratio.py --device cuda
"""

from __future__ import annotations

from common import cifar_batches, interleaved, make_swarm, parser, ratio, report, setup, spread

METHODS = ("dsgdm-n", "ccl")
PATHS = ("loop", "vmap")


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", default="16,32", help="swarm sizes, comma-separated")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    device = setup(args)
    sizes = [int(a) for a in args.agents.split(",")]
    if args.tiny:
        sizes, args.batch = [4, 8], 4
    figures = {"batch": args.batch, "model": args.model}
    for n in sizes:
        xs, ys = cifar_batches(n, args.batch, device)
        fns = {}
        for method in METHODS:
            for path in PATHS:
                swarm = make_swarm(args, n, device, method, vectorize=path)
                fns[f"{method}/{path}"] = lambda s=swarm, x=xs, y=ys: s.step(x, y)
        times = interleaved(fns, device, args.warmup, args.rounds)
        figures[f"n{n}"] = {
            **{f"loop_over_vmap_{m}": ratio(times, f"{m}/loop", f"{m}/vmap") for m in METHODS},
            **{f"ccl_over_dsgdm_{p}": ratio(times, f"ccl/{p}", f"dsgdm-n/{p}") for p in PATHS},
            "step_ms": {k: spread(v)["median"] * 1e3 for k, v in times.items()},
        }
    return report("vmap_ratio", figures, device)


if __name__ == "__main__":
    main()
