"""Communication graphs, gossip mixing matrices, spectral gaps and relay spanning trees.

Every graph of METHOD.md section 7 is built here, on agents ``0..n-1``, and wrapped in a
:class:`Topology` that precomputes what the simulator asks for on every iteration (adjacency,
degrees, sorted neighbour lists) so nothing downstream touches networkx in a hot loop.

Impossible sizes, unknown names and mixing rules that do not fit the graph raise
:class:`~benchmark.errors.ConfigError` naming the field, the value and what is allowed, so a bad
grid entry fails before any data is loaded.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import Literal, get_args

import networkx as nx
import numpy as np

from benchmark.errors import ConfigError

TOPOLOGIES: tuple[str, ...] = (
    "ring",
    "chain",
    "torus",
    "paper-torus",
    "dyck",
    "paper-dyck",
    "petersen",
    "full",
    "exponential",
    "random-regular",
)
# graphs that exist at one size only
FIXED_SIZES: dict[str, int] = {"dyck": 32, "paper-dyck": 32, "petersen": 10}
MIXING_RULES: tuple[str, ...] = ("uniform", "metropolis")
SpanningTree = Literal["auto", "chain", "bfs", "double-binary"]
SPANNING_TREES: tuple[str, ...] = get_args(SpanningTree)
# run options that only one graph reads: a run on any other graph holds their defaults
GRAPH_OPTIONS: dict[str, str] = {"torus_rows": "torus", "degree": "random-regular"}

# How often a random regular graph is redrawn before we give up on getting a connected one.
# Disconnected draws are only common for degree 2 (a union of cycles); gossip cannot reach
# consensus on them, so they are never returned.
_MAX_REGULAR_DRAWS = 1000


class Topology:
    """An undirected, connected, simple graph on agents ``0..n-1`` plus derived quantities.

    Built once per process for each distinct graph (:func:`build_topology` caches it): the
    arrays are read-only and the networkx graph frozen, so no caller can silently change the graph
    that every other component of the run believes in; its spectra and spanning trees are
    computed on first use and kept.
    """

    def __init__(self, name: str, graph: nx.Graph):
        n = graph.number_of_nodes()
        if set(graph.nodes) != set(range(n)):
            raise ValueError(f"topology {name!r}: nodes must be 0..{n - 1}")
        if nx.number_of_selfloops(graph):
            raise ValueError(f"topology {name!r}: self loops are not allowed")
        if n > 0 and not nx.is_connected(graph):
            raise ValueError(f"topology {name!r}: graph is not connected")
        # Canonical copy: nodes inserted in order, edges sorted, so traversal order (and hence
        # BFS trees) depends only on the edge set, never on how a generator built the graph.
        canonical = nx.Graph()
        canonical.add_nodes_from(range(n))
        canonical.add_edges_from(sorted((min(u, v), max(u, v)) for u, v in graph.edges))
        self.name: str = name
        self.n: int = n
        self.graph: nx.Graph = nx.freeze(canonical)

        adjacency = np.zeros((n, n), dtype=bool)
        for u, v in canonical.edges:
            adjacency[u, v] = adjacency[v, u] = True
        adjacency.flags.writeable = False
        self.adjacency: np.ndarray = adjacency

        degrees = adjacency.sum(axis=1).astype(np.int64)
        degrees.flags.writeable = False
        self.degrees: np.ndarray = degrees
        self.is_regular: bool = bool(n == 0 or np.all(degrees == degrees[0]))
        self.diameter: int = int(nx.diameter(canonical)) if n > 0 else 0
        self._neighbors: list[list[int]] = [np.flatnonzero(adjacency[i]).tolist() for i in range(n)]
        self._spectra: dict[str, tuple[float, ...]] = {}
        self._trees: dict[str, Topology] = {}

    def __repr__(self) -> str:
        return (
            f"Topology(name={self.name!r}, n={self.n}, edges={self.graph.number_of_edges()}, "
            f"diameter={self.diameter})"
        )

    def neighbors(self, i: int) -> list[int]:
        """Agent ``i``'s neighbours in increasing order (a fresh list: safe to modify)."""
        return list(self._neighbors[i])

    def mixing_matrix(self, rule: str = "uniform") -> np.ndarray:
        """The gossip matrix ``W`` (float64, symmetric, doubly stochastic) of METHOD.md section 2.

        ``uniform`` is the paper's choice but is only doubly stochastic on a regular graph, so an
        irregular graph is refused rather than silently biasing the consensus average.
        """
        _check_rule(rule)
        n, a = self.n, self.adjacency
        w = np.zeros((n, n), dtype=np.float64)
        if rule == "uniform":
            if not self.is_regular:
                raise ConfigError(
                    "mixing",
                    rule,
                    "'metropolis' for an irregular graph",
                    hint=f"topology '{self.name}' has degrees {self.degrees.min()}.."
                    f"{self.degrees.max()}; 'uniform' needs every agent to have the same degree",
                )
            w[a] = 1.0 / (self.degrees[0] + 1)
            np.fill_diagonal(w, 1.0 / (self.degrees[0] + 1))
        else:  # metropolis
            pair_max = np.maximum(self.degrees[:, None], self.degrees[None, :])
            w[a] = 1.0 / (pair_max[a] + 1)
            np.fill_diagonal(w, 1.0 - w.sum(axis=1))
        return w

    def mixing_spectrum(self, rule: str = "uniform") -> tuple[float, ...]:
        """Eigenvalues of ``W`` without the consensus one (1), ascending; computed once."""
        if rule not in self._spectra:
            eigenvalues = np.linalg.eigvalsh(self.mixing_matrix(rule))  # ascending, last is 1
            self._spectra[rule] = tuple(float(v) for v in eigenvalues[:-1])
        return self._spectra[rule]

    def spectral_gap(self, rule: str = "uniform") -> float:
        """``1 - max(|lambda_2|, |lambda_n|)`` of ``W``: how fast plain gossip contracts.

        A single agent has nothing to mix and reports a gap of 1.
        """
        spectrum = self.mixing_spectrum(rule)
        if self.n < 2:
            return 1.0
        return float(1.0 - max(abs(spectrum[-1]), abs(spectrum[0])))

    def spanning_tree(self, kind: str = "auto") -> Topology:
        """The tree RelaySGD relays over (METHOD.md section 3.3).

        ``auto``: the chain ``0-1-...-(n-1)`` for ring and chain, the BFS tree from agent 0
        otherwise. ``chain``: that path, only where it is a path of this graph. ``bfs``: BFS
        tree from agent 0 (neighbours visited in increasing order). ``double-binary``: the first
        tree of :func:`double_binary_trees`, an overlay that need not use this graph's edges.
        """
        if kind not in self._trees:
            self._trees[kind] = self._spanning_tree(kind)
        return self._trees[kind]

    def _spanning_tree(self, kind: str) -> Topology:
        if kind not in SPANNING_TREES:
            raise ConfigError("relay_tree", kind, SPANNING_TREES)
        if kind == "auto":
            kind = "chain" if self.name in ("ring", "chain") else "bfs"
        if kind == "chain":
            path = [(i, i + 1) for i in range(self.n - 1)]
            if not all(self.graph.has_edge(u, v) for u, v in path):
                raise ConfigError(
                    "relay_tree",
                    "chain",
                    "'chain' only on graphs that contain the path 0-1-...-(n-1); "
                    "otherwise 'bfs' or 'double-binary'",
                    hint=f"topology '{self.name}' lacks some edge i ~ i+1",
                )
            return Topology(f"{self.name}/chain-tree", _graph(self.n, path))
        if kind == "bfs":
            tree = nx.bfs_tree(self.graph, 0, sort_neighbors=sorted).to_undirected()
            return Topology(f"{self.name}/bfs-tree", tree)
        return double_binary_trees(self.n)[0]


@lru_cache(maxsize=16)
def double_binary_trees(n: int) -> tuple[Topology, Topology]:
    """Two complementary binary trees spanning all ``n`` agents (NCCL-style double binary tree).

    Tree 1 is the heap-indexed binary tree on the order ``0..n-1`` (parent of ``k`` is
    ``(k-1)//2``); tree 2 has the same shape on the reversed order (agent ``n-1-k`` at heap
    position ``k``). Inner nodes of one tree are then (mostly) leaves of the other, which is what
    balances the relay load in Sanders et al. / NCCL. Both are overlays: their edges are not
    restricted to any gossip graph, so using them assumes any two agents can talk.
    """
    _check_n(n, 1, "any n >= 1 for double binary trees")
    first = [((k - 1) // 2, k) for k in range(1, n)]
    second = [(n - 1 - u, n - 1 - v) for u, v in first]
    return (
        Topology("double-binary-1", _graph(n, first)),
        Topology("double-binary-2", _graph(n, second)),
    )


def build_topology(
    name: str, n: int, *, seed: int = 0, rows: int | None = None, degree: int = 3
) -> Topology:
    """Build graph ``name`` on ``n`` agents (METHOD.md section 7).

    ``rows`` fixes the torus factorisation (``n = rows x n/rows``); ``seed`` and ``degree`` only
    matter for ``random-regular``. Same arguments -> the same graph on the same machine, built
    once per process: a run's config check, its swarm and its memory estimate share it.
    """
    if name not in TOPOLOGIES:
        raise ConfigError("topology", name, TOPOLOGIES)
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ConfigError("n_agents", n, "a positive integer")
    n = int(n)
    if rows is not None and name != "torus":
        raise ConfigError("torus_rows", rows, "only used by topology 'torus'; leave it unset")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int | np.integer)):
        raise ConfigError("torus_rows", rows, "an integer >= 3 dividing n_agents")
    if name != "random-regular":
        seed, degree = 0, 3  # read by random-regular only: one cached graph for every value
    elif isinstance(degree, bool) or not isinstance(degree, int | np.integer) or degree < 2:
        raise ConfigError("degree", degree, "an integer >= 2 (degree 1 cannot connect n > 2)")
    return _build(name, n, seed, rows, degree)


@lru_cache(maxsize=32)
def _build(name: str, n: int, seed: int, rows: int | None, degree: int) -> Topology:
    if name == "ring":
        _check_n(n, 3, "any n >= 3 for ring")
        return Topology(name, nx.cycle_graph(n))
    if name == "chain":
        _check_n(n, 2, "any n >= 2 for chain")
        return Topology(name, nx.path_graph(n))
    if name == "torus":
        return Topology(name, _torus(n, rows))
    if name == "paper-torus":
        # C_n(1, 4) is 4-regular only once i+4 and i-4 are distinct from each other and from
        # i±1, i.e. n >= 9.
        _check_n(n, 9, "any n >= 9 for paper-torus (circulant C_n(1, 4))")
        return Topology(name, nx.circulant_graph(n, [1, 4]))
    if name in FIXED_SIZES:
        _check_exact(n, name, FIXED_SIZES[name])
    if name == "dyck":
        return Topology(name, nx.LCF_graph(32, [5, -5, 13, -13], 8))
    if name == "paper-dyck":
        return Topology(name, _graph(32, _paper_dyck_edges()))
    if name == "petersen":
        return Topology(name, nx.petersen_graph())
    if name == "full":
        _check_n(n, 1, "any n >= 1 for full")
        return Topology(name, nx.complete_graph(n))
    if name == "exponential":
        _check_n(n, 2, "any n >= 2 for exponential")
        offsets = [2**k for k in range(n.bit_length()) if 2**k < n]
        edges = [(i, (i + s) % n) for i in range(n) for s in offsets]
        return Topology(name, _graph(n, edges))
    return Topology(name, _random_regular(n, degree, seed))


def _torus(n: int, rows: int | None) -> nx.Graph:
    """Periodic r x c grid, node ``(i, j)`` -> agent ``i*c + j``; the most square r <= c."""
    allowed = "n = r x c with r, c >= 3 (e.g. 9, 12, 15, 16, 18, 20, 21, 24, 25, ...)"
    if n < 9:
        raise ConfigError("n_agents", n, allowed, hint=_nearest_tori(n))
    if rows is not None:
        if rows < 3 or n % rows or n // rows < 3:
            raise ConfigError("torus_rows", rows, f"a divisor r of n_agents={n} with r, n/r >= 3")
        r = int(rows)
    else:
        divisors = [r for r in range(3, math.isqrt(n) + 1) if n % r == 0 and n // r >= 3]
        if not divisors:
            raise ConfigError("n_agents", n, allowed, hint=_nearest_tori(n))
        r = divisors[-1]
    c = n // r
    grid = nx.grid_2d_graph(r, c, periodic=True)
    return nx.relabel_nodes(grid, {(i, j): i * c + j for i, j in grid.nodes})


def _nearest_tori(n: int) -> str:
    def ok(m: int) -> bool:
        return any(m % r == 0 and m // r >= 3 for r in range(3, math.isqrt(m) + 1))

    below = next((m for m in range(n - 1, 8, -1) if ok(m)), None)
    above = next(m for m in itertools.count(max(n + 1, 9)) if ok(m))
    return f"nearest valid: {below} or {above}" if below else f"nearest valid: {above}"


def _random_regular(n: int, degree: int, seed: int) -> nx.Graph:
    """A connected seeded random ``degree``-regular graph (disconnected draws are redrawn)."""
    allowed = f"n > degree and n x degree even for random-regular (degree {degree})"
    if n <= degree or (n * degree) % 2:
        raise ConfigError("n_agents", n, allowed)
    rng = random.Random(seed)
    for _ in range(_MAX_REGULAR_DRAWS):
        graph = nx.random_regular_graph(int(degree), n, seed=rng)
        if nx.is_connected(graph):
            return graph
    raise ConfigError(
        "degree",
        degree,
        "a degree whose random regular graphs are connected",
        hint=f"{_MAX_REGULAR_DRAWS} draws on n={n} were all disconnected; try degree >= 3",
    )


@lru_cache(maxsize=1)
def _paper_dyck_edges() -> tuple[tuple[int, int], ...]:
    """The CCL paper's 32-node 'Dyck' graph, shipped inside the package (no repo paths)."""
    text = (resources.files("benchmark") / "resources" / "paper_dyck32.edges").read_text()
    edges = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            u, v = line.split()
            edges.append((int(u), int(v)))
    if len(edges) != 48:
        raise RuntimeError(f"paper_dyck32.edges is corrupted: {len(edges)} edges, expected 48")
    return tuple(edges)


def _graph(n: int, edges: Iterable[tuple[int, int]]) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges)
    return graph


def _check_n(n: object, minimum: int, allowed: str, hint: str = "") -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < minimum:
        raise ConfigError("n_agents", n, allowed, hint=hint)


def _check_exact(n: int, name: str, size: int) -> None:
    if n != size:
        raise ConfigError("n_agents", n, f"exactly {size} for {name}")


def _check_rule(rule: str) -> None:
    if rule not in MIXING_RULES:
        raise ConfigError("mixing", rule, MIXING_RULES)
