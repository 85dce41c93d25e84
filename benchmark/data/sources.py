"""Where a dataset's files come from: the fetch rule of its registry row.

Each row of :data:`benchmark.data.registry.REGISTRY` names one of these rules;
:mod:`benchmark.data.fetch` (``python -m benchmark fetch``, the workflow's ``fetch_data`` job)
applies it. They are plain data, defined apart from both so that the registry can name them and
the fetcher can read the registry without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Offline:
    """Built in memory from what an installed package ships (digits, synthetic): nothing to
    fetch."""


@dataclass(frozen=True)
class Download:
    """A torchvision download: the folder under ``data_dir`` its loader reads, the URL a user
    is pointed to when it fails, and the torchvision constructor ``(root, download) -> dataset``
    that downloads, verifies the archive's checksum and opens the files (raising when they are
    missing or corrupted); the loader opens its splits with the same constructor."""

    folder: str
    url: str
    open: Torchvision  # (root, download, **split options) -> dataset


@dataclass(frozen=True)
class PlacedByHand:
    """Never downloaded (ImageNet's licence): only checked; ``train/`` and ``val/`` under
    ``folder``, one sub-folder per class."""

    folder: str
    url: str


@dataclass(frozen=True)
class Generated:
    """Generated offline once per ``data_dir`` into a cache file (MNIST-1D): ``ensure(data_dir)``
    makes the file present and valid and returns (its path, whether it had to be generated)."""

    ensure: Callable[[Path], tuple[Path, bool]]


@dataclass(frozen=True)
class BySize:
    """A dataset released at several sizes (Imagenette): one rule per release, fetched as the
    item ``<dataset>-<release>``; ``pick(image_size)`` names the release a run needs."""

    releases: dict[str, ItemRule]
    pick: Callable[[int], str]


ItemRule = Offline | Download | PlacedByHand | Generated  # what one fetchable item follows
FetchRule = ItemRule | BySize


@dataclass(frozen=True)
class Torchvision:
    """The ``open`` of a :class:`Download`: torchvision's dataset ``class_name`` built with
    ``options`` (and, per call, the split's options, e.g. ``train=False``). The class itself is
    named too: when it fails it names no file, and the loader looks for the damaged one in the
    class's own file list."""

    class_name: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def dataset_class(self) -> type:
        import torchvision.datasets as tvd

        return getattr(tvd, self.class_name)

    def __call__(self, root: str, download: bool, **more) -> object:
        return self.dataset_class(root, download=download, **dict(self.options), **more)


def torchvision(class_name: str, **options) -> Torchvision:
    """The ``open`` of a :class:`Download` for torchvision's dataset ``class_name``."""
    return Torchvision(class_name, tuple(options.items()))
