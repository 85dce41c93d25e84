"""The stability guard: closed-form radius vs the implementation's iteration, and the refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.algorithms import ClosedForm, algorithm_class
from benchmark.cli import main
from benchmark.config import RunConfig
from benchmark.errors import ConfigError, UserError
from benchmark.grid import load_family
from benchmark.stability import (
    analyses,
    largest_stable_gamma,
    measured_radius,
    spectral_radius,
)
from benchmark.swarm import Swarm
from benchmark.topology import build_topology

# every closed form the registered algorithms declare: (algorithm, options, form), by label
CLOSED = {form.label: (cls.name, options, form) for cls, options, form in analyses()
          if isinstance(form, ClosedForm)}
KINDS = list(CLOSED)

N_CLASSES = 2


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (and a shared machine's waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ZeroGradient(nn.Module):
    """A model whose loss does not depend on its parameters: every gradient is exactly 0."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = x.flatten(1)
        return features, features[:, :N_CLASSES] + 0.0 * self.w.sum()


def mixing_spectrum(graph: str, n: int, mixing: str = "uniform") -> tuple[float, ...]:
    return build_topology(graph, n).mixing_spectrum(mixing)


def _form(kind: str) -> ClosedForm:
    return CLOSED[kind][2]


def _swarm(topology, kind: str, gamma: float, beta: float, mixing: str = "uniform",
           size: int = 64, lr: float = 0.1) -> Swarm:
    algorithm, options, _ = CLOSED[kind]
    return Swarm(ZeroGradient(size), topology, algorithm=options, lr=lr, momentum=beta,
                 weight_decay=0.0, gamma=gamma, device="cpu", mixing=mixing, vectorize="loop")


def test_the_built_in_closed_forms_are_listed():
    assert KINDS == ["dsgdm-n", "qgm-aketi", "qgm-lin"]


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones(n, 2, 4), torch.zeros(n, 2, dtype=torch.long)


def _measured_matrix(topology, kind: str, gamma: float, beta: float, mixing: str) -> np.ndarray:
    """The (2n x 2n) iteration matrix on (X, eta * momentum), read off the real swarm step.

    Every column of the [n, P] state is an independent copy of the iteration, so the 2n basis
    vectors go through one step at once: column k < n starts as x = e_k, column n + k as
    eta * m = e_k.
    """
    n, lr = topology.n, 0.1
    swarm = _swarm(topology, kind, gamma, beta, mixing, size=2 * n, lr=lr)
    swarm.step(*_batch(n))  # past the first iteration (aketi skips its correction there)
    state = swarm.state_dict()
    eye = torch.eye(n)
    state["params"] = torch.cat([eye, torch.zeros(n, n)], dim=1)
    state["algorithm"]["momentum"] = torch.cat([torch.zeros(n, n), eye], dim=1) / lr
    swarm.load_state_dict(state)
    swarm.step(*_batch(n))
    x = swarm.params.double().numpy()
    u = (swarm.algorithm.state_dict()["momentum"] * lr).double().numpy()
    return np.vstack([x, u])


def _radius_without_consensus(m: np.ndarray, n: int) -> float:
    """Largest |eigenvalue| of ``m`` on the complement of the consensus directions."""
    q = np.linalg.qr(np.hstack([np.ones((n, 1)), np.eye(n)[:, : n - 1]]))[0][:, 1:]
    basis = np.block([[q, np.zeros_like(q)], [np.zeros_like(q), q]])
    return float(np.abs(np.linalg.eigvals(basis.T @ m @ basis)).max())


GRAPHS = [("ring", 5, "uniform"), ("torus", 9, "uniform"), ("petersen", 10, "uniform"),
          ("chain", 6, "metropolis"), ("full", 4, "uniform"), ("torus", 16, "uniform")]


@pytest.mark.parametrize(("graph", "n", "mixing"), GRAPHS)
@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_radius_equals_the_implementations_iteration_matrix(graph, n, mixing, kind):
    topology = build_topology(graph, n)
    spectrum = mixing_spectrum(graph, n, mixing)
    for gamma, beta in [(1.0, 0.9), (0.9, 0.9), (0.5, 0.5), (0.8, 0.0)]:
        measured = _measured_matrix(topology, kind, gamma, beta, mixing)
        expected = spectral_radius(_form(kind), spectrum, gamma, beta)
        assert _radius_without_consensus(measured, n) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("graph", "n", "mixing"), GRAPHS)
@pytest.mark.parametrize("kind", KINDS)
def test_the_guards_numerical_measure_equals_each_closed_form(graph, n, mixing, kind):
    """What the guard measures for an algorithm without a closed form, tried on the ones with:
    the same radius (so a plugin's "Measured" verdict is the same test)."""
    name, options, form = CLOSED[kind]
    topology = build_topology(graph, n)
    for gamma, beta in [(1.0, 0.9), (0.5, 0.5), (0.8, 0.0)]:
        measured = measured_radius(algorithm_class(name), options, topology, mixing=mixing,
                                   gamma=gamma, momentum=beta, lr=0.1)
        expected = spectral_radius(form, mixing_spectrum(graph, n, mixing), gamma, beta)
        assert measured == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_a_limit_is_where_the_radius_crosses_one(kind, beta):
    form = _form(kind)
    limit = form.a_limit(beta)
    assert spectral_radius(form, (0.0,), limit * (1 - 1e-6), beta) < 1
    assert spectral_radius(form, (0.0,), limit * (1 + 1e-6), beta) > 1
    # every a below the limit is stable (the stable set is an interval, not just its end)
    for a in np.linspace(1e-3, limit * (1 - 1e-6), 50):
        assert spectral_radius(form, (0.0,), a, beta) < 1


def test_the_issues_worked_figures():
    aketi = _form("qgm-aketi")
    dyck = mixing_spectrum("paper-dyck", 32)
    assert aketi.a_limit(0.9) == pytest.approx(3.8 / 2.71)
    assert spectral_radius(aketi, mixing_spectrum("ring", 16), 1.0, 0.9) == pytest.approx(
        0.924, abs=1e-3)
    assert spectral_radius(aketi, dyck, 1.0, 0.9) == pytest.approx(1.192, abs=1e-3)
    assert largest_stable_gamma(aketi, dyck, 0.9) == pytest.approx(0.9348, abs=1e-4)
    assert largest_stable_gamma(aketi, mixing_spectrum("dyck", 32), 0.9) == pytest.approx(
        0.9348, abs=1e-4)
    assert largest_stable_gamma(aketi, mixing_spectrum("paper-torus", 32), 0.9) == \
        pytest.approx(0.9456, abs=1e-4)
    for n in (16, 32):
        torus = mixing_spectrum("torus", n)
        assert largest_stable_gamma(aketi, torus, 0.9) == pytest.approx(0.8764, abs=1e-4)
        assert spectral_radius(aketi, torus, 0.9, 0.9) == pytest.approx(1.075, abs=1e-3)
    for graph in ("exponential", "full"):
        assert spectral_radius(aketi, mixing_spectrum(graph, 16), 1.0, 0.9) < 1
    assert largest_stable_gamma(_form("dsgdm-n"), dyck, 0.9) > 1  # plain gossip: stable at gamma 1


@pytest.mark.parametrize(("gamma", "grows"), [(1.0, True), (0.8, False)])
def test_zero_gradient_run_grows_or_shrinks_its_consensus_distance(gamma, grows):
    """torus 4x4, QGM (aketi): radius 1.386 at gamma 1, 0.93 at gamma 0.8."""
    topology = build_topology("torus", 16)
    swarm = _swarm(topology, "qgm-aketi", gamma, 0.9)
    torch.manual_seed(0)
    swarm.params.add_(torch.randn_like(swarm.params))
    start = swarm.consensus_distance()
    distances = []
    for _ in range(30):
        swarm.step(*_batch(16))
        distances.append(swarm.consensus_distance())
    radius = spectral_radius(_form("qgm-aketi"), mixing_spectrum("torus", 16), gamma, 0.9)
    assert (radius > 1) == grows
    if grows:
        assert distances[-1] > 1e6 * start
        # squared distance grows like radius^2 per iteration once the worst mode dominates
        rate = (distances[-1] / distances[-11]) ** (1 / 10)
        assert rate == pytest.approx(radius**2, rel=0.02)
    else:
        assert distances[-1] < 0.05 * start


def test_unstable_setting_is_refused_naming_gamma_and_its_limit():
    with pytest.raises(ConfigError) as err:
        RunConfig(method="qgm", topology="paper-dyck", n_agents=32, gamma=1.0)
    message = str(err.value)
    assert message.startswith("gamma: invalid value 1.0; allowed: below 0.9348 for qgm")
    assert "paper-dyck" in message and "allow_unstable" in message
    assert "\n" not in message
    # the same method at a stable gamma, on purpose with allow_unstable, or without gossip: fine
    RunConfig(method="ccl", topology="paper-dyck", n_agents=32, gamma=0.9)
    RunConfig(method="qgm", topology="paper-dyck", n_agents=32, allow_unstable=True)
    RunConfig(method="ccl-relay", topology="paper-dyck", n_agents=32, gamma=1.0)
    RunConfig(method="qgm", qgm_variant="lin", topology="paper-dyck", n_agents=32)
    with pytest.raises(ConfigError, match="below 0.8763 for ccl"):
        RunConfig(method="ccl", topology="torus", n_agents=32, gamma=0.9)


def test_train_refuses_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "dataset=synthetic", "method=qgm",
                 "topology=torus", "n_agents=16", "gamma=0.9", "tracking=false"])
    assert code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: gamma: invalid value 0.9; allowed: below 0.8763")
    assert not out.exists()


def test_family_with_an_unstable_topology_entry_is_refused(tmp_path):
    family = tmp_path / "fam.yaml"
    family.write_text(
        "run: {dataset: synthetic, epochs: 1}\n"
        "grid:\n  alpha: [0.1]\n  methods: [dsgdm-n, ccl]\n  seeds: [0]\n"
        "  topologies:\n    - {topology: ring, n_agents: 8}\n"
        "    - {topology: torus, n_agents: 16, gamma: 0.9}\n"
    )
    with pytest.raises(UserError, match=r"fam\.yaml: grid\.topologies\[1\]: gamma: invalid "
                                        r"value 0\.9; allowed: below 0\.8763 for ccl"):
        load_family(family)


def test_every_shipped_family_is_stable():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("config/*.yaml")):
        load_family(path)  # raises on any unstable run


def test_topology_command_prints_facts_and_stable_gammas(capsys):
    assert main(["topology", "paper-dyck"]) == 0
    out = capsys.readouterr().out
    assert "paper-dyck: 32 agents, degree 3, diameter 6, 48 edges" in out
    assert "below 0.9348 (radius 1.192)" in out
    assert main(["topology", "chain", "n_agents=8"]) == 0
    assert "n/a (irregular graph)" in capsys.readouterr().out
    assert main(["topology", "ring", "n_agent=8"]) == 2
    assert "did you mean 'n_agents'" in capsys.readouterr().err


def test_a_single_agent_has_no_mode_to_diverge():
    assert largest_stable_gamma(_form("qgm-aketi"), mixing_spectrum("full", 1), 0.9) == math.inf
