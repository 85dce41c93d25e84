"""The real datasets' loaders on tiny fake files in torchvision's on-disk formats.

No data set can be downloaded here, so each test writes a few images the way the real archive
stores them (CIFAR pickles, Fashion-MNIST IDX files, Imagenette / ImageNet class folders of
JPEGs) and checks what comes out: shapes, channel order, pixel layout, labels, and the
normalisation the batches get. CIFAR's md5 checks are patched to accept the fake files.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from benchmark.data import AgentBatches, eval_batches, load_dataset
from benchmark.data.registry import CIFAR10_STATS, CIFAR100_STATS, FMNIST_STATS, IMAGENET_STATS

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # one solid colour per class (R, G, B)


def _pattern(n: int, channels: int, size: int) -> np.ndarray:
    """``[n, C, H, W]`` uint8 images whose value says where it is: image, channel, row, column."""
    i, c, h, w = np.meshgrid(np.arange(n), np.arange(channels), np.arange(size), np.arange(size),
                             indexing="ij")
    return ((i * 7 + c * 80 + h * 3 + w) % 256).astype(np.uint8)


@pytest.fixture
def no_md5(monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: True)


def _write_cifar(root, name: str, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    """The python-pickle CIFAR layout: rows of 3072 bytes = R plane, G plane, B plane."""
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    classes = 10 if name == "cifar10" else 100
    images = _pattern(n_train + n_test, 3, 32)
    labels = (np.arange(n_train + n_test) * 3) % classes
    train_files = [f for f, _ in cls.train_list]
    chunks = np.array_split(np.arange(n_train), len(train_files))
    files = [(f, rows) for f, rows in zip(train_files, chunks, strict=True)]
    files.append((cls.test_list[0][0], np.arange(n_train, n_train + n_test)))
    for filename, rows in files:
        batch = {"data": images[rows].reshape(len(rows), 3072),
                 label_key: labels[rows].tolist()}
        (folder / filename).write_bytes(pickle.dumps(batch))
    meta = {cls.meta["key"]: [f"class{k}" for k in range(classes)]}
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps(meta))
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


@pytest.mark.parametrize("name, stats, classes", [("cifar10", CIFAR10_STATS, 10),
                                                  ("cifar100", CIFAR100_STATS, 100)])
def test_cifar_pickles_come_out_nchw_with_their_labels(tmp_path, no_md5, name, stats, classes):
    train_x, train_y, test_x, test_y = _write_cifar(tmp_path, name, 10, 4)
    bundle = load_dataset(name, data_dir=tmp_path)
    assert bundle.train.x.shape == (10, 3, 32, 32) and bundle.train.x.dtype == torch.uint8
    assert torch.equal(bundle.train.x, torch.from_numpy(train_x))  # channel, row, column order
    assert torch.equal(bundle.test.x, torch.from_numpy(test_x))
    assert bundle.train.y.tolist() == train_y.tolist() and bundle.test.y.tolist() == test_y.tolist()
    assert (bundle.num_classes, bundle.sample_shape) == (classes, (3, 32, 32))
    assert (bundle.mean, bundle.std, bundle.augment) == (*stats, "cifar")
    x, y = next(eval_batches(bundle.test, bundle.mean, bundle.std))
    mean = torch.tensor(stats[0]).view(1, 3, 1, 1)
    std = torch.tensor(stats[1]).view(1, 3, 1, 1)
    expected = (torch.from_numpy(test_x).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5) and y.tolist() == test_y.tolist()


def _idx(path, array: np.ndarray) -> None:
    """An IDX file as MNIST stores it: magic (ubyte, ndim), big-endian sizes, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = _pattern(6, 1, 28)[:, 0]
    labels = np.array([9, 0, 3, 3, 1, 7])
    for prefix, rows in (("train", slice(0, 4)), ("t10k", slice(4, 6))):
        _idx(raw / f"{prefix}-images-idx3-ubyte", images[rows])
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels[rows])
    bundle = load_dataset("fmnist", data_dir=tmp_path)
    assert bundle.train.x.shape == (4, 1, 28, 28) and bundle.test.x.shape == (2, 1, 28, 28)
    assert torch.equal(bundle.train.x[:, 0], torch.from_numpy(images[:4]))
    assert bundle.train.y.tolist() == [9, 0, 3, 3] and bundle.test.y.tolist() == [1, 7]
    assert (bundle.mean, bundle.std) == FMNIST_STATS and bundle.sample_shape == (1, 28, 28)
    batches = AgentBatches(bundle.train, [np.arange(4)], 4, bundle.augment, bundle.mean,
                           bundle.std, seed=0)
    xs, ys = next(batches.epoch(0))
    (mean,), (std,) = FMNIST_STATS
    expected = (bundle.train.x[batches.indices(0, 0)[0]].float() / 255 - mean) / std
    assert torch.allclose(xs[0], expected, atol=1e-5)
    assert ys[0].tolist() == bundle.train.y[batches.indices(0, 0)[0]].tolist()


def _class_folders(root, wnids: list[str], per_class: int, size: tuple[int, int]) -> None:
    """One folder per class of solid-colour JPEGs (class k has colour COLOURS[k])."""
    from PIL import Image

    for k, wnid in enumerate(wnids):
        folder = root / wnid
        folder.mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", size, COLOURS[k]).save(folder / f"{wnid}_{j}.JPEG", quality=95)


def _assert_solid_colours(x: torch.Tensor, y: torch.Tensor) -> None:
    """Every image is its class's colour, channels in RGB order (JPEG: within a few levels)."""
    for image, label in zip(x, y, strict=True):
        colour = torch.tensor(COLOURS[int(label)], dtype=torch.float32).view(3, 1, 1)
        assert (image.float() - colour).abs().max() <= 8


def test_imagenette_folders_resized_and_cached(tmp_path):
    wnids = ["n01440764", "n02102040", "n02979186"]  # sorted: labels 0, 1, 2
    for split in ("train", "val"):
        _class_folders(tmp_path / "imagenette2-160" / split, wnids, 2, (48, 40))
    bundle = load_dataset("imagenette", data_dir=tmp_path)  # 32 px, the paper's setting
    assert bundle.train.x.shape == (6, 3, 32, 32) and bundle.test.x.shape == (6, 3, 32, 32)
    assert sorted(bundle.train.y.tolist()) == [0, 0, 1, 1, 2, 2]
    _assert_solid_colours(bundle.train.x, bundle.train.y)
    _assert_solid_colours(bundle.test.x, bundle.test.y)
    assert (bundle.mean, bundle.std, bundle.augment) == (*IMAGENET_STATS, "imagenette")
    assert sorted(p.name for p in (tmp_path / "imagenette_cache").iterdir()) == [
        "train_32px_from160px.pt", "val_32px_from160px.pt"]
    again = load_dataset("imagenette", data_dir=tmp_path)  # from the cache: the same tensors
    assert torch.equal(again.train.x, bundle.train.x) and torch.equal(again.test.y, bundle.test.y)


def test_imagenet_folders_are_read_lazily_and_normalised(tmp_path):
    classes = ["n01440764", "n01443537", "n01484850"]
    for split in ("train", "val"):
        _class_folders(tmp_path / "imagenet" / split, classes, 2, (40, 50))
    bundle = load_dataset("imagenet", data_dir=tmp_path, image_size=32)
    assert bundle.train.lazy and bundle.num_classes == 3
    assert bundle.train.y.tolist() == [0, 0, 1, 1, 2, 2]
    x, y = next(eval_batches(bundle.test, bundle.mean, bundle.std, num_workers=0))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2]
    mean = torch.tensor(IMAGENET_STATS[0]).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STATS[1]).view(3, 1, 1)
    for image, label in zip(x, y, strict=True):
        colour = torch.tensor(COLOURS[int(label)], dtype=torch.float32).view(3, 1, 1) / 255
        assert (image - (colour - mean) / std).abs().max() <= 8 / 255 / min(IMAGENET_STATS[1])
    parts = [np.array([0, 2, 4]), np.array([1, 3, 5])]
    batches = AgentBatches(bundle.train, parts, 3, "none", bundle.mean, bundle.std, seed=0,
                           num_workers=0)
    xs, ys = next(batches.epoch(0))  # each agent's shard holds one image of every class
    assert xs.shape == (2, 3, 3, 32, 32) and [sorted(row) for row in ys.tolist()] == [[0, 1, 2]] * 2
    for image, label in zip(xs.flatten(0, 1), ys.flatten(), strict=True):
        colour = torch.tensor(COLOURS[int(label)], dtype=torch.float32).view(3, 1, 1) / 255
        assert (image - (colour - mean) / std).abs().max() <= 8 / 255 / min(IMAGENET_STATS[1])
