"""Training-set sizes known without reading a file.

A config is checked against them before anything expensive happens: 20000 agents on the 1437
digits training images must be refused before the 20000 x 20000 mixing matrix is built or the
data are loaded. The partition still checks the real split once the data are loaded.
"""

from __future__ import annotations

import math
from typing import Any

from .registry import DIGITS_TEST_FRACTION, SYNTHETIC_DEFAULTS

DIGITS_SAMPLES = 1797  # scikit-learn's load_digits, split into train and test by the registry
TRAIN_SIZES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "fmnist": 60_000,
    "imagenette": 9_469,  # the v2 release
    "imagenet": 1_281_167,
    "digits": DIGITS_SAMPLES - math.ceil(DIGITS_SAMPLES * DIGITS_TEST_FRACTION),
}


def _training_split(dataset: str, synthetic: dict[str, Any] | None) -> int | None:
    if dataset == "synthetic":
        n = (synthetic or {}).get("train_size", SYNTHETIC_DEFAULTS["train_size"])
    else:
        n = TRAIN_SIZES.get(dataset)
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def validation_samples(dataset: str, synthetic: dict[str, Any] | None = None,
                       val_fraction: float = 0.0) -> int | None:
    """Samples of the validation split carved from the training split (None if unknown):
    ``ceil(n * val_fraction)``, as scikit-learn's ``train_test_split`` rounds them."""
    n = _training_split(dataset, synthetic)
    return None if n is None else math.ceil(n * val_fraction)


def train_samples(dataset: str, synthetic: dict[str, Any] | None = None,
                  val_fraction: float = 0.0) -> int | None:
    """Training samples a run of ``dataset`` shares among its agents (None if unknown): the
    training split less the validation samples carved from it."""
    n = _training_split(dataset, synthetic)
    return None if n is None else n - math.ceil(n * val_fraction)
