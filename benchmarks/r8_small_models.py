"""R8: one iteration of 16 small models (MNIST-1D's CNN, the digits MLP) in the suite, against a
plain per-agent PyTorch loop of the same algorithm on the same model.

The plain loop is what one would write without the simulator: ``n`` copies of the model, each
with its own ``torch.optim.SGD`` (Nesterov, weight decay), DSGDm-N's gossip as a weighted
average of the neighbours' parameters, then every agent's forward, backward and step in turn.
The suite runs the same iteration with all agents' parameters as rows of one tensor, on the
path ``vectorize: auto`` picks (on a CPU: the model's own stacked forward when it has one).
Also timed: the suite on the per-agent loop path, the suite's ``ccl`` iteration (QGM + both CCL
terms: what CCL adds on top of the DSGDm-N iteration), and (MNIST-1D) the plain loop on the
paper's ``nn.Conv1d`` CNN, which is what the plain loop costs with off-the-shelf layers.
Printed: each time per iteration, the ratios (medians of interleaved rounds), and the aten ops
per iteration.

    python benchmarks/r8_small_models.py --threads 1                    # convbase1d, 16 agents
    python benchmarks/r8_small_models.py --threads 1 --model mlp        # the digits MLP
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from common import interleaved, parser, ratio, report, setup, spread
from torch import nn

from benchmark.methods import resolve_method
from benchmark.models import build_model
from benchmark.opcount import OpCounter
from benchmark.swarm import Swarm
from benchmark.topology import build_topology

SHAPES = {"convbase1d": (1, 40), "mlp": (1, 8, 8)}


class PaperConvBase(nn.Module):
    """The MNIST-1D paper's CNN with torch's own ``nn.Conv1d`` (its reference code's layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(1, 25, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.classifier = nn.Linear(125, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x)
        return features, self.classifier(features)


def plain_loop(models: list[nn.Module], mixing: torch.Tensor, xs: torch.Tensor,
               ys: torch.Tensor):
    """DSGDm-N written per agent: gossip the parameters, then each agent's SGD step."""
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                  weight_decay=1e-4) for m in models]
    params = [list(m.parameters()) for m in models]

    def step() -> None:
        with torch.no_grad():
            before = [[p.clone() for p in agent] for agent in params]
            for i, agent in enumerate(params):
                for k, p in enumerate(agent):
                    p.copy_(sum(mixing[i, j] * before[j][k] for j in torch.nonzero(
                        mixing[i]).flatten().tolist()))
        for i, (model, opt) in enumerate(zip(models, optimisers, strict=True)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs[i])[1], ys[i]).backward()
            opt.step()

    return step


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(model="convbase1d", rounds=7)
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)
    device = setup(args)
    if args.tiny:
        args.agents, args.batch = 4, 4
    n, b, shape = args.agents, args.batch, SHAPES[args.model]
    topology = build_topology("ring", n)
    model = build_model(args.model, 10, sample_shape=shape).to(device)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(n, b, *shape, generator=g).to(device)
    ys = torch.randint(0, 10, (n, b), generator=g).to(device)

    def swarm(method: str, vectorize: str) -> Swarm:
        algorithm, ccl = resolve_method(method, 0.01, 0.01)
        return Swarm(copy.deepcopy(model), topology, algorithm=algorithm, ccl=ccl, lr=0.05,
                     device=device, vectorize=vectorize)

    suite, suite_loop, suite_ccl = swarm("dsgdm-n", "auto"), swarm("dsgdm-n", "loop"), \
        swarm("ccl", "auto")
    mixing = torch.as_tensor(topology.mixing_matrix("uniform"), dtype=torch.float32)
    fns = {"suite": lambda: suite.step(xs, ys), "suite_loop": lambda: suite_loop.step(xs, ys),
           "suite_ccl": lambda: suite_ccl.step(xs, ys),
           "plain": plain_loop([copy.deepcopy(model) for _ in range(n)], mixing, xs, ys)}
    if args.model == "convbase1d":
        fns["plain_nn_conv1d"] = plain_loop([PaperConvBase().to(device) for _ in range(n)],
                                            mixing, xs, ys)
    times = interleaved(fns, device, args.warmup, args.rounds)
    ops = {}
    for name, fn in fns.items():
        with OpCounter() as counter:
            fn()
        ops[name] = counter.total
    figures = {"model": args.model, "agents": n, "batch": b, "method": "dsgdm-n",
               "vectorize": suite.vectorize, "vectorize_reason": suite.vectorize_reason,
               **{f"{name}_s": spread(t) for name, t in times.items()},
               **{f"{name}_over_plain": ratio(times, name, "plain") for name in fns
                  if name != "plain"},
               "ops_per_iteration": ops}
    return report("r8_small_models", figures, device)


if __name__ == "__main__":
    main()
