"""Base optimisers, one module each, registered by name (:mod:`.registry`), and the CCL loss.

Every module of this package is imported here and registers the algorithm it declares, so adding
a built-in algorithm is adding one module (docs/DESIGN.md, "Adding an algorithm"); one outside
the package is named in ``BENCHMARK_PLUGINS``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .analysis import Analysis, ClosedForm, Measured, NoGossip, Unanalysed
from .base import Algorithm, MomentumAlgorithm, Options, OptionValue, nesterov_step
from .registry import (
    PLUGINS,
    RegistryError,
    algorithm_class,
    algorithm_for,
    option_owners,
    register,
    registered,
    variants,
)

for _module in pkgutil.iter_modules(__path__):  # alphabetical: the order of the tables
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PLUGINS", "Algorithm", "Analysis", "ClosedForm", "Measured", "MomentumAlgorithm",
           "NoGossip", "OptionValue", "Options", "RegistryError", "Unanalysed",
           "algorithm_class", "algorithm_for", "nesterov_step", "option_owners", "register",
           "registered", "variants"]
