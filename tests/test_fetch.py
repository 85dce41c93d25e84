"""`python -m benchmark fetch` (benchmark/data/fetch.py): once, atomically, one line offline.

torchvision's download is replaced by a fake that writes a tiny CIFAR-10 in its on-disk format
(pickled batches); its checksum check is patched to look at the files' presence only, since fake
files cannot match the real MD5s. Everything else is the real code path.
"""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets.cifar as tv_cifar

from benchmark import cli
from benchmark.data import load_dataset
from benchmark.data.fetch import fetch, fetch_item
from benchmark.errors import DataMissingError


def _write_fake_cifar(root: Path, per_batch: int = 4) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": list(range(per_batch))}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [str(i) for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


@pytest.fixture
def fake_download(monkeypatch):
    calls = []

    def download(url, download_root, filename=None, md5=None):
        calls.append(Path(download_root))
        (Path(download_root) / filename).write_bytes(b"archive")  # what the real one leaves
        _write_fake_cifar(Path(download_root))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", download)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    return calls


def test_fetch_downloads_once_into_a_staging_folder_then_renames(tmp_path, fake_download):
    data = tmp_path / "data"
    assert fetch("cifar10", data) == f"cifar10: fetched into {data / 'cifar-10-batches-py'}"
    assert len(fake_download) == 1
    staging = fake_download[0]
    assert staging.parent == data and staging.name.startswith(".fetch-cifar10-")
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-py"]  # archive gone
    bundle = load_dataset("cifar10", data_dir=data)  # the real loader reads what was fetched
    assert tuple(bundle.train.x.shape) == (20, 3, 32, 32) and len(bundle.test) == 4
    assert fetch("cifar10", data).startswith("cifar10: already in")
    assert len(fake_download) == 1  # present and intact: no second download


def test_offline_fetch_fails_in_one_line_saying_where_to_put_the_files(
        tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    data = tmp_path / "data"
    assert cli.main(["fetch", "cifar10", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: dataset cifar10: download failed (URLError")
    assert f"put the files at {data / 'cifar-10-batches-py'}" in err
    assert "cifar-10-python.tar.gz" in err
    assert list(data.iterdir()) == []  # no staging folder, nothing half-extracted


def test_a_corrupted_folder_is_never_overwritten(tmp_path, fake_download):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half")
    with pytest.raises(DataMissingError, match="exists but is incomplete or corrupted"):
        fetch("cifar10", tmp_path)
    assert fake_download == []


def test_offline_datasets_need_nothing_and_imagenet_is_only_checked(tmp_path):
    assert fetch("digits", tmp_path) == "digits: built offline, nothing to fetch"
    assert fetch("synthetic", tmp_path).endswith("nothing to fetch")
    with pytest.raises(DataMissingError, match=r"imagenet.*train/ and val/.*never downloaded"):
        fetch("imagenet", tmp_path)
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split).mkdir(parents=True)
    assert fetch("imagenet", tmp_path).startswith("imagenet: already in")


@pytest.mark.parametrize(("options", "item"), [
    ({"dataset": "cifar10"}, "cifar10"), ({"dataset": "digits"}, "digits"),
    ({"dataset": "imagenette"}, "imagenette-160px"),
    ({"dataset": "imagenette", "image_size": 224}, "imagenette-320px"),
])
def test_each_run_names_the_fetch_it_needs(options, item):
    from benchmark.config import build_config

    assert fetch_item(build_config(options)) == item
