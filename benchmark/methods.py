"""Method presets: the names the workflow and the tables use, as data.

A method is a base optimiser plus which CCL terms are active. Every registered algorithm
(:mod:`benchmark.algorithms`) is a method of its own name without CCL; the rows of
:data:`PRESETS` put CCL on top of one. Adding a method is adding a row (a plugin adds its own
with :func:`register_preset`), never a code branch. ``ccl_terms`` lists the lambdas that stay
as configured; the others are forced to zero (the ablations), and an empty tuple means "no CCL
at all".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .algorithms import RegistryError, registered
from .algorithms.registry import NAME, is_built_in

CCL_TERMS: tuple[str, ...] = ("lambda_m", "lambda_d")


@dataclass(frozen=True)
class Method:
    algorithm: str
    ccl_terms: tuple[str, ...] = ()
    description: str = ""


PRESETS: dict[str, Method] = {
    "ccl": Method("qgm", CCL_TERMS, "QG-DSGDm-N + CCL (the paper's method)"),
    "ccl-dsgdm": Method("dsgdm-n", CCL_TERMS, "DSGDm-N + CCL"),
    "ccl-relay": Method("relaysgd", CCL_TERMS, "RelaySGD + CCL"),
    "ccl-mv": Method("qgm", ("lambda_m",), "QG-DSGDm-N + model-variant loss only"),
    "ccl-dv": Method("qgm", ("lambda_d",), "QG-DSGDm-N + data-variant loss only"),
}


# the presets plugins add (register_preset), after the suite's own
_ADDED: dict[str, Method] = {}


class _Methods(Mapping[str, Method]):
    """Every method, read live: the suite's own algorithms and presets first (so their order in
    the tables and their colours in the figures never move), then the plugins'."""

    def _table(self) -> dict[str, Method]:
        algorithms = registered()
        own = {name for name, cls in algorithms.items() if is_built_in(cls)}
        bases = {name: Method(name, (), cls.summary) for name, cls in algorithms.items()}
        clash = sorted(bases.keys() & (PRESETS.keys() | _ADDED.keys()))
        if clash:
            raise RegistryError(f"algorithm {clash[0]!r}: the name of a preset; choose another")
        return {**{n: m for n, m in bases.items() if n in own}, **PRESETS,
                **{n: m for n, m in bases.items() if n not in own}, **_ADDED}

    def __getitem__(self, name: str) -> Method:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


METHODS: Mapping[str, Method] = _Methods()


def register_preset(name: str, method: Method) -> None:
    """Add a CCL preset of a registered algorithm (for a plugin module; built-in presets are
    rows of :data:`PRESETS`). The same row again is a no-op."""
    if _ADDED.get(name) == method:
        return
    if not NAME.fullmatch(name) or name in METHODS:
        raise RegistryError(f"preset {name!r}: a new name of lower-case letters, digits and "
                            "'-' (it names results)")
    if method.algorithm not in registered():
        raise RegistryError(f"preset {name!r}: algorithm {method.algorithm!r} is not registered")
    if not method.ccl_terms or set(method.ccl_terms) - set(CCL_TERMS):
        raise RegistryError(f"preset {name!r}: ccl_terms from {', '.join(CCL_TERMS)} (the "
                            "algorithm alone is already the method of its name)")
    _ADDED[name] = method


def zeroed_lambdas(name: str) -> list[str]:
    """The CCL weights preset ``name`` forces to 0 whatever is configured."""
    return [k for k in CCL_TERMS if k not in METHODS[name].ccl_terms]


def resolve_method(
    name: str, lambda_m: float, lambda_d: float
) -> tuple[str, dict[str, float] | None]:
    """Return (algorithm, ccl weights or None) for a preset name and the configured lambdas."""
    method = METHODS[name]
    if not method.ccl_terms:
        return method.algorithm, None
    configured = {"lambda_m": lambda_m, "lambda_d": lambda_d}
    weights = {k: (v if k in method.ccl_terms else 0.0) for k, v in configured.items()}
    return method.algorithm, weights
