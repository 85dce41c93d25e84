"""What every base optimiser shares, so that each algorithm module stays one screen long.

An algorithm is one class, registered by name (:func:`~benchmark.algorithms.registry.register`),
that carries everything the suite needs to know about it:

* ``name`` and a one-line ``summary`` (the CLI's help);
* ``options_type``: its typed :class:`Options`, whose field names are run options (a RunConfig
  key, ``key=value`` on the command line), each with its default, its range or choices, a
  one-line description and whether it changes results;
* ``stability(options)``: what the stability guard can know about it (:mod:`.analysis`);
* ``state_shapes(topology, n_params, options)``: the tensors it adds to the swarm state and
  the checkpoint (its ``state_dict`` of the whole swarm; the memory estimate counts them);
* ``bytes_per_iteration(topology, n_params, options)``: what one agent sends per iteration;
* ``neighbors_of(topology, options)``: whose models an agent receives (CCL's cross-features);
* one synchronous iteration, in two halves around the forward/backward (METHOD.md 4.1)::

      snapshot X^-  ->  before_gradients()  ->  forward/backward (+ CCL)  ->  apply_gradients()

An algorithm acts on a :class:`~benchmark.swarm_state.SwarmState`, never on the ``Swarm``, and
never reads a ``RunConfig``. All state is whole-swarm tensors: no Python loop over agents or
parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar, Generic, Self, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import no_bool_for_numbers, validation_error
from ..swarm_state import SwarmState
from ..topology import Topology
from .analysis import Analysis

BYTES_PER_FLOAT = 4
# what a run option of an algorithm may hold (YAML scalars)
OptionValue = str | int | float | bool | None
StateShapes = dict[str, tuple[int, ...]]


class Options(BaseModel):
    """Typed options of an algorithm or of the CCL loss: frozen, unknown names refused.

    Declare each field with its default, its range (``Field(ge=..., le=...)``) or choices
    (``Literal``) and a one-line ``description``; ``json_schema_extra=MACHINE``
    (:mod:`benchmark.schema`) marks one that changes no result. A bad value is a
    :class:`~benchmark.errors.ConfigError` naming the field, however the options are built.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    _numbers = field_validator("*", mode="before")(no_bool_for_numbers)

    def __init__(self, **values: object) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise validation_error(err, type(self)) from None

    @classmethod
    def parse(cls, values: Mapping[str, object]) -> Self:
        """The options from ``name: value`` pairs (a name the type lacks is refused)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            raise validation_error(err, cls) from None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)


Opts = TypeVar("Opts", bound=Options)


class Algorithm(ABC, Generic[Opts]):
    """A base optimiser (module doc); a subclass declares the class attributes and methods
    marked abstract here, or registration refuses it."""

    name: ClassVar[str]
    summary: ClassVar[str]
    options_type: ClassVar[type[Options]]
    # what an agent receives from a neighbour is that neighbour's model (gossip); RelaySGD's
    # messages are relayed sums, so CCL needs an extra model per neighbour there (METHOD.md 4)
    sends_models: ClassVar[bool] = True

    def __init__(self, state: SwarmState, options: Opts) -> None:
        self.state = state
        self.options = options
        self._neighbors = self.neighbors_of(state.topology, options)

    # -- what the suite knows before building it ----------------------------------------------
    @classmethod
    @abstractmethod
    def stability(cls, options: Opts) -> Analysis:
        """What the stability guard can know about the zero-gradient iteration (.analysis)."""

    @classmethod
    @abstractmethod
    def state_shapes(cls, topology: Topology, n_params: int, options: Opts) -> StateShapes:
        """Shape of every tensor of the whole swarm's ``state_dict`` (what a checkpoint holds)."""

    @classmethod
    def neighbors_of(cls, topology: Topology, options: Opts) -> list[list[int]]:
        """Whose models agent i receives (and computes cross-features with): graph neighbours.

        A class method: the swarm's halo must hold these rows before the algorithm is built."""
        return [topology.neighbors(i) for i in range(topology.n)]

    @classmethod
    def bytes_per_iteration(cls, topology: Topology, n_params: int, options: Opts
                            ) -> dict[str, float]:
        """Mean bytes one agent sends per iteration, by kind: one model per neighbour."""
        degrees = [len(nb) for nb in cls.neighbors_of(topology, options)]
        return {"parameters": n_params * BYTES_PER_FLOAT * sum(degrees) / len(degrees)}

    # -- one iteration ------------------------------------------------------------------------
    def before_gradients(self) -> None:
        """Communication that happens before the local gradient (communicate-then-compute)."""

    @abstractmethod
    def apply_gradients(self) -> None:
        """Weight decay, momentum, parameter update and any communication after the step."""

    # -- what CCL and the accounting need --------------------------------------------------------
    def cross_feature_neighbors(self) -> list[list[int]]:
        return self._neighbors

    def bytes_sent(self) -> dict[str, float]:
        return self.bytes_per_iteration(self.state.topology, self.state.params.shape[1],
                                        self.options)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The live state tensors, by name (this rank's rows in a sharded run)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        live = self.state_dict()
        for key, value in state.items():
            live[key].copy_(value)

    # -- a sharded run (benchmark.distributed): each rank holds the rows of its agents ----------
    def gather_state(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The whole swarm's state from every rank's ``state_dict`` (rank order): rows stacked."""
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def local_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's part of a whole-swarm state: its agents' rows."""
        rows = slice(self.state.comm.lo, self.state.comm.hi)
        return {key: value[rows] for key, value in state.items()}


class MomentumAlgorithm(Algorithm[Opts]):
    """An algorithm with one local momentum buffer ``[n, P]`` (DSGDm-N, QGM, RelaySGD)."""

    def __init__(self, state: SwarmState, options: Opts) -> None:
        super().__init__(state, options)
        self.momentum = torch.zeros_like(state.params)

    @classmethod
    def state_shapes(cls, topology: Topology, n_params: int, options: Opts) -> StateShapes:
        return {"momentum": (topology.n, n_params)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"momentum": self.momentum}


def nesterov_step(state: SwarmState, momentum: torch.Tensor, lr: float) -> None:
    """``g += wd x;  m = beta m + g;  x -= lr (g + beta m)`` for all agents at once (METHOD 3.1)."""
    x, g, beta = state.params, state.grads, state.momentum_factor
    state.add_weight_decay(g, x)
    momentum.mul_(beta).add_(g)
    x.add_(g, alpha=-lr).add_(momentum, alpha=-lr * beta)
