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


def train_samples(dataset: str, synthetic: dict[str, Any] | None = None,
                  val_fraction: float = 0.0) -> int | None:
    """Training samples a run of ``dataset`` shares among its agents (None if unknown): the
    training split less the validation samples carved from it (scikit-learn rounds those up)."""
    if dataset == "synthetic":
        n = (synthetic or {}).get("train_size", SYNTHETIC_DEFAULTS["train_size"])
    else:
        n = TRAIN_SIZES.get(dataset)
    if not isinstance(n, int) or isinstance(n, bool):
        return None
    return n - math.ceil(n * val_fraction)
