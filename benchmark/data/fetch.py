"""Fetch a dataset into ``data_dir`` once, before any run reads it (``python -m benchmark fetch``).

The workflow's ``fetch_data`` rule runs this once per dataset a grid needs, before its training
and tuning jobs (which then never download: concurrent jobs extracting into one folder would
corrupt it). The download is torchvision's (it verifies the archive's MD5 checksum), made into a
temporary folder inside ``data_dir`` and renamed into place only once complete, so a killed or
failed fetch never leaves a half-extracted dataset where the loaders look. Without internet it
fails with one line saying where to put the files. ``digits`` and ``synthetic`` are built
offline: nothing to fetch. ImageNet is never downloaded (licence): only its presence is checked.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import DataMissingError
from benchmark.io import check_writable_dir


@dataclass(frozen=True)
class Source:
    """Where one dataset comes from and the folder under ``data_dir`` its loader reads."""

    folder: str
    url: str
    # torchvision dataset constructor (root, download) -> dataset; raises when files are missing
    # or corrupted; None: never downloaded (ImageNet)
    open: Callable[[str, bool], object] | None


def _torchvision(class_name: str, **options) -> Callable[[str, bool], object]:
    def open_(root: str, download: bool) -> object:
        import torchvision.datasets as tvd

        return getattr(tvd, class_name)(root, download=download, **options)

    return open_


SOURCES: dict[str, Source] = {
    "cifar10": Source("cifar-10-batches-py",
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      _torchvision("CIFAR10")),
    "cifar100": Source("cifar-100-python",
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       _torchvision("CIFAR100")),
    "fmnist": Source("FashionMNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                     _torchvision("FashionMNIST")),
    **{f"imagenette-{size}": Source(
        f"imagenette2-{size[:3]}", f"https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-"
        f"{size[:3]}.tgz", _torchvision("Imagenette", size=size)) for size in ("160px", "320px")},
    "imagenet": Source("imagenet", "https://image-net.org/download.php", None),
}
OFFLINE = ("digits", "synthetic")  # built in memory: nothing to fetch
ITEMS = (*SOURCES, *OFFLINE)


def fetch_item(config) -> str:
    """What a run on ``config`` needs fetched (the workflow's ``fetch_data`` job it waits for)."""
    if config.dataset == "imagenette":
        from benchmark.data.registry import imagenette_source

        return f"imagenette-{imagenette_source(config.image_size or 32)}"
    return config.dataset


def present(item: str, data_dir: str | Path) -> bool:
    """Whether ``data_dir`` already holds the item's files, intact (torchvision's own check)."""
    source = SOURCES.get(item)
    if source is None:
        return True
    root = Path(data_dir)
    if source.open is None:
        return all((root / source.folder / split).is_dir() for split in ("train", "val"))
    try:
        source.open(str(root), False)
    except Exception:  # noqa: BLE001 - torchvision's errors for damaged files vary (a truncated
        return False  # IDX file: ValueError or AssertionError)
    return True


def fetch(item: str, data_dir: str | Path) -> str:
    """Make ``data_dir`` hold ``item``; returns what was done. One-line error if impossible."""
    source = SOURCES.get(item)
    if source is None:
        return f"{item}: built offline, nothing to fetch"
    root = Path(data_dir)
    target = root / source.folder
    if present(item, root):
        return f"{item}: already in {target}"
    where = (f"put the files at {target} ({source.url}; or run `python -m benchmark fetch {item}"
             f" --data-dir DIR` on a machine with internet and copy DIR/{source.folder} here)")
    if source.open is None:
        raise DataMissingError(f"dataset {item}: not found at {target} (train/ and val/, one "
                               f"sub-folder per class) and never downloaded; {where}")
    if target.exists():  # never overwrite what someone put there
        raise DataMissingError(f"dataset {item}: {target} exists but is incomplete or corrupted; "
                               f"remove it to fetch again, or {where}")
    check_writable_dir(root, "--data-dir")  # before the download, not after it
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".fetch-{item}-", dir=root))
    try:
        source.open(str(staging), True)  # download, verify the checksum, extract
        (staging / source.folder).rename(target)  # atomic: the loaders see all of it or nothing
    except (OSError, RuntimeError) as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise DataMissingError(f"dataset {item}: download failed ({reason}); {where}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the archive and any partial extraction
    return f"{item}: fetched into {target}"
