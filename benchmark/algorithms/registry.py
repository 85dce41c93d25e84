"""The registry of base optimisers: one registered class per algorithm, looked up by name.

A class registers itself with the ``@register`` decorator in its own module, and registration
checks that it declares everything the suite reads (:mod:`.base`): a name, a summary, its own
typed options with a default for each, a stability analysis for every choice of its options,
its state. Every other part of the suite reads this registry: the run options and their
normalisation (:mod:`benchmark.config`), the method presets (:mod:`benchmark.methods`), the
stability guard, the checkpoint fingerprint, the tuning spaces, the CLI's help and the report.

The built-in algorithms are the modules of this package (``benchmark.algorithms`` imports each).
An algorithm defined outside the package registers the same way in its own module; the suite
imports that module when the environment variable ``BENCHMARK_PLUGINS`` names it
(comma-separated importable module names, e.g. found through ``PYTHONPATH``), so a fresh
``python -m benchmark`` process, every workflow job and the report all know it. A script may
also just import the module before it builds anything.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, TypeVar, get_origin

from ..errors import ConfigError, UserError, literal_choices
from .analysis import ANALYSES
from .base import Algorithm, Options

PLUGINS = "BENCHMARK_PLUGINS"
# an algorithm's name is a method name too: it appears in result paths and MLflow run names
NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")

AlgorithmClass = type[Algorithm[Any]]
A = TypeVar("A", bound=AlgorithmClass)

_ALGORITHMS: dict[str, AlgorithmClass] = {}
_IMPORTED: set[str] = set()  # plugin modules already imported


class RegistryError(UserError):
    """An algorithm that cannot be registered: one line naming the class and what it lacks."""


def register(cls: A) -> A:
    """Add an algorithm class to the registry (a class decorator); registering the same class
    again is a no-op, anything incomplete or clashing is a :class:`RegistryError`."""
    where = f"register {getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
    if not (inspect.isclass(cls) and issubclass(cls, Algorithm)):
        raise RegistryError(f"{where}: not a subclass of benchmark.algorithms.base.Algorithm")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RegistryError(f"{where}: name {name!r}: lower-case letters, digits and '-', "
                            "starting with a letter, at most 40 characters (it names results)")
    if not isinstance(getattr(cls, "summary", None), str) or not cls.summary.strip():
        raise RegistryError(f"{where}: a one-line summary (class attribute 'summary')")
    options = getattr(cls, "options_type", None)
    if not (inspect.isclass(options) and issubclass(options, Options)):
        raise RegistryError(f"{where}: options_type: a subclass of "
                            "benchmark.algorithms.base.Options (an empty one if it has none)")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise RegistryError(
            f"{where}: declare {', '.join(missing)} (stability: one of ClosedForm, NoGossip, "
            "Measured, Unanalysed of benchmark.algorithms.analysis; an algorithm is never "
            "launched without one)")
    existing = _ALGORITHMS.get(name)
    if existing is cls:
        return cls
    if existing is not None:
        raise RegistryError(f"{where}: the name {name!r} is taken by "
                            f"{existing.__module__}.{existing.__qualname__}")
    for other in _ALGORITHMS.values():
        if other.options_type is options:
            raise RegistryError(f"{where}: options_type {options.__name__} already configures "
                                f"{other.name!r}; give each algorithm its own options class")
        shared = sorted(set(other.options_type.names()) & set(options.names()))
        if shared:
            raise RegistryError(f"{where}: option {shared[0]!r} is already an option of "
                                f"{other.name!r}; each run option belongs to one algorithm")
    _check_analyses(cls, where)
    _ALGORITHMS[name] = cls
    return cls


def _check_analyses(cls: AlgorithmClass, where: str) -> None:
    """Every option has a default, and every choice of the options has an analysis."""
    try:
        cases = variants(cls.options_type)
    except ConfigError as err:
        raise RegistryError(f"{where}: every option needs a default ({err})") from None
    for options in cases:
        analysis = cls.stability(options)
        if not isinstance(analysis, ANALYSES):
            raise RegistryError(
                f"{where}: stability({options!r}) returned {analysis!r}; expected one of "
                + ", ".join(kind.__name__ for kind in ANALYSES))


def variants(options_type: type[Options]) -> list[Options]:
    """The options at every combination of their choices (``Literal`` and boolean fields),
    the other fields at their defaults: the cases a stability table lists."""
    choices: list[list[tuple[str, object]]] = []
    for name, field in options_type.model_fields.items():
        if get_origin(field.annotation) is Literal:
            values: list[object] = list(literal_choices(field.annotation))
        elif field.annotation is bool:
            values = [False, True]
        else:
            continue
        choices.append([(name, v) for v in values])
    return [options_type(**dict(combo)) for combo in itertools.product(*choices)]


def registered() -> Mapping[str, AlgorithmClass]:
    """Every registered algorithm by name, in registration order (the built-ins first)."""
    _import_plugins()
    return MappingProxyType(_ALGORITHMS)


def algorithm_class(name: str) -> AlgorithmClass:
    known = registered()
    if name not in known:
        raise ConfigError("algorithm", name, list(known))
    return known[name]


def algorithm_for(options: Options) -> AlgorithmClass:
    """The algorithm a typed options object configures."""
    for cls in registered().values():
        if type(options) is cls.options_type:
            return cls
    raise TypeError(f"{type(options).__name__} configures no registered algorithm")


def is_built_in(cls: AlgorithmClass) -> bool:
    """Whether an algorithm is one of the suite's own (a module of this package), not a plugin."""
    return cls.__module__.startswith(f"{__package__}.")


def option_owners() -> dict[str, AlgorithmClass]:
    """Every registered algorithm's option name -> the algorithm that declares it."""
    return {name: cls for cls in registered().values() for name in cls.options_type.names()}


def _import_plugins() -> None:
    """Import the modules named by ``BENCHMARK_PLUGINS`` (once each); they register
    themselves."""
    for module in (m.strip() for m in os.environ.get(PLUGINS, "").split(",")):
        if not module or module in _IMPORTED:
            continue
        _IMPORTED.add(module)  # first: the module may look the registry up while importing
        try:
            importlib.import_module(module)
        except ImportError as err:
            _IMPORTED.discard(module)
            raise UserError(f"{PLUGINS}: cannot import {module!r} ({err}); name importable "
                            "modules, comma-separated (e.g. on PYTHONPATH)") from None


