"""R2: cost of CCL: one ``ccl`` iteration against one ``qgm`` iteration (ring, 16 agents).

CCL adds ``deg`` forward passes per agent without autograd. With ``phi`` = (one model's forward
in inference mode) / (its forward + backward + SGD step), both on one agent's batch and measured
in this run, the floor is ``1 + deg * phi``; the target is the floor + 0.05. Also printed: the
cross-feature share of a CCL iteration (from the swarm's phase timer), and what grouping the
passes by model buys (model j once on its receivers' concatenated batches vs once per edge).

    python benchmarks/r2_ccl.py --threads 2
"""

from __future__ import annotations

import torch
from common import (
    add_path_arguments,
    cifar_batches,
    forward_only,
    interleaved,
    make_model,
    make_swarm,
    parser,
    phase_shares,
    ratio,
    report,
    setup,
    single_model_step,
    spread,
)


def cross_passes(models, xs, receivers, grouped: bool):
    """The cross-feature passes of a ring: model j on the batches of j-1 and j+1."""

    def run() -> None:
        with torch.inference_mode():
            for j, model in enumerate(models):
                if grouped:
                    model(xs[receivers[j]].flatten(0, 1))
                else:
                    for i in receivers[j]:
                        model(xs[i])

    return run


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    add_path_arguments(p)
    args = p.parse_args(argv)
    device = setup(args)
    if args.tiny:
        args.agents, args.batch = 4, 4
    n, b = args.agents, args.batch
    ccl = make_swarm(args, n, device, "ccl")
    qgm = make_swarm(args, n, device, "qgm")
    xs, ys = cifar_batches(n, b, device)
    receivers = [[(j - 1) % n, (j + 1) % n] for j in range(n)]
    deg = 2
    senders = [make_model(args.model, device).eval() for _ in range(n)]
    fns = {
        "ccl": lambda: ccl.step(xs, ys),
        "qgm": lambda: qgm.step(xs, ys),
        "forward": forward_only(make_model(args.model, device), xs[0]),
        "train_step": single_model_step(make_model(args.model, device), xs[0], ys[0]),
        "cross_grouped": cross_passes(senders, xs, receivers, grouped=True),
        "cross_per_edge": cross_passes(senders, xs, receivers, grouped=False),
    }
    times = interleaved(fns, device, args.warmup, args.rounds, after_warmup=ccl.timer.reset)
    shares = phase_shares(ccl)
    phi = ratio(times, "forward", "train_step")
    floor = 1 + deg * phi["median"]
    r2 = ratio(times, "ccl", "qgm")
    return report("r2_ccl", {
        "agents": n, "batch": b, "model": args.model, "degree": deg, "vectorize": ccl.vectorize,
        "agent_threads": ccl.agent_threads,
        "ccl_over_qgm": r2,
        "phi": phi,
        "floor": floor,
        "target": floor + 0.05,
        "meets_target": r2["median"] <= floor + 0.05,
        "cross_feature_share": shares.get("cross_features", 0.0),
        "ccl_phase_shares": shares,
        "grouped_over_per_edge": ratio(times, "cross_grouped", "cross_per_edge"),
        "ccl_s": spread(times["ccl"]), "qgm_s": spread(times["qgm"]),
    }, device)


if __name__ == "__main__":
    main()
