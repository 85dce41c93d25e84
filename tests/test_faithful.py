"""Defaults follow the authors' released code (METHOD.md, "Differences from the authors' code")."""

from __future__ import annotations

import math
import struct

import pytest
import torch

from benchmark.config import RunConfig
from benchmark.models import DEFAULT_NORM
from benchmark.models.norms import EvoNormS0


@pytest.mark.parametrize(("epochs", "milestones"), [
    (1, [1, 1]),        # int(0.5) = 0 would decay before the only epoch trains: never
    (10, [5, 7]),       # int(7.5) = 7 (rounding gave 8)
    (50, [25, 37]),     # the tuning budget: int(37.5) = 37 (rounding gave 38)
    (200, [100, 150]),
])
def test_lr_milestones_are_int_of_the_fraction_and_never_before_the_first_epoch(epochs,
                                                                                milestones):
    config = RunConfig(epochs=epochs, lr=0.1, lr_milestones=[0.5, 0.75], lr_decay=0.1)
    assert config.milestone_epochs == milestones
    rates = [config.lr_at(e) for e in range(epochs)]
    assert rates[0] == 0.1
    expected = [0.1 * 0.1 ** sum(e >= m for m in milestones) for e in range(epochs)]
    assert rates == pytest.approx(expected, rel=1e-12)
    if epochs == 50:
        assert rates[36] == pytest.approx(0.01) and rates[37] == pytest.approx(0.001)


def test_evonorm_s0_is_the_authors_form_by_hand():
    """``w * x * hardsigmoid(x) / sqrt(groupvar(x) + eps) + b`` on a 1x2x1x2 tensor, 1 group."""
    norm = EvoNormS0(2, groups=1)
    assert norm.gate == "hardsigmoid" and norm.v is None
    assert [p.numel() for p in norm.parameters()] == [2, 2]  # weight, bias: no v
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.1, -0.2]))
    x = torch.tensor([[[[-4.0, 0.0]], [[1.5, 3.0]]]])
    # hardsigmoid = clamp(x/6 + 1/2, 0, 1): -4 -> 0, 0 -> 0.5, 1.5 -> 0.75, 3 -> 1
    gated = [-4.0 * 0.0, 0.0 * 0.5, 1.5 * 0.75, 3.0 * 1.0]
    values = [-4.0, 0.0, 1.5, 3.0]  # one group: all four values, biased variance
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4 + 1e-5)
    expected = [2.0 * gated[0] / std + 0.1, 2.0 * gated[1] / std + 0.1,
                0.5 * gated[2] / std - 0.2, 0.5 * gated[3] / std - 0.2]
    torch.testing.assert_close(norm(x).flatten(), torch.tensor(expected))


def test_resnet18_defaults_to_the_authors_evonorm():
    assert DEFAULT_NORM["resnet18"] == "evonorm"
    assert RunConfig().evonorm_style == "hardsigmoid"


def _write_idx(path, magic: int, shape: tuple[int, ...], data: bytes) -> None:
    path.write_bytes(struct.pack(f">{len(shape) + 1}I", magic, *shape) + data)


def test_input_normalisation_constants_are_the_authors(tmp_path):
    from benchmark.data import load_dataset, registry

    assert registry.CIFAR10_STATS == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert registry.CIFAR100_STATS == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert registry.IMAGENET_STATS == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # Fashion-MNIST end to end through the loader: (0.5,) / (0.5,), i.e. (x - 0.5) / 0.5
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 20), ("t10k", 10)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", 2051, (n, 28, 28), bytes(n * 28 * 28))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", 2049, (n,), bytes(i % 10 for i in range(n)))
    bundle = load_dataset("fmnist", data_dir=tmp_path)
    assert (bundle.mean, bundle.std) == ((0.5,), (0.5,))
