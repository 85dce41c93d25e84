"""Model registry: every model returns ``(features, logits)`` and has ``feature_dim``.

Features are the input of the final linear layer (``model.classifier``, registered last so its
parameters close ``model.parameters()``); the CCL losses compare them across agents. Forward
passes use no in-place ops, no ``.item()`` and no data-dependent branching, so the simulator can
run all agents at once with ``torch.func.functional_call`` under ``torch.func.vmap``.

``REGISTRY`` is a table, one :class:`ModelRow` per model: its builder, default and allowed
norms, and the kinds of samples it takes (:mod:`benchmark.samples`). Adding a model is its file
and one row; the config validation, the CLI and the docs' lists read the rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from benchmark.errors import ConfigError, UserError
from benchmark.models.convbase1d import ConvBase1d
from benchmark.models.lenet import LeNet5
from benchmark.models.mlp import MLP
from benchmark.models.mobilenetv2 import mobilenetv2
from benchmark.models.norms import (
    DEFAULT_EVONORM_STYLE,
    EVONORM_STYLES,
    NORMS,
    EvoNormS0,
    check_norm,
    make_norm,
)
from benchmark.models.resnet import resnet18, resnet20
from benchmark.samples import (
    DESCRIBED,
    KIND_OF_RANK,
    SampleKind,
    check_sample_shape,
    sample_kind,
)

# (num_classes, sample shape, norm, evonorm_style) -> a freshly initialised model
Builder = Callable[[int, tuple[int, ...], str, str], nn.Module]


@dataclass(frozen=True)
class ModelRow:
    """One model: how to build it and what it accepts."""

    build: Builder
    default_norm: str  # used when the config leaves `norm` unset (the paper's choice, METHOD.md 5)
    norms: tuple[str, ...]  # the norms it can be built with
    kinds: tuple[SampleKind, ...]  # the samples it takes: "image" [C, H, W], "signal" [C, L]


def _conv2d(build: Callable[..., nn.Module]) -> Builder:
    """A builder of an image network whose pooling adapts to any image size."""
    return lambda k, shape, norm, style: build(k, shape[0], norm, style)


def _lenet5(k: int, shape: tuple[int, ...], norm: str, style: str) -> nn.Module:
    channels, height, width = shape
    if height != width:  # its fully connected input size assumes square images
        raise ConfigError("sample_shape", shape, "square images [C, S, S] for lenet5")
    return LeNet5(k, channels, height)


REGISTRY: dict[str, ModelRow] = {
    "resnet20": ModelRow(_conv2d(resnet20), "evonorm", NORMS, ("image",)),
    "lenet5": ModelRow(_lenet5, "none", ("none",), ("image",)),
    "mobilenetv2": ModelRow(_conv2d(mobilenetv2), "evonorm", NORMS, ("image",)),
    # the authors' default norm_type for every model
    "resnet18": ModelRow(_conv2d(resnet18), "evonorm", NORMS, ("image",)),
    "mlp": ModelRow(lambda k, shape, norm, style: MLP(k, math.prod(shape)), "none", ("none",),
                    ("image", "signal")),
    "convbase1d": ModelRow(lambda k, shape, norm, style: ConvBase1d(k, *shape), "none",
                           ("none",), ("signal",)),
}


def check_model_row(name: str, row: ModelRow) -> None:
    """Refuse an incomplete or inconsistent registry row, naming it and the field."""

    def bad(field: str, why: str) -> UserError:
        return UserError(f"model registry row {name!r}: {field} {why}")

    if not callable(row.build):
        raise bad("build", "missing: (num_classes, sample_shape, norm, evonorm_style) -> model")
    if not row.kinds or not set(row.kinds) <= set(KIND_OF_RANK.values()):
        raise bad("kinds", f"{row.kinds!r} unknown; allowed: {', '.join(DESCRIBED)}")
    if not row.norms or not set(row.norms) <= set(NORMS):
        raise bad("norms", f"{row.norms!r} unknown; allowed: {', '.join(NORMS)}")
    if row.default_norm not in row.norms:
        raise bad("default_norm", f"{row.default_norm!r} not among its norms {row.norms}")


for _name, _row in REGISTRY.items():  # an incomplete row fails at import, naming its field
    check_model_row(_name, _row)
MODELS: tuple[str, ...] = tuple(REGISTRY)
# Norm used when the config leaves it unset: the paper's choice per model (METHOD.md section 5).
DEFAULT_NORM: dict[str, str] = {name: row.default_norm for name, row in REGISTRY.items()}


def models_taking(kind: SampleKind) -> list[str]:
    """The models that take samples of ``kind``, in registry order."""
    return [name for name, row in REGISTRY.items() if kind in row.kinds]


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    norm: str | None = None,
    image_size: int = 32,
    evonorm_style: str = DEFAULT_EVONORM_STYLE,
    sample_shape: tuple[int, ...] | list[int] | None = None,
) -> nn.Module:
    """Build a freshly initialised model by name (seed torch beforehand for reproducibility).

    ``sample_shape`` is one input sample (``[C, H, W]`` images, ``[C, L]`` 1-D signals, as a
    :class:`~benchmark.data.DatasetBundle` has it); without it the input is square images of
    ``in_channels`` x ``image_size`` x ``image_size``. ``norm=None`` picks the model's default
    (:data:`DEFAULT_NORM`). ``evonorm_style`` only affects evonorm (:mod:`benchmark.models.norms`):
    "hardsigmoid" is the CCL authors' code. Bad values raise
    :class:`~benchmark.errors.ConfigError` naming the field.
    """
    if name not in REGISTRY:
        raise ConfigError("model", name, MODELS)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError("num_classes", num_classes, "a positive integer")
    if sample_shape is None:
        for field, value in (("in_channels", in_channels), ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(field, value, "a positive integer")
        sample_shape = (in_channels, image_size, image_size)
    shape = check_sample_shape(sample_shape)
    row = REGISTRY[name]
    kind = sample_kind(shape)
    if kind not in row.kinds:
        raise ConfigError("model", name, models_taking(kind),
                          hint=f"the input is {DESCRIBED[kind]} of shape {list(shape)}")
    if evonorm_style not in EVONORM_STYLES:
        raise ConfigError("evonorm_style", evonorm_style, EVONORM_STYLES)
    norm = check_norm(row.default_norm if norm is None else norm)
    if norm not in row.norms:
        why = "has no normalisation layers" if row.norms == ("none",) else "is not built so"
        raise ConfigError("norm", norm, ", ".join(row.norms), hint=f"{name} {why}")
    return row.build(num_classes, shape, norm, evonorm_style)


__all__ = [
    "DEFAULT_EVONORM_STYLE",
    "DEFAULT_NORM",
    "EVONORM_STYLES",
    "MODELS",
    "NORMS",
    "REGISTRY",
    "EvoNormS0",
    "ModelRow",
    "build_model",
    "check_model_row",
    "make_norm",
    "models_taking",
]
