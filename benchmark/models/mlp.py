"""A tiny MLP: what tests and digits smoke runs use when speed matters more than accuracy.

It flattens whatever one sample is, so it takes images and 1-D signals alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.models.rows import linear_rows

FEATURE_DIM = 32


class MLP(nn.Module):
    """flatten -> fc64 -> ReLU -> fc32 -> ReLU (features, D=32) -> fc to logits."""

    def __init__(self, num_classes: int, in_features: int) -> None:
        super().__init__()
        self.features_net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, 64),
            nn.ReLU(),
            nn.Linear(64, FEATURE_DIM),
            nn.ReLU(),
        )
        self.feature_dim = FEATURE_DIM
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features_net(x)
        return features, self.classifier(features)

    def forward_rows(self, params: Mapping[str, Tensor], xs: Tensor) -> tuple[Tensor, Tensor]:
        """``k`` MLPs at once (``params``: name -> ``[k, ...]``, ``xs [k, B, C, H, W]``): what the
        vectorised path runs, as batched products (benchmark/models/rows.py says why)."""
        h = xs.flatten(2)
        h = F.relu(linear_rows(h, params["features_net.1.weight"], params["features_net.1.bias"]))
        h = F.relu(linear_rows(h, params["features_net.3.weight"], params["features_net.3.bias"]))
        return h, linear_rows(h, params["classifier.weight"], params["classifier.bias"])
