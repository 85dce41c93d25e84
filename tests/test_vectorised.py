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


SHAPES = {"convbase1d": (1, 40)}  # 1-D signals; every other model here takes [3, 8, 8] images


def _run(model_name: str, method: str, vectorize: str, norm: str | None = None):
    torch.manual_seed(0)
    shape = SHAPES.get(model_name, (3, 8, 8))
    model = build_model(model_name, num_classes=10, norm=norm, sample_shape=shape)
    algorithm, ccl = resolve_method(method, 0.1, 0.1)
    swarm = Swarm(model, build_topology("ring", AGENTS), algorithm=algorithm, ccl=ccl, lr=0.1,
                  device="cpu", vectorize=vectorize)
    g = torch.Generator().manual_seed(1)
    stats = []
    for _ in range(STEPS):
        xs = torch.randn(AGENTS, BATCH, *shape, generator=g)
        ys = torch.randint(0, 10, (AGENTS, BATCH), generator=g)
        stats.append({k: float(v) for k, v in swarm.step(xs, ys).items()})
    return swarm, stats


@pytest.mark.parametrize(("model_name", "method"), [
    ("resnet20", "dsgdm-n"),  # EvoNorm ResNet-20: grouped statistics under vmap
    ("resnet20", "ccl"),      # QGM + both CCL terms: gradients through the features too
    ("mlp", "ccl-relay"),        # RelaySGD + CCL on a norm-free MLP
    ("convbase1d", "ccl"),       # MNIST-1D's CNN: its own stacked forward against nn.Conv1d
])
def test_vmap_and_loop_give_the_same_parameters(model_name, method):
    norm = "none" if model_name in ("mlp", "convbase1d") else None
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


@pytest.mark.parametrize(("model_name", "shape"), [("mlp", (3, 8, 8)), ("convbase1d", (1, 40)),
                                                   ("convbase1d", (2, 17))])
def test_a_model_s_own_stacked_forward_equals_its_per_agent_forward(model_name, shape):
    """``forward_rows`` (k models at once, benchmark/models/rows.py) gives what each model's
    own forward (nn.Linear / nn.Conv1d) gives on its own batch: features and logits, to float
    rounding; an odd signal length checks the padding at both ends of every convolution."""
    torch.manual_seed(0)
    models = [build_model(model_name, num_classes=10, sample_shape=shape) for _ in range(3)]
    xs = torch.randn(3, 5, *shape)
    params = {name: torch.stack([dict(m.named_parameters())[name] for m in models])
              for name, _ in models[0].named_parameters()}
    features, logits = models[0].forward_rows(params, xs)
    for k, model in enumerate(models):
        want_features, want_logits = model(xs[k])
        torch.testing.assert_close(features[k], want_features, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(logits[k], want_logits, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(logits[0], logits[1])  # three different models, not one


def test_auto_on_a_cpu_is_vmap_only_for_a_model_with_its_own_stacked_forward():
    """The CPU rule is fixed (no timing), so a rerun takes the same path: the MLP has a
    ``forward_rows`` and is vectorised; ResNet-20 has none and keeps the loop."""
    torch.manual_seed(0)
    topo = build_topology("ring", 3)
    mlp = Swarm(build_model("mlp", 10, 3, norm="none", image_size=8), topo, device="cpu")
    assert mlp.vectorize == "vmap" and "stacked forward" in mlp.vectorize_reason
    assert mlp.forward_backward.rows_forward is not None  # CCL's passes are vectorised too
    resnet = Swarm(build_model("resnet20", 10, 3, image_size=8), topo, device="cpu")
    assert resnet.vectorize == "loop"


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


def _auto(monkeypatch, loop_ms: float, vmap_ms: float, method: str = "ccl"):
    """A swarm whose pass is ``auto`` (as on CUDA), against a fake clock: each loop pass costs
    ``loop_ms``, each vmap pass ``vmap_ms``. Returns the swarm and the order of the calls."""
    from benchmark import forward_backward as fb

    now, calls = [0.0], []
    monkeypatch.setattr(fb.time, "perf_counter", lambda: now[0])
    for cls, cost in ((fb.LoopPass, loop_ms), (fb.VmapPass, vmap_ms)):
        def timed(self, xs, ys, cross, _real=cls.__call__, _cost=cost, _name=cls.name):
            calls.append((_name, cross is not None and cross._mv_sum.item() == 0))
            now[0] += _cost / 1e3
            return _real(self, xs, ys, cross)
        monkeypatch.setattr(cls, "__call__", timed)
    swarm, _ = _run("mlp", method, "loop", "none")  # a few loop steps: agents apart
    swarm.forward_backward = fb.AutoPass(swarm.state, swarm.forward_backward)
    calls.clear()
    return swarm, calls


@pytest.mark.parametrize(("loop_ms", "vmap_ms", "kept"), [
    (10.0, 6.0, "vmap"), (5.6, 6.0, "vmap"), (5.0, 6.0, "loop")])  # vmap unless loop < 0.9x
def test_auto_alternates_warms_up_includes_ccl_and_keeps_vmap_unless_loop_wins(
        monkeypatch, loop_ms, vmap_ms, kept):
    from benchmark.forward_backward import AUTO_ROUNDS, AUTO_WARMUP

    swarm, calls = _auto(monkeypatch, loop_ms, vmap_ms)
    g = torch.Generator().manual_seed(3)
    xs, ys = torch.randn(AGENTS, BATCH, 3, 8, 8, generator=g), torch.randint(0, 10, (4, 3))
    swarm.step(xs, ys)
    rounds = AUTO_WARMUP + AUTO_ROUNDS
    order = [name for name, _ in calls[: 2 * rounds]]
    assert order == [p for r in range(rounds)
                     for p in (("loop", "vmap") if r % 2 == 0 else ("vmap", "loop"))]
    assert all(fresh for _, fresh in calls)  # CCL prepared anew before every timed pass
    assert len(calls) == 2 * rounds + 1 and calls[-1][0] == kept  # then the step's own pass
    assert swarm.vectorize == kept and "alternating rounds" in swarm.vectorize_reason
    assert f"loop {loop_ms:.1f} ms, vmap {vmap_ms:.1f} ms" in swarm.vectorize_reason
    swarm.step(xs, ys)  # settled: measured once
    assert len(calls) == 2 * rounds + 2


def test_distributed_ranks_all_take_rank_0s_measured_path(monkeypatch):
    """Each rank measures loop vs vmap on its own shard and could decide otherwise; every rank
    takes rank 0's choice (here rank 1 measured vmap faster, rank 0 chose the loop)."""
    from benchmark.distributed import Communicator

    class RankOne(Communicator):
        distributed = True

        def all_gather_objects(self, obj):
            return [("loop", "auto on CUDA: loop (rank 0's numbers)"), obj]

    swarm, calls = _auto(monkeypatch, 10.0, 6.0, method="dsgdm-n")
    monkeypatch.setattr(swarm.state, "comm", RankOne(AGENTS, rank=1, world_size=2))
    xs, ys = torch.randn(AGENTS, BATCH, 3, 8, 8), torch.randint(0, 10, (AGENTS, BATCH))
    chosen = swarm.forward_backward.settle(xs, ys, None)
    assert chosen.name == "loop" and {name for name, _ in calls} == {"loop", "vmap"}
    assert chosen.reason == ("rank 0's measurement, taken by all 2 ranks: auto on CUDA: loop "
                             "(rank 0's numbers)")


def test_a_resumed_run_keeps_the_measured_path(monkeypatch):
    first, calls = _auto(monkeypatch, 10.0, 6.0, method="dsgdm-n")
    first.step(torch.randn(AGENTS, BATCH, 3, 8, 8), torch.randint(0, 10, (AGENTS, BATCH)))
    state = first.state_dict()
    assert (state["vectorize"], first.vectorize) == ("vmap", "vmap")
    resumed, calls = _auto(monkeypatch, 1.0, 6.0, method="dsgdm-n")  # the loop would win now
    resumed.load_state_dict(state)
    resumed.step(torch.randn(AGENTS, BATCH, 3, 8, 8), torch.randint(0, 10, (AGENTS, BATCH)))
    assert resumed.vectorize == "vmap" and [name for name, _ in calls] == ["vmap"]
    assert resumed.vectorize_reason.startswith("kept from the checkpoint: auto on CUDA: vmap")
