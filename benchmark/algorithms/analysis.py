"""What an algorithm declares about its stability, for the guard of :mod:`benchmark.stability`.

With zero gradients (weight decay off) and a constant learning rate, an algorithm that gossips
is a linear map of the swarm state. Every registered algorithm says, through
:meth:`~benchmark.algorithms.base.Algorithm.stability`, which of these holds for given options:

* :class:`ClosedForm`: the map splits along ``W``'s eigenvectors into one 2x2 matrix per graph
  mode (``a = gamma (1 - lambda)``), with a known largest stable ``a`` (METHOD.md section 2.1);
* :class:`NoGossip`: nothing is mixed with ``W`` (RelaySGD's relayed sums): no limit;
* :class:`Measured`: no closed form; the guard builds the algorithm's zero-gradient iteration
  matrix on the run's graph and measures its spectral radius;
* :class:`Unanalysed`: nothing is known; a run is refused unless ``allow_unstable`` is set.

There is no fifth case: an algorithm that declares none of them is refused at registration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ClosedForm:
    """``mode_matrix(a, beta)``: the 2x2 zero-gradient iteration of one graph mode on the state
    ``(x, eta * momentum)``; ``a_limit(beta)``: the mode is stable exactly for
    ``0 < a < a_limit``."""

    label: str
    mode_matrix: Callable[[float, float], Matrix]
    a_limit: Callable[[float], float]

    @property
    def summary(self) -> str:
        return "closed form (2x2 per graph mode)"


@dataclass(frozen=True)
class NoGossip:
    label: str

    @property
    def summary(self) -> str:
        return "no gossip step: no limit"


@dataclass(frozen=True)
class Measured:
    """Checked by measuring: an eigen-decomposition of a ``(k n) x (k n)`` matrix (``k - 1``
    state tensors of ``n`` rows) per distinct setting, cheap up to a few hundred agents."""

    label: str

    @property
    def summary(self) -> str:
        return "no closed form: spectral radius measured on the run's graph"


@dataclass(frozen=True)
class Unanalysed:
    label: str

    @property
    def summary(self) -> str:
        return "not analysed: runs only with allow_unstable"


Analysis = ClosedForm | NoGossip | Measured | Unanalysed
ANALYSES: tuple[type, ...] = (ClosedForm, NoGossip, Measured, Unanalysed)
