"""Cross-feature Contrastive Loss on top of any base optimiser (METHOD.md section 4).

Agent ``i`` pulls its features ``f_i`` (own mixed model, own batch) towards

* ``L_mv``: the *model-variant* cross-features ``c_{j->i} = F(x_j^-; X_i)``, each neighbour's
  pre-gossip model on ``i``'s batch (summed over neighbours as the authors' code; averaged over
  tree neighbours on RelaySGD), and
* ``L_dv``: the *data-variant* class targets ``mu_i[c]``, class means of ``i``'s own detached
  features pooled with the class sums that neighbours computed with ``i``'s model on *their*
  batches (``C x D + C`` numbers per edge).

Both terms share the same no-grad cross-feature passes: one extra forward per neighbour, no extra
backward. The passes are grouped by model: model ``j`` runs once on the concatenated batches of
every agent that receives it (same numbers, fewer, larger matmuls). Targets never carry a
gradient, so the gradient reaches ``x_i`` only through ``f_i``.

BatchNorm caveat: the spec runs a neighbour's parameters with the *receiver's* buffers in eval
mode. For models with buffers the passes are therefore done per (receiver, sender) pair with the
receiver's buffers loaded (exact, but not grouped); models without buffers (LeNet-5, MLP,
EvoNorm nets) are grouped. Own features come from a train-mode forward, so on a BatchNorm model
``L_mv`` is not exactly 0 even when models agree; prefer EvoNorm/GroupNorm.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..swarm_state import SwarmState
from .base import BYTES_PER_FLOAT, Options

FeatureDistance = Literal["squared", "normalized"]
FEATURE_DISTANCES: tuple[str, ...] = get_args(FeatureDistance)
# ``(features, logits)`` of the models whose stacked parameter rows are given, each on its own
# batch, in one vectorised pass (the forward/backward strategy's, when it uses vmap)
# samples per vectorised cross-feature pass on a CPU (benchmarks/r8_small_models.py)
CPU_CHUNK_SAMPLES = 512
RowsForward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


class CCLOptions(Options):
    """The loss's weights and distance; field names are the ``RunConfig`` keys."""

    lambda_m: float = Field(0.0, ge=0)
    lambda_d: float = Field(0.0, ge=0)
    feature_distance: FeatureDistance = "squared"
    # with both weights 0 (the terms only logged): computed every this many iterations
    log_every: int = Field(1, ge=1)


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``F.one_hot(y, num_classes).to(dtype)`` without its label checks, which read the labels'
    min and max back to the host on a CPU (two synchronisations); the same 0/1 values."""
    return (y.unsqueeze(-1) == torch.arange(num_classes, device=y.device)).to(dtype)


def view_parameters(model: nn.Module, row: torch.Tensor) -> None:
    """Make ``model``'s parameters read-only views into ``row`` (no copy, no gradient)."""
    offset = 0
    for p in model.parameters():
        k = p.numel()
        p.requires_grad_(False)
        p.grad = None
        p.data = row[offset : offset + k].view_as(p)
        offset += k


class CrossFeatureLoss:
    """The CCL terms of one swarm: ``prepare`` once per iteration, then ``loss(i, ...)`` per agent.

    ``feature_distance: normalized`` computes the same losses on L2-normalised features (a bounded
    distance, METHOD.md section 8): **not the paper's**, offered because squared distances between
    unbounded ReLU features can feed the momentum until the run diverges.
    """

    def __init__(
        self, state: SwarmState, options: CCLOptions, neighbors: Sequence[Sequence[int]],
        receives_models: bool = True,
    ) -> None:
        """``neighbors[i]`` (every agent, global ids): whose models agent ``i`` receives.

        ``receives_models``: whether the base optimiser's messages already are those models
        (gossip). If not (RelaySGD's relayed sums), each agent receives one extra model per
        neighbour for the cross-features, counted in ``bytes_sent``, and ``L_mv`` is the mean over
        its (tree) neighbours instead of the authors' sum over graph neighbours: a tree's degrees
        range from 1 to several, and a sum would weigh the term by the agent's place in the tree.
        """
        self.state = state
        self.neighbors = neighbors
        self.receives_models = receives_models
        self.weights = (float(options.lambda_m), float(options.lambda_d))
        self.lambda_m, self.lambda_d = self.weights
        self.normalized = options.feature_distance == "normalized"
        self.active = self.lambda_m > 0 or self.lambda_d > 0
        self.log_every = options.log_every  # logging only: the iterations that compute them
        heads = [m for m in state.models[0].modules() if isinstance(m, nn.Linear)]
        # classifier = last linear layer: its input is the feature vector (models/__init__.py)
        self.feature_dim = heads[-1].in_features if heads else None
        self.num_classes = heads[-1].out_features if heads else None
        self._models: list[nn.Module] | None = None
        self._edges: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None
        # the loop path's passes, per sender model: (sender row, its edges, their receivers)
        self._by_sender: list[tuple[int, torch.Tensor, list[int]]] = []
        self._mv_sum = self._dv_sum = torch.zeros((), device=state.device)

    @property
    def classes(self) -> int:
        """The model's class count (its last linear layer's, else seen at the first pass)."""
        if self.num_classes is None:
            raise RuntimeError("CCL: the model's class count is unknown before its first pass")
        return self.num_classes

    # -- one iteration -----------------------------------------------------------------------
    @torch.no_grad()
    def prepare(
        self, xs: torch.Tensor, ys: torch.Tensor, rows_forward: RowsForward | None = None
    ) -> None:
        """Cross-feature passes from ``X^-`` and the class statistics every agent receives.

        With ``rows_forward`` (the vmap path) every edge's pass is one vectorised call."""
        self.state.fill_pre_halo()  # sharded run: remote neighbours' X^- (no-op in one process)
        receivers, senders, offsets = self._edge_lists()
        # [E, B, D], edge e = (i <- j)
        cross = self._cross_features(xs, receivers, senders, rows_forward)
        if self.normalized:
            cross = F.normalize(cross, dim=-1)
        onehot = one_hot(ys, self.classes, cross.dtype)  # [n, B, C]
        # agent i sends neighbour j the class sums of j's model on i's batch, and its counts
        sums = torch.bmm(onehot[receivers].transpose(1, 2), cross)  # [E, C, D]
        n = self.state.halo.size  # senders' rows: all agents (one process) or mine + halo
        self._received_sums = cross.new_zeros(n, *sums.shape[1:]).index_add_(0, senders, sums)
        self._received_counts = cross.new_zeros(n, self.classes).index_add_(
            0, senders, onehot.sum(dim=1)[receivers]
        )
        if self.state.comm.distributed:  # statistics for remote senders travel to their owners
            packed = torch.cat([self._received_sums, self._received_counts.unsqueeze(-1)], -1)
            packed = self.state.halo.reduce(packed)
            self._received_sums, self._received_counts = packed[..., :-1], packed[..., -1]
        self._cross, self._offsets = cross, offsets
        self._mv_sum = self._dv_sum = cross.new_zeros(())

    def loss(self, i: int, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``lambda_m L_mv,i + lambda_d L_dv,i`` with gradient through ``features`` only.

        A term whose weight is 0 is computed on detached features (logged, not in the graph), so
        a run with both weights 0 is bit-identical to its base optimiser.
        """
        f = F.normalize(features, dim=-1) if self.normalized else features
        f_mv = f if self.lambda_m > 0 else f.detach()
        f_dv = f if self.lambda_d > 0 else f.detach()
        cross = self._cross[self._offsets[i] : self._offsets[i + 1]]  # [deg_i, B, D]
        per_neighbor = (f_mv.unsqueeze(0) - cross).pow(2).mean(dim=(1, 2))
        l_mv = per_neighbor.sum()
        if not self.receives_models:  # RelaySGD: mean over tree neighbours (see __init__)
            l_mv = l_mv / max(len(per_neighbor), 1)
        onehot = one_hot(y, self.classes, f.dtype)  # [B, C]
        totals = onehot.T @ f.detach() + self._received_sums[i]
        counts = onehot.sum(dim=0) + self._received_counts[i]
        # classes absent from i's batch are never indexed; the clamp only avoids 0/0 there
        targets = totals / counts.clamp_min(1)[:, None]
        l_dv = (f_dv - targets[y]).pow(2).mean()
        return self._weighted(l_mv, l_dv)

    def _weighted(self, l_mv: torch.Tensor, l_dv: torch.Tensor) -> torch.Tensor:
        """Accumulate both terms for the statistics; the loss holds only the active ones."""
        self._mv_sum = self._mv_sum + l_mv.detach()
        self._dv_sum = self._dv_sum + l_dv.detach()
        total = l_mv.new_zeros(())
        if self.lambda_m > 0:
            total = total + self.lambda_m * l_mv
        if self.lambda_d > 0:
            total = total + self.lambda_d * l_dv
        return total

    def set_weight_scale(self, scale: float) -> None:
        """Both lambdas times ``scale`` (``lambda_warmup_epochs``, METHOD.md 4.2: not the paper's).

        ``scale > 0`` keeps every active term active, so the graph structure never changes."""
        self.lambda_m, self.lambda_d = (w * scale for w in self.weights)

    def loss_all(self, features: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """``sum_i loss(i, features[i], ys[i])`` for all my agents at once (``features [n, B,
        D]``): the same terms in a few whole-swarm operations (the vmap path), equal to the
        per-agent sum up to float rounding."""
        f = F.normalize(features, dim=-1) if self.normalized else features
        f_mv = f if self.lambda_m > 0 else f.detach()
        f_dv = f if self.lambda_d > 0 else f.detach()
        receivers, _, _ = self._edge_lists()
        # sum over agents of (sum or mean) over their neighbours = weighted sum over edges
        per_edge = (f_mv[receivers] - self._cross).pow(2).mean(dim=(1, 2))
        l_mv = per_edge.sum() if self.receives_models else (per_edge * self._edge_weights).sum()
        onehot = one_hot(ys, self.classes, f.dtype)  # [n, B, C]
        m = len(ys)
        totals = onehot.transpose(1, 2) @ f.detach() + self._received_sums[:m]  # [n, C, D]
        counts = onehot.sum(dim=1) + self._received_counts[:m]  # [n, C]
        targets = totals / counts.clamp_min(1)[..., None]
        own = targets.gather(1, ys[..., None].expand(-1, -1, targets.shape[-1]))  # [n, B, D]
        l_dv = (f_dv - own).pow(2).mean(dim=(1, 2)).sum()
        return self._weighted(l_mv, l_dv)

    def stats(self) -> dict[str, torch.Tensor]:
        """Mean over agents of this iteration's ``L_mv`` and ``L_dv``: the heterogeneity measure."""
        n = self.state.n
        return {"l_mv": self._mv_sum / n, "l_dv": self._dv_sum / n}

    def bytes_sent(self) -> dict[str, float]:
        """Per agent per iteration: class sums and counts, ``C*D + C`` floats per neighbour, only
        when ``L_dv`` is used; and, where messages are not models (RelaySGD), one model per
        neighbour for the cross-features."""
        edges, n = sum(len(nb) for nb in self.neighbors), self.state.n
        sent = {"class_statistics": 0.0}
        if self.lambda_d > 0 and self.feature_dim is not None and self.num_classes is not None:
            per_edge = (self.num_classes * self.feature_dim + self.num_classes) * BYTES_PER_FLOAT
            sent["class_statistics"] = edges * per_edge / n
        if not self.receives_models:
            sent["cross_feature_models"] = edges * self.state.params.shape[1] * BYTES_PER_FLOAT / n
        return sent

    # -- internals -----------------------------------------------------------------------------
    def _edge_lists(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Edges ``(receiver i, sender j)`` sorted by receiver, and each receiver's slice start."""
        if self._edges is None:
            state, neighbors = self.state, self.neighbors  # every agent, global ids
            # receivers: my rows; senders: rows of X^- extended by the halo (ids in one process)
            row, lo = state.halo.row, state.comm.lo
            pairs = [(i - lo, row[j]) for i in state.agents for j in neighbors[i]]
            device = state.device
            receivers = torch.tensor([i for i, _ in pairs], dtype=torch.long, device=device)
            senders = torch.tensor([j for _, j in pairs], dtype=torch.long, device=device)
            offsets = [0]
            for i in state.agents:
                offsets.append(offsets[-1] + len(neighbors[i]))
            self._edges = (receivers, senders, offsets)
            # RelaySGD's L_mv is a mean over neighbours: each edge weighs 1 / receiver's degree
            degrees = [len(neighbors[i]) for i in state.agents for _ in neighbors[i]]
            self._edge_weights = torch.tensor([1.0 / d for d in degrees], device=device)
            # static: built once here, never a ``nonzero`` per sender per iteration
            groups = [[e for e, (_, sender) in enumerate(pairs) if sender == j]
                      for j in range(state.halo.size)]
            self._by_sender = [(j, torch.tensor(edges, device=device),
                                [pairs[e][0] for e in edges])
                               for j, edges in enumerate(groups) if edges]
        return self._edges

    def _cross_models(self) -> list[nn.Module]:
        """One eval-mode model per agent whose parameters view its row of ``X^-`` (built once)."""
        if self._models is None:
            models = []
            own = self.state.models
            for j, row in enumerate(self.state.pre_params_ext):  # my agents, then the halo's
                model = copy.deepcopy(own[j] if j < len(own) else own[0])
                view_parameters(model, row)
                models.append(model.eval())
            self._models = models
        return self._models

    def _cross_features(
        self, xs: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor,
        rows_forward: RowsForward | None,
    ) -> torch.Tensor:
        """``c_{j->i} = F(x_j^-; X_i)`` for every edge ``e = (i <- j)``: ``[E, B, D]``."""
        if rows_forward is not None and len(senders):  # the vectorised path
            rows = self.state.pre_params_ext
            if rows.device.type != "cpu":  # every edge in one pass: the fewest kernels
                return rows_forward(rows[senders], xs[receivers])[0]
            # on a CPU in chunks of ~CPU_CHUNK_SAMPLES samples, whose activations stay in the
            # cache: MNIST-1D's 112 edges of exponential-16 at once took 1.4x as long
            step = max(1, CPU_CHUNK_SAMPLES // xs.shape[1])
            return torch.cat([rows_forward(rows[senders[a:a + step]], xs[receivers[a:a + step]])[0]
                              for a in range(0, len(senders), step)])
        cross: torch.Tensor | None = None
        for model, edges, receiver_id in self._passes():
            features = self._receivers_pass(model, xs[receivers[edges]], receiver_id)
            if cross is None:  # allocated at the first pass, which tells the feature width
                cross = features.new_empty(len(senders), xs.shape[1], features.shape[-1])
            cross[edges] = features.view(len(edges), xs.shape[1], -1)
        if cross is None:  # no edges at all (a single agent)
            return xs.new_empty(0, xs.shape[1], self.feature_dim or 0)
        return cross

    def _passes(self) -> Iterator[tuple[nn.Module, torch.Tensor, int | None]]:
        """``(sender model, its edges, receiver)`` per forward: all of a sender's edges in one
        pass (receiver None), or one pass per edge for a model with buffers, whose receiver's
        own buffers must be loaded first."""
        models = self._cross_models()
        for j, edges, receiver_ids in self._by_sender:
            if any(True for _ in models[j].buffers()):
                yield from ((models[j], edges[k : k + 1], receiver_ids[k])
                            for k in range(len(edges)))
            else:
                yield models[j], edges, None

    def _receivers_pass(
        self, model: nn.Module, batches: torch.Tensor, receiver_id: int | None
    ) -> torch.Tensor:
        """``model``'s features on ``batches`` ``[g, B, ...]`` (``[g * B, D]``), with the
        receiver's buffers loaded first when there is one (its BatchNorm statistics, eval mode)."""
        if receiver_id is not None:
            buffers = dict(model.named_buffers())
            for name, buf in self.state.models[receiver_id].named_buffers():
                buffers[name].copy_(buf)
        out: tuple[torch.Tensor, torch.Tensor] = model(batches.flatten(0, 1))
        features, logits = out
        self.feature_dim, self.num_classes = features.shape[-1], logits.shape[-1]
        return features
