"""QG-DSGDm-N (both variants) and RelaySGD against hand-worked examples and invariants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.algorithms import registered
from benchmark.algorithms.relaysgd import TreeRelay
from benchmark.errors import ConfigError
from benchmark.swarm import Swarm
from benchmark.topology import build_topology, double_binary_trees


class TinyNet(nn.Module):
    """(features, logits), like every model of the suite."""

    def __init__(self, d_in: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(d_in, 5)
        self.head = nn.Linear(5, classes)

    def forward(self, x):
        f = torch.tanh(self.body(x))
        return f, self.head(f)


class Scalar(nn.Module):
    """One scalar parameter: the hand-worked examples feed its gradients directly."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        f = x * self.w
        return f, f


def _batches(n, b=4, steps=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, b, 6, generator=g), torch.randint(0, 3, (n, b), generator=g))
            for _ in range(steps)]


def _swarm(name="ring", n=6, model=None, **kw) -> Swarm:
    torch.manual_seed(0)
    kw.setdefault("device", "cpu")
    return Swarm(model or TinyNet(), build_topology(name, n), **kw)


def _run_with_gradients(swarm: Swarm, gradients: list[list[float]]) -> None:
    """Drive ``swarm.step`` with given per-agent gradients instead of a forward/backward."""
    for g in gradients:
        swarm._gradients = lambda xs, ys, g=g: (swarm.grads.copy_(torch.tensor(g)[:, None]), {})[1]
        swarm.step(torch.zeros(swarm.n, 1, 1), torch.zeros(swarm.n, 1, dtype=torch.long))


def test_registry_has_every_base():
    assert list(registered()) == ["dsgdm-n", "qgm", "relaysgd"]


@pytest.mark.parametrize("name", list(registered()))
@pytest.mark.parametrize(("graph", "n", "options"), [
    ("ring", 6, {}), ("torus", 9, {"relay_tree": "bfs"}),
    ("full", 5, {"relay_tree": "double-binary", "qgm_variant": "lin"})])
def test_declared_state_and_bytes_are_what_the_algorithm_holds_and_sends(name, graph, n, options):
    """What the registry tells the memory estimate and the checkpoint (state_shapes) and the
    accounting (bytes_per_iteration) is what a built algorithm holds and sends."""
    swarm = _swarm(graph, n, algorithm=name, **options)
    cls, typed, topology = type(swarm.algorithm), swarm.algorithm.options, swarm.topology
    n_params = swarm.params.shape[1]
    held = {key: tuple(t.shape) for key, t in swarm.state_dict()["algorithm"].items()}
    assert held == cls.state_shapes(topology, n_params, typed)
    assert swarm.algorithm.bytes_sent() == cls.bytes_per_iteration(topology, n_params, typed)
    if name == "relaysgd":  # one (partial) model and one count per directed tree edge
        trees = 2 if options.get("relay_tree") == "double-binary" else 1
        assert swarm.algorithm.bytes_sent()["relay_counts"] == trees * 2 * (n - 1) * 4 / n


# -- QG-DSGDm-N ---------------------------------------------------------------------------------
# Two agents, one scalar each, x = (1, 3), beta 0.5, eta 0.5, wd 0, gamma 0.5. With 2 agents the
# uniform W is all 1/2, so gossip is x_i <- 0.75 x_i + 0.25 x_j. Gradients (1,-1), (2,0), (0,1).
GRADIENTS = [[1.0, -1.0], [2.0, 0.0], [0.0, 1.0]]


def test_qgm_aketi_hand_worked_two_agents_three_iterations():
    # t0: gossip (1.5, 2.5); no correction; m = g = (1,-1); d = g + .5m = (1.5,-1.5);
    #     x = (1.5,2.5) - .5d = (0.75, 3.25)
    # t1: gossip (1.375, 2.625); m += (before-after)/0.5 = (1,-1) + (-1.25,1.25) = (-.25,.25);
    #     m = .5m + g = (1.875, .125); d = (2.9375, .0625); x = (-0.09375, 2.59375)
    # t2: gossip (0.578125, 1.921875); m += (-1.34375, 1.34375) -> (0.53125, 1.46875);
    #     m = (0.265625, 1.734375); d = (0.1328125, 1.8671875); x = (0.51171875, 0.98828125)
    swarm = _swarm("chain", 2, Scalar(), algorithm="qgm", qgm_variant="aketi", lr=0.5,
                   momentum=0.5, weight_decay=0.0, gamma=0.5)
    swarm.params.copy_(torch.tensor([[1.0], [3.0]]))
    _run_with_gradients(swarm, GRADIENTS[:2])
    assert swarm.params.flatten().tolist() == [-0.09375, 2.59375]
    assert swarm.algorithm.momentum.flatten().tolist() == [1.875, 0.125]
    _run_with_gradients(swarm, GRADIENTS[2:])
    assert swarm.params.flatten().tolist() == [0.51171875, 0.98828125]  # dyadic: exact
    assert swarm.algorithm.momentum.flatten().tolist() == [0.265625, 1.734375]


def test_qgm_lin_hand_worked_two_agents_three_iterations():
    # mu = 0.1; mhat <- 0.9 mhat + 0.1 (x - x_new) / 0.5
    # t0: mtilde = (1,-1); d = (1.5,-1.5); x_half = (.25, 3.75); x = (1.125, 2.875);
    #     mhat = 0.2 (-.125, .125) = (-.025, .025)
    # t1: mtilde = (1.9875, .0125); d = (2.99375, .00625); x_half = (-.371875, 2.871875);
    #     x = (.4390625, 2.0609375); mhat = (.1146875, .1853125)
    # t2: mtilde = (.05734375, 1.09265625); d = (.028671875, 1.546328125);
    #     x_half = (.4247265625, 1.2877734375); x = (.64048828125, 1.07201171875);
    #     mhat = (.06293359375, .36456640625)
    swarm = _swarm("chain", 2, Scalar(), algorithm="qgm", qgm_variant="lin", lr=0.5,
                   momentum=0.5, weight_decay=0.0, gamma=0.5)
    swarm.params.copy_(torch.tensor([[1.0], [3.0]]))
    _run_with_gradients(swarm, GRADIENTS)
    torch.testing.assert_close(swarm.params.flatten(), torch.tensor([0.64048828125, 1.07201171875]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(swarm.algorithm.momentum.flatten(),
                               torch.tensor([0.06293359375, 0.36456640625]), atol=1e-6, rtol=0)


def test_qgm_aketi_equals_dsgdm_on_complete_graph_but_buffers_differ():
    """gamma 1, uniform K_n: corrections sum to zero over agents, so the average is unchanged."""
    n = 5
    qgm = _swarm("full", n, algorithm="qgm", lr=0.1, weight_decay=1e-3)
    dsgdm = _swarm("full", n, algorithm="dsgdm-n", lr=0.1, weight_decay=1e-3)
    for xs, ys in _batches(n, steps=5):
        qgm.step(xs, ys)
        dsgdm.step(xs, ys)
        # the next iteration's post-gossip parameters
        torch.testing.assert_close(qgm.mixing @ qgm.params, dsgdm.mixing @ dsgdm.params,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(qgm.algorithm.momentum.mean(0),
                                   dsgdm.algorithm.momentum.mean(0), atol=1e-5, rtol=0)
    assert (qgm.algorithm.momentum - dsgdm.algorithm.momentum).abs().max() > 1e-3


def test_qgm_rejects_unknown_variant():
    with pytest.raises(ConfigError, match="qgm_variant"):
        _swarm(algorithm="qgm", qgm_variant="nesterov")


# -- RelaySGD -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tree",
    [
        build_topology("ring", 7).spanning_tree("chain"),
        build_topology("paper-torus", 12).spanning_tree("bfs"),
        build_topology("petersen", 10).spanning_tree("bfs"),
        double_binary_trees(9)[1],
    ],
    ids=["chain7", "bfs-torus12", "bfs-petersen", "double-binary-2"],
)
def test_relay_gives_exact_average_after_diameter_iterations(tree):
    values = torch.randn(tree.n, 3, generator=torch.Generator().manual_seed(0))
    relay = TreeRelay(tree, 3, torch.device("cpu"), torch.float32)
    for t in range(1, tree.diameter + 1):
        total, count = relay(values)
        if t < tree.diameter:
            assert count.min() < tree.n  # the far ends have not heard from each other yet
    assert torch.equal(count, torch.full((tree.n,), float(tree.n)))
    torch.testing.assert_close(total / count[:, None], values.mean(0).expand_as(values),
                               atol=1e-6, rtol=0)


def _distinct_rows(swarm: Swarm) -> torch.Tensor:
    rows = torch.randn(swarm.params.shape, generator=torch.Generator().manual_seed(3))
    swarm.params.copy_(rows)
    return rows.clone()


@pytest.mark.parametrize("norm", ["counts", "world"])
def test_relay_norms_hand_worked_on_a_three_chain(norm):
    """chain 0-1-2, lr 0. t0: S = (v0+v1, v0+v1+v2, v1+v2), C = (2, 3, 2). t1 (new x = u):
    msg_{1->0} = u1 + msg_{2->1}(t0) = u1 + v2, so S_0 = u0 + u1 + v2, C_0 = 3."""
    swarm = _swarm("chain", 3, algorithm="relaysgd", relay_norm=norm, lr=0.0, mixing="metropolis")
    x0 = swarm.params[0].clone()
    v = _distinct_rows(swarm)
    xs, ys = _batches(3, steps=1)[0]
    swarm.step(xs, ys)
    if norm == "counts":
        expected = torch.stack([(v[0] + v[1]) / 2, v.mean(0), (v[1] + v[2]) / 2])
    else:  # (S + (n - C) x0) / n
        expected = torch.stack([(v[0] + v[1] + x0) / 3, v.mean(0), (v[1] + v[2] + x0) / 3])
    torch.testing.assert_close(swarm.params, expected, atol=1e-6, rtol=0)
    u = swarm.params.clone()
    swarm.step(xs, ys)
    torch.testing.assert_close(swarm.params[0], (u[0] + u[1] + v[2]) / 3, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("graph", "n", "tree"), [("ring", 8, "auto"), ("paper-torus", 12, "bfs"),
                             ("ring", 8, "double-binary")]
)
def test_relay_with_zero_lr_reaches_consensus(graph, n, tree):
    swarm = _swarm(graph, n, algorithm="relaysgd", relay_tree=tree, lr=0.0)
    _distinct_rows(swarm)
    start = swarm.consensus_distance()
    _run_with_gradients(swarm, [[0.0] * n] * 100)  # lr 0: the gradients play no part
    assert swarm.consensus_distance() < 1e-6 * start


def test_relay_chain_requires_the_path_in_the_graph():
    with pytest.raises(ConfigError, match="relay_tree"):
        _swarm("petersen", 10, algorithm="relaysgd", relay_tree="chain")


def test_relay_state_round_trip_resumes_exactly():
    a = _swarm("ring", 5, algorithm="relaysgd")
    data = _batches(5, steps=4)
    for xs, ys in data[:2]:
        a.step(xs, ys)
    b = _swarm("ring", 5, algorithm="relaysgd")
    b.load_state_dict({k: v for k, v in a.state_dict().items()})
    for xs, ys in data[2:]:
        a.step(xs, ys)
        b.step(xs, ys)
    assert torch.equal(a.params, b.params)


# -- communication accounting -------------------------------------------------------------------
def test_bytes_sent_by_kind():
    n, p = 8, 6 * 5 + 5 + 5 * 3 + 3
    dsgdm = _swarm("ring", n)
    assert dsgdm.bytes_sent() == {"parameters": 2 * p * 4}
    relay = _swarm("ring", n, algorithm="relaysgd")  # chain: 2 (n - 1) messages
    assert relay.bytes_sent() == pytest.approx(
        {"parameters": 2 * (n - 1) * p * 4 / n, "relay_counts": 2 * (n - 1) * 4 / n})
    halves = _swarm("ring", n, algorithm="relaysgd", relay_tree="double-binary")
    assert halves.bytes_sent()["parameters"] == pytest.approx(2 * (n - 1) * p * 4 / n)
    ccl = _swarm("ring", n, algorithm="qgm", ccl={"lambda_m": 0.1, "lambda_d": 0.1})
    d, c = 5, 3
    assert ccl.bytes_sent() == {"parameters": 2 * p * 4, "class_statistics": 2 * (c * d + c) * 4}
    mv_only = _swarm("ring", n, algorithm="qgm", ccl={"lambda_m": 0.1, "lambda_d": 0.0})
    assert mv_only.bytes_sent()["class_statistics"] == 0.0
    logged = _swarm("ring", n, log_cross_features=True)  # measuring is not communicating
    assert logged.bytes_sent() == {"parameters": 2 * p * 4}


def test_run_records_bytes_by_kind_per_epoch_and_in_total():
    from benchmark.config import build_config
    from benchmark.train import run

    synthetic = {"num_classes": 4, "train_size": 256, "test_size": 32, "channels": 1,
                 "image_size": 8}
    config = build_config({"dataset": "synthetic", "synthetic": synthetic, "model": "mlp",
                           "n_agents": 4, "epochs": 2, "batch_size": 32, "method": "ccl-relay",
                           "tracking": False, "device": "cpu"})
    metrics = run(config, None)
    n, p, iters = 4, metrics.n_params, metrics.iterations_per_epoch
    per_iteration = metrics.communication.bytes_per_agent_per_iteration
    messages = 2 * (n - 1) / n  # per agent, on the chain 0-1-2-3
    assert per_iteration["parameters"] == pytest.approx(messages * p * 4)
    assert per_iteration["relay_counts"] == pytest.approx(messages * 4)
    assert per_iteration["class_statistics"] == pytest.approx(messages * (4 * 32 + 4) * 4)
    for record in metrics.history:
        assert record.bytes_by_kind["parameters"] == pytest.approx(messages * p * 4 * iters)
        assert record.bytes_per_agent == pytest.approx(sum(per_iteration.values()) * iters)
    assert metrics.communication.bytes_per_agent_total == pytest.approx(
        2 * sum(per_iteration.values()) * iters)
