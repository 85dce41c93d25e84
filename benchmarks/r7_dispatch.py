"""R7: what one training iteration asks of a GPU, counted on any machine: aten ops, host syncs.

A 16-agent ResNet-20 step on a GPU is bound by kernel launches and by the moments the host waits
for the device, not by arithmetic. Both are counted here without a GPU, with a dispatch mode
(benchmark/opcount.py): per iteration of ``Swarm.step`` and of a whole training iteration
(batch + step + the loop's statistics), the aten ops, the host syncs they imply (scalar reads,
data-dependent shapes), host-to-device transfers, and the phase timer's synchronisations (the
timer runs in its CUDA mode against a stand-in ``torch.cuda``, so its syncs are counted too).

    python benchmarks/r7_dispatch.py --threads 2            # ResNet-20, 16 agents, batch 4
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import torch
from common import parser, report, setup

from benchmark.config import build_config
from benchmark.opcount import OpCounter
from benchmark.train import build_experiment, train_epoch

_COUNTS: dict[str, int] = {}  # the active stub's counters (an event may be read later)


class _FakeEvent:
    """Stands in for ``torch.cuda.Event``: counts records and waits; elapsed 0."""

    def __init__(self, **_: object) -> None:
        pass

    def record(self, *_: object) -> None:
        _COUNTS["events"] += 1

    def elapsed_time(self, _: object) -> float:
        return 0.0

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        _COUNTS["timer_syncs"] += 1


@contextmanager
def cuda_timer_stub(swarm):
    """Run the swarm's timer as on CUDA, counting its synchronisations and events."""
    counts = {"timer_syncs": 0, "events": 0}

    def synchronize(*_: object) -> None:
        _COUNTS["timer_syncs"] += 1

    timer = swarm.timer
    saved = timer.cuda
    _COUNTS.clear()
    _COUNTS.update(counts)
    with mock.patch.object(torch.cuda, "synchronize", synchronize), \
            mock.patch.object(torch.cuda, "Event", _FakeEvent), \
            mock.patch.object(torch.cuda, "current_stream", lambda *_: None):
        timer.cuda = True
        try:
            yield counts
        finally:
            timer.cuda = saved
            counts.update(_COUNTS)


def measure(method: str, vectorize: str, args) -> dict[str, float]:
    """Counts of one step and per iteration of an epoch; ``method+log``: log_cross_features on."""
    per_agent = args.batch
    method, _, log = method.partition("+")
    config = build_config({
        "dataset": "synthetic", "model": args.model, "n_agents": args.agents,
        "batch_size": per_agent, "partition": "iid", "method": method, "device": "cpu",
        "log_cross_features": bool(log) or None,
        "vectorize": vectorize, "tracking": False, "lambda_m": 0.1, "lambda_d": 0.1,
        "synthetic": {"train_size": args.agents * per_agent * args.iterations,
                      "test_size": 16, "augment": "cifar"},
    })
    exp = build_experiment(config)
    train_epoch(exp, 0)  # warm: lazy set-up (CCL's eval-mode copies, edge lists) happens here
    iterations = exp.batches.iterations_per_epoch
    swarm = exp.swarm
    xs, ys = next(iter(exp.batches.epoch(1)))
    with cuda_timer_stub(swarm) as step_timer, OpCounter() as step:
        swarm.step(xs, ys)
    with cuda_timer_stub(swarm) as epoch_timer, OpCounter() as epoch:
        train_epoch(exp, 1)
    return {
        "step_ops": step.total, "step_syncs": step.syncs,
        "step_timer_syncs": step_timer["timer_syncs"], "step_transfers": step.transfers,
        "iteration_ops": epoch.total / iterations,
        "iteration_syncs": epoch.syncs / iterations,
        "iteration_timer_syncs": epoch_timer["timer_syncs"] / iterations,
        "iteration_transfers": epoch.transfers / iterations,
        "nonzero_in_step": step.ops["nonzero"],
    }


def batch_transfers(args) -> dict[str, float]:
    """Host-to-device copies per training batch: the batch source run on ``meta`` (a stand-in
    device: every CPU tensor that reaches it is an upload)."""
    from common import agent_batches, cifar_bundle

    bundle = cifar_bundle(args.agents * args.batch * args.iterations, 16)
    batches = agent_batches(bundle, args.agents, args.batch, torch.device("meta"), alpha=100.0)
    with OpCounter() as ops:
        steps = sum(1 for _ in batches.epoch(0))
    return {"per_batch_transfers": ops.transfers / steps, "per_batch_ops": ops.total / steps,
            "per_batch_syncs": ops.syncs / steps}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--batch", type=int, default=4, help="per agent (counts do not depend on it)")
    p.add_argument("--iterations", type=int, default=4, help="per measured epoch")
    p.add_argument("--methods", default="dsgdm-n,dsgdm-n+log,ccl",
                   help="presets; NAME+log turns log_cross_features on (every cifar10 run)")
    args = p.parse_args(argv)
    device = setup(args)
    if args.tiny:
        args.agents, args.batch, args.iterations, args.methods = 4, 2, 2, "ccl"
    figures: dict[str, object] = {"agents": args.agents, "batch": args.batch, "model": args.model}
    figures["batch_source"] = batch_transfers(args)
    for method in args.methods.split(","):
        for vectorize in ("loop", "vmap"):
            counts = measure(method, vectorize, args)
            figures[f"{method}/{vectorize}"] = counts
    return report("r7_dispatch", figures, device)


if __name__ == "__main__":
    main()
