"""End to end: a tiny offline digits run (8 agents, 2 epochs) writes a complete metrics.json.

The figures checked here are the ones a hand computation gives: shard sizes, iterations, the
LeNet-5 parameter count, bytes on the wire, the ring's spectral gap, the lr schedule, and
accuracies that are whole numbers of test images.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark.checkpoint import CHECKPOINT, METRICS
from benchmark.config import load_config
from benchmark.metrics import RunMetrics
from benchmark.train import run

DIGITS_TRAIN, DIGITS_TEST = 1437, 360  # 1797 images, a fixed stratified 20% held out
AGENTS, EPOCHS, BATCH = 8, 2, 32
DIGITS_YAML = Path(__file__).resolve().parent.parent / "config" / "digits.yaml"  # the default
LENET5_PARAMS = 61706  # 1x28x28 input, 10 classes: the classic LeNet-5 count


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    config = load_config(DIGITS_YAML, [
        "dataset=digits", "model=lenet5", "topology=ring", "mixing=uniform", "gamma=1.0",
        "partition=lin", "image_size=28", f"n_agents={AGENTS}", f"epochs={EPOCHS}",
        f"batch_size={BATCH}", "alpha=10", "lr=0.1", "lr_milestones=[0.5]", "method=dsgdm-n",
        "tracking=false", "threads=1", "seed=0", "device=cpu", "eval_every=1",
    ])
    return out, run(config, out)


def test_metrics_json_is_the_returned_result(result):
    out, typed = result
    assert RunMetrics.load(out / METRICS) == typed
    metrics = json.loads((out / METRICS).read_text())
    assert metrics == json.loads(typed.to_json())
    assert not (out / CHECKPOINT).exists()
    assert metrics["status"] == "completed" and metrics["diverged_epoch"] is None
    assert metrics["config"]["n_agents"] == AGENTS and metrics["method"] == "dsgdm-n"
    assert metrics["algorithm"] == "dsgdm-n" and metrics["ccl"] is None
    assert metrics["resumed_after_epochs"] == [] and metrics["wall_time_s"] > 0


def test_partition_and_schedule_by_hand(result):
    metrics = result[1].to_dict()
    shard = DIGITS_TRAIN // AGENTS  # lin partition: equal shards of floor(N / n)
    assert metrics["partition"]["sizes"] == [shard] * AGENTS
    histogram = np.array(metrics["partition"]["histogram"])
    assert histogram.shape == (AGENTS, 10)
    assert histogram.sum(axis=1).tolist() == [shard] * AGENTS
    assert metrics["iterations_per_epoch"] == math.ceil(shard / BATCH) == 6
    assert metrics["n_params"] == LENET5_PARAMS
    # lr 0.1, x0.1 at 50% of 2 epochs -> epoch 1 at 0.1, epoch 2 at 0.01
    assert [r["lr"] for r in metrics["history"]] == pytest.approx([0.1, 0.01])


def test_topology_and_communication_by_hand(result):
    metrics = result[1].to_dict()
    topo = metrics["topology"]
    assert (topo["name"], topo["n_agents"], topo["diameter"]) == ("ring", AGENTS, AGENTS // 2)
    # W = 1/3 on i-1, i, i+1: eigenvalues (1 + 2 cos(2 pi k / n)) / 3; gap = 1 - lambda_2
    assert topo["spectral_gap"] == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / AGENTS)) / 3)
    per_iteration = LENET5_PARAMS * 4 * 2  # float32 model to each of 2 neighbours
    comm = metrics["communication"]
    assert comm["bytes_per_agent_per_iteration"] == {"parameters": per_iteration}
    assert comm["bytes_per_agent_total"] == per_iteration * 6 * EPOCHS


def test_history_and_final_figures(result):
    metrics = result[1].to_dict()
    history, final = metrics["history"], metrics["final"]
    assert [r["epoch"] for r in history] == [1, 2]
    keys = {"train_ce", "lr", "local_acc_mean", "local_acc_std", "consensus_acc",
            "consensus_distance", "time_s"}
    for record in history:
        assert keys <= set(record)
        assert all(math.isfinite(record[k]) for k in keys)
    assert {k: history[-1][k] for k in final} == final  # final = the last evaluation
    # accuracies count whole test images
    assert final["consensus_acc"] * DIGITS_TEST / 100 == pytest.approx(
        round(final["consensus_acc"] * DIGITS_TEST / 100), abs=1e-3)
    assert 0 <= final["local_acc_std"] <= final["local_acc_mean"] <= 100
    assert final["consensus_distance"] > 0  # 8 agents on different data do not agree exactly
    # it learns: cross-entropy falls, and the consensus model beats chance (10%) clearly
    assert history[1]["train_ce"] < history[0]["train_ce"] < math.log(10) + 0.05
    assert final["consensus_acc"] > 20


def test_a_run_imports_no_optional_heavy_library():
    """What a run without MLflow does not use, it does not import: each of these costs a
    workflow job CPU-seconds of imports (scikit-learn alone ~2.5 s; benchmarks/fixed_cost.py)."""
    code = (
        "import sys\n"
        "from benchmark.config import load_config\n"
        "from benchmark.train import run\n"
        "run(load_config('config/digits.yaml', ['tracking=false', 'epochs=1', 'n_agents=4',"
        " 'model=mlp', 'image_size=8']), None)\n"
        "heavy = {'sklearn', 'scipy', 'mlflow', 'matplotlib', 'pandas', 'optuna'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
