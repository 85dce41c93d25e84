"""Will gossip with momentum settle? The zero-gradient iteration, as each algorithm declares it.

With zero gradients (weight decay, a gradient term, off) and a constant learning rate ``eta``,
every algorithm that gossips is linear in the swarm state. What is known about that map is
declared by the algorithm itself (``Algorithm.stability``, :mod:`benchmark.algorithms.analysis`):

* a **closed form** (DSGDm-N, QGM's two variants: ``dsgdm.py``, ``qgm.py``): every block of the
  map is a polynomial in the mixing matrix ``W``, so it splits along ``W``'s eigenvectors; a mode
  with eigenvalue ``lambda`` sees the gossip step ``x <- (1 - a) x``, ``a = gamma (1 - lambda)``,
  and evolves by a 2x2 matrix on ``(x, eta * momentum)`` (``eta`` cancels; METHOD.md section
  2.1). The consensus mode (``lambda = 1``) only carries the average and is excluded; the most
  negative eigenvalue is the binding one, so the largest stable gamma is
  ``a_limit / (1 - lambda_min)``;
* **no gossip step** (RelaySGD): no limit;
* **measured**: no closed form, so the map itself is built on the run's graph from one step of
  the algorithm on a stand-in swarm state whose columns start at the basis vectors (every
  column of the ``[n, P]`` state is an independent copy of the iteration), and its spectral
  radius outside the consensus directions is the verdict;
* **not analysed**: no verdict; the run needs ``allow_unstable``.

:class:`~benchmark.config.RunConfig` asks for the verdict of its run (:func:`assess`) and refuses
an unstable one; :func:`describe` is the ``topology`` command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from .algorithms import (
    Algorithm,
    Analysis,
    ClosedForm,
    Measured,
    NoGossip,
    Options,
    Unanalysed,
    registered,
    variants,
)
from .errors import ConfigError
from .swarm_state import SwarmState
from .topology import MIXING_RULES, Topology

AlgorithmClass = type[Algorithm[Options]]


def spectral_radius(form: ClosedForm, spectrum: tuple[float, ...], gamma: float,
                    beta: float) -> float:
    """Largest eigenvalue modulus of the whole zero-gradient iteration, consensus mode excluded."""
    return max((float(np.abs(np.linalg.eigvals(form.mode_matrix(gamma * (1 - lam), beta))).max())
                for lam in spectrum), default=0.0)


def largest_stable_gamma(form: ClosedForm, spectrum: tuple[float, ...], beta: float) -> float:
    """The supremum of stable gammas (``inf`` for a single agent); gamma itself must be below."""
    if not spectrum:
        return math.inf
    return form.a_limit(beta) / (1 - min(spectrum))


@dataclass(frozen=True)
class Verdict:
    label: str
    radius: float | None  # None: not analysed
    gamma_max: float | None = None  # the closed form's limit; None without one

    @property
    def stable(self) -> bool:
        return self.radius is not None and self.radius < 1


def assess(algorithm: AlgorithmClass, options: Options, topology: Topology, *, mixing: str,
           gamma: float, momentum: float, lr: float) -> Verdict | None:
    """The verdict of one run's setting (None: nothing is gossiped, nothing to check)."""
    analysis = algorithm.stability(options)
    if isinstance(analysis, NoGossip):
        return None
    if isinstance(analysis, Unanalysed):
        return Verdict(analysis.label, None)
    if isinstance(analysis, ClosedForm):
        spectrum = topology.mixing_spectrum(mixing)
        return Verdict(analysis.label, spectral_radius(analysis, spectrum, gamma, momentum),
                       largest_stable_gamma(analysis, spectrum, momentum))
    if isinstance(analysis, Measured):
        return Verdict(analysis.label, measured_radius(algorithm, options, topology, mixing=mixing,
                                                       gamma=gamma, momentum=momentum, lr=lr))
    raise TypeError(f"{algorithm.name}.stability returned {analysis!r}")  # register refuses it


class _Parameters(nn.Module):
    """A stand-in model of ``size`` parameters (only its parameter vector is ever used)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(size))


@lru_cache(maxsize=64)
def measured_radius(algorithm: AlgorithmClass, options: Options, topology: Topology, *,
                    mixing: str, gamma: float, momentum: float, lr: float) -> float:
    """Spectral radius of ``algorithm``'s zero-gradient iteration on ``topology``, consensus
    directions excluded, measured on the algorithm itself (module doc).

    The state is the parameters and every ``[n, P]`` tensor the algorithm declares
    (``state_shapes``): ``k`` blocks of ``n`` rows, so ``P = k n`` columns carry the ``k n`` basis
    vectors through one step at once. A zero learning rate is measured at 1 instead (every
    built-in iteration is free of ``eta``; a zero rate would skip its ``eta``-scaled terms)."""
    n = topology.n
    if n < 2:
        return 0.0  # a single agent has no mode besides the consensus one
    shapes = algorithm.state_shapes(topology, 1, options)
    rows = [key for key, shape in shapes.items() if shape == (n, 1)]
    if len(rows) != len(shapes):
        odd = next(key for key, shape in shapes.items() if shape != (n, 1))
        raise ConfigError("allow_unstable", False, f"true to run {algorithm.name}: its state "
                          f"'{odd}' is not one row per agent, so its iteration cannot be measured")
    size = (1 + len(rows)) * n
    state = SwarmState(_Parameters(size), topology, algorithm.neighbors_of(topology, options),
                       lr=lr or 1.0, momentum=momentum, weight_decay=0.0, gamma=gamma,
                       device="cpu", mixing=mixing)
    instance = algorithm(state, options)

    def step() -> None:  # Swarm.step with every gradient 0
        state.pre_params.copy_(state.params)
        instance.before_gradients()
        state.grads.zero_()
        instance.apply_gradients()
        state.prev_lr = state.lr
        state.iteration += 1

    step()  # past the first iteration (QGM skips its correction there); zeros stay zeros
    basis = torch.eye(size)
    blocks = [state.params, *(instance.state_dict()[key] for key in rows)]
    for b, block in enumerate(blocks):
        block.copy_(basis[b * n : (b + 1) * n])
    step()
    images = torch.cat([state.params, *(instance.state_dict()[key] for key in rows)])
    matrix = images.double().numpy()  # column j: the image of basis vector j
    # orthonormal basis of each block's complement of the consensus direction (all ones)
    q = np.linalg.qr(np.hstack([np.ones((n, 1)), np.eye(n)[:, : n - 1]]))[0][:, 1:]
    outside = np.kron(np.eye(len(blocks)), q)
    return float(np.abs(np.linalg.eigvals(outside.T @ matrix @ outside)).max())


def analyses() -> list[tuple[AlgorithmClass, Options, Analysis]]:
    """Every registered algorithm's distinct analyses over the choices of its options."""
    found: list[tuple[AlgorithmClass, Options, Analysis]] = []
    seen: set[tuple[str, str]] = set()
    for algorithm in registered().values():
        for options in variants(algorithm.options_type):
            analysis = algorithm.stability(options)
            if (algorithm.name, analysis.label) not in seen:
                seen.add((algorithm.name, analysis.label))
                found.append((algorithm, options, analysis))
    return found


def describe(graph: Topology, momentum: float = 0.9) -> str:
    """``python -m benchmark topology``: a graph's facts and its stable gamma per algorithm."""
    degrees = sorted({int(d) for d in graph.degrees})
    lines = [f"{graph.name}: {graph.n} agents, degree {'/'.join(map(str, degrees))}, "
             f"diameter {graph.diameter}, {graph.graph.number_of_edges()} edges",
             f"{'mixing':<12}{'spectral gap':>14}{'lambda_min':>12}"]
    spectra = {}
    for rule in MIXING_RULES:
        try:
            spectra[rule] = graph.mixing_spectrum(rule)
        except ConfigError:  # uniform mixing needs a regular graph
            lines.append(f"{rule:<12}{'n/a (irregular graph)':>26}")
            continue
        lam_min = min(spectra[rule], default=0.0)
        lines.append(f"{rule:<12}{graph.spectral_gap(rule):>14.4f}{lam_min:>12.4f}")
    lines.append(f"stable gamma (zero-gradient iteration, momentum {momentum:g}; "
                 "radius = spectral radius at gamma 1):")
    lines.append(f"{'algorithm':<12}" + "".join(f"{rule:<32}" for rule in spectra))
    for _, _, analysis in analyses():
        if not isinstance(analysis, ClosedForm):
            lines.append(f"{analysis.label:<12}{analysis.summary}")
            continue
        cells = []
        for spectrum in spectra.values():
            limit = largest_stable_gamma(analysis, spectrum, momentum)
            stable = "any in (0, 1]" if limit > 1 else f"below {math.floor(limit * 1e4) / 1e4:g}"
            radius = spectral_radius(analysis, spectrum, 1.0, momentum)
            cells.append(f"{stable} (radius {radius:.3f})")
        lines.append(f"{analysis.label:<12}" + "".join(f"{c:<32}" for c in cells))
    return "\n".join(line.rstrip() for line in lines)
