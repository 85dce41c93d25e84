"""The simulator: every agent of a run in one process, as rows of stacked tensors.

All agents' trainable parameters live in one tensor ``params`` of shape ``[n, P]`` (row i is
``parameters_to_vector`` of agent i's model, in ``model.parameters()`` order), their gradients in
``grads`` of the same shape, and every algorithm buffer likewise. Each agent's ``nn.Module`` has
parameters that are *views* into its row, and gradients that are views into its row of ``grads``
(autograd accumulates into an existing ``.grad`` in place), so the forward/backward is ordinary
PyTorch while gossip is one ``[n, n] @ [n, P]`` product and every optimiser update is a handful
of whole-tensor operations. Buffers (BatchNorm statistics) stay in each agent's module: local.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .algorithms import algorithm_class


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when a GPU is present, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bind_to_rows(model: nn.Module, params_row: torch.Tensor, grads_row: torch.Tensor) -> None:
    """Make the model's parameters (and their .grad) views into one row of the stacked tensors."""
    offset = 0
    for p in model.parameters():
        k = p.numel()
        params_row[offset : offset + k].copy_(p.detach().reshape(-1))
        p.data = params_row[offset : offset + k].view_as(p)
        p.grad = grads_row[offset : offset + k].view_as(p)
        offset += k


class Swarm:
    """All agents of one run: state, gossip, and one synchronous iteration (``step``)."""

    def __init__(
        self,
        model: nn.Module,
        topology,
        algorithm: str = "dsgdm-n",
        ccl: dict[str, float] | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        gamma: float = 1.0,
        seed: int = 0,
        device: str | torch.device | None = "auto",
        mixing: str = "uniform",
        wd_skip_norm: bool = False,
        log_cross_features: bool | None = None,
        **options: Any,
    ) -> None:
        self.device = pick_device(device)
        self.topology = topology
        self.n = topology.n
        self.seed = seed
        self.lr = self.prev_lr = float(lr)
        self.momentum_factor = float(momentum)
        self.weight_decay = float(weight_decay)
        self.gamma = float(gamma)
        self.iteration = 0

        template = copy.deepcopy(model).to(self.device)
        self._template = template
        n_params = sum(p.numel() for p in template.parameters())
        self.params = torch.empty(self.n, n_params, device=self.device)
        self.grads = torch.zeros_like(self.params)
        # every agent starts from the same parameters: one initialisation, copied (METHOD.md 1)
        self.models = [copy.deepcopy(template) for _ in range(self.n)]
        for i, agent_model in enumerate(self.models):
            bind_to_rows(agent_model, self.params[i], self.grads[i])
            agent_model.train()
        self.mixing = torch.as_tensor(
            topology.mixing_matrix(mixing), dtype=self.params.dtype, device=self.device
        )
        # wd_skip_norm: no decay on 1-d parameters (norm scales/shifts, biases)
        self._wd_mask = None
        if wd_skip_norm:
            self._wd_mask = torch.cat(
                [torch.full((p.numel(),), float(p.dim() > 1)) for p in template.parameters()]
            ).to(self.device)

        self.algorithm = algorithm_class(algorithm)(self, **options)
        self.pre_params = torch.empty_like(self.params)  # X^-: what each agent sent this iteration
        self.cross_features = None
        if log_cross_features is None:
            log_cross_features = bool(ccl)
        if ccl or log_cross_features:
            from .algorithms.ccl import CrossFeatureLoss

            weights = ccl or {"lambda_m": 0.0, "lambda_d": 0.0}
            self.cross_features = CrossFeatureLoss(self, **weights, **options)

    # -- the public contract -------------------------------------------------------------------
    @property
    def flat_params(self) -> torch.Tensor:
        """``[n, P]``; row i == parameters_to_vector(agent i's parameters)."""
        return self.params

    def set_lr(self, lr: float) -> None:
        self.lr = float(lr)

    def step(self, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
        """One synchronous iteration of every agent (METHOD.md 4.1); returns detached statistics."""
        self.pre_params.copy_(self.params)
        self.algorithm.before_gradients()
        stats = self._gradients(xs.to(self.device), ys.to(self.device))
        self.algorithm.apply_gradients()
        self.prev_lr = self.lr
        self.iteration += 1
        return stats

    def gossip(self, x: torch.Tensor) -> None:
        """``X <- X + gamma (W X - X)`` in place, every agent using the others' current rows."""
        mixed = self.mixing @ x
        if self.gamma == 1.0:
            x.copy_(mixed)
        else:
            x.lerp_(mixed, self.gamma)

    def add_weight_decay(self, grads: torch.Tensor, params: torch.Tensor) -> None:
        if self.weight_decay == 0:
            return
        if self._wd_mask is None:
            grads.add_(params, alpha=self.weight_decay)
        else:
            grads.addcmul_(params, self._wd_mask, value=self.weight_decay)

    def consensus_model(self) -> nn.Module:
        """A fresh model holding the average of all agents' parameters (and float buffers)."""
        model = copy.deepcopy(self._template)
        mean = self.params.mean(dim=0)
        torch.nn.utils.vector_to_parameters(mean, model.parameters())
        for name, buf in model.named_buffers():
            if buf.is_floating_point():
                agents = [dict(m.named_buffers())[name] for m in self.models]
                buf.copy_(torch.stack(agents).mean(dim=0))
        return model

    def consensus_distance(self) -> float:
        """``mean_i ||x_i - xbar||^2``."""
        return float((self.params - self.params.mean(dim=0)).pow(2).sum(dim=1).mean())

    def bytes_sent(self) -> dict[str, float]:
        """Mean bytes one agent sends per iteration, by kind (parameters, class statistics, ...)."""
        sent = dict(self.algorithm.bytes_sent())
        if self.cross_features is not None and self.cross_features.active:
            sent.update(self.cross_features.bytes_sent())
        return sent

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.clone(),
            "algorithm": {k: v.clone() for k, v in self.algorithm.state_dict().items()},
            "buffers": [{k: v.clone() for k, v in m.named_buffers()} for m in self.models],
            "lr": self.lr,
            "prev_lr": self.prev_lr,
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params.copy_(state["params"])
        self.algorithm.load_state_dict(state["algorithm"])
        for agent_model, buffers in zip(self.models, state["buffers"], strict=True):
            for name, buf in agent_model.named_buffers():
                buf.copy_(buffers[name])
        self.lr, self.prev_lr = state["lr"], state["prev_lr"]
        self.iteration = state["iteration"]

    # -- internals -----------------------------------------------------------------------------
    def _gradients(self, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward/backward of every agent on its own batch; gradients land in ``self.grads``."""
        self.grads.zero_()
        cross = self.cross_features
        if cross is not None:
            cross.prepare(xs, ys)  # no-grad cross-feature passes from X^- (METHOD.md 4.1 step 4)
        ce_sum = torch.zeros((), device=self.device)
        for i, agent_model in enumerate(self.models):
            features, logits = agent_model(xs[i])
            ce = F.cross_entropy(logits, ys[i])
            loss = ce if cross is None else ce + cross.loss(i, features, ys[i])
            loss.backward()
            ce_sum += ce.detach()
        stats = {"ce": ce_sum / self.n}
        if cross is not None:
            stats.update(cross.stats())
        return stats
