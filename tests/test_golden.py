"""Results do not move: every preset reproduces its golden ``metrics.json`` exactly.

The golden files (tests/golden/<preset>.json) are short digits runs on the CPU with a fixed seed,
made by tests/golden/make_golden.py; tests/golden/mnist1d-<preset>.json the same for ``qgm`` and
``ccl`` on MNIST-1D with ``convbase1d``. A refactor must leave every number where it was; a change
that moves results renews the files in a commit that says why. All golden runs are made in one
fresh interpreter with portable kernels (make_golden.PORTABLE_ENV), so the files hold on any
x86-64 CPU, not only on the one that wrote them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmark.methods import METHODS

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_golden import MNIST1D_PRESETS, golden_file, run_portable  # noqa: E402

RUNS = [*(("digits", m) for m in sorted(METHODS)), *(("mnist1d", m) for m in MNIST1D_PRESETS)]


def _is_timing(key: str) -> bool:
    """Timings, and the memory block: the process's peak (its resident set on a CPU) and the
    estimate, which counts the copies the machine's convolution kernels make: the machine's."""
    return (key == "resumed_after_epochs" or key.endswith("_s") or "time" in key
            or "phase" in key or key == "memory")


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


@pytest.fixture(scope="module")
def golden_runs(mnist1d_dir) -> dict[tuple[str, str], dict]:
    """Every golden run, made once in one portable interpreter (see the module doc)."""
    return run_portable(RUNS, mnist1d_dir)


@pytest.mark.parametrize(("dataset", "method"), RUNS)
def test_preset_reproduces_its_golden_metrics(golden_runs, dataset, method):
    golden = json.loads(golden_file(method, dataset).read_text())
    _golden_part(golden, golden_runs[dataset, method])


def test_golden_numbers_do_not_depend_on_the_cpu_s_instruction_set(golden_runs, mnist1d_dir):
    """What makes the files portable: the same run on a CPU without AVX (MKL told to use no
    more than SSE4.2, as on an older or another vendor's CPU) gives exactly the same numbers.
    Without the pinned environment this run's final accuracy moves by several points."""
    (got,) = run_portable([("digits", "ccl")], mnist1d_dir,
                          {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}).values()
    _golden_part(golden_runs["digits", "ccl"], got)
