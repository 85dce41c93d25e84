"""QG-DSGDm-N, quasi-global momentum, in its two published variants (METHOD.md section 3.2).

Local Nesterov momentum on non-IID shards points each agent towards its own optimum; QGM makes
the buffer track the *global* direction by feeding it the model displacement that gossip caused.

* ``aketi`` (default, behind the CCL paper's numbers): communicate-then-compute, as DSGDm-N, with
  the buffer corrected by the gossip displacement ``(x_before - x_after) / eta_{t-1}``.
* ``lin`` (Lin et al., ICML 2021): adapt-then-combine with a separate slow buffer ``mhat``
  (kept in ``self.momentum``) averaged with ``mu = 0.1``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Algorithm, check_choice, nesterov_step

QGM_VARIANTS: tuple[str, ...] = ("aketi", "lin")
LIN_MU = 0.1  # Lin et al.'s averaging rate of the quasi-global buffer


@dataclass(frozen=True)
class QGMOptions:
    qgm_variant: str = "aketi"

    def __post_init__(self) -> None:
        check_choice("qgm_variant", self.qgm_variant, QGM_VARIANTS)


class QGM(Algorithm):
    name = "qgm"
    Options = QGMOptions

    @property
    def variant(self) -> str:
        return self.options.qgm_variant

    def before_gradients(self) -> None:
        if self.variant != "aketi":
            return  # `lin` gossips after the local step
        state = self.state
        state.gossip(state.params)
        # Skip at the first iteration (no eta_{t-1}) and when eta_{t-1} = 0 (a division by zero
        # that a zero learning rate, e.g. a consensus-only check, would otherwise cause).
        if state.iteration > 0 and state.prev_lr != 0:
            # m += (x_before_gossip - x_after_gossip) / eta_{t-1}; pre_params is x_before_gossip
            self.momentum.add_(state.pre_params - state.params, alpha=1.0 / state.prev_lr)

    def apply_gradients(self) -> None:
        if self.variant == "aketi":
            nesterov_step(self.state, self.momentum, self.state.lr)
        else:
            self._lin_step()

    def _lin_step(self) -> None:
        """``mtilde = b mhat + g; x_half = x - eta (g + b mtilde); x = W x_half; mhat <- ...``."""
        state = self.state
        x, g, beta, lr = state.params, state.grads, state.momentum_factor, state.lr
        start = state.pre_params  # x_i at the start of the iteration (nothing moved it yet)
        state.add_weight_decay(g, x)
        mtilde = self.momentum * beta + g
        x.add_(g, alpha=-lr).add_(mtilde, alpha=-lr * beta)
        state.gossip(x)
        if lr != 0:  # the displacement per unit step is undefined at a zero learning rate
            self.momentum.mul_(1 - LIN_MU).add_(start - x, alpha=LIN_MU / lr)
