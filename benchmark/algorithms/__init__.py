"""Base optimisers, one small module each, looked up by name; each has its own typed options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .base import Algorithm, build_options, option_names
from .dsgdm import DSGDm
from .qgm import QGM
from .relaysgd import RelaySGD

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (DSGDm, QGM, RelaySGD)}
# typed options -> the algorithm they configure (one options type per algorithm)
_BY_OPTIONS: dict[type, type[Algorithm]] = {cls.Options: cls for cls in ALGORITHMS.values()}
assert len(_BY_OPTIONS) == len(ALGORITHMS), "two algorithms share an options type"


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ConfigError("algorithm", name, list(ALGORITHMS))
    return ALGORITHMS[name]


def algorithm_options(name: str, values: Mapping[str, Any]) -> Any:
    """The typed options of algorithm ``name`` from the keys it declares (strict: see
    :func:`options_from`, which picks them out of a larger mapping such as a RunConfig)."""
    return build_options(algorithm_class(name).Options, values)


def options_from(name: str, source: Any) -> Any:
    """Algorithm ``name``'s typed options read from the same-named attributes of ``source``."""
    options_type = algorithm_class(name).Options
    return options_type(**{key: getattr(source, key) for key in option_names(options_type)})


def algorithm_for(options: Any) -> type[Algorithm]:
    """The algorithm a typed options object configures."""
    return _BY_OPTIONS[type(options)]


__all__ = ["ALGORITHMS", "Algorithm", "algorithm_class", "algorithm_for", "algorithm_options",
           "options_from"]
