"""Dependencies inside ``benchmark`` point one way: no import cycle, and every module imports only
modules of its own layer or of a lower one (docs/DESIGN.md, "Layers").

Every ``import`` statement counts, including those inside functions and ``TYPE_CHECKING`` blocks:
a deferred import is still a dependency. A new module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "benchmark"

# lowest first; a module may import from its own layer and the layers before it. A name stands
# for that module or package and everything under it (``report`` covers ``report.tables``).
# config sits above the registries and the algorithms because it validates names against the
# registries and refuses unstable gossip settings (stability.py); no algorithm reads a
# RunConfig: train turns the config into their typed options.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"benchmark", "errors", "io", "strict_yaml", "interrupts", "schema",
                     "timing", "distributed", "gpu_slots", "device", "opcount", "samples",
                     "names", "checksum"}),
    ("data, topology, models", {"data", "topology", "models"}),
    ("swarm state", {"swarm_state"}),
    # methods: the presets, every registered algorithm being one (it reads the registry)
    ("algorithms", {"algorithms", "methods", "stability"}),
    # tuning.spec: the family's tuning: section, part of the family schema grid validates
    ("config", {"config", "metrics", "checkpoint", "grid", "tuning.spec"}),
    ("swarm", {"swarm", "forward_backward", "memory", "evaluation"}),
    ("outputs", {"report", "tracking", "instability", "saved"}),
    ("train", {"train", "run_output"}),
    ("entry points", {"tuning", "plan", "calibrate", "cli", "preload", "__main__"}),
]


def _layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest listed name that is ``module`` or a package above it."""
    name = module.removeprefix("benchmark.") if module != "benchmark" else module
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for k, (_, members) in enumerate(LAYERS):
        for member in members:
            if (name == member or name.startswith(member + ".")) and (
                    best is None or len(member) > best[0]):
                best = (len(member), k)
    return None if best is None else best[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The ``benchmark`` modules that ``name`` imports (relative imports resolved)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1]
                                + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name`, the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        graph.add_edges_from((name, dep) for dep in _imports(name, path, set(modules)))
    return graph


def _short(name: str) -> str:
    return name.removeprefix("benchmark.") if name != "benchmark" else "benchmark"


def test_the_resolver_sees_relative_and_deferred_imports():
    graph = _graph()
    assert graph.has_edge("benchmark.swarm", "benchmark.algorithms")  # from .algorithms import
    assert graph.has_edge("benchmark.algorithms.qgm", "benchmark.algorithms.base")  # from .base
    assert graph.has_edge("benchmark.cli", "benchmark.train")  # inside a function
    assert graph.has_edge("benchmark.train", "benchmark.distributed")  # from . import distributed


def test_no_import_cycle():
    cycles = list(nx.simple_cycles(_graph()))
    assert cycles == [], [" -> ".join(map(_short, c)) for c in cycles]


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = _graph()
    layer = {module: _layer_of(module) for module in graph}
    assert [m for m, k in layer.items() if k is None] == [], "give the module a layer in LAYERS"
    upward = [f"{_short(a)} ({LAYERS[layer[a]][0]}) imports {_short(b)} ({LAYERS[layer[b]][0]})"
              for a, b in graph.edges if layer[b] > layer[a]]
    assert upward == []
