"""The vectorised forward/backward (``vectorize: vmap``) computes what the per-agent loop does.

Agent i's loss depends only on its own row of the stacked parameters, so one backward of the sum
over agents must give every agent exactly its own gradient: after a few iterations both paths
hold the same parameters and report the same statistics (to float rounding, 1e-5).
"""

from __future__ import annotations

import pytest
import torch

from benchmark.errors import ConfigError
from benchmark.methods import resolve_method
from benchmark.models import build_model
from benchmark.swarm import Swarm
from benchmark.topology import build_topology

AGENTS, BATCH, STEPS = 4, 3, 3


def _run(model_name: str, method: str, vectorize: str, norm: str | None = None):
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10, in_channels=3, norm=norm, image_size=8)
    algorithm, ccl = resolve_method(method, 0.1, 0.1)
    swarm = Swarm(model, build_topology("ring", AGENTS), algorithm=algorithm, ccl=ccl, lr=0.1,
                  device="cpu", vectorize=vectorize)
    g = torch.Generator().manual_seed(1)
    stats = []
    for _ in range(STEPS):
        xs = torch.randn(AGENTS, BATCH, 3, 8, 8, generator=g)
        ys = torch.randint(0, 10, (AGENTS, BATCH), generator=g)
        stats.append({k: float(v) for k, v in swarm.step(xs, ys).items()})
    return swarm, stats


@pytest.mark.parametrize(("model_name", "method"), [
    ("resnet20", "dsgdm-n"),  # EvoNorm ResNet-20: grouped statistics under vmap
    ("resnet20", "ccl"),      # QGM + both CCL terms: gradients through the features too
    ("mlp", "ccl-relay"),        # RelaySGD + CCL on a norm-free MLP
])
def test_vmap_and_loop_give_the_same_parameters(model_name, method):
    norm = "none" if model_name == "mlp" else None
    loop, loop_stats = _run(model_name, method, "loop", norm)
    vmap, vmap_stats = _run(model_name, method, "vmap", norm)
    assert (loop.vectorize, vmap.vectorize) == ("loop", "vmap")
    moved = (loop.params - loop.params[:1]).abs().max()
    assert moved > 1e-3  # the agents really trained apart (not a trivially equal comparison)
    torch.testing.assert_close(vmap.params, loop.params, atol=1e-5, rtol=0)
    torch.testing.assert_close(vmap.algorithm.momentum, loop.algorithm.momentum, atol=1e-5,
                               rtol=1e-5)
    for got, want in zip(vmap_stats, loop_stats, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-5), key
    # each agent module still views its row: evaluation sees what the vmap path trained
    first = torch.nn.utils.parameters_to_vector(vmap.models[1].parameters())
    assert torch.equal(first, vmap.params[1])


def test_auto_is_the_loop_on_a_cpu_and_batchnorm_refuses_vmap():
    torch.manual_seed(0)
    topo = build_topology("ring", 3)
    evonorm = build_model("resnet20", 10, 3, image_size=8)
    assert Swarm(evonorm, topo, device="cpu").vectorize == "loop"
    batchnorm = build_model("resnet20", 10, 3, norm="batchnorm", image_size=8)
    swarm = Swarm(batchnorm, topo, device="cpu", vectorize="auto")
    assert swarm.vectorize == "loop" and "buffers" in swarm.vectorize_reason
    with pytest.raises(ConfigError, match="vectorize"):
        Swarm(batchnorm, topo, device="cpu", vectorize="vmap")
    with pytest.raises(ConfigError, match="vectorize"):
        Swarm(evonorm, topo, device="cpu", vectorize="fast")


@pytest.mark.parametrize("method", ["dsgdm-n", "ccl"])
def test_agent_threads_give_the_loop_result(method):
    """Agents in 2 worker threads: same parameters and statistics as one after the other."""
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_channels=3, norm="none", image_size=8)
    algorithm, ccl = resolve_method(method, 0.1, 0.1)
    swarms = [Swarm(model, build_topology("ring", 5), algorithm=algorithm, ccl=ccl, lr=0.1,
                    device="cpu", agent_threads=k) for k in (1, 2)]
    assert [s.agent_threads for s in swarms] == [1, 2]
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        xs, ys = torch.randn(5, BATCH, 3, 8, 8, generator=g), torch.randint(0, 10, (5, BATCH))
        one, two = (s.step(xs, ys) for s in swarms)
        for key in one:
            assert float(two[key]) == pytest.approx(float(one[key]), abs=1e-5), key
    torch.testing.assert_close(swarms[1].params, swarms[0].params, atol=1e-5, rtol=0)
    assert (swarms[0].params - swarms[0].params[:1]).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="agent_threads"):
        Swarm(model, build_topology("ring", 5), device="cpu", agent_threads=0)
