"""What every base optimiser shares, so that each algorithm module stays one screen long.

An algorithm owns the communication and the update of one synchronous iteration; the
:class:`~benchmark.swarm.Swarm` owns the loop (METHOD.md section 4.1)::

    snapshot X^-  ->  algorithm.before_gradients()  ->  forward/backward (+ CCL)  ->
    algorithm.apply_gradients()

All state is whole-swarm tensors of shape ``[n, P]``: no Python loop over agents or parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from ..swarm import Swarm

BYTES_PER_FLOAT = 4


class Algorithm:
    """Base optimiser interface; subclasses register themselves in ``ALGORITHMS`` by ``name``."""

    name: ClassVar[str]

    def __init__(self, swarm: Swarm, **options: object) -> None:
        self.swarm = swarm
        self.momentum = torch.zeros_like(swarm.params)

    # -- one iteration ------------------------------------------------------------------------
    def before_gradients(self) -> None:
        """Communication that happens before the local gradient (communicate-then-compute)."""

    def apply_gradients(self) -> None:
        """Weight decay, momentum, parameter update and any communication after the step."""
        raise NotImplementedError

    # -- what CCL and the accounting need --------------------------------------------------------
    def cross_feature_neighbors(self) -> list[list[int]]:
        """Whose models agent i receives (and computes cross-features with): graph neighbours."""
        return [self.swarm.topology.neighbors(i) for i in range(self.swarm.n)]

    def bytes_sent(self) -> dict[str, float]:
        """Mean bytes one agent sends per iteration, by kind: one model per neighbour."""
        degrees = [len(nb) for nb in self.cross_feature_neighbors()]
        params = self.swarm.params.shape[1] * BYTES_PER_FLOAT * sum(degrees) / len(degrees)
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
        rows = slice(self.swarm.comm.lo, self.swarm.comm.hi)
        return {key: value[rows] for key, value in state.items()}


def nesterov_step(swarm: Swarm, momentum: torch.Tensor, lr: float) -> None:
    """``g += wd x;  m = beta m + g;  x -= lr (g + beta m)`` for all agents at once (METHOD 3.1)."""
    x, g, beta = swarm.params, swarm.grads, swarm.momentum_factor
    swarm.add_weight_decay(g, x)
    momentum.mul_(beta).add_(g)
    x.add_(g, alpha=-lr).add_(momentum, alpha=-lr * beta)
