"""What the base optimisers and the CCL loss act on: the agents' stacked tensors and gossip.

All agents' trainable parameters live in one tensor ``params`` of shape ``[n, P]`` (row i is
``parameters_to_vector`` of agent i's model, in ``model.parameters()`` order), their gradients in
``grads`` of the same shape. Each agent's ``nn.Module`` has parameters that are *views* into its
row, and gradients that are views into its row of ``grads`` (autograd accumulates into an
existing ``.grad`` in place), so the forward/backward is ordinary PyTorch while gossip is one
``[n, n] @ [n, P]`` product. Buffers (BatchNorm statistics) stay in each agent's module: local.

A :class:`SwarmState` is complete when built: the algorithm (and the CCL loss) receive it already
holding the halo of every row they will read, so nothing is built half-way. It knows nothing of
algorithms; :class:`~benchmark.swarm.Swarm` assembles state, algorithm, loss and forward/backward.

Across processes (:mod:`benchmark.distributed`) the tensors hold only this rank's agents, and
remote neighbours' rows arrive through the halo; in one process the halo is empty.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .device import pick_device
from .distributed import Communicator, Halo
from .timing import PhaseTimer
from .topology import Topology


def bind_to_rows(model: nn.Module, params_row: torch.Tensor, grads_row: torch.Tensor) -> None:
    """Make the model's parameters (and their .grad) views into one row of the stacked tensors."""
    offset = 0
    for p in model.parameters():
        k = p.numel()
        params_row[offset : offset + k].copy_(p.detach().reshape(-1))
        p.data = params_row[offset : offset + k].view_as(p)
        p.grad = grads_row[offset : offset + k].view_as(p)
        offset += k


class SwarmState:
    """Rows of every agent, the hyper-parameters of the update, gossip and the halo.

    ``reads[i]`` (every agent, global ids) lists whose models agent ``i`` reads beyond its graph
    neighbours (RelaySGD's tree neighbours for CCL): the halo brings both.
    """

    def __init__(
        self,
        model: nn.Module,
        topology: Topology,
        reads: Sequence[Sequence[int]],
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
        gamma: float,
        device: str | torch.device | None = "auto",
        mixing: str = "uniform",
        wd_skip_norm: bool = False,
        comm: Communicator | None = None,
        timer: PhaseTimer | None = None,
    ) -> None:
        self.device = pick_device(device)
        # per-phase seconds of every iteration (train.py writes them per epoch to metrics.json)
        self.timer = timer if timer is not None else PhaseTimer(self.device)
        self.topology = topology
        self.n = topology.n  # agents of the whole run (all ranks)
        # this process's agents: all of them, or one rank's shard (rows of every tensor below)
        self.comm = comm if comm is not None else Communicator(self.n)
        self.agents = self.comm.agents
        self.lr = self.prev_lr = float(lr)
        self.momentum_factor = float(momentum)
        self.weight_decay = float(weight_decay)
        self.gamma = float(gamma)
        self.iteration = 0

        self.template = copy.deepcopy(model).to(self.device)
        n_params = sum(p.numel() for p in self.template.parameters())
        self.params = torch.empty(len(self.agents), n_params, device=self.device)
        self.grads = torch.zeros_like(self.params)
        # every agent starts from the same parameters: one initialisation, copied (METHOD.md 1)
        self.models = [copy.deepcopy(self.template) for _ in self.agents]
        for i, agent_model in enumerate(self.models):
            bind_to_rows(agent_model, self.params[i], self.grads[i])
            agent_model.train()
        # wd_skip_norm: no decay on 1-d parameters (norm scales/shifts, biases)
        self._wd_mask = None
        if wd_skip_norm:
            self._wd_mask = torch.cat(
                [torch.full((p.numel(),), float(p.dim() > 1)) for p in self.template.parameters()]
            ).to(self.device)

        # remote neighbours' rows (empty in one process): graph neighbours for gossip, plus whom
        # CCL reads; gossip mixes [own rows; halo rows]
        self.halo = Halo(self.comm, [sorted({*topology.neighbors(i), *reads[i]})
                                     for i in range(self.n)], self.device)
        mixing_matrix = topology.mixing_matrix(mixing)
        if self.comm.distributed:
            mixing_matrix = mixing_matrix[self.comm.lo : self.comm.hi][:, self.halo.agents]
        self.mixing = torch.as_tensor(mixing_matrix, dtype=self.params.dtype, device=self.device)
        # X^-: what each agent sent this iteration; with remote neighbours, followed by their
        # rows (``pre_params_ext``, filled once per iteration by ``fill_pre_halo``)
        self.pre_params_ext = self.params.new_empty(self.halo.size, n_params)
        self.pre_params = self.pre_params_ext[: len(self.agents)]
        self._pre_halo_at: int | None = None  # iteration whose X^- halo is in pre_params_ext
        self.params_are_pre = False  # params still equal X^- (before_gradients, before gossip)

    def fill_pre_halo(self) -> torch.Tensor:
        """``pre_params_ext``: X^- of my agents, then of remote neighbours (once per iteration)."""
        if self.comm.distributed and self._pre_halo_at != self.iteration:
            with self.timer.phase("communication"):
                self.halo.fill(self.pre_params_ext)
            self._pre_halo_at = self.iteration
        return self.pre_params_ext

    def gossip(self, x: torch.Tensor) -> None:
        """``X <- X + gamma (W X - X)`` in place, every agent using the others' current rows."""
        with self.timer.phase("communication"):
            self._gossip(x)

    def _gossip(self, x: torch.Tensor) -> None:
        if self.comm.distributed:
            if x is self.params and self.params_are_pre:
                ext = self.fill_pre_halo()  # the halo CCL needs too: exchanged once, not twice
            else:
                ext = x.new_empty(self.halo.size, x.shape[1])
                ext[: len(self.agents)] = x
                self.halo.fill(ext)
            self.params_are_pre = False
            mixed = self.mixing @ ext
        else:
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
