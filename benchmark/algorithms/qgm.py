"""QG-DSGDm-N, quasi-global momentum, in its two published variants (METHOD.md section 3.2).

Local Nesterov momentum on non-IID shards points each agent towards its own optimum; QGM makes
the buffer track the *global* direction by feeding it the model displacement that gossip caused.

* ``aketi`` (default, behind the CCL paper's numbers): communicate-then-compute, as DSGDm-N, with
  the buffer corrected by the gossip displacement ``(x_before - x_after) / eta_{t-1}``.
* ``lin`` (Lin et al., ICML 2021): adapt-then-combine with a separate slow buffer ``mhat``
  (kept in ``self.momentum``) averaged with ``mu = 0.1``.

Their zero-gradient iterations per graph mode (``u = eta m``, ``a = gamma (1 - lambda)``; the
limits are Jury's conditions on each 2x2 block, METHOD.md section 2.1):

* aketi ``[[1 - a (1 + beta^2), -beta^2], [beta a, beta]]``: the gossip displacement fed into
  the buffer narrows the stable range to ``a < 2 (1 + beta) / (1 + beta + beta^2)`` (1.40 at
  beta 0.9);
* lin ``[[1 - a, -(1 - a) beta^2], [mu a, 1 - mu + mu (1 - a) beta^2]]``: stable for
  ``a < (2 (2 - mu) + 2 mu beta^2) / (2 - mu + 2 mu beta^2)`` (1.92 at beta 0.9, mu 0.1).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from pydantic import Field

from .analysis import Analysis, ClosedForm, Matrix
from .base import MomentumAlgorithm, Options, nesterov_step
from .registry import register

QGMVariant = Literal["aketi", "lin"]
QGM_VARIANTS: tuple[str, ...] = get_args(QGMVariant)
LIN_MU = 0.1  # Lin et al.'s averaging rate of the quasi-global buffer


class QGMOptions(Options):
    qgm_variant: QGMVariant = Field(
        "aketi", description="aketi: buffer corrected by the gossip displacement / eta_{t-1} "
        "(the CCL paper's numbers); lin: Lin et al.'s adapt-then-combine, slow buffer mu = 0.1")


def _aketi(a: float, beta: float) -> Matrix:
    return np.array([[1 - a * (1 + beta**2), -(beta**2)], [beta * a, beta]])


def _lin(a: float, beta: float) -> Matrix:
    mu = LIN_MU
    return np.array([[1 - a, -(1 - a) * beta**2], [mu * a, 1 - mu + mu * (1 - a) * beta**2]])


AKETI = ClosedForm("qgm-aketi", _aketi, lambda beta: 2 * (1 + beta) / (1 + beta + beta**2))
LIN = ClosedForm("qgm-lin", _lin, lambda beta: (2 * (2 - LIN_MU) + 2 * LIN_MU * beta**2)
                 / (2 - LIN_MU + 2 * LIN_MU * beta**2))


@register
class QGM(MomentumAlgorithm[QGMOptions]):
    name = "qgm"
    summary = "QG-DSGDm-N (quasi-global momentum)"
    options_type = QGMOptions

    @classmethod
    def stability(cls, options: QGMOptions) -> Analysis:
        return AKETI if options.qgm_variant == "aketi" else LIN

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
