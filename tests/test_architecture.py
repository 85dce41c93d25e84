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

# lowest first; a module may import from its own layer and the layers before it
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"benchmark", "errors", "io", "methods", "timing", "distributed"}),
    ("registries", {"data", "data.loader", "data.partition", "data.registry", "topology",
                    "models", "models.lenet", "models.mlp", "models.mobilenetv2",
                    "models.norms", "models.resnet"}),
    ("config", {"config", "checkpoint", "grid"}),
    ("swarm state", {"swarm_state"}),
    ("algorithms", {"algorithms", "algorithms.base", "algorithms.dsgdm", "algorithms.qgm",
                    "algorithms.relaysgd", "algorithms.ccl"}),
    ("swarm", {"swarm"}),
    ("outputs", {"report", "tracking"}),
    ("train", {"train"}),
    ("entry points", {"tuning", "cli", "__main__"}),
]


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
    layer = {f"benchmark.{m}" if m != "benchmark" else m: k
             for k, (_, members) in enumerate(LAYERS) for m in members}
    graph = _graph()
    assert set(graph) - set(layer) == set(), "give the new module a layer in LAYERS"
    upward = [f"{_short(a)} ({LAYERS[layer[a]][0]}) imports {_short(b)} ({LAYERS[layer[b]][0]})"
              for a, b in graph.edges if layer[b] > layer[a]]
    assert upward == []
