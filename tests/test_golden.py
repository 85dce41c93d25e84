"""Results do not move: every preset reproduces its golden ``metrics.json`` exactly.

The golden files (tests/golden/<preset>.json) are short digits runs on the CPU with a fixed seed,
made by tests/golden/make_golden.py; tests/golden/mnist1d-<preset>.json the same for ``qgm`` and
``ccl`` on MNIST-1D with ``convbase1d``. A refactor must leave every number where it was; a change
that moves results renews the files in a commit that says why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmark.cli import main
from benchmark.methods import METHODS

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_golden import MNIST1D_PRESETS, golden_args, golden_file  # noqa: E402


def _is_timing(key: str) -> bool:
    """Timings, and the process's peak memory (its resident set on a CPU): the machine's."""
    return (key == "resumed_after_epochs" or key.endswith("_s") or "time" in key
            or "phase" in key or key == "peak_bytes")


def _golden_part(golden: Any, got: Any, where: str = "") -> None:
    """Every non-timing value of the golden file is in the new file, equal (new keys may appear)."""
    if isinstance(golden, dict):
        assert isinstance(got, dict), where
        for key, value in golden.items():
            if _is_timing(key) or key in {"config", "environment"}:
                continue
            assert key in got, f"{where}.{key} missing"
            _golden_part(value, got[key], f"{where}.{key}")
    elif isinstance(golden, list):
        assert isinstance(got, list) and len(got) == len(golden), where
        for i, (a, b) in enumerate(zip(golden, got, strict=True)):
            _golden_part(a, b, f"{where}[{i}]")
    else:
        assert got == golden, f"{where}: {got!r} != golden {golden!r}"


@pytest.mark.parametrize(("dataset", "method"), [
    *(("digits", m) for m in sorted(METHODS)), *(("mnist1d", m) for m in MNIST1D_PRESETS)])
def test_preset_reproduces_its_golden_metrics(tmp_path, request, dataset, method):
    golden = json.loads(golden_file(method, dataset).read_text())
    # the MNIST-1D cache of the session (a machine option: where the data live)
    data = [f"data_dir={request.getfixturevalue('mnist1d_dir')}"] if dataset == "mnist1d" else []
    assert main(["train", "--out", str(tmp_path), *golden_args(method, dataset), *data]) in (
        0, None)
    got = json.loads((tmp_path / "metrics.json").read_text())
    _golden_part(golden, got)
