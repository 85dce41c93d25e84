"""Fetch a dataset into ``data_dir`` once, before any run reads it (``python -m benchmark fetch``).

The workflow's ``fetch_data`` rule runs this once per dataset a grid needs, before its training
and tuning jobs (which then never download: concurrent jobs extracting into one folder would
corrupt it). What "fetch" means is the registry row's rule (:mod:`benchmark.data.sources`):

* a download is torchvision's (it verifies the archive's MD5 checksum), made into a temporary
  folder inside ``data_dir`` and renamed into place only once complete, so a killed or failed
  fetch never leaves a half-extracted dataset where the loaders look; without internet it fails
  with one line saying where to put the files;
* a generated dataset (MNIST-1D) is generated into its cache file, written atomically;
* ``digits`` and ``synthetic`` are built in memory: nothing to fetch;
* ImageNet is never downloaded (licence): only its presence is checked.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from benchmark.data.registry import REGISTRY
from benchmark.data.sources import BySize, Download, Generated, ItemRule, Offline, PlacedByHand
from benchmark.errors import DataMissingError
from benchmark.io import check_writable_dir


def _items() -> dict[str, ItemRule]:
    """Every fetchable item and its rule: a dataset, or ``<dataset>-<release>`` for each release
    of a dataset published at several sizes."""
    items: dict[str, ItemRule] = {}
    for name, row in REGISTRY.items():
        if isinstance(row.fetch, BySize):
            releases = row.fetch.releases.items()
            items.update({f"{name}-{release}": rule for release, rule in releases})
        else:
            items[name] = row.fetch
    return items


RULES = _items()
ITEMS: tuple[str, ...] = tuple(RULES)


def fetch_item(config) -> str:
    """What a run on ``config`` needs fetched (the workflow's ``fetch_data`` job it waits for)."""
    rule = REGISTRY[config.dataset].fetch
    if isinstance(rule, BySize):
        size = config.image_size or REGISTRY[config.dataset].sample_shape[-1]
        return f"{config.dataset}-{rule.pick(size)}"
    return config.dataset


def present(item: str, data_dir: str | Path) -> bool:
    """Whether ``data_dir`` already holds the item's files, intact (torchvision's own check)."""
    rule, root = RULES[item], Path(data_dir)
    match rule:
        case Download():
            try:
                rule.open(str(root), False)
            except Exception:  # noqa: BLE001 - torchvision's errors for damaged files vary (a
                return False  # truncated IDX file: ValueError or AssertionError)
            return True
        case PlacedByHand():
            return all((root / rule.folder / split).is_dir() for split in ("train", "val"))
    return True  # offline, or generated on load


def fetch(item: str, data_dir: str | Path) -> str:
    """Make ``data_dir`` hold ``item``; returns what was done. One-line error if impossible."""
    rule, root = RULES[item], Path(data_dir)
    match rule:
        case Offline():
            return f"{item}: built offline, nothing to fetch"
        case Generated():
            path, generated = rule.ensure(root)
            return f"{item}: {'generated into' if generated else 'already in'} {path}"
    target = root / rule.folder
    if present(item, root):
        return f"{item}: already in {target}"
    where = (f"put the files at {target} ({rule.url}; or run `python -m benchmark fetch {item}"
             f" --data-dir DIR` on a machine with internet and copy DIR/{rule.folder} here)")
    if isinstance(rule, PlacedByHand):
        raise DataMissingError(f"dataset {item}: not found at {target} (train/ and val/, one "
                               f"sub-folder per class) and never downloaded; {where}")
    if target.exists():  # never overwrite what someone put there
        raise DataMissingError(f"dataset {item}: {target} exists but is incomplete or corrupted; "
                               f"remove it to fetch again, or {where}")
    check_writable_dir(root, "--data-dir")  # before the download, not after it
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".fetch-{item}-", dir=root))
    try:
        rule.open(str(staging), True)  # download, verify the checksum, extract
        (staging / rule.folder).rename(target)  # atomic: the loaders see all of it or nothing
    except (OSError, RuntimeError) as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise DataMissingError(f"dataset {item}: download failed ({reason}); {where}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the archive and any partial extraction
    return f"{item}: fetched into {target}"
