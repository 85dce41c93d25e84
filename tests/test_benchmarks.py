"""Smoke tests of ``benchmarks/``: each script runs at tiny sizes and prints one JSON summary.

Benchmarks are not tests: nothing here looks at how fast anything is. What is checked is that a
script runs end to end, prints exactly one ``BENCH {json}`` line equal to what it returns, and
that its statistics are well formed (the spread helpers are also checked against hand values).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = ("r1_overhead", "r2_ccl", "r3_scaling", "r4_memory", "r5_input", "r6_eval", "rpeer",
           "r7_dispatch", "r8_small_models")
COUNTS_ONLY = ("r4_memory", "r7_dispatch")  # figures that are counts, not timed spreads
TINY = ["--tiny", "--threads", "1", "--device", "cpu"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return lambda name: importlib.import_module(name)


def _summary(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("BENCH ")]
    assert len(lines) == 1, out
    return json.loads(lines[0].removeprefix("BENCH "))


def _stats(value):
    """Every {median, q1, q3, min, max} block nested in a summary."""
    if isinstance(value, dict):
        if "median" in value:
            yield value
        for v in value.values():
            yield from _stats(v)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_runs_tiny_and_prints_its_summary(name, bench, capsys):
    returned = bench(name).main(TINY)
    summary = _summary(capsys.readouterr().out)
    assert summary == json.loads(json.dumps(returned, default=float))
    assert summary["benchmark"] == name
    assert summary["machine"]["device"] == "cpu" and summary["machine"]["threads"] == 1
    blocks = list(_stats(summary))
    assert blocks or name in COUNTS_ONLY
    for s in blocks:
        assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"] < math.inf


def test_command_line_entry_point():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "r3_scaling.py"), *TINY],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = _summary(proc.stdout)
    assert summary["agents"] == [4, 8] and summary["method"] == "dsgdm-n"
    assert 0 <= summary["gossip_update_share"] <= 1


def test_spread_and_ratio_by_hand(bench):
    common = bench("common")
    assert common.spread([5.0, 1.0, 3.0, 2.0, 4.0]) == {
        "median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 5.0}
    # per-round ratios 2, 4, 3: the median of ratios, not the ratio of medians (3 / 1.5 = 2)
    times = {"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0, 2.0]}
    assert common.ratio(times, "a", "b")["median"] == 3.0


STEPS = ("preflight", "resume", "vmap_ratio", "calibrate", "concurrency", "plan", "torchrun",
         "memory")


def test_gpu_check_runs_every_step_at_toy_sizes_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --device cpu --tiny: every step ends well and writes its results."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "BUDGET": "3000",
           "LIMIT_SCALE": "20"}  # CI machines are slower and shared: no step may be cut short
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--device", "cpu", "--tiny"],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "step" in line] == list(STEPS)
    failed = [line["step"] for line in lines if "step" in line and line["rc"] != 0]
    assert not failed, {step: (tmp_path / f"{step}.out").read_text()[-2000:] for step in failed}
    assert lines[0]["verdict"] == "device cpu: no GPU needed"
    found = {line["benchmark"]: line for line in lines if "benchmark" in line}
    resume = found["e2e_resume"]
    assert resume["status"] == "completed" and resume["resumed"]
    # killed once, after epoch 1 or 2 of 3 (the watcher may be late by an epoch on a loaded CI)
    assert resume["resumed_after_epochs"] in ([1], [2]) and resume["memory"]["estimated_bytes"] > 0
    assert found["e2e_torchrun"]["status"] == "completed" and found["e2e_torchrun"]["distributed"]
    for n in (4, 8):
        assert found["vmap_ratio"][f"n{n}"]["loop_over_vmap_ccl"]["median"] > 0
    plan = next(line for line in lines if "wall_hours_by_slots" in line)
    assert set(plan["wall_hours_by_slots"]) == {"1", "4", "8"} and plan["calibrated_on"] == "CPU"
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    assert len(calibration["entries"]) == 4 and set(calibration["concurrency"]) == {"1", "2"}


@pytest.mark.parametrize("mode", [[], ["--fresh"]])
def test_fixed_cost_tiny_splits_a_real_run(mode):
    """One real run, forked as the preload server forks a job, or in a fresh interpreter: its
    phases are not negative, add up to the fixed cost, and fit inside the run's wall and CPU
    time. A subprocess, so the fork happens in a process that has run nothing yet."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "fixed_cost.py"), "--tiny", *mode],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(proc.stdout)
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["preload"] == (not mode)
    med = {k: v["median"] for k, v in summary.items() if isinstance(v, dict) and "median" in v}
    for suffix in ("", "_cpu"):
        parts = [med[f"{p}{suffix}"] for p in ("startup", "imports", "setup",
                                                "first_iteration_excess", "finish", "exit")]
        assert all(p >= 0 for p in parts)
        assert (med[f"imports{suffix}"] > 0) == bool(mode)  # preloaded: nothing to import
        assert math.isclose(sum(parts), med[f"fixed{suffix}"])
        assert med[f"fixed{suffix}"] < med[f"total{suffix}"]
        assert 0 < med[f"fixed_share{suffix}"] < 1
    assert 0 < med["final_evaluation"] <= med["evaluation"] < med["total"]
