"""Dataset registry: every dataset the suite knows, one row each, loaded once into tensors.

``REGISTRY`` is a table, one :class:`DatasetRow` per dataset (at the end of this module): its
loader, and everything the suite needs to know before reading a file: classes, sample shape
(``[C, H, W]`` images, ``[C, L]`` 1-D signals), training-set size, normalisation, augmentation and
fetch rule. Configs, plans, calibration, the fetcher and the CLI read the rows (no other list of
datasets exists); :func:`dataset_row` gives the row a run's options make (a resized image dataset,
the synthetic set's options). A loader only reads files into a train and a test :class:`Split`;
:func:`load_dataset` builds every :class:`DatasetBundle` the same way from the row and what the
loader returns. docs/DESIGN.md, "Adding a dataset", says what a new dataset needs.

Why tensors in memory rather than torchvision datasets with PIL transforms: a run simulates
many agents in one process, and per-sample PIL decoding for ``n * B`` images per iteration would
dominate the step time. CIFAR-10 is 150 MB as uint8, so the whole training set can live on the
GPU and :mod:`benchmark.data.loader` builds every agent's batch with a few tensor operations.
Images are held as uint8; 1-D signals (MNIST-1D) as float32, as generated (no uint8 round trip).

The exception is ImageNet (about 140 GB of JPEGs): its splits stay lazy, a :class:`Split` with a
torchvision ``dataset`` and the labels only, and the loader reads it with a ``DataLoader``.

Imagenette at 224 px (1.4 GB as uint8) is still held in memory; the resized tensors are cached
under ``data_dir/imagenette_cache/`` after the first load so later runs skip the JPEG decoding.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from benchmark.data import mnist1d_loader
from benchmark.data.sources import (
    BySize,
    Download,
    FetchRule,
    Generated,
    Offline,
    PlacedByHand,
    torchvision,
)
from benchmark.errors import ConfigError, DataMissingError, UserError
from benchmark.samples import DESCRIBED, SampleKind, check_sample_shape, sample_kind

# training augmentations (benchmark.data.loader) and the sample kinds each applies to
AUGMENTATIONS: dict[str, tuple[SampleKind, ...]] = {
    "cifar": ("image",),  # random crop + flip
    "imagenette": ("image",),  # random-resized crop + flip
    "none": ("image", "signal"),
}

# input normalisation (mean, std) as the authors' trainer.py (METHOD.md section 5)
Stats = tuple[tuple[float, ...], tuple[float, ...]]
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
FMNIST_STATS = ((0.5,), (0.5,))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MNIST1D_STATS = ((0.0,), (1.0,))  # generated centred and scaled: used as generated

SYNTHETIC_DEFAULTS: dict[str, object] = {
    "num_classes": 10,
    "train_size": 512,
    "test_size": 256,
    "channels": 3,
    "image_size": 32,
    "length": None,  # 1-D signals [channels, length] instead of images
    "noise": 0.25,
    "seed": 0,
    "augment": "none",
}
SYNTHETIC_MAX_VALUES = 2**31  # 8 GiB of float32 images: a test set, not a benchmark
DIGITS_SAMPLES = 1797  # scikit-learn's load_digits
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed, so every run seed is scored on the same digits test set
# its test indices: sklearn's stratified train_test_split at DIGITS_SPLIT_SEED (header: 3 lines)
DIGITS_TEST_INDICES = "digits_test_indices.txt"


@dataclass
class Split:
    """One split of a dataset: samples ``x`` and labels ``y`` (``LongTensor [N]``).

    ``x`` is ``uint8 [N, C, H, W]`` for image datasets held in memory and ``float32 [N, C, L]``
    for 1-D signals (float images are accepted too; float samples are used as is, without the
    /255 scaling). For datasets too large for memory ``x`` is ``None`` and ``dataset`` is a
    torchvision dataset whose items are ``(uint8 [C, H, W], label)``; ``y`` is still filled so
    that partitions never touch the images.
    """

    x: torch.Tensor | None
    y: torch.Tensor
    dataset: Dataset | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.x is None and self.dataset is None:
            raise ValueError("a Split needs either tensors x or a lazy dataset")
        if self.x is not None and len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} samples but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def lazy(self) -> bool:
        """True when images are read from disk on demand (``dataset``) instead of held in ``x``."""
        return self.x is None

    def to(self, device: torch.device | str) -> Split:
        """The same split with its tensors on ``device`` (a lazy split stays lazy, on the host)."""
        if self.x is None:
            return self
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, indices: np.ndarray | torch.Tensor) -> Split:
        """The samples at ``indices``, in that order (lazy splits stay lazy)."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if self.x is None:
            return Split(None, self.y[index], Subset(self.dataset, index.tolist()))
        return Split(self.x[index], self.y[index])


@dataclass
class DatasetBundle:
    """A loaded dataset plus what models and loaders need to know about it."""

    name: str
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    sample_shape: tuple[int, ...]  # one sample: [C, H, W] images, [C, L] 1-D signals
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # a key of AUGMENTATIONS
    # sha256 of the loaded samples and labels (train, then test); the loader's own when it has a
    # canonical one (mnist1d: the generated arrays); None for lazy splits (ImageNet), whose
    # 140 GB of files are never hashed
    digest: str | None = None

    @property
    def kind(self) -> SampleKind:
        return sample_kind(self.sample_shape)


@dataclass(frozen=True)
class Request:
    """What a loader is asked for: where the files are, and the dataset's options."""

    root: Path
    download: bool
    sample_shape: tuple[int, ...]  # the row's, at the configured image size
    synthetic: dict

    @property
    def image_size(self) -> int:
        """The side of the (square) images an image loader makes."""
        return self.sample_shape[-1]


@dataclass
class Loaded:
    """What a loader returns: the two splits, plus what its files decide (``None``: the
    registry row's value, or computed)."""

    train: Split
    test: Split
    num_classes: int | None = None  # ImageNet: its class folders
    digest: str | None = None  # a canonical digest of the data (else one of the loaded tensors)


@dataclass(frozen=True)
class DatasetRow:
    """One dataset: its loader and everything known about it before a file is read.

    Every field is required: :func:`check_row` (run on the whole registry at import, and by
    tests/test_mnist1d.py on a broken row) names the row and the field that is missing or wrong.
    """

    load: Callable[[Request], Loaded]
    num_classes: int  # ImageNet: the nominal 1000 (the loader counts its class folders)
    sample_shape: tuple[int, ...]  # one sample at the default size: [C, H, W] or [C, L]
    # training samples, known without reading a file: a config is checked against them before
    # anything expensive (20000 agents on 1437 digits must be refused before the 20000 x 20000
    # mixing matrix is built) and plans count iterations with them
    train_size: int
    # input (mean, std) per channel, images on the [0, 1] scale; None: the training samples'
    stats: Stats | None
    augment: str  # a key of AUGMENTATIONS
    fetch: FetchRule  # how `python -m benchmark fetch` makes it present (benchmark.data.sources)
    resizable: bool  # the `image_size` option resizes its images (else refused unless native)
    # a dataset made from its options (synthetic): the row those options describe
    from_options: Callable[[dict, int | None], DatasetRow] | None = None

    @property
    def kind(self) -> SampleKind:
        return sample_kind(self.sample_shape)


def check_row(name: str, row: DatasetRow) -> None:
    """Refuse an incomplete or inconsistent registry row, naming it and the field."""

    def bad(field_name: str, why: str) -> UserError:
        return UserError(f"dataset registry row {name!r}: {field_name} {why}")

    if not callable(row.load):
        raise bad("load", "missing: the loader, Request -> Loaded")
    for key in ("num_classes", "train_size"):
        value = getattr(row, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(key, f"missing or not a positive integer (got {value!r})")
    try:
        check_sample_shape(row.sample_shape)
    except ConfigError as err:
        raise bad("sample_shape", f"invalid ({err})") from None
    if row.stats is not None and (len(row.stats) != 2 or any(
            len(s) != row.sample_shape[0] for s in row.stats)):
        raise bad("stats", f"must be (mean, std) with one value per channel "
                  f"({row.sample_shape[0]}), or None (got {row.stats!r})")
    if row.kind not in AUGMENTATIONS.get(row.augment, ()):
        allowed = [a for a, kinds in AUGMENTATIONS.items() if row.kind in kinds]
        raise bad("augment", f"{row.augment!r} invalid for {DESCRIBED[row.kind]}; "
                  f"allowed: {', '.join(allowed)}")
    if not isinstance(row.fetch, FetchRule):
        raise bad("fetch", f"missing: a rule of benchmark.data.sources (got {row.fetch!r})")
    if row.resizable and row.kind != "image":
        raise bad("resizable", "only images are resized")


def dataset_row(name: str, image_size: int | None = None, synthetic: dict | None = None
                ) -> DatasetRow:
    """The row a run of dataset ``name`` with these options uses: its images resized to
    ``image_size``, or the synthetic set the options describe. Refuses, in one line, options the
    dataset does not take; reads no file, so configs and plans call it."""
    if name not in REGISTRY:
        raise ConfigError("dataset", name, DATASETS)
    row = REGISTRY[name]
    if synthetic is not None and row.from_options is None:
        raise ConfigError("synthetic", synthetic, "options only for dataset 'synthetic'")
    if image_size is not None and (isinstance(image_size, bool) or
                                   not isinstance(image_size, int) or image_size < 1):
        raise ConfigError("image_size", image_size, "a positive integer")
    if row.from_options is not None:
        return row.from_options(synthetic or {}, image_size)
    if image_size is not None and row.kind != "image":
        raise ConfigError("image_size", image_size, f"unset for {name}", hint=f"{name} holds "
                          f"{DESCRIBED[row.kind]} of shape {list(row.sample_shape)}, no images")
    if image_size is None or image_size == row.sample_shape[-1]:
        return row
    if not row.resizable:
        raise ConfigError("image_size", image_size,
                          f"{row.sample_shape[-1]} for {name} (or leave it unset)")
    return replace(row, sample_shape=(row.sample_shape[0], image_size, image_size))


def validation_samples(name: str, synthetic: dict | None = None, val_fraction: float = 0.0,
                       image_size: int | None = None) -> int:
    """Samples of the validation split carved from the training split: ``ceil(n *
    val_fraction)``, as scikit-learn's ``train_test_split`` rounds them (no file read)."""
    return math.ceil(dataset_row(name, image_size, synthetic).train_size * val_fraction)


def train_samples(name: str, synthetic: dict | None = None, val_fraction: float = 0.0,
                  image_size: int | None = None) -> int:
    """Training samples a run of ``name`` shares among its agents, known without reading a file:
    the training split less the validation samples carved from it (scikit-learn rounds those
    up)."""
    n = dataset_row(name, image_size, synthetic).train_size
    return n - math.ceil(n * val_fraction)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] = "data",
    download: bool = False,
    val_fraction: float = 0.0,
    seed: int = 0,
    image_size: int | None = None,
    synthetic: dict | None = None,
) -> DatasetBundle:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``data_dir``.

    ``val_fraction`` > 0 carves a seeded, stratified validation split out of the training set
    (tuning never sees the test set). ``image_size`` resizes the datasets that support it
    (imagenette: 32 by default, 224 for the full-size setting; imagenet: 224; digits: 28;
    synthetic). ``synthetic`` holds the options of the synthetic dataset.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise ConfigError("val_fraction", val_fraction, "a number in [0, 0.5]")
    if not 0.0 <= val_fraction <= 0.5:
        raise ConfigError("val_fraction", val_fraction, "a number in [0, 0.5]")
    row = dataset_row(name, image_size, synthetic)
    loaded = row.load(Request(Path(data_dir), download, row.sample_shape, synthetic or {}))
    for split in (loaded.train, loaded.test):
        if split.x is not None and tuple(split.x.shape[1:]) != row.sample_shape:
            raise RuntimeError(f"the {name} loader returned samples of shape "
                               f"{list(split.x.shape[1:])}, its row says {list(row.sample_shape)}")
    train = loaded.train
    if val_fraction > 0:
        train, val = _carve_validation(train, val_fraction, seed)
    else:
        val = None
    # datasets without published constants are normalised with their own training samples'
    mean, std = row.stats or _channel_stats(loaded.train.x)
    return DatasetBundle(
        name=name, train=train, val=val, test=loaded.test,
        num_classes=loaded.num_classes or row.num_classes, sample_shape=row.sample_shape,
        mean=mean, std=std, augment=row.augment,
        digest=loaded.digest or _digest(loaded.train, loaded.test),
    )


def _digest(*splits: Split) -> str | None:
    """sha256 of the splits' samples and labels as loaded, in order (None for lazy splits)."""
    if any(split.lazy for split in splits):
        return None
    h = hashlib.sha256()
    for split in splits:
        for tensor in (split.x, split.y):
            h.update(tensor.contiguous().numpy())  # its buffer: no copy of a large set
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# validation split


def _carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Seeded stratified split of the training set: same seed -> same validation samples."""
    from sklearn.model_selection import train_test_split

    labels = train.y.numpy()
    try:
        keep, held = train_test_split(
            np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as err:  # e.g. a class with a single sample cannot be stratified
        raise ConfigError(
            "val_fraction", fraction, f"a fraction this dataset allows ({err})"
        ) from err
    return train.subset(np.sort(keep)), train.subset(np.sort(held))


# ---------------------------------------------------------------------------------------------
# torchvision datasets


def _missing(name: str, path: Path, how: str) -> DataMissingError:
    return DataMissingError(f"dataset {name}: files not found (or corrupted) at {path}; {how}")


_DOWNLOAD_HINT = "set download: true in the config (or pass download=True) to fetch them"

def _torchvision_small(name: str, source: Download):
    """A loader of a small torchvision dataset (files in ``data_dir/<source.folder>``, opened by
    the fetch rule's torchvision class) held in memory at its native size."""

    def load(request: Request) -> Loaded:
        splits = []
        for train in (True, False):
            try:
                ds = source.open(str(request.root), request.download, train=train)
            except Exception as err:  # noqa: BLE001 - torchvision: RuntimeError, ValueError,
                # AssertionError, UnpicklingError... for missing or damaged files, naming none
                damaged = _damaged_file(source.open.dataset_class, request.root)
                if damaged is None or not damaged.parent.is_dir():  # nothing there: fetch it
                    raise _missing(name, request.root / source.folder, _DOWNLOAD_HINT) from err
                what = "truncated or corrupted" if damaged.exists() else "missing"
                top = request.root / Path(source.folder).parts[0]
                raise DataMissingError(
                    f"dataset {name}: {damaged} is {what}; delete {top} and run `python -m "
                    f"benchmark fetch {name} --data-dir {request.root}`") from None
            x = torch.as_tensor(np.asarray(ds.data))
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # -> [N, C, H, W]
            y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
            splits.append(Split(x.to(torch.uint8).contiguous(), y))
        return Loaded(*splits)

    return load


def _damaged_file(dataset_class, root: Path) -> Path | None:
    """The first file of a small torchvision dataset that is missing, fails its MD5 (CIFAR's
    pickles) or is shorter or longer than its header says (the MNIST family's IDX files)."""
    from torchvision.datasets.utils import check_integrity

    if hasattr(dataset_class, "train_list"):  # CIFAR
        folder, meta = root / dataset_class.base_folder, dataset_class.meta
        files = [*dataset_class.train_list, *dataset_class.test_list,
                 [meta["filename"], meta["md5"]]]
        return next((folder / name for name, md5 in files
                     if not check_integrity(str(folder / name), md5)), None)
    folder = root / dataset_class.__name__ / "raw"  # the MNIST family, decompressed
    files = [folder / Path(url).stem for url, _ in dataset_class.resources]
    return next((path for path in files if not _idx_complete(path)), None)


IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # by IDX type code


def _idx_complete(path: Path) -> bool:
    """An IDX file (zero, zero, type, dimensions; then each dimension as a big-endian uint32)
    whose size is its header plus the data the dimensions describe."""
    try:
        with open(path, "rb") as fh:
            _, _, kind, ndim = fh.read(4)
            dims = struct.unpack(f">{ndim}I", fh.read(4 * ndim))
        expected = 4 + 4 * ndim + math.prod(dims) * IDX_ITEM_BYTES[kind]
        return path.stat().st_size == expected
    except (OSError, ValueError, KeyError, struct.error):  # short header, unknown type
        return False


def _resize_transform(size: int, crop: int | None = None):
    """PIL -> uint8 [C, crop, crop]: shorter side to ``size``, then a square centre crop."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(size, antialias=True),
            transforms.CenterCrop(crop or size),
            transforms.PILToTensor(),
        ]
    )


def imagenette_source(image_size: int) -> str:
    """The Imagenette release a size is resized from: 160 px suffices up to 160, else 320 px."""
    return "160px" if image_size <= 160 else "320px"


def _load_imagenette(request: Request) -> Loaded:
    """Imagenette resized once to ``image_size`` (32 in the paper) and cached as uint8 tensors.

    The 160 px release is enough for sizes up to 160, the 320 px one is used above. Images are
    resized on the shorter side and centre-cropped to a square; the training augmentation then
    applies a random-resized crop on the GPU. The Imagenette validation set is the test set.
    """
    import torchvision.datasets as tvd
    from torch.utils.data import DataLoader

    root, download, image_size = request.root, request.download, request.image_size
    source = imagenette_source(image_size)
    folder = root / f"imagenette2-{source[:3]}"
    cache_dir = root / "imagenette_cache"
    splits = []
    for split in ("train", "val"):
        cache = cache_dir / f"{split}_{image_size}px_from{source}.pt"
        if cache.exists():
            try:
                data = torch.load(cache, weights_only=True)
                splits.append(Split(data["x"], data["y"]))
            except Exception:  # noqa: BLE001 - torch's errors for a damaged file vary
                raise DataMissingError(f"dataset imagenette: the cache {cache} is truncated or "
                                       "corrupted; delete it (it is rebuilt from the images)"
                                       ) from None
            continue
        try:
            ds = tvd.Imagenette(
                str(root),
                split=split,
                size=source,
                download=download,
                transform=_resize_transform(image_size),
            )
        except RuntimeError as err:
            raise _missing("imagenette", folder, _DOWNLOAD_HINT) from err
        xs, ys = [], []
        workers = min(8, os.cpu_count() or 1)
        for x, y in DataLoader(ds, batch_size=256, num_workers=workers):
            xs.append(x)
            ys.append(y)
        x, y = torch.cat(xs).to(torch.uint8), torch.cat(ys).long()
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save({"x": x, "y": y}, tmp)
        os.replace(tmp, cache)  # atomic: a concurrent or killed run never sees half a file
        splits.append(Split(x, y))
    return Loaded(*splits)


def _load_imagenet(request: Request) -> Loaded:
    """ImageNet from ``data_dir/imagenet/{train,val}`` (one sub-folder per class), read lazily.

    Training images are resized and centre-cropped to ``image_size`` and get a random-resized
    crop + flip in the loader; test images follow the usual resize-to-256/224-then-crop protocol.
    """
    import torchvision.datasets as tvd

    root, image_size = request.root, request.image_size
    splits = []
    for split, transform in (
        ("train", _resize_transform(image_size)),
        ("val", _resize_transform(round(image_size * 256 / 224), image_size)),
    ):
        path = root / "imagenet" / split
        how = (
            f"ImageNet is never downloaded: place the training images in {root / 'imagenet/train'}"
            f" and the validation images in {root / 'imagenet/val'}, one sub-folder per class"
            " (e.g. n01440764/*.JPEG)"
        )
        if not path.is_dir():
            raise _missing("imagenet", path, how)
        try:
            ds = tvd.ImageFolder(str(path), transform=transform)
        except (FileNotFoundError, RuntimeError) as err:
            raise _missing("imagenet", path, how) from err
        splits.append(Split(None, torch.as_tensor(ds.targets, dtype=torch.long), ds))
    return Loaded(*splits, num_classes=len(splits[0].dataset.classes))


# ---------------------------------------------------------------------------------------------
# offline datasets


def _channel_stats(x: torch.Tensor) -> Stats:
    """Per-channel mean/std of the samples (uint8 images on the [0, 1] scale, float samples as
    stored), for datasets without published constants."""
    unit = 255 if x.dtype == torch.uint8 else 1
    values = x.double().div(unit).transpose(0, 1).reshape(x.shape[1], -1)
    mean = tuple(round(float(m), 4) for m in values.mean(1))
    std = tuple(max(round(float(s), 4), 1e-3) for s in values.std(1))
    return mean, std


def _load_digits(request: Request) -> Loaded:
    """scikit-learn's 8x8 handwritten digits (offline), at 8 px or upsampled (28 px by default).

    Digits has no official test set, so a fixed stratified 20% is held out (the same for every
    run seed, so accuracies of different seeds are comparable). Read straight from the CSV that
    scikit-learn ships, with the split's indices kept in ``benchmark/resources``: importing
    ``sklearn.datasets`` costs about 2.5 CPU-seconds, more than a small run's whole setup.
    """
    image_size = request.image_size
    pixels, labels = _digits_arrays()
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear")
    x = (images * 255).round().clamp(0, 255).to(torch.uint8)
    y = torch.as_tensor(labels, dtype=torch.long)
    test_idx = np.array((resources.files("benchmark") / "resources" / DIGITS_TEST_INDICES)
                        .read_text().split("\n", 3)[3].split(), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return Loaded(Split(x, y).subset(train_idx), Split(x, y).subset(test_idx))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[1797, 64]`` (0-16) and labels of scikit-learn's ``digits.csv.gz``, located
    without importing scikit-learn (``load_digits`` reads the same file the same way)."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def _load_mnist1d(request: Request) -> Loaded:
    """MNIST-1D's published set (:mod:`benchmark.data.mnist1d_loader`: generated once per
    ``data_dir``, then read from its cache) as float32 signals ``[N, 1, 40]``; its digest is the
    generated float64 arrays'."""
    arrays = mnist1d_loader.load_arrays(request.root)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        signals = torch.as_tensor(x, dtype=torch.float32).unsqueeze(1)  # one channel
        return Split(signals, torch.as_tensor(y, dtype=torch.long))

    return Loaded(split(arrays["x"], arrays["y"]), split(arrays["x_test"], arrays["y_test"]),
                  digest=mnist1d_loader.digest(arrays))


def synthetic_options(options: dict, image_size: int | None = None) -> dict:
    """The checked options of the synthetic set (defaults filled in); the run config calls this
    before anything is built, so a set too large to hold is refused before it is allocated."""
    unknown = sorted(set(options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise ConfigError("synthetic", unknown[0], sorted(SYNTHETIC_DEFAULTS))
    opts = {**SYNTHETIC_DEFAULTS, **({"image_size": image_size} if image_size else {}), **options}
    signals = opts["length"] is not None
    sizes = ("num_classes", "train_size", "test_size", "channels", "image_size",
             *(("length",) if signals else ()))
    for key in sizes:
        if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
            raise ConfigError(f"synthetic.{key}", opts[key], "a positive integer")
    if signals and (image_size or "image_size" in options):
        raise ConfigError("synthetic.length", opts["length"], "unset when image_size is set",
                          hint="length makes 1-D signals, image_size images")
    if opts["augment"] not in AUGMENTATIONS:
        raise ConfigError("synthetic.augment", opts["augment"], AUGMENTATIONS)
    kind: SampleKind = "signal" if signals else "image"
    if kind not in AUGMENTATIONS[opts["augment"]]:
        raise ConfigError("synthetic.augment", opts["augment"],
                          [a for a, kinds in AUGMENTATIONS.items() if kind in kinds],
                          hint=f"for {DESCRIBED[kind]}")
    noise = opts["noise"]
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not 0 <= noise < 1e308:
        raise ConfigError("synthetic.noise", noise, "a finite number >= 0")
    if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int) or \
            not 0 <= opts["seed"] < 2**63:
        raise ConfigError("synthetic.seed", opts["seed"], "an integer in [0, 2^63)")
    sample = opts["length"] if signals else opts["image_size"] ** 2
    values = (opts["train_size"] + opts["test_size"]) * opts["channels"] * sample
    if values > SYNTHETIC_MAX_VALUES:
        raise ConfigError("synthetic", options, f"a set of at most {SYNTHETIC_MAX_VALUES:.0e} "
                          f"values (these sizes make {values:.1e}, as float32 "
                          f"{values * 4 / 2**30:.0f} GiB)")
    return opts


def _synthetic_row(options: dict, image_size: int | None) -> DatasetRow:
    """The synthetic set its options describe: classes, sizes, sample shape, augmentation."""
    opts = synthetic_options(options, image_size)
    c = opts["channels"]
    shape = (c, opts["length"]) if opts["length"] is not None else \
        (c, opts["image_size"], opts["image_size"])
    return replace(REGISTRY["synthetic"], num_classes=opts["num_classes"], sample_shape=shape,
                   train_size=opts["train_size"], augment=opts["augment"], from_options=None)


def _load_synthetic(request: Request) -> Loaded:
    """Class-conditional random samples for tests: a fixed random prototype per class + noise.

    Images are held as uint8 like the real image sets; 1-D signals (option ``length``) as
    float32, like MNIST-1D. With the default noise the classes are linearly separable, so
    anything that trains at all beats chance quickly; larger ``noise`` makes the task harder.
    """
    opts = synthetic_options(request.synthetic)
    k, shape = opts["num_classes"], request.sample_shape

    gen = torch.Generator().manual_seed(int(opts["seed"]))
    prototypes = torch.rand(k, *shape, generator=gen)

    def sample(size: int) -> Split:
        # Labels cycle through the classes (then get shuffled): every class is present and the
        # split is as balanced as the size allows.
        y = torch.arange(size) % k
        y = y[torch.randperm(size, generator=gen)]
        x = prototypes[y] + float(opts["noise"]) * torch.randn(size, *shape, generator=gen)
        if len(shape) == 3:  # images: stored as uint8 like the real image sets
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return Split(x, y.long())

    return Loaded(sample(opts["train_size"]), sample(opts["test_size"]))


# ---------------------------------------------------------------------------------------------
# the registry: one row per dataset (docs/DESIGN.md, "Adding a dataset"). ``stats`` are the
# normalisation mean/std (images on the [0, 1] scale); augment "cifar": random crop + flip,
# "imagenette": random-resized crop + flip.

_CIFAR10 = Download("cifar-10-batches-py",
                    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    torchvision("CIFAR10"))
_CIFAR100 = Download("cifar-100-python",
                     "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     torchvision("CIFAR100"))
_FMNIST = Download("FashionMNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                   torchvision("FashionMNIST"))
_IMAGENETTE = BySize({size: Download(f"imagenette2-{size[:3]}", "https://s3.amazonaws.com/"
                                     f"fast-ai-imageclas/imagenette2-{size[:3]}.tgz",
                                     torchvision("Imagenette", size=size))
                      for size in ("160px", "320px")}, imagenette_source)

REGISTRY: dict[str, DatasetRow] = {
    "cifar10": DatasetRow(_torchvision_small("cifar10", _CIFAR10), num_classes=10,
                          sample_shape=(3, 32, 32), train_size=50_000, stats=CIFAR10_STATS,
                          augment="cifar", fetch=_CIFAR10, resizable=False),
    "cifar100": DatasetRow(_torchvision_small("cifar100", _CIFAR100), num_classes=100,
                           sample_shape=(3, 32, 32), train_size=50_000, stats=CIFAR100_STATS,
                           augment="cifar", fetch=_CIFAR100, resizable=False),
    "fmnist": DatasetRow(_torchvision_small("fmnist", _FMNIST), num_classes=10,
                         sample_shape=(1, 28, 28), train_size=60_000, stats=FMNIST_STATS,
                         augment="none", fetch=_FMNIST, resizable=False),
    "imagenette": DatasetRow(_load_imagenette, num_classes=10, sample_shape=(3, 32, 32),
                             train_size=9_469,  # the v2 release
                             stats=IMAGENET_STATS, augment="imagenette", fetch=_IMAGENETTE,
                             resizable=True),
    "imagenet": DatasetRow(_load_imagenet, num_classes=1000, sample_shape=(3, 224, 224),
                           train_size=1_281_167, stats=IMAGENET_STATS, augment="imagenette",
                           fetch=PlacedByHand("imagenet", "https://image-net.org/download.php"),
                           resizable=True),
    "digits": DatasetRow(_load_digits, num_classes=10, sample_shape=(1, 28, 28),
                         train_size=DIGITS_SAMPLES - math.ceil(DIGITS_SAMPLES
                                                               * DIGITS_TEST_FRACTION),
                         stats=None, augment="none", fetch=Offline(), resizable=True),
    "mnist1d": DatasetRow(_load_mnist1d, num_classes=10, sample_shape=(1, 40), train_size=4_000,
                          stats=MNIST1D_STATS, augment="none",
                          fetch=Generated(mnist1d_loader.ensure), resizable=False),
    # the defaults of its options (SYNTHETIC_DEFAULTS); a run's options make its own row
    "synthetic": DatasetRow(_load_synthetic, num_classes=10, sample_shape=(3, 32, 32),
                            train_size=512, stats=None, augment="none", fetch=Offline(),
                            resizable=True, from_options=_synthetic_row),
}
DATASETS: tuple[str, ...] = tuple(REGISTRY)
for _name, _row in REGISTRY.items():  # an incomplete row fails at import, naming its field
    check_row(_name, _row)
