"""Base optimisers, one small module each, looked up by name."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Algorithm
from .dsgdm import DSGDm
from .qgm import QGM
from .relaysgd import RelaySGD

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (DSGDm, QGM, RelaySGD)}


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ConfigError("algorithm", name, list(ALGORITHMS))
    return ALGORITHMS[name]


__all__ = ["ALGORITHMS", "Algorithm", "algorithm_class"]
