"""R6: evaluation: all n local models + the consensus model on a 10,000-image test set.

Times, interleaved: ``train.evaluate`` (what every run calls) and the floor, ``n + 1`` forward
passes of one model over the same test set in batches of 1,000 on already-normalised images, in
inference mode. Target (issue 8): evaluate / floor <= 1.2.

    python benchmarks/r6_eval.py --threads 2
"""

from __future__ import annotations

import torch
from common import (
    cifar_bundle,
    interleaved,
    make_model,
    make_swarm,
    parser,
    ratio,
    report,
    setup,
    spread,
)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=3,
                   help="local models (3, the smallest ring: n only scales both sides, and on "
                        "2 CPU cores one evaluation of 4 ResNet-20s on 10,000 images takes ~40 s)")
    p.add_argument("--test-size", type=int, default=10_000)
    args = p.parse_args(argv)
    device = setup(args)
    if args.tiny:
        args.agents, args.test_size = 3, 64
    # one evaluation is 10,000 x (n+1) forward passes: few, long calls are enough
    args.warmup, args.rounds = min(args.warmup, 1), min(args.rounds, 3)
    from benchmark.train import evaluate

    bundle = cifar_bundle(16, args.test_size, augment="none")
    swarm = make_swarm(args, args.agents, device, "dsgdm-n")
    model = make_model(args.model, device).eval()
    x = bundle.test.x.to(device).float() / 255  # normalisation is part of the floor's input
    chunks = x.split(1000)

    def floor() -> None:
        with torch.inference_mode():
            for _ in range(args.agents + 1):
                for chunk in chunks:
                    model(chunk)[1].argmax(dim=1)

    times = interleaved({"evaluate": lambda: evaluate(swarm, bundle), "floor": floor},
                        device, args.warmup, args.rounds)
    return report("r6_eval", {
        "agents": args.agents, "models_evaluated": args.agents + 1, "model": args.model,
        "test_size": args.test_size,
        "evaluate_over_floor": ratio(times, "evaluate", "floor"),
        "evaluate_s": spread(times["evaluate"]), "floor_s": spread(times["floor"]),
        "target": 1.2,
    }, device)


if __name__ == "__main__":
    main()
