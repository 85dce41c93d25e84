"""MobileNet-V2, CIFAR variant (kuangliu/pytorch-cifar), width 1.0.

The ImageNet network downsamples 32x; on 32x32 inputs that leaves a 1x1 map after the third
stage. The CIFAR variant uses stride 1 in the stem conv and in the first stride-2 stage (24
channels), so the last map is 4x4, as in the paper's Imagenette-32px runs.
"""

from __future__ import annotations

from torch import Tensor, nn

from benchmark.models.norms import DEFAULT_EVONORM_STYLE, make_norm_act

# (expansion, out_channels, num_blocks, first_stride) per stage.
CIFAR_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 -> 1 for 32x32 inputs
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
FEATURE_DIM = 1280


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> linear projection (1x1), plus shortcut at stride 1.

    The projection has no activation ("linear bottleneck"), so its norm is the ungated kind. As
    in the kuangliu variant, stride-1 blocks that change width get a 1x1-conv shortcut.
    """

    def __init__(
        self, in_ch: int, out_ch: int, expansion: int, stride: int, norm: str, evonorm_style: str
    ) -> None:
        super().__init__()
        hidden = expansion * in_ch
        self.stride = stride
        self.body = nn.Sequential(
            _conv(in_ch, hidden, 1),
            make_norm_act(norm, hidden, act=True, evonorm_style=evonorm_style),
            _conv(hidden, hidden, 3, stride, groups=hidden),
            make_norm_act(norm, hidden, act=True, evonorm_style=evonorm_style),
            _conv(hidden, out_ch, 1),
            make_norm_act(norm, out_ch, act=False, evonorm_style=evonorm_style),
        )
        self.shortcut: nn.Module | None = None
        if stride == 1:
            self.shortcut = nn.Identity()
            if in_ch != out_ch:
                self.shortcut = nn.Sequential(
                    _conv(in_ch, out_ch, 1),
                    make_norm_act(norm, out_ch, act=False, evonorm_style=evonorm_style),
                )

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out + self.shortcut(x) if self.shortcut is not None else out


class MobileNetV2(nn.Module):
    """Stem -> 17 inverted residual blocks -> 1x1 conv to 1280 -> global pool (features, D=1280)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        norm: str = "evonorm",
        evonorm_style: str = DEFAULT_EVONORM_STYLE,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv(in_channels, STEM_CHANNELS, 3),
            make_norm_act(norm, STEM_CHANNELS, act=True, evonorm_style=evonorm_style),
        )
        blocks: list[nn.Module] = []
        in_ch = STEM_CHANNELS
        for expansion, out_ch, n_blocks, first_stride in CIFAR_CFG:
            for j in range(n_blocks):
                stride = first_stride if j == 0 else 1
                blocks.append(
                    InvertedResidual(in_ch, out_ch, expansion, stride, norm, evonorm_style)
                )
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            _conv(in_ch, FEATURE_DIM, 1),
            make_norm_act(norm, FEATURE_DIM, act=True, evonorm_style=evonorm_style),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = FEATURE_DIM
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)
        return features, self.classifier(features)


def mobilenetv2(
    num_classes: int, in_channels: int = 3, norm: str = "evonorm",
    evonorm_style: str = DEFAULT_EVONORM_STYLE,
) -> MobileNetV2:
    """MobileNet-V2 CIFAR variant; see :class:`MobileNetV2`."""
    return MobileNetV2(num_classes, in_channels, norm, evonorm_style)
