"""Model registry: every model returns ``(features, logits)`` and has ``feature_dim``.

Features are the input of the final linear layer (``model.classifier``, registered last so its
parameters close ``model.parameters()``); the CCL losses compare them across agents. Forward
passes use no in-place ops, no ``.item()`` and no data-dependent branching, so the simulator can
run all agents at once with ``torch.func.functional_call`` under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from benchmark.errors import ConfigError
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

MODELS: tuple[str, ...] = ("resnet20", "lenet5", "mobilenetv2", "resnet18", "mlp")

# Norm used when the config leaves it unset: the paper's choice per model (METHOD.md section 5).
DEFAULT_NORM: dict[str, str] = {
    "resnet20": "evonorm",
    "mobilenetv2": "evonorm",
    "resnet18": "evonorm",  # the authors' default norm_type for every model
    "lenet5": "none",
    "mlp": "none",
}
_NORMLESS = ("lenet5", "mlp")

_CONV_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet18": resnet18,
    "mobilenetv2": mobilenetv2,
}


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    norm: str | None = None,
    image_size: int = 32,
    evonorm_style: str = DEFAULT_EVONORM_STYLE,
) -> nn.Module:
    """Build a freshly initialised model by name (seed torch beforehand for reproducibility).

    ``norm=None`` picks the model's default (:data:`DEFAULT_NORM`). ``evonorm_style`` only
    affects evonorm (:mod:`benchmark.models.norms`): "hardsigmoid" is the CCL authors' code.
    Bad values raise :class:`~benchmark.errors.ConfigError` naming the field.
    """
    if name not in MODELS:
        raise ConfigError("model", name, MODELS)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError("num_classes", num_classes, "a positive integer")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError("in_channels", in_channels, "a positive integer")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError("image_size", image_size, "a positive integer")
    if evonorm_style not in EVONORM_STYLES:
        raise ConfigError("evonorm_style", evonorm_style, EVONORM_STYLES)
    norm = check_norm(DEFAULT_NORM[name] if norm is None else norm)
    if name in _NORMLESS:
        if norm != "none":
            raise ConfigError("norm", norm, "none", hint=f"{name} has no normalisation layers")
        if name == "lenet5":
            return LeNet5(num_classes, in_channels, image_size)
        return MLP(num_classes, in_channels, image_size)
    return _CONV_BUILDERS[name](num_classes, in_channels, norm, evonorm_style)


__all__ = [
    "DEFAULT_EVONORM_STYLE",
    "DEFAULT_NORM",
    "EVONORM_STYLES",
    "MODELS",
    "NORMS",
    "EvoNormS0",
    "build_model",
    "make_norm",
]
