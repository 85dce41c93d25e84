"""Will gossip with momentum settle? The zero-gradient iteration, one graph mode at a time.

With zero gradients (weight decay, a gradient term, off) and a constant learning rate ``eta``,
every algorithm that gossips is linear in the swarm state ``(X, U = eta * momentum)``, and every
block is a polynomial in the mixing matrix ``W``. So it splits along ``W``'s eigenvectors: a mode
with eigenvalue ``lambda`` sees the gossip step ``x <- (1 - a) x``, ``a = gamma (1 - lambda)``,
and evolves by a 2x2 matrix (``eta`` cancels; METHOD.md section 2.1):

* ``dsgdm-n``      ``[[1 - a, -beta^2], [0, beta]]``: stable for ``a < 2``;
* ``qgm`` aketi    ``[[1 - a (1 + beta^2), -beta^2], [beta a, beta]]``: the gossip displacement fed
  into the buffer narrows it to ``a < 2 (1 + beta) / (1 + beta + beta^2)`` (1.40 at beta 0.9);
* ``qgm`` lin      ``[[1 - a, -(1 - a) beta^2], [mu a, 1 - mu + mu (1 - a) beta^2]]``: stable for
  ``a < (2 (2 - mu) + 2 mu beta^2) / (2 - mu + 2 mu beta^2)`` (1.92 at beta 0.9, mu 0.1).

(The limits are Jury's conditions on each 2x2 block.) The consensus mode (``lambda = 1``) only
carries the average and is excluded; the most negative eigenvalue is the binding one, so the
largest stable gamma is ``a_limit / (1 - lambda_min)``. RelaySGD has no gossip step: no limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .algorithms.qgm import LIN_MU
from .errors import ConfigError
from .topology import MIXING_RULES, build_topology

# the iterations analysed here: algorithm (+ variant) -> the label used in messages
KINDS: tuple[str, ...] = ("dsgdm-n", "qgm-aketi", "qgm-lin")


def mode_matrix(kind: str, a: float, beta: float) -> np.ndarray:
    """The 2x2 zero-gradient iteration of one graph mode, on the state ``(x, eta * m)``."""
    if kind == "dsgdm-n":
        return np.array([[1 - a, -beta**2], [0.0, beta]])
    if kind == "qgm-aketi":
        return np.array([[1 - a * (1 + beta**2), -(beta**2)], [beta * a, beta]])
    if kind == "qgm-lin":
        mu = LIN_MU
        return np.array([[1 - a, -(1 - a) * beta**2], [mu * a, 1 - mu + mu * (1 - a) * beta**2]])
    raise ConfigError("algorithm", kind, KINDS)


def a_limit(kind: str, beta: float) -> float:
    """The mode is stable exactly for ``0 < a < a_limit`` (``a = gamma (1 - lambda) <= 2``)."""
    if kind == "dsgdm-n":
        return 2.0
    if kind == "qgm-aketi":
        return 2 * (1 + beta) / (1 + beta + beta**2)
    mu = LIN_MU
    return (2 * (2 - mu) + 2 * mu * beta**2) / (2 - mu + 2 * mu * beta**2)


@lru_cache(maxsize=256)
def mixing_spectrum(topology: str, n_agents: int, mixing: str = "uniform", *, seed: int = 0,
                    rows: int | None = None, degree: int = 3) -> tuple[float, ...]:
    """Eigenvalues of ``W`` without the consensus one, ascending (cached: grids ask repeatedly)."""
    graph = build_topology(topology, n_agents, seed=seed, rows=rows, degree=degree)
    eigenvalues = np.linalg.eigvalsh(graph.mixing_matrix(mixing))  # ascending, last is 1
    return tuple(float(v) for v in eigenvalues[:-1])


def spectral_radius(kind: str, spectrum: tuple[float, ...], gamma: float, beta: float) -> float:
    """Largest eigenvalue modulus of the whole zero-gradient iteration, consensus mode excluded."""
    return max((float(np.abs(np.linalg.eigvals(mode_matrix(kind, gamma * (1 - lam), beta))).max())
                for lam in spectrum), default=0.0)


def largest_stable_gamma(kind: str, spectrum: tuple[float, ...], beta: float) -> float:
    """The supremum of stable gammas (``inf`` for a single agent); gamma itself must be below."""
    if not spectrum:
        return math.inf
    return a_limit(kind, beta) / (1 - min(spectrum))


def kind_of(algorithm: str, qgm_variant: str = "aketi") -> str | None:
    """The iteration analysed for a base optimiser, or None when it has no gossip step."""
    if algorithm == "qgm":
        return f"qgm-{qgm_variant}"
    return algorithm if algorithm in KINDS else None


@dataclass(frozen=True)
class Verdict:
    kind: str
    radius: float
    gamma_max: float

    @property
    def stable(self) -> bool:
        return self.radius < 1


def assess(config) -> Verdict | None:
    """The verdict for a :class:`~benchmark.config.RunConfig` (None: nothing is gossiped)."""
    kind = kind_of(config.algorithm, config.qgm_variant)
    if kind is None:
        return None
    spectrum = mixing_spectrum(config.topology, config.n_agents, config.mixing,
                               seed=config.seed, rows=config.torus_rows, degree=config.degree)
    return Verdict(kind, spectral_radius(kind, spectrum, config.gamma, config.momentum),
                   largest_stable_gamma(kind, spectrum, config.momentum))


def check_stable(config) -> None:
    """Refuse a setting whose zero-gradient iteration diverges (unless ``allow_unstable``)."""
    verdict = assess(config)
    if verdict is None or verdict.stable:
        return
    below = math.floor(verdict.gamma_max * 1e4) / 1e4  # conservative: every gamma below is stable
    raise ConfigError(
        "gamma", config.gamma,
        f"below {below:g} for {config.method} ({verdict.kind.replace('-', ' ')}, momentum "
        f"{config.momentum:g}) on {config.topology}-{config.n_agents} with {config.mixing} mixing "
        f"(the gossip-momentum iteration diverges above it: spectral radius "
        f"{verdict.radius:.3f} at gamma {config.gamma:g})",
        hint="set allow_unstable: true to run it anyway",
    )


def describe(topology: str, n_agents: int, *, momentum: float = 0.9, seed: int = 0,
             rows: int | None = None, degree: int = 3) -> str:
    """``python -m benchmark topology``: a graph's facts and its stable gamma per algorithm."""
    graph = build_topology(topology, n_agents, seed=seed, rows=rows, degree=degree)
    degrees = sorted({int(d) for d in graph.degrees})
    lines = [f"{topology}: {graph.n} agents, degree {'/'.join(map(str, degrees))}, "
             f"diameter {graph.diameter}, {graph.graph.number_of_edges()} edges",
             f"{'mixing':<12}{'spectral gap':>14}{'lambda_min':>12}"]
    spectra = {}
    for rule in MIXING_RULES:
        try:
            spectra[rule] = mixing_spectrum(topology, n_agents, rule, seed=seed, rows=rows,
                                            degree=degree)
        except ConfigError:  # uniform mixing needs a regular graph
            lines.append(f"{rule:<12}{'n/a (irregular graph)':>26}")
            continue
        lam_min = min(spectra[rule], default=0.0)
        lines.append(f"{rule:<12}{graph.spectral_gap(rule):>14.4f}{lam_min:>12.4f}")
    lines.append(f"stable gamma (zero-gradient iteration, momentum {momentum:g}; "
                 "radius = spectral radius at gamma 1):")
    lines.append(f"{'algorithm':<12}" + "".join(f"{rule:<32}" for rule in spectra))
    for kind in KINDS:
        cells = []
        for spectrum in spectra.values():
            limit = largest_stable_gamma(kind, spectrum, momentum)
            stable = "any in (0, 1]" if limit > 1 else f"below {math.floor(limit * 1e4) / 1e4:g}"
            cells.append(f"{stable} (radius {spectral_radius(kind, spectrum, 1.0, momentum):.3f})")
        lines.append(f"{kind:<12}" + "".join(f"{c:<32}" for c in cells))
    lines.append(f"{'relaysgd':<12}any (no gossip step)")
    return "\n".join(line.rstrip() for line in lines)
