"""DSGDm-N: gossip, then a local Nesterov-momentum step (METHOD.md section 3.1)."""

from __future__ import annotations

import numpy as np

from .analysis import Analysis, ClosedForm, Matrix
from .base import MomentumAlgorithm, Options, nesterov_step
from .registry import register


class DSGDmOptions(Options):
    """DSGDm-N has no options of its own."""


def _mode_matrix(a: float, beta: float) -> Matrix:
    """``x <- (1 - a) x - beta^2 u``, ``u <- beta u`` (``u = eta m``): stable for ``a < 2``."""
    return np.array([[1 - a, -(beta**2)], [0.0, beta]])


MODES = ClosedForm("dsgdm-n", _mode_matrix, lambda beta: 2.0)


@register
class DSGDm(MomentumAlgorithm[DSGDmOptions]):
    name = "dsgdm-n"
    summary = "DSGD with local Nesterov momentum"
    options_type = DSGDmOptions

    @classmethod
    def stability(cls, options: DSGDmOptions) -> Analysis:
        return MODES

    def before_gradients(self) -> None:
        self.state.gossip(self.state.params)

    def apply_gradients(self) -> None:
        nesterov_step(self.state, self.momentum, self.state.lr)

