"""DSGDm-N: gossip, then a local Nesterov-momentum step (METHOD.md section 3.1)."""

from __future__ import annotations

from .base import Algorithm, nesterov_step


class DSGDm(Algorithm):
    name = "dsgdm-n"

    def before_gradients(self) -> None:
        self.state.gossip(self.state.params)

    def apply_gradients(self) -> None:
        nesterov_step(self.state, self.momentum, self.state.lr)
