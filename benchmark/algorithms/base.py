"""What every base optimiser shares, so that each algorithm module stays one screen long.

An algorithm owns the communication and the update of one synchronous iteration; the
:class:`~benchmark.swarm.Swarm` owns the loop (METHOD.md section 4.1)::

    snapshot X^-  ->  algorithm.before_gradients()  ->  forward/backward (+ CCL)  ->
    algorithm.apply_gradients()

An algorithm is built from its own typed options (a frozen dataclass whose field names are the
``RunConfig`` keys it reads) and acts on a :class:`~benchmark.swarm_state.SwarmState`, never on
the ``Swarm``. All state is whole-swarm tensors of shape ``[n, P]``: no Python loop over agents
or parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..swarm_state import SwarmState
from ..topology import Topology

BYTES_PER_FLOAT = 4


def check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(field, value, allowed)


def option_names(options_type: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(options_type))


def build_options(options_type: type, values: Mapping[str, Any]):
    """Typed options from ``name: value`` pairs; a name the type lacks is an error naming it."""
    known = option_names(options_type)
    for key in values:
        if key not in known:
            raise ConfigError(key, "(unknown option)", list(known) or "no options")
    return options_type(**values)


@dataclass(frozen=True)
class NoOptions:
    """An algorithm without options."""


class Algorithm:
    """Base optimiser interface; subclasses register themselves in ``ALGORITHMS`` by ``name``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    # what an agent receives from a neighbour is that neighbour's model (gossip); RelaySGD's
    # messages are relayed sums, so CCL needs an extra model per neighbour there (METHOD.md 4)
    sends_models: ClassVar[bool] = True

    def __init__(self, state: SwarmState, options: Any = None) -> None:
        self.state = state
        self.options = options if options is not None else self.Options()
        self.momentum = torch.zeros_like(state.params)
        self._neighbors = self.neighbors_of(state.topology, self.options)

    @classmethod
    def neighbors_of(cls, topology: Topology, options: Any) -> list[list[int]]:
        """Whose models agent i receives (and computes cross-features with): graph neighbours.

        A class method: the swarm's halo must hold these rows before the algorithm is built."""
        return [topology.neighbors(i) for i in range(topology.n)]

    # -- one iteration ------------------------------------------------------------------------
    def before_gradients(self) -> None:
        """Communication that happens before the local gradient (communicate-then-compute)."""

    def apply_gradients(self) -> None:
        """Weight decay, momentum, parameter update and any communication after the step."""
        raise NotImplementedError

    # -- what CCL and the accounting need --------------------------------------------------------
    def cross_feature_neighbors(self) -> list[list[int]]:
        return self._neighbors

    def bytes_sent(self) -> dict[str, float]:
        """Mean bytes one agent sends per iteration, by kind: one model per neighbour."""
        degrees = [len(nb) for nb in self.cross_feature_neighbors()]
        params = self.state.params.shape[1] * BYTES_PER_FLOAT * sum(degrees) / len(degrees)
        return {"parameters": params}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"momentum": self.momentum}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            getattr(self, key).copy_(value)

    # -- a sharded run (benchmark.distributed): each rank holds the rows of its agents ----------
    def gather_state(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The whole swarm's state from every rank's ``state_dict`` (rank order): rows stacked."""
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def local_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's part of a whole-swarm state: its agents' rows."""
        rows = slice(self.state.comm.lo, self.state.comm.hi)
        return {key: value[rows] for key, value in state.items()}


def nesterov_step(state: SwarmState, momentum: torch.Tensor, lr: float) -> None:
    """``g += wd x;  m = beta m + g;  x -= lr (g + beta m)`` for all agents at once (METHOD 3.1)."""
    x, g, beta = state.params, state.grads, state.momentum_factor
    state.add_weight_decay(g, x)
    momentum.mul_(beta).add_(g)
    x.add_(g, alpha=-lr).add_(momentum, alpha=-lr * beta)
