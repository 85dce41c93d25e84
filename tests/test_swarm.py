"""The simulator against hand-checkable invariants and a centralised reference."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.swarm import Swarm
from benchmark.topology import build_topology


class TinyNet(nn.Module):
    """(features, logits) like every model of the suite, small enough for exact comparisons."""

    feature_dim = 5

    def __init__(self, d_in: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Linear(d_in, 5)
        self.head = nn.Linear(5, classes)

    def forward(self, x):
        f = torch.tanh(self.body(x))
        return f, self.head(f)


def _swarm(name="ring", n=6, **kw) -> Swarm:
    torch.manual_seed(0)
    kw.setdefault("device", "cpu")
    return Swarm(TinyNet(), build_topology(name, n), **kw)


def _batches(n, b=4, steps=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, b, 6, generator=g), torch.randint(0, 3, (n, b), generator=g))
            for _ in range(steps)]


def test_rows_are_the_agents_parameters_and_start_identical():
    swarm = _swarm()
    for i, m in enumerate(swarm.models):
        vec = torch.nn.utils.parameters_to_vector(m.parameters())
        assert torch.equal(vec, swarm.flat_params[i])
    assert torch.equal(swarm.flat_params, swarm.flat_params[:1].expand_as(swarm.flat_params))


def test_gossip_preserves_the_average_and_converges_to_it():
    swarm = _swarm("ring", 8, gamma=0.9)
    x = torch.randn(8, 30)
    mean = x.mean(dim=0)
    swarm.gossip(x)
    torch.testing.assert_close(x.mean(dim=0), mean, atol=1e-6, rtol=0)
    for _ in range(600):
        swarm.gossip(x)
    torch.testing.assert_close(x, mean.expand_as(x), atol=1e-5, rtol=0)


def test_lr_zero_gossip_reaches_consensus_through_step():
    swarm = _swarm("ring", 6, lr=0.0, weight_decay=0.0)
    swarm.params.add_(torch.randn_like(swarm.params))  # agents disagree
    mean = swarm.params.mean(dim=0).clone()
    for xs, ys in _batches(6, steps=1) * 300:
        swarm.step(xs, ys)
    assert swarm.consensus_distance() < 1e-8
    torch.testing.assert_close(swarm.params[0], mean, atol=1e-5, rtol=0)


def test_dsgdm_on_complete_graph_equals_centralised_nesterov():
    """gamma 1 on K_n: every agent holds the average, so DSGDm-N is SGD on the union batch."""
    n, lr, beta, wd = 5, 0.1, 0.9, 1e-3
    swarm = _swarm("full", n, lr=lr, momentum=beta, weight_decay=wd)
    torch.manual_seed(0)
    central = TinyNet()
    opt = torch.optim.SGD(central.parameters(), lr=lr, momentum=beta, nesterov=True,
                          weight_decay=wd)
    for xs, ys in _batches(n, steps=5):
        swarm.step(xs, ys)
        opt.zero_grad()
        _, logits = central(xs.reshape(-1, 6))
        F.cross_entropy(logits, ys.reshape(-1)).backward()
        opt.step()
    reference = torch.nn.utils.parameters_to_vector(central.parameters())
    swarm.gossip(swarm.params)  # the swarm's next iteration would start by averaging
    for row in swarm.params:
        torch.testing.assert_close(row, reference, atol=1e-5, rtol=0)


def test_same_seed_same_trajectory_and_state_round_trip():
    a, b = _swarm(), _swarm()
    data = _batches(6, steps=4)
    for xs, ys in data:
        sa, sb = a.step(xs, ys), b.step(xs, ys)
        assert float(sa["ce"]) == float(sb["ce"])
    assert torch.equal(a.params, b.params)
    c = _swarm()
    c.load_state_dict(copy.deepcopy(a.state_dict()))
    xs, ys = _batches(6, steps=1, seed=7)[0]
    a.step(xs, ys)
    c.step(xs, ys)
    assert torch.equal(a.params, c.params)


def test_weight_decay_skip_norm_leaves_1d_parameters_undecayed():
    swarm = _swarm("full", 3, lr=1.0, momentum=0.0, weight_decay=0.5, wd_skip_norm=True)
    grads = torch.zeros_like(swarm.params)
    swarm.add_weight_decay(grads, torch.ones_like(swarm.params))
    sizes = [p.numel() for p in swarm.models[0].parameters()]  # W1, b1, W2, b2
    expected = torch.cat([torch.full((k,), 0.5 if i % 2 == 0 else 0.0) for i, k in
                          enumerate(sizes)])
    assert torch.equal(grads[0], expected)
