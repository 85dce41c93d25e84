"""Results do not move: every preset reproduces its golden ``metrics.json`` exactly.

The golden files (tests/golden/<preset>.json) are short digits runs on the CPU with a fixed seed,
made by tests/golden/make_golden.py. A refactor must leave every number where it was; a change
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
from make_golden import golden_args  # noqa: E402


def _is_timing(key: str) -> bool:
    return (key == "resumed_after_epochs" or key.endswith("_s") or "time" in key
            or "phase" in key)


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


@pytest.mark.parametrize("method", sorted(METHODS))
def test_preset_reproduces_its_golden_metrics(tmp_path, method):
    golden = json.loads((GOLDEN / f"{method}.json").read_text())
    assert main(["train", "--out", str(tmp_path), *golden_args(method)]) in (0, None)
    got = json.loads((tmp_path / "metrics.json").read_text())
    _golden_part(golden, got)
