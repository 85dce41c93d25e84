"""The MNIST-1D paper's CNN ("ConvBase", Greydanus and Kobak, ICML 2024), exactly.

Three stride-2 1-D convolutions of 25 channels, each followed by a ReLU; the last one's output
flattened channel-major (25 x 5 = 125 values on 40-sample signals) is the feature vector the CCL
losses compare, and a linear layer maps it to the logits. No normalisation layers, as in the
paper (published test accuracy trained centrally: ~94%, docs/METHOD.md).

``forward`` is the plain modules, one model on its batch (evaluation, the per-agent loop).
``forward_rows`` is the same network for ``k`` models at once as batched products
(:mod:`benchmark.models.rows`): what the vectorised forward/backward runs, on a CPU too, where
the per-agent ``nn.Conv1d`` calls cost far more than their arithmetic (about 4x, R8 in
benchmarks/). The two agree to float rounding (tests/test_vectorised.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import ConfigError
from benchmark.models.rows import conv1d_rows, linear_rows

CHANNELS = 25
# (kernel size, stride, padding) of the three convolutions
LAYERS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))


def feature_length(length: int) -> int:
    """Samples left after the three convolutions: 40 -> 19 -> 10 -> 5 on MNIST-1D."""
    for kernel, stride, padding in LAYERS:
        length = (length + 2 * padding - kernel) // stride + 1
    return length


class ConvBase1d(nn.Module):
    """conv(25, k5, s2, p1)-ReLU - conv(25, k3, s2, p1)-ReLU - conv(25, k3, s2, p1)-ReLU -
    flatten (D = 25 x 5 = 125) - fc."""

    def __init__(self, num_classes: int, in_channels: int = 1, length: int = 40) -> None:
        super().__init__()
        out = feature_length(length)
        if out < 1:
            raise ConfigError("sample_shape", (in_channels, length),
                              "1-D signals of length >= 3 for convbase1d")
        (k1, s1, p1), (k2, s2, p2), (k3, s3, p3) = LAYERS
        self.conv1 = nn.Conv1d(in_channels, CHANNELS, k1, stride=s1, padding=p1)
        self.conv2 = nn.Conv1d(CHANNELS, CHANNELS, k2, stride=s2, padding=p2)
        self.conv3 = nn.Conv1d(CHANNELS, CHANNELS, k3, stride=s3, padding=p3)
        self.relu = nn.ReLU()
        self.feature_dim = CHANNELS * out
        self.classifier = nn.Linear(self.feature_dim, num_classes)  # registered last

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.relu(self.conv1(x))
        h = self.relu(self.conv2(h))
        h = self.relu(self.conv3(h))
        features = h.flatten(1)  # [B, 25, 5] -> [B, 125], channel-major as the paper's view(B, -1)
        return features, self.classifier(features)

    def forward_rows(self, params: Mapping[str, Tensor], xs: Tensor) -> tuple[Tensor, Tensor]:
        """``k`` models at once: ``params`` name -> ``[k, ...]``, ``xs [k, B, C, L]``; channels
        last inside (no transpose between layers), the features flattened channel-major as in
        ``forward``."""
        h = xs.transpose(2, 3)  # [k, B, L, C]
        for name, (_, stride, padding) in zip(("conv1", "conv2", "conv3"), LAYERS, strict=True):
            h = F.relu(conv1d_rows(h, params[f"{name}.weight"], params[f"{name}.bias"], stride,
                                   padding))
        features = h.transpose(2, 3).flatten(2)  # [k, B, O, L] -> [k, B, 125]
        return features, linear_rows(features, params["classifier.weight"],
                                     params["classifier.bias"])
