"""`python -m benchmark plan` / `calibrate` (benchmark/plan.py, benchmark/calibrate.py).

The plan's arithmetic is checked against a hand-written calibration file and hand-counted
iterations; the iteration count against the real batch source; calibrate end to end on the CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from benchmark import cli
from benchmark.config import build_config
from benchmark.grid import load_family
from benchmark.plan import Calibration, Workload, iterations, plan_family, wall_hours

# 2 alphas x (ring-4, ring-8) x (dsgdm-n, ccl) x 2 seeds = 16 runs; 128 training images
TINY = {
    "run": {"family": "tiny", "dataset": "synthetic", "model": "mlp", "n_agents": 4,
            "synthetic": {"train_size": 128, "test_size": 32, "image_size": 8, "channels": 1},
            "epochs": 2, "batch_size": 16, "threads": 1, "tracking": False},
    "grid": {"alpha": [0.1, 1.0], "topologies": [{"topology": "ring", "n_agents": 4},
                                                 {"topology": "ring", "n_agents": 8}],
             "methods": ["dsgdm-n", "ccl"], "seeds": [0, 1]},
    "tuning": {"protocol": "tuned", "trials": 3, "epochs": 1},
}


@pytest.fixture
def family(tmp_path: Path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return load_family(path)


def _entry(family, n: int, method: str, seconds: float) -> dict:
    config = next(r.config for r in family.runs
                  if r.config.n_agents == n and r.config.method == method)
    return {"workload": json.loads(Workload.of(config).key), "seconds_per_iteration": seconds}


def test_plan_arithmetic_against_a_hand_written_calibration(family, tmp_path) -> None:
    # ring-8 dsgdm-n is not timed: scaled from ring-4 by 8/4 agents -> 450 s per iteration
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({
        "device": "cuda", "device_name": "Test GPU", "created": "2026-12-02",
        "entries": [_entry(family, 4, "dsgdm-n", 225.0), _entry(family, 4, "ccl", 450.0),
                    _entry(family, 8, "ccl", 1350.0)],
        "concurrency": {"1": 1.0, "4": 2.5}}))
    calibration = Calibration.load(path)
    plan = plan_family(family, calibration, root=tmp_path)
    # ring-4: floor(128/4) = 32 images per agent -> 2 iterations/epoch x 2 epochs = 4 per run;
    # ring-8: 16 images -> 1 x 2 = 2 per run; 8 runs of each
    assert (plan.runs, plan.done, plan.run_iterations) == (16, 0, 8 * 4 + 8 * 2)
    # studies, one per (method, alpha, graph), at 1 epoch on 128 - ceil(12.8) = 115 images:
    # ring-4: floor(115/4) = 28 per agent -> 2 iterations; ring-8: 14 -> 1; x 3 trials
    assert (plan.studies, plan.study_iterations) == (8, 4 * 2 * 3 + 4 * 1 * 3)
    assert plan.studies_by_graph == {"ring-n4": 4, "ring-n8": 4}
    assert plan.how == {"timed": 12 + 4 + 2, "scaled": 4 + 2}
    seconds = (4 * 4 * 225 + 4 * 4 * 450 + 4 * 2 * 1350 + 4 * 2 * 450  # runs
               + 2 * 2 * 3 * 225 + 2 * 2 * 3 * 450  # ring-4 studies: dsgdm-n, ccl
               + 2 * 1 * 3 * 450 + 2 * 1 * 3 * 1350)  # ring-8 studies
    assert seconds == 44_100 and plan.device_hours == pytest.approx(12.25)
    assert wall_hours(9.25, gpus=2, slots=4, concurrency=calibration.concurrency)[:2] == (
        pytest.approx(1.85), pytest.approx(1.85))  # 9.25 / (2 GPUs x 2.5)
    low, high, why = wall_hours(8.5, gpus=1, slots=2, concurrency=calibration.concurrency)
    assert (low, high) == (pytest.approx(4.25), pytest.approx(8.5)) and "not measured" in why
    # a finished run (its metrics.json) and a finished study leave the plan
    done = tmp_path / family.runs[0].metrics_path
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    best = tmp_path / "studies" / "tiny" / "ccl" / "ring-n4" / "alpha0.1" / "best.json"
    best.parent.mkdir(parents=True)
    best.write_text("{}")
    again = plan_family(family, calibration, root=tmp_path)
    assert (again.done, again.run_iterations, again.studies) == (1, 48 - 4, 7)
    assert again.studies_by_graph == {"ring-n4": 3, "ring-n8": 4}
    assert again.device_hours == pytest.approx((44_100 - 4 * 225 - 6 * 450) / 3600)


def test_plan_without_calibration_says_so(family, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["plan", "tiny", "--config-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tiny: 16 runs (0 done), 48 training iterations to do" in out
    assert ("8 tuning studies, one per method, alpha and graph (ring-n4 4, ring-n8 4): at most "
            "36 iterations") in out
    assert "no calibration (calibration.json not found): device time unknown" in out


@pytest.mark.parametrize(("options", "expected"), [
    ({"dataset": "digits", "n_agents": 16, "batch_size": 32, "epochs": 3}, 3 * 3),  # 1437//16=89
    ({"dataset": "digits", "n_agents": 7, "batch_size": 10, "partition": "raw", "alpha": 0.5,
      "epochs": 1}, math.ceil(1437 / 7 / 10)),
    ({"dataset": "digits", "n_agents": 4, "batch_size": 8, "val_fraction": 0.1, "epochs": 2},
     2 * 41),
])
def test_iterations_match_the_real_batch_source(options, expected) -> None:
    from benchmark.data import AgentBatches, dirichlet_partition, load_dataset

    config = build_config(options)
    bundle = load_dataset("digits", val_fraction=config.val_fraction)
    parts = dirichlet_partition(bundle.train.y.numpy(), config.n_agents, config.alpha,
                                seed=0, scheme=config.partition)
    batches = AgentBatches(bundle.train, parts, config.batch_size, "none", (0.5,), (0.5,),
                           seed=0)
    assert iterations(config) == expected == config.epochs * batches.iterations_per_epoch


def test_calibrate_times_every_workload_then_plan_uses_it(family, tmp_path, capsys) -> None:
    out = tmp_path / "calibration.json"
    assert cli.main(["calibrate", "--config-dir", str(tmp_path), "--out", str(out),
                     "--iterations", "1", "--warmup", "0", "--agents", "4"]) == 0
    cal = json.loads(out.read_text())
    assert cal["device"] == "cpu" and cal["device_name"] == "CPU"
    timed = {(e["workload"]["n_agents"], e["workload"]["method"]) for e in cal["entries"]}
    assert timed == {(4, "dsgdm-n"), (4, "ccl")}  # the study's ring-4 ccl is the same workload
    assert all(e["seconds_per_iteration"] > 0 for e in cal["entries"])
    capsys.readouterr()
    assert cli.main(["plan", "tiny", "--config-dir", str(tmp_path), "--calibration",
                     str(out), "--gpus", "1"]) == 0
    text = capsys.readouterr().out
    assert f"calibration: {out} (cpu, CPU" in text and "scaled 12, timed 12" in text
    assert "wall time on 1 device(s) x 1 slot(s)" in text
