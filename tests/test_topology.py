"""Graphs, mixing matrices and spanning trees of METHOD.md sections 2, 3.3 and 7."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from benchmark.errors import ConfigError
from benchmark.topology import (
    TOPOLOGIES,
    Topology,
    build_topology,
    double_binary_trees,
)

# (name, n, expected degree of every agent)
REGULAR_CASES = [
    ("ring", 16, 2),
    ("ring", 3, 2),
    ("torus", 16, 4),
    ("torus", 15, 4),
    ("paper-torus", 32, 4),
    ("paper-torus", 9, 4),
    ("dyck", 32, 3),
    ("paper-dyck", 32, 3),
    ("petersen", 10, 3),
    ("full", 7, 6),
    ("exponential", 16, 7),  # offsets ±1, ±2, ±4, 8 (8 == -8 mod 16)
    ("exponential", 10, 6),  # offsets ±1, ±2, ±4; ±8 coincide with ∓2
    ("exponential", 13, 8),  # offsets ±1, ±2, ±4, ±8 all distinct
    ("random-regular", 16, 3),
]


def _exponential_degree(n: int) -> int:
    offsets = {s % n for k in range(n.bit_length()) if 2**k < n for s in (2**k, -(2**k))}
    return len(offsets - {0})


def _assert_doubly_stochastic(w: np.ndarray, topo: Topology) -> None:
    assert w.dtype == np.float64
    assert w.shape == (topo.n, topo.n)
    np.testing.assert_allclose(w, w.T, atol=1e-15)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert (w >= 0).all()
    # W only has support on edges and the diagonal.
    off_support = ~(topo.adjacency | np.eye(topo.n, dtype=bool))
    assert (w[off_support] == 0).all()


def test_topology_names() -> None:
    assert TOPOLOGIES == (
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


@pytest.mark.parametrize(("name", "n", "degree"), REGULAR_CASES)
def test_regular_graphs(name: str, n: int, degree: int) -> None:
    topo = build_topology(name, n)
    assert topo.name == name and topo.n == n
    assert sorted(topo.graph.nodes) == list(range(n))
    assert topo.adjacency.dtype == bool and topo.adjacency.shape == (n, n)
    assert (topo.adjacency == topo.adjacency.T).all()
    assert not topo.adjacency.diagonal().any()
    assert topo.is_regular
    assert topo.degrees.tolist() == [degree] * n
    assert nx.is_connected(topo.graph)
    for i in range(n):
        nbrs = topo.neighbors(i)
        assert nbrs == sorted(nbrs) and len(nbrs) == degree
        assert nbrs == np.flatnonzero(topo.adjacency[i]).tolist()


@pytest.mark.parametrize("n", [2, 3, 5, 8, 10, 13, 16, 31, 32, 40])
def test_exponential_matches_definition(n: int) -> None:
    topo = build_topology("exponential", n)
    assert topo.degrees.tolist() == [_exponential_degree(n)] * n
    for i in range(n):
        expected = {(i + s) % n for k in range(n) if 2**k < n for s in (2**k, -(2**k))}
        assert set(topo.neighbors(i)) == expected - {i}


@pytest.mark.parametrize(("name", "n", "degree"), REGULAR_CASES)
@pytest.mark.parametrize("rule", ["uniform", "metropolis"])
def test_mixing_matrix_doubly_stochastic(name: str, n: int, degree: int, rule: str) -> None:
    topo = build_topology(name, n)
    w = topo.mixing_matrix(rule)
    _assert_doubly_stochastic(w, topo)
    if rule == "uniform":
        # On a regular graph both rules give 1/(d+1) on every edge and on the diagonal.
        np.testing.assert_allclose(w.diagonal(), 1.0 / (degree + 1))
        np.testing.assert_allclose(w, topo.mixing_matrix("metropolis"), rtol=0, atol=1e-15)
    assert 0.0 < topo.spectral_gap(rule) <= 1.0


def test_ring_is_cycle_and_chain_is_path() -> None:
    ring = build_topology("ring", 16)
    assert ring.neighbors(0) == [1, 15] and ring.neighbors(7) == [6, 8]
    assert ring.diameter == 8
    chain = build_topology("chain", 5)
    assert chain.degrees.tolist() == [1, 2, 2, 2, 1]
    assert not chain.is_regular
    assert chain.diameter == 4
    assert chain.neighbors(0) == [1] and chain.neighbors(2) == [1, 3]


def test_metropolis_on_chain() -> None:
    chain = build_topology("chain", 4)
    w = chain.mixing_matrix("metropolis")
    _assert_doubly_stochastic(w, chain)
    # deg = [1, 2, 2, 1]: every edge touches a degree-2 agent, so every edge weight is 1/3.
    third = 1.0 / 3.0
    expected = np.array(
        [
            [2 * third, third, 0, 0],
            [third, third, third, 0],
            [0, third, third, third],
            [0, 0, third, 2 * third],
        ]
    )
    np.testing.assert_allclose(w, expected)
    assert 0.0 < chain.spectral_gap("metropolis") < 1.0


def test_spectral_gap_ring16_uniform() -> None:
    # W = (I + A)/3 on the 16-ring; its eigenvalues are (1 + 2 cos(2 pi k / 16)) / 3.
    # lambda_2 (k = 1) = (1 + 2 cos(pi/8)) / 3 = (1 + 2 * 0.92388) / 3 = 0.94925,
    # lambda_n (k = 8) = (1 - 2) / 3 = -1/3, so the gap is 1 - 0.94925 = 0.0507.
    gap = build_topology("ring", 16).spectral_gap("uniform")
    assert gap == pytest.approx(0.0507, abs=1e-3)
    assert gap == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / 16)) / 3, abs=1e-12)


def test_spectral_gap_full_graph_is_one() -> None:
    # W = J/n: eigenvalues 1 and 0 (n-1 times).
    assert build_topology("full", 8).spectral_gap() == pytest.approx(1.0)


def test_dyck_graphs() -> None:
    dyck = build_topology("dyck", 32)
    assert dyck.diameter == 5
    assert dyck.graph.number_of_edges() == 48
    paper = build_topology("paper-dyck", 32)
    assert paper.diameter == 6
    assert nx.is_bipartite(paper.graph)
    assert paper.graph.number_of_edges() == 48
    assert paper.neighbors(0) == [1, 7, 8]  # first lines of the shipped edge file
    assert not nx.is_isomorphic(dyck.graph, paper.graph)


def test_petersen() -> None:
    petersen = build_topology("petersen", 10)
    assert petersen.diameter == 2
    assert petersen.graph.number_of_edges() == 15
    assert nx.is_isomorphic(petersen.graph, nx.petersen_graph())


def test_torus_shapes() -> None:
    square = build_topology("torus", 16)
    assert square.n == 16 and square.degrees.tolist() == [4] * 16
    assert nx.is_isomorphic(square.graph, nx.grid_2d_graph(4, 4, periodic=True))
    assert square.neighbors(0) == [1, 3, 4, 12]  # row-major: right, left wrap, down, up wrap
    rect = build_topology("torus", 15)
    assert nx.is_isomorphic(rect.graph, nx.grid_2d_graph(3, 5, periodic=True))
    # Most square factorisation by default, `rows` overrides it.
    assert build_topology("torus", 36).diameter == 6  # 6 x 6
    assert build_topology("torus", 36, rows=3).diameter == 1 + 6  # 3 x 12
    with pytest.raises(ConfigError, match="rows"):
        build_topology("torus", 36, rows=5)
    with pytest.raises(ConfigError, match="rows"):
        build_topology("ring", 16, rows=4)


def test_paper_torus_is_circulant_1_4() -> None:
    topo = build_topology("paper-torus", 32)
    assert topo.neighbors(0) == [1, 4, 28, 31]
    assert topo.neighbors(10) == [6, 9, 11, 14]


def test_random_regular_is_seeded() -> None:
    a = build_topology("random-regular", 20, seed=1, degree=4)
    b = build_topology("random-regular", 20, seed=1, degree=4)
    c = build_topology("random-regular", 20, seed=2, degree=4)
    assert a.degrees.tolist() == [4] * 20
    assert (a.adjacency == b.adjacency).all()
    assert not (a.adjacency == c.adjacency).all()
    # Degree 2 draws are often a union of cycles; only a connected one comes back.
    assert nx.is_connected(build_topology("random-regular", 30, seed=0, degree=2).graph)


@pytest.mark.parametrize(
    ("name", "n", "allowed"),
    [
        ("ring", 2, "n >= 3"),
        ("chain", 1, "n >= 2"),
        ("dyck", 16, "exactly 32 for dyck"),
        ("paper-dyck", 31, "exactly 32 for paper-dyck"),
        ("petersen", 11, "exactly 10 for petersen"),
        ("torus", 10, "n = r x c with r, c >= 3"),
        ("torus", 14, "n = r x c with r, c >= 3"),
        ("paper-torus", 8, "n >= 9"),
        ("random-regular", 7, "n x degree even"),
        ("random-regular", 3, "n > degree"),
    ],
)
def test_unsupported_sizes(name: str, n: int, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_topology(name, n)
    message = str(info.value)
    assert message.startswith(f"n_agents: invalid value {n}")
    assert allowed in message
    assert info.value.field == "n_agents"


def test_torus_error_suggests_nearest_sizes() -> None:
    with pytest.raises(ConfigError, match=r"nearest valid: 9 or 12"):
        build_topology("torus", 10)


def test_unknown_topology() -> None:
    with pytest.raises(ConfigError) as info:
        build_topology("rign", 16)
    message = str(info.value)
    assert message.startswith("topology: invalid value 'rign'")
    assert "paper-dyck" in message and "did you mean 'ring'" in message


def test_uniform_on_irregular_graph_points_to_metropolis() -> None:
    chain = build_topology("chain", 5)
    for call in (chain.mixing_matrix, chain.spectral_gap):
        with pytest.raises(ConfigError) as info:
            call("uniform")
        assert info.value.field == "mixing"
        assert "metropolis" in str(info.value)


def test_unknown_mixing_rule() -> None:
    with pytest.raises(ConfigError, match=r"^mixing: invalid value 'metropolice'.*metropolis"):
        build_topology("ring", 8).mixing_matrix("metropolice")


def _assert_spanning_tree(tree: Topology, n: int) -> None:
    assert tree.n == n
    assert tree.graph.number_of_edges() == n - 1
    assert nx.is_connected(tree.graph)
    assert nx.is_tree(tree.graph)


def _is_subgraph(tree: Topology, topo: Topology) -> bool:
    return bool((topo.adjacency | ~tree.adjacency).all())


@pytest.mark.parametrize(("name", "n", "degree"), REGULAR_CASES)
def test_auto_spanning_trees(name: str, n: int, degree: int) -> None:
    topo = build_topology(name, n)
    tree = topo.spanning_tree()
    _assert_spanning_tree(tree, n)
    assert _is_subgraph(tree, topo)
    bfs = topo.spanning_tree("bfs")
    _assert_spanning_tree(bfs, n)
    assert _is_subgraph(bfs, topo)
    # BFS from agent 0 keeps every agent at its graph distance from 0.
    assert nx.eccentricity(bfs.graph, 0) == nx.eccentricity(topo.graph, 0)


def test_ring_relays_over_the_chain() -> None:
    ring = build_topology("ring", 16)
    for kind in ("auto", "chain"):
        tree = ring.spanning_tree(kind)
        _assert_spanning_tree(tree, 16)
        assert _is_subgraph(tree, ring)
        assert sorted(tree.graph.edges) == [(i, i + 1) for i in range(15)]
        assert tree.diameter == 15
        assert not tree.is_regular
    assert build_topology("chain", 6).spanning_tree().diameter == 5
    # Other graphs default to BFS: the torus 4x4 tree is shallow, not a Hamiltonian path.
    assert build_topology("torus", 16).spanning_tree().diameter < 15


def test_chain_tree_needs_the_path() -> None:
    with pytest.raises(ConfigError) as info:
        build_topology("paper-dyck", 32).spanning_tree("chain")
    assert info.value.field == "relay_tree"
    assert "bfs" in str(info.value)
    with pytest.raises(ConfigError, match="relay_tree"):
        build_topology("ring", 8).spanning_tree("star")


def test_tree_topologies_are_irregular() -> None:
    tree = build_topology("ring", 8).spanning_tree()
    with pytest.raises(ConfigError, match="mixing"):
        tree.mixing_matrix("uniform")
    _assert_doubly_stochastic(tree.mixing_matrix("metropolis"), tree)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 16, 32])
def test_double_binary_trees(n: int) -> None:
    first, second = double_binary_trees(n)
    for tree in (first, second):
        _assert_spanning_tree(tree, n)
        assert tree.degrees.max(initial=0) <= 3  # binary: a parent and at most two children
        assert tree.diameter <= 2 * math.floor(math.log2(n))
    if n >= 3:
        # Heap order: agent 0 is the root of tree 1, agent n-1 the root of tree 2.
        assert first.neighbors(0) == [1, 2]
        assert second.neighbors(n - 1) == [n - 3, n - 2]


def test_double_binary_trees_are_complementary() -> None:
    # With an even n every inner node of one tree is a leaf of the other (NCCL's load balance).
    first, second = double_binary_trees(16)
    inner_first = {i for i in range(16) if first.degrees[i] > 1}
    inner_second = {i for i in range(16) if second.degrees[i] > 1}
    assert not inner_first & inner_second


def test_double_binary_spanning_tree_kind() -> None:
    tree = build_topology("paper-dyck", 32).spanning_tree("double-binary")
    first, _ = double_binary_trees(32)
    assert (tree.adjacency == first.adjacency).all()


def test_arrays_are_read_only() -> None:
    topo = build_topology("ring", 8)
    with pytest.raises(ValueError):
        topo.adjacency[0, 1] = False
    with pytest.raises(ValueError):
        topo.degrees[0] = 5
    topo.neighbors(0).append(99)
    assert topo.neighbors(0) == [1, 7]
