"""QG-DSGDm-N, quasi-global momentum, in its two published variants (METHOD.md section 3.2).

Local Nesterov momentum on non-IID shards points each agent towards its own optimum; QGM makes
the buffer track the *global* direction by feeding it the model displacement that gossip caused.

* ``aketi`` (default, behind the CCL paper's numbers): communicate-then-compute, as DSGDm-N, with
  the buffer corrected by the gossip displacement ``(x_before - x_after) / eta_{t-1}``.
* ``lin`` (Lin et al., ICML 2021): adapt-then-combine with a separate slow buffer ``mhat``
  (kept in ``self.momentum``) averaged with ``mu = 0.1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import Algorithm, nesterov_step

if TYPE_CHECKING:
    from ..swarm import Swarm

QGM_VARIANTS: tuple[str, ...] = ("aketi", "lin")
LIN_MU = 0.1  # Lin et al.'s averaging rate of the quasi-global buffer


class QGM(Algorithm):
    name = "qgm"

    def __init__(self, swarm: Swarm, qgm_variant: str = "aketi", **_: object) -> None:
        if qgm_variant not in QGM_VARIANTS:
            raise ConfigError("qgm_variant", qgm_variant, QGM_VARIANTS)
        super().__init__(swarm)
        self.variant = qgm_variant

    def before_gradients(self) -> None:
        if self.variant != "aketi":
            return  # `lin` gossips after the local step
        swarm = self.swarm
        swarm.gossip(swarm.params)
        # Skip at the first iteration (no eta_{t-1}) and when eta_{t-1} = 0 (a division by zero
        # that a zero learning rate, e.g. a consensus-only check, would otherwise cause).
        if swarm.iteration > 0 and swarm.prev_lr != 0:
            # m += (x_before_gossip - x_after_gossip) / eta_{t-1}; pre_params is x_before_gossip
            self.momentum.add_(swarm.pre_params - swarm.params, alpha=1.0 / swarm.prev_lr)

    def apply_gradients(self) -> None:
        if self.variant == "aketi":
            nesterov_step(self.swarm, self.momentum, self.swarm.lr)
        else:
            self._lin_step()

    def _lin_step(self) -> None:
        """``mtilde = b mhat + g; x_half = x - eta (g + b mtilde); x = W x_half; mhat <- ...``."""
        swarm = self.swarm
        x, g, beta, lr = swarm.params, swarm.grads, swarm.momentum_factor, swarm.lr
        start = swarm.pre_params  # x_i at the start of the iteration (nothing moved it yet)
        swarm.add_weight_decay(g, x)
        mtilde = self.momentum * beta + g
        x.add_(g, alpha=-lr).add_(mtilde, alpha=-lr * beta)
        swarm.gossip(x)
        if lr != 0:  # the displacement per unit step is undefined at a zero learning rate
            self.momentum.mul_(1 - LIN_MU).add_(start - x, alpha=LIN_MU / lr)
