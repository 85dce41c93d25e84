"""LeNet-5 as used for Fashion-MNIST in the paper: two conv/pool stages and three fc layers.

No normalisation layers: the paper's LeNet-5 has none, and its small size is what makes it the
quick model of the grid.
"""

from __future__ import annotations

from torch import Tensor, nn

from benchmark.errors import ConfigError

FEATURE_DIM = 84


def flattened_size(image_size: int) -> int:
    """Width of the conv output: pad-2 conv keeps size, pool halves, 5x5 conv takes 4, pool halves.

    28 -> 28 -> 14 -> 10 -> 5, so 16 * 5 * 5 = 400 on Fashion-MNIST.
    """
    side = (image_size // 2 - 4) // 2
    if side < 1:
        raise ConfigError("image_size", image_size, "an integer >= 12 for lenet5")
    return 16 * side * side


class LeNet5(nn.Module):
    """conv(6,5x5,pad 2)-ReLU-pool - conv(16,5x5)-ReLU-pool - fc120-ReLU - fc84-ReLU (D=84) - fc."""

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.features_net = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flattened_size(image_size), 120),
            nn.ReLU(),
            nn.Linear(120, FEATURE_DIM),
            nn.ReLU(),
        )
        self.feature_dim = FEATURE_DIM
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features_net(x)
        return features, self.classifier(features)
