"""The Cross-feature Contrastive Loss against a brute-force reading of METHOD.md section 4."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.algorithms.ccl import CCLOptions, CrossFeatureLoss
from benchmark.methods import METHODS, resolve_method
from benchmark.swarm import Swarm
from benchmark.topology import build_topology

CLASSES, D_IN = 4, 6


class TinyMLP(nn.Module):
    """ReLU features (unbounded, like LeNet-5's) and a linear head."""

    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        self.body = nn.Linear(D_IN, 5)
        self.norm = nn.BatchNorm1d(5) if batchnorm else nn.Identity()
        self.head = nn.Linear(5, CLASSES)

    def forward(self, x):
        f = torch.relu(self.norm(self.body(x)))
        return f, self.head(f)


def _swarm(graph="ring", n=4, model=None, **kw) -> Swarm:
    torch.manual_seed(0)
    kw.setdefault("device", "cpu")
    if graph == "chain":
        kw.setdefault("mixing", "metropolis")
    return Swarm(model or TinyMLP(), build_topology(graph, n), **kw)


def _batches(n, b=6, steps=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, b, D_IN, generator=g), torch.randint(0, CLASSES, (n, b), generator=g))
            for _ in range(steps)]


def _diverge(swarm: Swarm) -> None:
    """Give every agent different random parameters (and BatchNorm statistics)."""
    g = torch.Generator().manual_seed(5)
    swarm.params.add_(0.5 * torch.randn(swarm.params.shape, generator=g))
    for m in swarm.models:
        for name, buf in m.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g))
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


@pytest.mark.parametrize(
    ("algorithm", "variant"),
    [("dsgdm-n", "aketi"), ("qgm", "aketi"), ("qgm", "lin"), ("relaysgd", "aketi")],
)
def test_zero_lambdas_are_bit_identical_to_the_base(algorithm, variant):
    base = _swarm(algorithm=algorithm, qgm_variant=variant)
    ccl = _swarm(algorithm=algorithm, qgm_variant=variant, ccl={"lambda_m": 0.0, "lambda_d": 0.0})
    for xs, ys in _batches(4, steps=3):
        sb, sc = base.step(xs, ys), ccl.step(xs, ys)
        assert torch.equal(sb["ce"], sc["ce"])
        assert set(sc) == {"ce", "l_mv", "l_dv"}  # the measure is logged on a CCL run
    assert torch.equal(base.params, ccl.params)
    assert torch.equal(base.algorithm.momentum, ccl.algorithm.momentum)


def test_l_mv_is_zero_while_agents_agree_and_positive_once_they_diverge():
    swarm = _swarm(algorithm="qgm", ccl={"lambda_m": 0.1, "lambda_d": 0.1})
    data = _batches(4, steps=2)
    first = swarm.step(*data[0])
    assert float(first["l_mv"]) < 1e-12  # identical starts (up to gossip rounding)
    second = swarm.step(*data[1])
    assert float(second["l_mv"]) > 1e-6


def test_baseline_logs_the_heterogeneity_measure_only_when_asked():
    xs, ys = _batches(4, steps=1)[0]
    assert set(_swarm().step(xs, ys)) == {"ce"}
    logged = _swarm(log_cross_features=True)
    assert set(logged.step(xs, ys)) == {"ce", "l_mv", "l_dv"}
    assert not logged.cross_features.active


def test_logging_every_k_iterations_samples_the_measure_and_trains_the_same():
    """log_cross_features_every=3 (CCLOptions.log_every): the baseline computes L_mv / L_dv at
    iterations 0, 3, 6 only, with exactly the values of the every-iteration run there, and
    trains bit-identically (the logged terms never reach a gradient); a CCL run ignores it."""
    data = _batches(4, steps=7)
    options = {"lambda_m": 0.0, "lambda_d": 0.0}
    every = _swarm(algorithm="qgm", ccl=CCLOptions(**options))
    sampled = _swarm(algorithm="qgm", ccl=CCLOptions(**options, log_every=3))
    for t, (xs, ys) in enumerate(data):
        all_stats, some = every.step(xs, ys), sampled.step(xs, ys)
        if t % 3 == 0:
            assert set(some) == {"ce", "l_mv", "l_dv"}
            assert t == 0 or float(some["l_mv"]) > 0  # the agents have trained apart
            assert torch.equal(some["l_mv"], all_stats["l_mv"])
            assert torch.equal(some["l_dv"], all_stats["l_dv"])
        else:
            assert set(some) == {"ce"}
        assert torch.equal(some["ce"], all_stats["ce"])
    assert torch.equal(every.params, sampled.params)
    active = _swarm(algorithm="qgm", ccl=CCLOptions(lambda_m=0.1, lambda_d=0.1, log_every=3))
    assert all(set(active.step(xs, ys)) == {"ce", "l_mv", "l_dv"} for xs, ys in data[:2])


def test_an_epoch_s_logged_measure_is_the_mean_over_the_iterations_that_computed_it(tmp_path):
    """train_epoch divides each statistic by the iterations that reported it: the epoch's L_mv
    of a sampled run equals the mean of the every-iteration run's values at those iterations."""
    from benchmark.config import build_config
    from benchmark.train import build_experiment, train_epoch

    def experiment(every: int):
        return build_experiment(build_config({
            "dataset": "digits", "model": "mlp", "image_size": 8, "n_agents": 4, "batch_size": 32,
            "method": "qgm", "log_cross_features": True, "log_cross_features_every": every,
            "tracking": False, "device": "cpu", "threads": 1}))

    sampled = train_epoch(experiment(4), 0)
    exp = experiment(1)
    per_iteration = []
    original_step = exp.swarm.step

    def recording_step(xs, ys):
        stats = original_step(xs, ys)
        per_iteration.append(float(stats["l_mv"]))
        return stats

    exp.swarm.step = recording_step
    full = train_epoch(exp, 0)
    assert len(per_iteration) == exp.batches.iterations_per_epoch == 12  # 359 signals / 32
    picked = per_iteration[::4]
    assert sampled["l_mv"] == pytest.approx(sum(picked) / len(picked), rel=1e-12)
    assert full["l_mv"] == pytest.approx(sum(per_iteration) / 12, rel=1e-12)
    assert sampled["train_ce"] == full["train_ce"]  # the training itself is the same


def _features(model: nn.Module, params: torch.Tensor, x: torch.Tensor, buffers=None):
    """Brute force: a fresh copy of the model holding ``params`` (and ``buffers``), eval mode."""
    m = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(params.detach().clone(), m.parameters())
    if buffers is not None:
        m.load_state_dict({**m.state_dict(), **buffers})
    m.eval()
    with torch.no_grad():
        return m(x)[0]


def _brute_force(swarm: Swarm, pre, buffers, own, xs, ys, normalized: bool):
    """Explicit loops over agents, neighbours and classes, straight from METHOD.md section 4.

    ``pre``: X^-; ``buffers``: each agent's buffers before its train-mode forward; ``own``: f_i.
    ``L_mv`` sums over neighbours, except on RelaySGD: the mean over tree neighbours.
    """
    n = swarm.n
    neighbors = swarm.algorithm.cross_feature_neighbors()
    template = swarm.models[0]
    own = [f.detach() for f in own]
    cross = {}  # (i, j) -> c_{j->i} = F(x_j^-; X_i), run with the receiver's buffers
    for i in range(n):
        for j in neighbors[i]:
            cross[i, j] = _features(template, pre[j], xs[i], buffers[i])
    if normalized:
        own = [F.normalize(f, dim=1) for f in own]
        cross = {k: F.normalize(v, dim=1) for k, v in cross.items()}
    l_mv, l_dv = [], []
    for i in range(n):
        f = own[i]
        l_mv.append(sum(((f - cross[i, j]) ** 2).mean() for j in neighbors[i])
                    / (1 if swarm.algorithm.sends_models else len(neighbors[i])))
        mu = {}
        for c in ys[i].unique().tolist():
            total = f[ys[i] == c].sum(0)  # the agent's own detached features
            count = int((ys[i] == c).sum())
            for k in neighbors[i]:  # k computed F(x_i^-; X_k) and sent its class sums and counts
                total = total + cross[k, i][ys[k] == c].sum(0)
                count += int((ys[k] == c).sum())
            mu[c] = total / count
        target = torch.stack([mu[c] for c in ys[i].tolist()])
        l_dv.append(((f - target) ** 2).mean())
    return torch.stack(l_mv), torch.stack(l_dv)


def _prepared(swarm: Swarm):
    """Diverged agents, one batch, the first half of ``Swarm.step`` and CCL's cross passes."""
    _diverge(swarm)
    xs, ys = _batches(swarm.n, steps=1)[0]
    swarm.pre_params.copy_(swarm.params)
    swarm.algorithm.before_gradients()
    swarm.cross_features.prepare(xs, ys)
    return swarm.cross_features, xs, ys


@pytest.mark.parametrize(
    ("graph", "n", "algorithm", "batchnorm", "distance"),
    [
        ("ring", 5, "qgm", False, "squared"),
        ("chain", 4, "dsgdm-n", False, "squared"),  # irregular degrees
        ("full", 4, "relaysgd", False, "squared"),  # tree (star) neighbours
        ("ring", 4, "dsgdm-n", False, "normalized"),
        ("ring", 4, "qgm", True, "squared"),  # receiver's BatchNorm buffers, eval mode
    ],
)
def test_losses_equal_brute_force(graph, n, algorithm, batchnorm, distance):
    swarm = _swarm(graph, n, TinyMLP(batchnorm), algorithm=algorithm, gamma=0.7)
    _diverge(swarm)
    swarm.step(*_batches(n, steps=1, seed=9)[0])  # a real iteration first: momentum, relays
    _diverge(swarm)
    xs, ys = _batches(n, steps=1, seed=2)[0]
    ys[0] = torch.tensor([0, 0, 1, 1, 1, 3])  # a class absent from agent 0's batch
    pre = swarm.params.clone()
    buffers = [{k: v.clone() for k, v in m.named_buffers()} for m in swarm.models]
    # the first half of Swarm.step: snapshot X^-, then the base's pre-gradient communication
    swarm.pre_params.copy_(swarm.params)
    swarm.algorithm.before_gradients()
    neighbors = swarm.algorithm.cross_feature_neighbors()
    models = swarm.algorithm.sends_models
    mv = CrossFeatureLoss(swarm.state, CCLOptions(lambda_m=1.0, feature_distance=distance),
                          neighbors, receives_models=models)
    dv = CrossFeatureLoss(swarm.state, CCLOptions(lambda_d=1.0, feature_distance=distance),
                          neighbors, receives_models=models)
    # the vmap path's batched loss over the same passes
    mv_all, dv_all = copy.copy(mv), copy.copy(dv)
    for loss in (mv, dv, mv_all, dv_all):
        loss.prepare(xs, ys)
    got_mv, got_dv, own = [], [], []
    for i in range(n):
        features = swarm.models[i](xs[i])[0]  # train mode: updates BatchNorm statistics
        own.append(features)
        got_mv.append(mv.loss(i, features, ys[i]).detach())
        got_dv.append(dv.loss(i, features, ys[i]).detach())
    want_mv, want_dv = _brute_force(swarm, pre, buffers, own, xs, ys, distance == "normalized")
    assert float(want_mv.min()) > 1e-3 and float(want_dv.min()) > 1e-3  # not trivially zero
    torch.testing.assert_close(torch.stack(got_mv), want_mv, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.stack(got_dv), want_dv, atol=1e-6, rtol=0)
    torch.testing.assert_close(mv.stats()["l_mv"], want_mv.mean(), atol=1e-6, rtol=0)
    torch.testing.assert_close(mv.stats()["l_dv"], want_dv.mean(), atol=1e-6, rtol=0)
    own = torch.stack(own)
    torch.testing.assert_close(mv_all.loss_all(own, ys).detach(), want_mv.sum(), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(dv_all.loss_all(own, ys).detach(), want_dv.sum(), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(mv_all.stats()["l_dv"], want_dv.mean(), atol=1e-6, rtol=0)


def test_gradient_flows_only_through_own_features():
    lam_m, lam_d = 0.3, 0.7
    swarm = _swarm("ring", 4, algorithm="dsgdm-n", ccl={"lambda_m": lam_m, "lambda_d": lam_d})
    cross, xs, ys = _prepared(swarm)
    assert not cross._cross.requires_grad and cross._cross.grad_fn is None  # no graph built
    assert all(not p.requires_grad for m in cross._models for p in m.parameters())

    # d loss / d f with every target held constant: 2/(B D) [lam_m sum_j (f - c_j) + lam_d (f - mu)]
    i = 1
    f = swarm.models[i](xs[i])[0].detach().requires_grad_()
    (grad,) = torch.autograd.grad(cross.loss(i, f, ys[i]), f)
    c = cross._cross[cross._offsets[i] : cross._offsets[i + 1]]
    onehot = F.one_hot(ys[i], CLASSES).float()
    mu = (onehot.T @ f.detach() + cross._received_sums[i]) / (
        onehot.sum(0) + cross._received_counts[i]).clamp_min(1)[:, None]
    scale = 2 / f.numel()
    want = scale * (lam_m * (f.detach() - c).sum(0) + lam_d * (f.detach() - mu[ys[i]]))
    torch.testing.assert_close(grad, want, atol=1e-7, rtol=1e-5)

    # a full backward reaches agent i's row only, and never X^-
    swarm.grads.zero_()
    features, _ = swarm.models[i](xs[i])
    cross.loss(i, features, ys[i]).backward()
    others = [r for r in range(4) if r != i]
    assert swarm.grads[i].abs().sum() > 0
    assert swarm.grads[others].abs().sum() == 0
    assert swarm.pre_params.grad is None


def test_presets_are_the_issue_table():
    expected = {
        "dsgdm-n": ("dsgdm-n", None), "qgm": ("qgm", None), "relaysgd": ("relaysgd", None),
        "ccl": ("qgm", {"lambda_m": 0.1, "lambda_d": 0.2}),
        "ccl-dsgdm": ("dsgdm-n", {"lambda_m": 0.1, "lambda_d": 0.2}),
        "ccl-relay": ("relaysgd", {"lambda_m": 0.1, "lambda_d": 0.2}),
        "ccl-mv": ("qgm", {"lambda_m": 0.1, "lambda_d": 0.0}),
        "ccl-dv": ("qgm", {"lambda_m": 0.0, "lambda_d": 0.2}),
    }
    assert set(METHODS) == set(expected)
    for name, want in expected.items():
        assert resolve_method(name, 0.1, 0.2) == want


def test_ccl_changes_the_trajectory_and_stays_finite():
    base = _swarm(algorithm="qgm")
    ccl = _swarm(algorithm="qgm", ccl={"lambda_m": 0.5, "lambda_d": 0.5})
    for xs, ys in _batches(4, steps=3):
        base.step(xs, ys)
        stats = ccl.step(xs, ys)
    assert all(torch.isfinite(v) for v in stats.values())
    assert not torch.equal(base.params, ccl.params)


def test_relaysgd_l_mv_is_the_mean_over_tree_neighbours_by_hand():
    """chain 0-1-2: agent 1 has two tree neighbours, so its L_mv is the mean of two distances."""
    swarm = _swarm("chain", 3, algorithm="relaysgd", ccl={"lambda_m": 1.0, "lambda_d": 0.0})
    cross, xs, ys = _prepared(swarm)
    template = swarm.models[0]
    f = swarm.models[1](xs[1])[0].detach()
    d0 = ((f - _features(template, swarm.params[0], xs[1])) ** 2).mean()
    d2 = ((f - _features(template, swarm.params[2], xs[1])) ** 2).mean()
    assert abs(float(d0 - d2)) > 1e-3  # two different distances: a sum would be visibly off
    torch.testing.assert_close(cross.loss(1, f, ys[1]), (d0 + d2) / 2, atol=1e-6, rtol=0)
    f0 = swarm.models[0](xs[0])[0].detach()  # a leaf: one neighbour, mean == sum
    d01 = ((f0 - _features(template, swarm.params[1], xs[0])) ** 2).mean()
    torch.testing.assert_close(cross.loss(0, f0, ys[0]), d01, atol=1e-6, rtol=0)


def test_ccl_relay_bytes_per_iteration_are_exact():
    """chain-4 tree: 6 directed tree edges, P = 59 (TinyMLP), C = 4 classes, D = 5 features."""
    swarm = _swarm("chain", 4, algorithm="relaysgd", ccl={"lambda_m": 0.1, "lambda_d": 0.1})
    p, edges, n = 6 * 5 + 5 + 5 * 4 + 4, 6, 4
    assert swarm.params.shape[1] == p
    assert swarm.bytes_sent() == {
        "parameters": edges * p * 4 / n,              # one relayed (partial) model per message
        "relay_counts": edges * 4 / n,                # one count per message
        "cross_feature_models": edges * p * 4 / n,    # the neighbour's own model, for CCL
        "class_statistics": edges * (4 * 5 + 4) * 4 / n,
    }
    gossip = _swarm("ring", 4, algorithm="qgm", ccl={"lambda_m": 0.1, "lambda_d": 0.1})
    assert "cross_feature_models" not in gossip.bytes_sent()  # gossip already sends the models


def test_weight_scale_scales_both_terms():
    swarm = _swarm("ring", 4, algorithm="qgm", ccl={"lambda_m": 0.3, "lambda_d": 0.7})
    cross, xs, ys = _prepared(swarm)
    f = swarm.models[2](xs[2])[0].detach()
    full = cross.loss(2, f, ys[2])
    cross.set_weight_scale(0.25)
    assert (cross.lambda_m, cross.lambda_d) == (0.3 * 0.25, 0.7 * 0.25)
    torch.testing.assert_close(cross.loss(2, f, ys[2]), 0.25 * full)
