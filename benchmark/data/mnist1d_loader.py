"""MNIST-1D (Greydanus and Kobak, ICML 2024): generated offline once per ``data_dir``, then read.

The published set is what the ``mnist1d`` package's ``make_dataset(get_dataset_args())`` makes:
5,000 signals of 40 samples, seed 42, the first 80% for training (4,000) and the rest for the
test (1,000), 10 balanced classes, float64 and already centred and scaled to unit standard
deviation. Its ``get_dataset`` downloads a pickle; it is never called here.

Generation takes a few seconds (scipy interpolation per signal), so it happens once per data
folder: the workflow's ``fetch_data`` job (``python -m benchmark fetch mnist1d``) or the first run
that finds no cache. The cache file ``<data_dir>/mnist1d.npz`` holds the arrays as generated and
records the package version, the generation arguments and the arrays' digest. It is written
atomically (:func:`benchmark.io.atomic_open`): runs starting at once may each generate, but
each renames a complete file into place, so none reads half of one. A cache of another package
version or other arguments, or one that does not match its recorded digest (corrupted), is
generated again. The generated arrays must have the published set's digest
(:data:`PUBLISHED_DIGEST`); a package version that generates other data is refused, in one line.
"""

from __future__ import annotations

import hashlib
import json
import random
import zipfile
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmark.errors import DataMissingError
from benchmark.io import atomic_open, unwritable

CACHE = "mnist1d.npz"
PACKAGE_VERSION = "0.0.2.post1"  # pinned in pyproject.toml and environment.yml
# the package's published defaults (``get_dataset_args()`` less its download URL), spelled out so
# that the cache can be checked without importing the package (scipy, matplotlib: ~1 CPU-s)
ARGS: dict[str, object] = {
    "num_samples": 5000, "train_split": 0.8, "template_len": 12, "padding": [36, 60],
    "scale_coeff": 0.4, "max_translation": 48, "corr_noise_scale": 0.25, "iid_noise_scale": 2e-2,
    "shear_scale": 0.75, "shuffle_seq": False, "final_seq_length": 40, "seed": 42,
}
ARRAYS = ("x", "y", "x_test", "y_test")  # the digest's order
# sha256 over ARRAYS as contiguous bytes (float64 x, int64 y) from make_dataset(ARGS)
PUBLISHED_DIGEST = "2377c0b18c9f643da2b39e66086395782aac2fcfdd678b89f55a22b17ec47631"


def digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the arrays in :data:`ARRAYS` order, each as contiguous bytes."""
    h = hashlib.sha256()
    for key in ARRAYS:
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def _installed_version() -> str:
    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        raise DataMissingError(f"dataset mnist1d: the mnist1d package is not installed; "
                               f"pip install mnist1d=={PACKAGE_VERSION}") from None


def _generate() -> dict[str, np.ndarray]:
    """The published arrays, made by the package; the global ``random`` and ``numpy`` states it
    reseeds are restored, so a run does not depend on whether it found the cache."""
    import mnist1d.data

    states = random.getstate(), np.random.get_state()
    try:
        made = mnist1d.data.make_dataset(SimpleNamespace(**ARGS))
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    return {key: np.asarray(made[key]) for key in ARRAYS}


def _read(path: Path, meta: dict[str, object]) -> dict[str, np.ndarray] | None:
    """The cached arrays if ``path`` holds a complete cache of ``meta``'s version and arguments
    whose arrays are the published set; None for anything else (missing, stale, corrupted)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in ARRAYS}
            recorded = json.loads(str(stored["meta"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # absent, truncated...
        return None
    if not isinstance(recorded, dict) or {k: recorded.get(k) for k in meta} != meta:
        return None
    return arrays if digest(arrays) == PUBLISHED_DIGEST else None


def _cached_or_generated(data_dir: str | Path) -> tuple[Path, dict[str, np.ndarray], bool]:
    """(the cache file, the published arrays, whether they had to be generated)."""
    path = Path(data_dir) / CACHE
    meta: dict[str, object] = {"version": _installed_version(), "args": ARGS}
    arrays = _read(path, meta)
    if arrays is not None:
        return path, arrays, False
    why = unwritable(path.parent)  # before generating: a read-only data folder is named at once
    if why is not None:
        raise DataMissingError(
            f"dataset mnist1d: no valid cache at {path}, and it cannot be generated there "
            f"({why}); point data_dir (fetch: --data-dir) at a writable folder, or run `python "
            f"-m benchmark fetch mnist1d --data-dir DIR` elsewhere and copy DIR/{CACHE} here")
    arrays = _generate()
    found = digest(arrays)
    if found != PUBLISHED_DIGEST:
        raise DataMissingError(
            f"dataset mnist1d: mnist1d {meta['version']} generates other data than the published "
            f"set (digest {found[:16]}..., expected {PUBLISHED_DIGEST[:16]}... from "
            f"mnist1d=={PACKAGE_VERSION}); pip install mnist1d=={PACKAGE_VERSION}")
    with atomic_open(path) as fh:
        np.savez(fh, **arrays, meta=np.array(json.dumps({**meta, "digest": found})))
    return path, arrays, True


def ensure(data_dir: str | Path) -> tuple[Path, bool]:
    """Make ``<data_dir>/mnist1d.npz`` present and valid; (its path, whether it was generated).
    The fetch rule of the registry row."""
    path, _, generated = _cached_or_generated(data_dir)
    return path, generated


def load_arrays(data_dir: str | Path) -> dict[str, np.ndarray]:
    """The published arrays (:data:`ARRAYS`; generated first when there is no valid cache)."""
    return _cached_or_generated(data_dir)[1]
