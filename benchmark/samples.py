"""What one input sample looks like: the kinds of samples datasets hold and models take.

A sample's shape says its kind: ``[C, H, W]`` is an image, ``[C, L]`` a 1-D signal (MNIST-1D).
Dataset rows (:mod:`benchmark.data.registry`) carry a sample shape, model rows
(:mod:`benchmark.models`) the kinds they take; the run config refuses a pair that does not match
before any data is read. Both sides live below this module, so the names are defined once here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from .errors import ConfigError

SampleKind = Literal["image", "signal"]
KIND_OF_RANK: dict[int, SampleKind] = {3: "image", 2: "signal"}
DESCRIBED: dict[SampleKind, str] = {"image": "images [C, H, W]", "signal": "1-D signals [C, L]"}


def sample_kind(shape: Sequence[int]) -> SampleKind:
    """``image`` for ``[C, H, W]``, ``signal`` for ``[C, L]``."""
    return KIND_OF_RANK[len(shape)]


def check_sample_shape(shape: object, field: str = "sample_shape") -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints of a known rank, else one :class:`ConfigError`."""
    ranks = " or ".join(DESCRIBED[kind] for kind in KIND_OF_RANK.values())
    if not isinstance(shape, Sequence) or isinstance(shape, str) or \
            len(shape) not in KIND_OF_RANK or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ConfigError(field, shape, f"positive sizes of {ranks}")
    return tuple(shape)
