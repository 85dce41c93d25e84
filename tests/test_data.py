"""Tests for benchmark.data: partitions, dataset registry and per-agent loaders (offline, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.data import (
    DATASETS,
    AgentBatches,
    Split,
    class_histogram,
    dirichlet_partition,
    eval_batches,
    load_dataset,
)
from benchmark.data.loader import random_crop_flip, random_resized_crop_flip
from benchmark.errors import ConfigError, DataMissingError, UserError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digit_labels(digits):
    return digits.train.y.numpy()


# ---------------------------------------------------------------------------------------------
# partitions


@pytest.mark.parametrize("scheme", ["lin", "raw", "iid"])
def test_partition_is_a_function_of_the_seed(digit_labels, scheme):
    first = dirichlet_partition(digit_labels, 8, 0.5, seed=3, scheme=scheme)
    again = dirichlet_partition(digit_labels, 8, 0.5, seed=3, scheme=scheme)
    other = dirichlet_partition(digit_labels, 8, 0.5, seed=4, scheme=scheme)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("n_agents", [4, 16, 25])
def test_lin_gives_equal_disjoint_shards(digit_labels, alpha, n_agents):
    parts = dirichlet_partition(digit_labels, n_agents, alpha, seed=0)
    n = len(digit_labels)
    assert len(parts) == n_agents
    assert {len(p) for p in parts} == {n // n_agents}
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)
    assert flat.min() >= 0 and flat.max() < n
    assert all(p.dtype == np.int64 for p in parts)


def test_iid_gives_equal_disjoint_shards(digit_labels):
    parts = dirichlet_partition(digit_labels, 7, 1.0, seed=0, scheme="iid")
    assert {len(p) for p in parts} == {len(digit_labels) // 7}
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)


def test_raw_respects_min_size_and_keeps_unequal_sizes(digit_labels):
    parts = dirichlet_partition(digit_labels, 8, 0.3, seed=1, scheme="raw", min_size=20)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 20
    assert len(set(sizes)) > 1
    flat = np.concatenate(parts)
    assert sorted(flat.tolist()) == list(range(len(digit_labels)))  # every sample used once


def test_raw_gives_up_with_a_clear_error(digit_labels, monkeypatch):
    # 16 agents, 10 classes, alpha 0.01: almost every class lands on one agent, so most agents
    # stay empty and no draw can satisfy min_size (200 draws say it as well as 100,000).
    monkeypatch.setattr("benchmark.data.partition.MAX_ATTEMPTS", 200)
    with pytest.raises(UserError, match="min_size=10 samples in 200 attempts"):
        dirichlet_partition(digit_labels, 16, 0.01, seed=0, scheme="raw", min_size=10)


def test_label_skew_grows_as_alpha_shrinks(digit_labels):
    def classes_per_agent(alpha: float) -> float:
        parts = dirichlet_partition(digit_labels, 16, alpha, seed=0)
        return float((class_histogram(digit_labels, parts, 10) > 0).sum(1).mean())

    skewed, mild, iid_like = classes_per_agent(0.01), classes_per_agent(1.0), classes_per_agent(100)
    assert skewed < 5.0
    assert iid_like >= 9.5
    assert skewed < mild < iid_like


def test_class_histogram_rows_sum_to_shard_sizes(digit_labels):
    parts = dirichlet_partition(digit_labels, 6, 0.1, seed=2, scheme="raw")
    hist = class_histogram(digit_labels, parts, 10)
    assert hist.shape == (6, 10)
    assert np.issubdtype(hist.dtype, np.integer)
    assert hist.sum(1).tolist() == [len(p) for p in parts]


def test_partition_accepts_torch_labels(digits):
    from_tensor = dirichlet_partition(digits.train.y, 4, 0.1, seed=0)
    from_numpy = dirichlet_partition(digits.train.y.numpy(), 4, 0.1, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(from_tensor, from_numpy, strict=True))


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan")])
def test_bad_alpha_is_a_config_error(digit_labels, alpha):
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_partition(digit_labels, 4, alpha, seed=0)


def test_bad_scheme_and_too_many_agents(digit_labels):
    with pytest.raises(ConfigError, match="partition.*did you mean 'raw'"):
        dirichlet_partition(digit_labels, 4, 0.1, seed=0, scheme="rawr")
    with pytest.raises(ConfigError, match="n_agents"):
        dirichlet_partition(digit_labels[:5], 6, 0.1, seed=0)


# ---------------------------------------------------------------------------------------------
# datasets


def test_registry_names():
    assert DATASETS == (
        "cifar10",
        "cifar100",
        "fmnist",
        "imagenette",
        "imagenet",
        "digits",
        "mnist1d",
        "synthetic",
    )
    with pytest.raises(ConfigError, match="dataset"):
        load_dataset("cifar11")


def test_digits_bundle(digits):
    assert digits.train.x.dtype == torch.uint8 and digits.test.x.dtype == torch.uint8
    assert digits.train.x.shape[1:] == (1, 28, 28)
    assert len(digits.train) + len(digits.test) == 1797
    assert digits.train.y.dtype == torch.long
    assert (digits.num_classes, digits.sample_shape, digits.kind) == (10, (1, 28, 28), "image")
    assert digits.augment == "none" and digits.val is None
    assert len(digits.mean) == len(digits.std) == 1
    assert int(digits.train.x.max()) > 200  # scaled to 0-255, not left at 16 grey levels
    # stratified 20% test split: each class's test share is 20% up to rounding
    train_counts = np.bincount(digits.train.y.numpy(), minlength=10)
    test_counts = np.bincount(digits.test.y.numpy(), minlength=10)
    expected = 0.2 * (train_counts + test_counts)
    assert np.all(np.abs(test_counts - expected) <= 1)
    # the test split does not depend on the run seed
    assert torch.equal(load_dataset("digits", seed=5).test.x, digits.test.x)


def test_digits_equals_scikit_learn_load_and_split(digits):
    """Read without importing scikit-learn, yet exactly its images, labels and stratified split
    (train_test_split, 20%, seed 0), at 28 px (upsampled) and at the native 8 px."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from benchmark.data.registry import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION

    ref = load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(ref.target)), test_size=DIGITS_TEST_FRACTION, stratify=ref.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    images = torch.as_tensor(ref.images, dtype=torch.float32).unsqueeze(1) / 16.0
    for size, bundle in ((28, digits), (8, load_dataset("digits", image_size=8))):
        scaled = images if size == 8 else torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear")
        x = (scaled * 255).round().clamp(0, 255).to(torch.uint8)
        assert torch.equal(bundle.train.x, x[train_idx])
        assert torch.equal(bundle.test.x, x[test_idx])
        assert torch.equal(bundle.train.y, torch.as_tensor(ref.target[train_idx]))
        assert torch.equal(bundle.test.y, torch.as_tensor(ref.target[test_idx]))


def test_synthetic_shapes_and_learnability():
    options = {
        "num_classes": 4,
        "train_size": 200,
        "test_size": 100,
        "channels": 2,
        "image_size": 9,
    }
    bundle = load_dataset("synthetic", synthetic=options)
    assert bundle.train.x.shape == (200, 2, 9, 9) and bundle.train.x.dtype == torch.uint8
    assert bundle.test.x.shape == (100, 2, 9, 9)
    assert (bundle.num_classes, bundle.sample_shape) == (4, (2, 9, 9))
    assert set(bundle.train.y.tolist()) == {0, 1, 2, 3}
    # a linear classifier (nearest class mean) beats chance by far
    xtr, xte = bundle.train.x.flatten(1).float(), bundle.test.x.flatten(1).float()
    centroids = torch.stack([xtr[bundle.train.y == c].mean(0) for c in range(4)])
    predicted = torch.cdist(xte, centroids).argmin(1)
    assert (predicted == bundle.test.y).float().mean() > 0.6
    again = load_dataset("synthetic", synthetic=options)
    assert torch.equal(again.train.x, bundle.train.x)
    with pytest.raises(ConfigError, match="synthetic"):
        load_dataset("synthetic", synthetic={"nosie": 0.1})


def test_validation_split_is_stratified_disjoint_and_leaves_test_alone():
    options = {"train_size": 500, "test_size": 50, "image_size": 8}
    full = load_dataset("synthetic", synthetic=options)
    bundle = load_dataset("synthetic", synthetic=options, val_fraction=0.2, seed=1)
    assert len(bundle.val) == 100 and len(bundle.train) == 400
    assert torch.equal(bundle.test.x, full.test.x) and torch.equal(bundle.test.y, full.test.y)
    rows = {bytes(r.numpy()) for r in full.train.x}
    train_rows = {bytes(r.numpy()) for r in bundle.train.x}
    val_rows = {bytes(r.numpy()) for r in bundle.val.x}
    assert train_rows.isdisjoint(val_rows) and train_rows | val_rows == rows
    val_counts = np.bincount(bundle.val.y.numpy(), minlength=10)
    full_counts = np.bincount(full.train.y.numpy(), minlength=10)
    assert np.all(np.abs(val_counts - 0.2 * full_counts) <= 1)
    other = load_dataset("synthetic", synthetic=options, val_fraction=0.2, seed=2)
    assert not torch.equal(other.val.x, bundle.val.x)
    for bad in (0.6, -0.1):
        with pytest.raises(ConfigError, match="val_fraction"):
            load_dataset("digits", val_fraction=bad)


def test_missing_cifar10_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataMissingError) as info:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "download: true" in message
    assert "\n" not in message


def test_missing_imagenet_says_where_to_put_it(tmp_path):
    with pytest.raises(DataMissingError, match="imagenet/train.*imagenet/val"):
        load_dataset("imagenet", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# loaders


def _indexed_split(n: int) -> Split:
    """A float split whose every pixel holds the sample's own index: batches reveal indices."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Split(x, torch.arange(n) % 10)


def _indexed_batches(parts, batch_size=8, seed=0) -> AgentBatches:
    n = sum(len(p) for p in parts)
    return AgentBatches(_indexed_split(n), parts, batch_size, "none", (0.0,), (1.0,), seed)


def test_agent_batches_shapes_and_own_shards():
    labels = np.arange(600) % 10
    parts = dirichlet_partition(labels, 5, 0.1, seed=0, scheme="raw", min_size=5)
    batches = _indexed_batches(parts, batch_size=16)
    sizes = [len(p) for p in parts]
    assert batches.iterations_per_epoch == int(np.ceil(np.mean(sizes) / 16))
    count = 0
    for xs, ys in batches.epoch(0):
        count += 1
        assert xs.shape == (5, 16, 1, 2, 2) and xs.dtype == torch.float32
        assert ys.shape == (5, 16) and ys.dtype == torch.long
        index = xs[:, :, 0, 0, 0].long()
        assert torch.equal(ys, index % 10)
        for agent, part in enumerate(parts):
            assert set(index[agent].tolist()) <= set(part.tolist())
    assert count == batches.iterations_per_epoch


def test_one_epoch_visits_each_equal_shard_once_then_wraps():
    parts = [np.arange(0, 20), np.arange(20, 40)]  # 20 samples, batch 8 -> 3 iterations
    batches = _indexed_batches(parts, batch_size=8)
    seen = torch.cat([xs[:, :, 0, 0, 0] for xs, _ in batches.epoch(0)], dim=1).long()
    assert seen.shape == (2, 24)
    for agent, part in enumerate(parts):
        assert sorted(seen[agent, :20].tolist()) == part.tolist()  # a permutation of the shard
        assert torch.equal(seen[agent, 20:], seen[agent, :4])  # the last batch wraps around


def test_resume_reproduces_the_tail_of_an_epoch():
    bundle = load_dataset("synthetic", synthetic={"train_size": 400})
    parts = dirichlet_partition(bundle.train.y, 4, 0.5, seed=0)
    make = lambda: AgentBatches(  # noqa: E731
        bundle.train, parts, 16, "cifar", bundle.mean, bundle.std, seed=7
    )
    full = list(make().epoch(2))
    tail = list(make().epoch(2, start_iteration=3))
    assert len(tail) == len(full) - 3
    for (x_full, y_full), (x_tail, y_tail) in zip(full[3:], tail, strict=True):
        assert torch.equal(x_full, x_tail) and torch.equal(y_full, y_tail)


def test_epochs_and_seeds_change_the_order():
    parts = [np.arange(0, 64), np.arange(64, 128)]

    def first_batch(epoch: int, seed: int) -> torch.Tensor:
        return next(iter(_indexed_batches(parts, seed=seed).epoch(epoch)))[0]

    assert torch.equal(first_batch(0, 0), first_batch(0, 0))
    assert not torch.equal(first_batch(0, 0), first_batch(1, 0))
    assert not torch.equal(first_batch(0, 0), first_batch(0, 1))


def _crops_of(image: torch.Tensor, padding: int = 4) -> list[torch.Tensor]:
    """Every crop + flip the CIFAR recipe can produce from ``image``."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    crops = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            crops += [crop, crop.flip(-1)]
    return crops


def test_cifar_crop_flip_is_a_shifted_or_flipped_copy():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 12, 12), dtype=torch.uint8)  # no zeros: padding shows
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    flips, shifts = 0, set()
    for image, crop in zip(images, out, strict=True):
        matches = [i for i, c in enumerate(_crops_of(image)) if torch.equal(c, crop)]
        assert matches, "an augmented image is not a crop/flip of its source"
        flips += matches[0] % 2
        shifts.add(matches[0] // 2)
    assert 10 < flips < 54 and len(shifts) > 20  # both flip states and many offsets occur


def test_agent_batches_cifar_pipeline_crops_and_normalises():
    torch.manual_seed(1)
    x = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8)
    split = Split(x, torch.zeros(32, dtype=torch.long))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    batches = AgentBatches(split, [np.arange(16), np.arange(16, 32)], 4, "cifar", mean, std, 0)
    xs, _ = next(iter(batches.epoch(0)))
    index = batches.indices(0, 0)
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    for agent in range(2):
        for b in range(4):
            restored = (xs[agent, b] * s + m) * 255
            candidates = _crops_of(x[index[agent, b]].float())
            assert any(torch.allclose(restored, c, atol=1e-3) for c in candidates)


def test_normalisation_gives_zero_mean_unit_std(digits):
    parts = dirichlet_partition(digits.train.y, 4, 10.0, seed=0, scheme="iid")
    batches = AgentBatches(digits.train, parts, 64, "none", digits.mean, digits.std, seed=0)
    xs = torch.cat([x.flatten() for x, _ in batches.epoch(0)])
    assert abs(float(xs.mean())) < 0.05 and abs(float(xs.std()) - 1) < 0.05
    evaluated = list(eval_batches(digits.train, digits.mean, digits.std, batch_size=500))
    assert [len(y) for _, y in evaluated] == [500, 500, 437]
    x_all = torch.cat([x for x, _ in evaluated])
    assert abs(float(x_all.mean())) < 0.02 and abs(float(x_all.std()) - 1) < 0.02
    assert torch.equal(torch.cat([y for _, y in evaluated]), digits.train.y)  # in order


def test_imagenette_augmentation_is_deterministic_and_sized():
    x = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    first = random_resized_crop_flip(x, torch.Generator().manual_seed(3))
    again = random_resized_crop_flip(x, torch.Generator().manual_seed(3))
    assert first.shape == (10, 3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert float(first.min()) >= 0 and float(first.max()) <= 255
    assert random_resized_crop_flip(x, torch.Generator(), size=8).shape == (10, 3, 8, 8)


class _DiskLike(torch.utils.data.Dataset):
    """Stands in for an ImageFolder: returns (uint8 image, label) one sample at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def test_lazy_split_gives_the_same_batches_as_in_memory():
    torch.manual_seed(2)
    x = torch.randint(0, 256, (60, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(60) % 3
    parts = [np.arange(0, 30), np.arange(30, 60)]
    args = (parts, 8, "imagenette", (0.5,) * 3, (0.2,) * 3, 4)
    memory = AgentBatches(Split(x, y), *args)
    lazy = AgentBatches(Split(None, y, _DiskLike(x, y)), *args, num_workers=0)
    for (xa, ya), (xb, yb) in zip(memory.epoch(1), lazy.epoch(1), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    lazy_eval = list(
        eval_batches(Split(None, y, _DiskLike(x, y)), (0.5,) * 3, (0.2,) * 3, 25, num_workers=0)
    )
    memory_eval = list(eval_batches(Split(x, y), (0.5,) * 3, (0.2,) * 3, 25))
    for (xa, ya), (xb, yb) in zip(memory_eval, lazy_eval, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_rejects_bad_arguments():
    split = _indexed_split(10)
    with pytest.raises(ConfigError, match="augment"):
        AgentBatches(split, [np.arange(10)], 4, "autoaugment", (0.0,), (1.0,), 0)
    with pytest.raises(UserError, match="without any training sample"):
        AgentBatches(split, [np.arange(10), np.arange(0)], 4, "none", (0.0,), (1.0,), 0)
