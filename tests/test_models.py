"""Model zoo: shapes, sizes, EvoNorm maths, config errors and torch.func compatibility.

The simulator runs all agents' forward passes with ``functional_call`` under ``vmap``, so the
vmap-equivalence tests here are what lets it trust a vectorised step to equal n separate ones.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from benchmark.errors import ConfigError
from benchmark.models import EVONORM_STYLES, MODELS, NORMS, build_model
from benchmark.models.norms import EvoNormS0, make_norm, num_groups

# name -> (build kwargs, input shape, num_classes, feature dim)
CASES: dict[str, tuple[dict, tuple[int, ...], int, int]] = {
    "resnet20": ({}, (2, 3, 32, 32), 10, 64),
    "lenet5": ({"in_channels": 1, "image_size": 28}, (2, 1, 28, 28), 10, 84),
    "mobilenetv2": ({}, (2, 3, 32, 32), 10, 1280),
    "resnet18": ({"image_size": 64}, (2, 3, 64, 64), 1000, 512),
    "mlp": ({"in_channels": 1, "image_size": 8}, (2, 1, 8, 8), 10, 32),
    "convbase1d": ({"sample_shape": (1, 40)}, (2, 1, 40), 10, 125),
}


def _build(name: str, seed: int = 0, **overrides: object) -> nn.Module:
    kwargs, _, num_classes, _ = CASES[name]
    torch.manual_seed(seed)
    return build_model(name, num_classes, **{**kwargs, **overrides})


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_names() -> None:
    assert MODELS == ("resnet20", "lenet5", "mobilenetv2", "resnet18", "mlp", "convbase1d")
    assert NORMS == ("evonorm", "groupnorm", "batchnorm", "none")
    assert set(CASES) == set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_feature_dim(name: str) -> None:
    _, shape, num_classes, dim = CASES[name]
    model = _build(name)
    features, logits = model(torch.randn(shape))
    assert features.shape == (shape[0], dim)
    assert logits.shape == (shape[0], num_classes)
    assert model.feature_dim == dim
    # The classifier is the last layer and closes the parameter order.
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == dim
    names = [n for n, _ in model.named_parameters()]
    assert names[-2:] == ["classifier.weight", "classifier.bias"]
    # Features really are the classifier's input.
    torch.testing.assert_close(logits, model.classifier(features))


def test_parameter_counts() -> None:
    assert 250_000 <= _count(_build("resnet20")) <= 300_000
    # Classic LeNet-5 on 28x28 with 10 classes.
    assert _count(_build("lenet5")) == 61_706
    # Same count as torchvision.models.resnet18() with BatchNorm; the authors' EvoNorm-S0 has the
    # same two parameters per channel (no v), the learnable-v gate one more per gated channel.
    assert _count(_build("resnet18", norm="batchnorm")) == 11_689_512
    assert _count(_build("resnet18")) == 11_689_512
    norm_channels = sum(m.channels for m in _build("resnet20").modules()
                        if isinstance(m, EvoNormS0))
    assert _count(_build("resnet20", evonorm_style="sigmoid-v")) == \
        _count(_build("resnet20")) + norm_channels
    # kuangliu MobileNetV2 with BatchNorm, 10 classes.
    assert _count(_build("mobilenetv2", norm="batchnorm")) == 2_296_922
    assert _count(_build("mlp")) == 64 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    # the MNIST-1D paper's CNN: three convolutions of 25 channels, 125 features, 10 classes
    assert _count(_build("convbase1d")) == (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + 125 * 10 + 10


def test_evonorm_models_have_no_running_statistics() -> None:
    for name in ("resnet20", "mobilenetv2", "resnet18"):
        assert list(_build(name).buffers()) == []


def test_evonorm_s0_matches_hand_computation() -> None:
    # One sample, 2 channels, 1x2 spatial, one group: the group is {1, 2, 3, 4}.
    norm = EvoNormS0(2, groups=1, gate="sigmoid-v")
    with torch.no_grad():
        norm.v.copy_(torch.tensor([1.0, 0.5]))
        norm.weight.copy_(torch.tensor([2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.1, -0.1]))
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    std = math.sqrt(1.25 + 1e-5)  # biased variance of 1..4 is 1.25

    def sig(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    expected = [
        [[2.0 * a * sig(1.0 * a) / std + 0.1 for a in (1.0, 2.0)]],
        [[0.5 * a * sig(0.5 * a) / std - 0.1 for a in (3.0, 4.0)]],
    ]
    torch.testing.assert_close(norm(x), torch.tensor([expected]), rtol=1e-6, atol=1e-6)

    ungated = EvoNormS0(2, groups=1, gate="none")
    assert ungated.v is None
    torch.testing.assert_close(ungated(x), x / std, rtol=1e-6, atol=1e-6)


def test_evonorm_groups_are_per_sample() -> None:
    # 16 channels -> 8 groups of 2; each sample is normalised on its own.
    norm = EvoNormS0(16)
    assert norm.groups == 8
    x = torch.randn(3, 16, 4, 4) * 5 + 2
    y = norm(x)
    for b in range(3):
        for g in range(8):
            chunk = x[b, 2 * g : 2 * g + 2]
            std = (chunk.var(unbiased=False) + 1e-5).sqrt()
            torch.testing.assert_close(y[b, 2 * g : 2 * g + 2], chunk * F.hardsigmoid(chunk) / std)
    # Changing one sample leaves the others' outputs untouched (no batch statistics).
    x2 = x.clone()
    x2[0] = 100.0 * torch.randn(16, 4, 4)
    torch.testing.assert_close(norm(x2)[1:], y[1:])


def test_make_norm_kinds_and_group_fallback() -> None:
    assert isinstance(make_norm("evonorm", 16), EvoNormS0)
    assert isinstance(make_norm("batchnorm", 16), nn.BatchNorm2d)
    assert isinstance(make_norm("none", 16), nn.Identity)
    gn = make_norm("groupnorm", 12)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 6
    assert num_groups(64) == 8 and num_groups(12) == 6 and num_groups(7) == 7 and num_groups(3) == 3
    with pytest.raises(ConfigError, match="norm"):
        make_norm("layernorm", 16)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("style", EVONORM_STYLES)
def test_every_norm_variant_of_resnet20_trains(norm: str, style: str) -> None:
    model = _build("resnet20", norm=norm, evonorm_style=style)
    features, logits = model(torch.randn(4, 3, 32, 32))
    assert features.shape == (4, 64) and logits.shape == (4, 10)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_evonorm_convention_adds_no_relu_after_gated_norms() -> None:
    standard = _build("resnet20", evonorm_style="standard")
    gated = [m.gate != "none" for m in standard.modules() if isinstance(m, EvoNormS0)]
    # Stem + one gated norm per block (9); ungated: one per block + 2 shortcuts.
    assert gated.count(True) == 10 and gated.count(False) == 11
    block = standard.stages[0][0]
    assert isinstance(block.norm1, EvoNormS0) and block.norm1.gate == "sigmoid-v"
    assert not any(isinstance(m, nn.ReLU) for m in standard.stem.modules())

    authors = _build("resnet20")  # the default follows the authors' code
    assert all(m.gate == "hardsigmoid" and m.v is None
               for m in authors.modules() if isinstance(m, EvoNormS0))
    assert not any(isinstance(m, nn.ReLU) for m in authors.modules())
    learned = _build("resnet20", evonorm_style="sigmoid-v")  # the former default
    assert all(m.gate == "sigmoid-v" for m in learned.modules() if isinstance(m, EvoNormS0))
    assert not any(isinstance(m, nn.ReLU) for m in learned.modules())


def test_default_norms() -> None:
    assert isinstance(_build("resnet20").stem[1], EvoNormS0)
    assert isinstance(_build("resnet18").stem[1], EvoNormS0)  # the authors' default
    assert isinstance(_build("resnet18", norm="batchnorm").stem[1][0], nn.BatchNorm2d)
    assert any(isinstance(m, EvoNormS0) for m in _build("mobilenetv2").modules())


def test_unknown_model_suggests_close_name() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet2", num_classes=10)
    message = str(info.value)
    assert "model" in message and "resnet20" in message and "did you mean" in message


def test_bad_norm_and_other_config_errors() -> None:
    with pytest.raises(ConfigError, match="norm.*evonorm"):
        build_model("resnet20", 10, norm="evonrom")
    for name in ("lenet5", "mlp"):
        with pytest.raises(ConfigError, match="norm"):
            build_model(name, 10, in_channels=1, image_size=28, norm="batchnorm")
    build_model("lenet5", 10, in_channels=1, image_size=28, norm="none")
    with pytest.raises(ConfigError, match="image_size"):
        build_model("lenet5", 10, in_channels=1, image_size=8)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet20", 0)
    with pytest.raises(ConfigError, match="evonorm_style"):
        build_model("resnet20", 10, evonorm_style="fancy")


def test_lenet_flattened_size_follows_image_size() -> None:
    model = build_model("lenet5", 10, in_channels=3, image_size=32)
    assert model.features_net[7].in_features == 16 * 6 * 6
    features, _ = model(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 84)


def test_same_seed_same_initialisation() -> None:
    a, b = _build("resnet20", seed=3), _build("resnet20", seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def _stacked(name: str) -> tuple[list[nn.Module], dict, dict, nn.Module]:
    copies = [_build(name, seed=s) for s in (0, 1)]
    params, buffers = stack_module_state(copies)
    return copies, params, buffers, copy.deepcopy(copies[0]).to("meta")


def test_convbase1d_is_the_mnist1d_papers_cnn() -> None:
    """Conv1d(1, 25, 5, s2, p1) -> ReLU -> Conv1d(25, 25, 3, s2, p1) -> ReLU -> the same ->
    ReLU -> flatten channel-major (view(B, -1)) = features -> Linear(125, 10), by hand."""
    model = _build("convbase1d")
    convs = [model.conv1, model.conv2, model.conv3]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] \
        == [(1, 25, (5,), (2,), (1,)), (25, 25, (3,), (2,), (1,)), (25, 25, (3,), (2,), (1,))]
    assert [n for n, _ in model.named_parameters()] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
        "classifier.weight", "classifier.bias"]
    x = torch.randn(3, 1, 40)
    h = x
    for conv in convs:
        h = F.conv1d(h, conv.weight, conv.bias, stride=2, padding=1).clamp(min=0)
    assert h.shape == (3, 25, 5)
    features, logits = model(x)
    torch.testing.assert_close(features, h.reshape(3, -1))
    torch.testing.assert_close(logits, h.reshape(3, -1) @ model.classifier.weight.T
                               + model.classifier.bias)
    # other lengths keep the arithmetic: 100 -> 49 -> 25 -> 13
    assert build_model("convbase1d", 10, sample_shape=(1, 100)).feature_dim == 25 * 13
    with pytest.raises(ConfigError, match="sample_shape.*length >= 3"):
        build_model("convbase1d", 10, sample_shape=(1, 2))
    with pytest.raises(ConfigError, match="norm.*none"):
        build_model("convbase1d", 10, sample_shape=(1, 40), norm="groupnorm")


def test_a_model_refuses_samples_of_another_kind_naming_the_models_that_fit() -> None:
    with pytest.raises(ConfigError) as info:  # default input: 3 x 32 x 32 images
        build_model("convbase1d", 10)
    assert str(info.value) == (
        "model: invalid value 'convbase1d'; allowed: one of resnet20, lenet5, mobilenetv2, "
        "resnet18, mlp (the input is images [C, H, W] of shape [3, 32, 32])")
    with pytest.raises(ConfigError, match=r"'lenet5'; allowed: one of mlp, convbase1d \(the "
                       r"input is 1-D signals \[C, L\] of shape \[1, 40\]\)"):
        build_model("lenet5", 10, sample_shape=(1, 40))
    assert build_model("mlp", 10, sample_shape=(1, 40))(torch.randn(2, 1, 40))[1].shape == (2, 10)
    with pytest.raises(ConfigError, match="sample_shape"):
        build_model("mlp", 10, sample_shape=(40,))


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "mlp", "convbase1d"])
def test_vmap_functional_call_matches_each_copy(name: str) -> None:
    copies, params, buffers, base = _stacked(name)
    shape = CASES[name][1]
    xs = torch.randn(2, *shape)

    def forward(p: dict, b: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(base, (p, b), (x,))

    features, logits = vmap(forward)(params, buffers, xs)
    shared_features, _ = vmap(forward, in_dims=(0, 0, None))(params, buffers, xs[0])
    for i, model in enumerate(copies):
        ref_features, ref_logits = model(xs[i])
        torch.testing.assert_close(features[i], ref_features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[i], ref_logits, rtol=1e-5, atol=1e-5)
        # Cross-features: every copy on the same batch (what CCL evaluates).
        torch.testing.assert_close(shared_features[i], model(xs[0])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "convbase1d"])
def test_vmap_grad_matches_each_copy(name: str) -> None:
    copies, params, buffers, base = _stacked(name)
    xs = torch.randn(2, *CASES[name][1])
    ys = torch.tensor([[0, 1], [2, 3]])

    def loss(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, logits = functional_call(base, (p, b), (x,))
        return F.cross_entropy(logits, y)

    grads = vmap(grad(loss))(params, buffers, xs, ys)
    for i, model in enumerate(copies):
        F.cross_entropy(model(xs[i])[1], ys[i]).backward()
        for key, p in model.named_parameters():
            torch.testing.assert_close(grads[key][i], p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name: str) -> None:
    _, shape, num_classes, _ = CASES[name]
    model = _build(name)
    features, logits = model(torch.randn(shape))
    targets = torch.arange(shape[0]) % num_classes
    (F.cross_entropy(logits, targets) + features.pow(2).mean()).backward()
    for key, p in model.named_parameters():
        assert p.grad is not None, key
        assert torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, key
