"""ResNet-20 (CIFAR, He et al. 2016) and ResNet-18 (ImageNet, torchvision layout).

Both share one basic block so the norm convention (see :mod:`benchmark.models.norms`) is written
once. Every model returns ``(features, logits)``; features are the globally pooled input of the
classifier, which the CCL losses compare across agents.
"""

from __future__ import annotations

from torch import Tensor, nn

from benchmark.models.norms import DEFAULT_EVONORM_STYLE, make_norm_act, post_add_act


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free 3x3 conv: the following norm's beta makes a bias redundant."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-norm-act-conv-norm + shortcut, then act (out-of-place, so vmap/autograd stay safe).

    The shortcut is a 1x1 conv with norm whenever the shape changes (ResNet "option B"), which is
    what the paper's ResNet-20 and torchvision's ResNet-18 both use.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, evonorm_style: str) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.norm1 = make_norm_act(norm, out_ch, act=True, evonorm_style=evonorm_style)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.norm2 = make_norm_act(norm, out_ch, act=False, evonorm_style=evonorm_style)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                make_norm_act(norm, out_ch, act=False, evonorm_style=evonorm_style),
            )
        self.act = post_add_act(norm, evonorm_style)

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem -> stages of basic blocks -> global average pool (features) -> classifier.

    Global (adaptive) pooling instead of a fixed-size pool lets one class serve any image size.
    """

    def __init__(
        self,
        stem: nn.Module,
        stem_channels: int,
        widths: tuple[int, ...],
        blocks_per_stage: tuple[int, ...],
        num_classes: int,
        norm: str,
        evonorm_style: str,
    ) -> None:
        super().__init__()
        self.stem = stem
        stages: list[nn.Module] = []
        in_ch = stem_channels
        for i, (width, n_blocks) in enumerate(zip(widths, blocks_per_stage, strict=True)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_ch, width, stride, norm, evonorm_style))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_ch
        self.classifier = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.pool(self.stages(self.stem(x))).flatten(1)
        return features, self.classifier(features)


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, unit/zero norms: torchvision's ResNet init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet20(
    num_classes: int, in_channels: int = 3, norm: str = "evonorm",
    evonorm_style: str = DEFAULT_EVONORM_STYLE,
) -> ResNet:
    """CIFAR ResNet-20: 3x3 stem, 16-32-64 channels, 3 blocks per stage, D=64."""
    stem = nn.Sequential(
        conv3x3(in_channels, 16), make_norm_act(norm, 16, act=True, evonorm_style=evonorm_style)
    )
    return ResNet(stem, 16, (16, 32, 64), (3, 3, 3), num_classes, norm, evonorm_style)


def resnet18(
    num_classes: int, in_channels: int = 3, norm: str = "evonorm",
    evonorm_style: str = DEFAULT_EVONORM_STYLE,
) -> ResNet:
    """ImageNet ResNet-18 (torchvision layout): 7x7/2 stem + 3x3/2 max-pool, 64..512, D=512.

    The standard stem is kept even for small images (e.g. 64x64) so results stay comparable with
    the ImageNet architecture; global pooling makes the tiny final map harmless.
    """
    stem = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False),
        make_norm_act(norm, 64, act=True, evonorm_style=evonorm_style),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    return ResNet(stem, 64, (64, 128, 256, 512), (2, 2, 2, 2), num_classes, norm, evonorm_style)
