"""The simulator: every agent of a run in one process, as rows of stacked tensors.

A swarm is assembled from four parts, built in this order so that none sees another half-built:

* :class:`~benchmark.swarm_state.SwarmState`: all agents' parameters ``[n, P]``, gradients,
  ``X^-``, gossip and the halo of remote rows (it knows nothing of algorithms);
* the base optimiser (:mod:`benchmark.algorithms`), built from its typed options on that state;
* the CCL loss (:class:`~benchmark.algorithms.ccl.CrossFeatureLoss`), likewise, when asked for;
* the forward/backward path over agents (:mod:`benchmark.forward_backward`).

``Swarm(model, topology, algorithm="qgm", ccl={...}, lr=..., ...)`` assembles them from names
(the public contract of docs/DESIGN.md); the run's assembler (``train.build_experiment``) passes
the typed options it built from the config instead. Across processes (``distributed=true``,
:mod:`benchmark.distributed`) each rank builds the same swarm over its shard of the agents:
statistics, evaluation and checkpoints are reduced or gathered; in one process those hooks are
the identity.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .algorithms import (
    Algorithm,
    Options,
    OptionValue,
    algorithm_class,
    algorithm_for,
    option_owners,
)
from .algorithms.ccl import CCLOptions, CrossFeatureLoss
from .device import pick_device
from .distributed import Communicator
from .errors import ConfigError
from .forward_backward import AutoPass, choose
from .swarm_state import SwarmState, bind_to_rows
from .timing import PhaseTimer
from .topology import Topology

__all__ = ["Swarm", "bind_to_rows", "pick_device"]


def _read_through(name: str) -> property:
    return property(lambda self: getattr(self.state, name), doc=f"``self.state.{name}``")


class Swarm:
    """All agents of one run: state, base optimiser, CCL loss and one iteration (``step``)."""

    # the state's members, read through the swarm (train.py, tests and scripts use them)
    n, agents, device, comm, timer, topology, halo = map(
        _read_through, ("n", "agents", "device", "comm", "timer", "topology", "halo"))
    params, grads, pre_params, mixing, models, lr, iteration = map(
        _read_through, ("params", "grads", "pre_params", "mixing", "models", "lr", "iteration"))
    gossip, add_weight_decay = map(_read_through, ("gossip", "add_weight_decay"))

    def __init__(
        self,
        model: nn.Module,
        topology: Topology,
        algorithm: str | Options = "dsgdm-n",
        ccl: Mapping[str, float] | CCLOptions | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        gamma: float = 1.0,
        seed: int = 0,
        device: str | torch.device | None = "auto",
        mixing: str = "uniform",
        wd_skip_norm: bool = False,
        log_cross_features: bool | None = None,
        comm: Communicator | None = None,
        vectorize: str = "auto",
        agent_threads: int = 1,
        timer: PhaseTimer | None = None,
        clip_grad_norm: float | None = None,
        **options: OptionValue,
    ) -> None:
        """``algorithm``: a name or its typed options; ``ccl``: the weights ``{lambda_m,
        lambda_d}`` or :class:`CCLOptions`. ``options``: the named algorithm's or the CCL loss's
        other options (``qgm_variant=``, ``feature_distance=``...); any other name is an error.
        ``clip_grad_norm``: each agent's loss gradient rescaled to at most this norm before the
        update (METHOD.md 4.2, not the paper's)."""
        typed, ccl = _typed_options(algorithm, ccl, log_cross_features, options)
        method = algorithm_for(typed)
        reads = method.neighbors_of(topology, typed)  # the halo must hold these rows too
        self.state = SwarmState(
            model, topology, reads, lr=lr, momentum=momentum, weight_decay=weight_decay,
            gamma=gamma, device=device, mixing=mixing, wd_skip_norm=wd_skip_norm, comm=comm,
            timer=timer,
        )
        self.algorithm: Algorithm[Options] = method(self.state, typed)
        self.cross_features = None if ccl is None else CrossFeatureLoss(
            self.state, ccl, reads, receives_models=method.sends_models)
        self.clip_grad_norm = clip_grad_norm
        self.seed = seed
        # how every agent's forward/backward runs (loop, agent threads, vmap; auto settles on
        # the first batch on CUDA)
        self.forward_backward = choose(self.state, vectorize, agent_threads)
        self.agent_threads = min(agent_threads, len(self.agents))

    @property
    def vectorize(self) -> str:
        """The forward/backward path: ``loop``, ``vmap``, or ``auto`` until the first batch."""
        return self.forward_backward.name

    @property
    def vectorize_reason(self) -> str:
        return self.forward_backward.reason

    # -- the public contract -------------------------------------------------------------------
    @property
    def flat_params(self) -> torch.Tensor:
        """``[n, P]``; row i == parameters_to_vector(agent i's parameters)."""
        return self.state.params

    def set_lr(self, lr: float) -> None:
        self.state.lr = float(lr)

    def step(self, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
        """One synchronous iteration of every agent (METHOD.md 4.1); returns detached statistics.

        ``xs``/``ys`` hold every agent's batch (a rank keeps its own rows) or only this rank's.
        """
        if self.comm.distributed and xs.shape[0] == self.n:
            xs, ys = xs[self.comm.lo : self.comm.hi], ys[self.comm.lo : self.comm.hi]
        state = self.state
        with self.timer.phase("communication"):
            state.pre_params.copy_(state.params)
            state.params_are_pre = True
            self.algorithm.before_gradients()
            state.params_are_pre = False
        stats = self._gradients(xs.to(self.device), ys.to(self.device))
        with self.timer.phase("update"):  # gossip/relay inside it count as communication
            self.algorithm.apply_gradients()
        state.prev_lr = state.lr
        state.iteration += 1
        if self.comm.distributed:  # partial sums over my agents / n -> means over all agents
            values = self.comm.all_reduce_(torch.stack(list(stats.values())))
            stats = dict(zip(stats, values, strict=True))
        return stats

    def consensus_model(self) -> nn.Module:
        """A fresh model holding the average of all agents' parameters (and float buffers)."""
        model = copy.deepcopy(self.state.template)
        mean = self._agent_mean(self.params)
        torch.nn.utils.vector_to_parameters(mean, model.parameters())
        for name, buf in model.named_buffers():
            if buf.is_floating_point():
                agents = [dict(m.named_buffers())[name] for m in self.models]
                buf.copy_(self._agent_mean(torch.stack(agents)))
        return model

    def consensus_distance(self) -> float:
        """``mean_i ||x_i - xbar||^2``."""
        if not self.comm.distributed:
            return float((self.params - self.params.mean(dim=0)).pow(2).sum(dim=1).mean())
        spread = (self.params - self._agent_mean(self.params)).pow(2).sum()
        return float(self.comm.all_reduce_(spread) / self.n)

    def _agent_mean(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean over all agents of per-agent rows (reduced over ranks when sharded)."""
        comm = self.state.comm
        if not comm.distributed:
            return rows.mean(dim=0)
        return comm.all_reduce_(rows.sum(dim=0)) / self.state.n

    def bytes_sent(self) -> dict[str, float]:
        """Mean bytes one agent sends per iteration, by kind (parameters, class statistics, ...)."""
        sent = dict(self.algorithm.bytes_sent())
        if self.cross_features is not None and self.cross_features.active:
            sent.update(self.cross_features.bytes_sent())
        return sent

    def state_dict(self) -> dict[str, Any] | None:
        """The whole swarm's state. Sharded: a gather to rank 0 (collective), None elsewhere."""
        state = {
            "params": self.params.clone(),
            "algorithm": {k: v.clone() for k, v in self.algorithm.state_dict().items()},
            "buffers": [{k: v.clone() for k, v in m.named_buffers()} for m in self.models],
            "lr": self.state.lr,
            "prev_lr": self.state.prev_lr,
            "iteration": self.iteration,
            # the forward/backward path: a resumed run keeps what ``auto`` measured
            "vectorize": self.vectorize,
            "vectorize_reason": self.vectorize_reason,
        }
        if not self.comm.distributed:
            return state
        parts = self.comm.gather_objects(_to_cpu(state))
        if parts is None:
            return None
        return {
            **state,
            "params": torch.cat([p["params"] for p in parts]),
            "algorithm": self.algorithm.gather_state([p["algorithm"] for p in parts]),
            "buffers": [b for p in parts for b in p["buffers"]],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a whole-swarm state (a sharded swarm takes its own agents' rows)."""
        if self.comm.distributed:
            rows = slice(self.comm.lo, self.comm.hi)
            if len(state["params"]) != self.n:
                raise ValueError(f"state of {len(state['params'])} agents, run of {self.n}")
            state = {**state, "params": state["params"][rows],
                     "algorithm": self.algorithm.local_state(state["algorithm"]),
                     "buffers": state["buffers"][rows]}
        self.params.copy_(state["params"])
        self.algorithm.load_state_dict(state["algorithm"])
        for agent_model, buffers in zip(self.models, state["buffers"], strict=True):
            for name, buf in agent_model.named_buffers():
                buf.copy_(buffers[name])
        self.state.lr, self.state.prev_lr = state["lr"], state["prev_lr"]
        self.state.iteration = state["iteration"]
        saved = state.get("vectorize")
        if isinstance(self.forward_backward, AutoPass) and saved in ("loop", "vmap"):
            self.forward_backward = self.forward_backward.adopt(
                saved, f"kept from the checkpoint: {state.get('vectorize_reason')}")

    # -- internals -----------------------------------------------------------------------------
    def _gradients(self, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward/backward of every agent on its own batch; gradients land in ``self.grads``."""
        cross = self.cross_features
        if cross is not None and not cross.active and self.iteration % cross.log_every:
            cross = None  # only logged, and not at this iteration (log_cross_features_every)
        fb = self.forward_backward = self.forward_backward.settle(xs, ys, cross)
        if cross is not None:
            with self.timer.phase("cross_features"):
                # no-grad passes from X^- (METHOD.md 4.1 step 4)
                cross.prepare(xs, ys, fb.rows_forward)
        with self.timer.phase("forward_backward"):
            self.grads.zero_()
            ce_sum = fb(xs, ys, cross)
            if self.clip_grad_norm is not None:
                clip_rows_(self.grads, self.clip_grad_norm)
        stats = {"ce": ce_sum / self.n}  # sharded: my agents' part, summed over ranks in step
        if cross is not None:
            stats.update(cross.stats())
        return stats


def clip_rows_(grads: torch.Tensor, max_norm: float) -> None:
    """Rescale each agent's row to norm at most ``max_norm`` in place, with the factor
    ``torch.nn.utils.clip_grad_norm_`` uses (``max_norm / (norm + 1e-6)``, capped at 1)."""
    norms = torch.linalg.vector_norm(grads, dim=1, keepdim=True)
    grads.mul_(torch.clamp(max_norm / (norms + 1e-6), max=1.0))


def _to_cpu(value: Any) -> Any:
    """Tensors of a nested state moved to the CPU (what goes through a gather)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _typed_options(
    algorithm: str | Options, ccl: Mapping[str, float] | CCLOptions | None,
    log_cross_features: bool | None, options: Mapping[str, OptionValue],
) -> tuple[Options, CCLOptions | None]:
    """Names -> typed options: ``options`` are split between the algorithm and the CCL loss by
    the fields each declares. Another base optimiser's option is ignored (as in a RunConfig,
    ``qgm_variant`` on a DSGDm-N run); a name that no options type declares is a ConfigError."""
    owners = option_owners()
    loss_keys = CCLOptions.model_fields
    for key in options:
        if key not in owners and key not in loss_keys:
            raise ConfigError(key, "(unknown option)", sorted({*owners, *loss_keys}))
    if isinstance(algorithm, str):
        cls = algorithm_class(algorithm)
        own = {k: v for k, v in options.items() if owners.get(k) is cls}
        algorithm = cls.options_type.parse(own)
    if log_cross_features is None:
        log_cross_features = bool(ccl)
    if isinstance(ccl, CCLOptions):
        return algorithm, ccl
    if not ccl and not log_cross_features:
        return algorithm, None
    # logging only: both weights 0, the terms computed on detached features
    values = {**(ccl or {}), **{k: v for k, v in options.items() if k in loss_keys}}
    return algorithm, CCLOptions.parse(values)
