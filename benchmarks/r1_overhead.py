"""R1: simulation overhead of one DSGDm-N iteration against one model on the same total batch.

Times, interleaved: one ``Swarm.step`` of n agents (batch B each), the bare loop of n independent
models doing forward+backward on B (the arithmetic of the loop, nothing else), and one model's
forward+backward+SGD step on n*B. Targets (issue 8): step / single <= 1.10 on a CPU, and
step / bare loop <= 1.05 (everything but the forward/backward must be nearly free).

    python benchmarks/r1_overhead.py --threads 2
"""

from __future__ import annotations

import copy

from common import (
    add_path_arguments,
    bare_loop,
    cifar_batches,
    interleaved,
    make_model,
    make_swarm,
    parser,
    ratio,
    report,
    setup,
    single_model_step,
    spread,
)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--method", default="dsgdm-n")
    add_path_arguments(p)
    args = p.parse_args(argv)
    device = setup(args)
    if args.tiny:
        args.agents, args.batch = 4, 4
    n, b = args.agents, args.batch
    swarm = make_swarm(args, n, device, args.method)
    xs, ys = cifar_batches(n, b, device)
    models = [copy.deepcopy(swarm.models[0]) for _ in range(n)]
    single = make_model(args.model, device)
    fns = {
        "swarm": lambda: swarm.step(xs, ys),
        "bare_loop": bare_loop(models, xs, ys),
        "single": single_model_step(single, xs.reshape(n * b, *xs.shape[2:]), ys.reshape(-1)),
    }
    times = interleaved(fns, device, args.warmup, args.rounds)
    return report("r1_overhead", {
        "agents": n, "batch": b, "method": args.method, "model": args.model,
        "vectorize": swarm.vectorize, "vectorize_reason": swarm.vectorize_reason,
        "agent_threads": swarm.agent_threads,
        "swarm_over_single": ratio(times, "swarm", "single"),
        "swarm_over_bare_loop": ratio(times, "swarm", "bare_loop"),
        "bare_loop_over_single": ratio(times, "bare_loop", "single"),
        "swarm_s": spread(times["swarm"]), "bare_loop_s": spread(times["bare_loop"]),
        "single_s": spread(times["single"]),
        "targets": {"swarm_over_single": 1.10, "swarm_over_bare_loop": 1.05},
    }, device)


if __name__ == "__main__":
    main()
