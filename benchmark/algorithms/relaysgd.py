"""RelaySGD: a local Nesterov step, then relayed sums over a spanning tree (METHOD.md section 3.3).

On a tree every message ``i -> j`` can carry the sum of all models on ``i``'s side of the edge
without double counting, so after ``diameter(T)`` iterations each agent sees the sum of *all*
models (delayed by their distance) instead of a gossip blur of its neighbours: the spread of the
non-IID shards no longer slows consensus the way a small spectral gap does.

Messages are stored per directed tree edge as one ``[E, width]`` tensor, and a message is computed
as "everything that arrived at the sender last iteration, minus what came from the receiver"
(``incoming[src] - messages[reverse]``): two ``index_add`` and one gather per iteration, no Python
loop over agents. ``relay_tree: double-binary`` relays the first half of the parameter vector over
one binary tree and the second half over the complementary one (Vogels et al.), which halves
what each inner agent sends.

Sharded over processes (:mod:`benchmark.distributed`), a rank keeps the messages of the tree
edges that touch its agents and computes both directions of each: ``msg_{i->j}`` needs only
``i``'s total ``x_i + incoming_i`` (exchanged for remote tree neighbours, one row per boundary
edge and direction, as a message would be) and ``msg_{j->i}(t-1)``, which this rank holds.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from pydantic import Field

from ..distributed import Communicator, Halo
from ..swarm_state import SwarmState
from ..topology import SpanningTree, Topology, double_binary_trees
from .analysis import Analysis, NoGossip
from .base import BYTES_PER_FLOAT, MomentumAlgorithm, Options, StateShapes, nesterov_step
from .registry import register

RelayNorm = Literal["counts", "world"]
RELAY_NORMS: tuple[str, ...] = get_args(RelayNorm)


class RelayOptions(Options):
    relay_tree: SpanningTree = Field(
        "auto", description="auto = chain on ring/chain, BFS tree from agent 0 otherwise; "
        "chain, bfs; double-binary: half the parameters over each of two binary trees")
    relay_norm: RelayNorm = Field(
        "counts", description="counts: S / C; world: (S + (n - C) x0) / n, x0 the initial model")


class TreeRelay:
    """Messages and counts of one spanning tree, relaying ``width``-wide rows of all agents
    (of this rank's agents when ``comm`` is a shard: rows of ``x`` are then its agents)."""

    def __init__(self, tree: Topology, width: int, device: torch.device, dtype: torch.dtype,
                 comm: Communicator | None = None):
        comm = comm if comm is not None else Communicator(tree.n)
        self.tree = tree
        self.n = len(comm.agents)
        self.halo = Halo(comm, [tree.neighbors(i) for i in range(tree.n)], device)
        every = [(i, j) for i in range(tree.n) for j in tree.neighbors(i)]  # directed i -> j
        mine = set(comm.agents)
        # the edges touching my agents (all of them in one process), with their global index
        kept = [e for e, (i, j) in enumerate(every) if i in mine or j in mine]
        edges = [every[e] for e in kept]
        position = {edge: e for e, edge in enumerate(edges)}
        row = self.halo.row  # agent -> row of [my agents; remote tree neighbours]
        self.edge_ids = torch.tensor(kept, dtype=torch.long, device=device)
        self.n_edges_total = len(every)
        self.src = torch.tensor([row[i] for i, _ in edges], dtype=torch.long, device=device)
        self.dst = torch.tensor([row[j] for _, j in edges], dtype=torch.long, device=device)
        self.reverse = torch.tensor([position[(j, i)] for i, j in edges], dtype=torch.long,
                                    device=device)
        self.messages = torch.zeros(len(edges), width, device=device, dtype=dtype)  # t-1, start 0
        self.counts = torch.zeros(len(edges), device=device, dtype=dtype)

    @property
    def n_messages(self) -> int:
        return len(self.src)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Send this iteration's messages built from ``x`` ``[n, width]``; return ``S``, ``C``.

        ``msg_{i->j}(t) = x_i + sum_{k in T(i)\\{j}} msg_{k->i}(t-1)`` (and the same for counts);
        ``S_i = x_i + sum_k msg_{k->i}(t)``, ``C_i = 1 + sum_k c_{k->i}(t)``.
        """
        m = self.n
        # what each of my agents knows: own row + everything that reached it last iteration
        total = x + self._sum_at_receivers(self.messages)[:m]
        total_counts = 1 + self._sum_at_receivers(self.counts)[:m]
        if self.halo.size > m:  # remote tree neighbours' totals (one row per boundary edge)
            ext = torch.cat([total, total_counts[:, None]], dim=1)
            ext = torch.cat([ext, ext.new_empty(self.halo.size - m, ext.shape[1])])
            self.halo.fill(ext)
            total, total_counts = ext[:, :-1], ext[:, -1]
        messages = total[self.src] - self.messages[self.reverse]
        counts = total_counts[self.src] - self.counts[self.reverse]
        self.messages.copy_(messages)
        self.counts.copy_(counts)
        return (x + self._sum_at_receivers(messages)[:m],
                1 + self._sum_at_receivers(counts)[:m])

    def _sum_at_receivers(self, per_edge: torch.Tensor) -> torch.Tensor:
        out = per_edge.new_zeros((self.halo.size, *per_edge.shape[1:]))
        return out.index_add_(0, self.dst, per_edge)


def relay_trees(topology: Topology, kind: str) -> list[Topology]:
    """The tree(s) to relay over: one spanning tree, or the two trees of ``double-binary``."""
    if kind == "double-binary":
        return list(double_binary_trees(topology.n))
    return [topology.spanning_tree(kind)]


def _columns(n_params: int, trees: int) -> list[slice]:
    """The parameter columns each tree relays (all of them over a single tree)."""
    bounds = [round(k * n_params / trees) for k in range(trees + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def _directed_edges(tree: Topology) -> int:
    return 2 * int(tree.graph.number_of_edges())


@register
class RelaySGD(MomentumAlgorithm[RelayOptions]):
    name = "relaysgd"
    summary = "RelaySGD on a spanning tree"
    options_type = RelayOptions
    sends_models = False

    def __init__(self, state: SwarmState, options: RelayOptions) -> None:
        super().__init__(state, options)
        self.norm = self.options.relay_norm
        self.initial = state.params[0].clone()  # x0 of the `world` rule: all agents start here
        trees = relay_trees(state.topology, self.options.relay_tree)
        self.slices = _columns(state.params.shape[1], len(trees))
        self.relays = [
            TreeRelay(tree, s.stop - s.start, state.params.device, state.params.dtype, state.comm)
            for tree, s in zip(trees, self.slices, strict=True)
        ]

    @classmethod
    def stability(cls, options: RelayOptions) -> Analysis:
        return NoGossip("relaysgd")

    @classmethod
    def state_shapes(cls, topology: Topology, n_params: int, options: RelayOptions
                     ) -> StateShapes:
        """Momentum, the initial model, and per tree one message and one count per directed
        edge (the messages of the tree's columns)."""
        trees = relay_trees(topology, options.relay_tree)
        shapes: StateShapes = {"momentum": (topology.n, n_params), "initial": (n_params,)}
        for k, (tree, cols) in enumerate(zip(trees, _columns(n_params, len(trees)),
                                             strict=True)):
            shapes[f"messages{k}"] = (_directed_edges(tree), cols.stop - cols.start)
            shapes[f"counts{k}"] = (_directed_edges(tree),)
        return shapes

    @classmethod
    def neighbors_of(cls, topology: Topology, options: RelayOptions) -> list[list[int]]:
        """Tree neighbours (both trees' for double-binary): the models an agent is in touch with."""
        trees = relay_trees(topology, options.relay_tree)
        return [sorted({j for tree in trees for j in tree.neighbors(i)})
                for i in range(topology.n)]

    @classmethod
    def bytes_per_iteration(cls, topology: Topology, n_params: int, options: RelayOptions
                            ) -> dict[str, float]:
        """Per agent per iteration: one (partial) model and one count per tree message."""
        trees = relay_trees(topology, options.relay_tree)
        edges = [_directed_edges(tree) for tree in trees]
        params = sum(e * (s.stop - s.start) for e, s in
                     zip(edges, _columns(n_params, len(trees)), strict=True))
        n = topology.n
        return {"parameters": params * BYTES_PER_FLOAT / n,
                "relay_counts": sum(edges) * BYTES_PER_FLOAT / n}

    def apply_gradients(self) -> None:
        state = self.state
        nesterov_step(state, self.momentum, state.lr)  # params now hold x_half
        for relay, cols in zip(self.relays, self.slices, strict=True):
            with state.timer.phase("communication"):  # the relay is this algorithm's gossip
                total, count = relay(state.params[:, cols])
            if self.norm == "counts":
                state.params[:, cols] = total / count[:, None]
            else:  # world: the agents not heard from yet count as the initial model
                missing = (state.n - count)[:, None]
                state.params[:, cols] = (total + missing * self.initial[cols]) / state.n

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"momentum": self.momentum, "initial": self.initial}
        for k, relay in enumerate(self.relays):
            state[f"messages{k}"], state[f"counts{k}"] = relay.messages, relay.counts
            if self.state.comm.distributed:  # which tree edges these rows are (gather_state)
                state[f"edges{k}"] = relay.edge_ids
        return state

    def gather_state(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Rows of momentum stacked; each tree edge's messages from a rank that holds it."""
        state = {"momentum": torch.cat([p["momentum"] for p in parts]),
                 "initial": parts[0]["initial"]}
        for k, relay in enumerate(self.relays):
            for key in (f"messages{k}", f"counts{k}", f"edges{k}"):
                state[key] = torch.cat([p[key] for p in parts])
            edges = state.pop(f"edges{k}")  # global edge ids (a boundary edge twice: equal)
            for key in (f"messages{k}", f"counts{k}"):
                full = state[key].new_zeros(relay.n_edges_total, *state[key].shape[1:])
                state[key] = full.index_copy_(0, edges, state[key])
        return state

    def local_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = slice(self.state.comm.lo, self.state.comm.hi)
        local = {"momentum": state["momentum"][rows], "initial": state["initial"]}
        for k, relay in enumerate(self.relays):
            edges = relay.edge_ids.to(state[f"messages{k}"].device)
            local[f"messages{k}"] = state[f"messages{k}"][edges]
            local[f"counts{k}"] = state[f"counts{k}"][edges]
        return local

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.momentum.copy_(state["momentum"])
        self.initial.copy_(state["initial"])
        for k, relay in enumerate(self.relays):
            relay.messages.copy_(state[f"messages{k}"])
            relay.counts.copy_(state[f"counts{k}"])
