"""Crash safety: SIGKILL-and-resume is exact, divergence is a result, runs are deterministic.

The kill tests run the real CLI in subprocesses. The victim process patches ``Swarm.step`` to
SIGKILL itself at a fixed global iteration in the middle of an epoch: a real, uncatchable kill at
a point that does not depend on timing, so the test cannot flake on a busy machine.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmark.algorithms import registered
from benchmark.checkpoint import CHECKPOINT, METRICS
from benchmark.cli import main
from benchmark.config import load_config
from benchmark.methods import METHODS as PRESETS
from benchmark.train import run

EPOCHS = 4
ITERATIONS_PER_EPOCH = 4  # 128 training images / 4 agents / batch 8
KILL_AT = 2 * ITERATIONS_PER_EPOCH + 2  # mid-epoch 3, after the checkpoints of epochs 1 and 2
ARGS = ["dataset=synthetic", "synthetic={train_size: 128, test_size: 64, image_size: 8}",
        "model=mlp", "n_agents=4", "batch_size=8", "tracking=false", "threads=1", "device=cpu",
        f"epochs={EPOCHS}", "lambda_m=0.1", "lambda_d=0.1"]
METHODS = ["dsgdm-n", "qgm", "relaysgd", "ccl"]

KILL_DURING_STEP = """
import os, signal, sys
from benchmark.swarm import Swarm
step = Swarm.step
def dying_step(self, xs, ys):
    if self.iteration == {at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, xs, ys)
Swarm.step = dying_step
from benchmark.cli import main
sys.exit(main(sys.argv[1:]))
"""

KILL_DURING_CHECKPOINT_WRITE = """
import os, signal, sys, torch
save, calls = torch.save, []
def dying_save(obj, fh, *a, **kw):
    calls.append(1)
    if len(calls) == {at}:
        fh.write(b"half a checkpoint")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, fh, *a, **kw)
torch.save = dying_save
from benchmark.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _skip_unless_available(method: str) -> None:
    algorithm = load_config(None, [*ARGS, f"method={method}"]).algorithm
    if algorithm not in registered():
        pytest.skip(f"algorithm {algorithm!r} of {method!r} is not registered yet")
    if method.startswith("ccl") and importlib.util.find_spec("benchmark.algorithms.ccl") is None:
        pytest.skip("benchmark.algorithms.ccl has not landed yet")


def _train(out: Path, *args: str, victim: str | None = None) -> subprocess.CompletedProcess:
    head = ["-c", victim] if victim else ["-m", "benchmark"]
    return subprocess.run(
        [sys.executable, *head, "train", "--out", str(out), *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )


def _results(metrics: dict[str, Any]) -> dict[str, Any]:
    """Everything but timings and the resume log: what must be bit-identical."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not _is_timing(k)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(metrics)


def _is_timing(key: str) -> bool:
    """Timings and other measurements of the machine (the measured memory peak)."""
    return (key in ("resumed_after_epochs", "peak_bytes") or key.endswith("_s") or "time" in key
            or "phase" in key)


def _read(out: Path) -> dict[str, Any]:
    return json.loads((out / METRICS).read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted subprocess runs, one per method, made once and shared by the kill tests."""
    made: dict[str, dict[str, Any]] = {}

    def get(method: str) -> dict[str, Any]:
        if method not in made:
            out = tmp_path_factory.mktemp(f"reference-{method}")
            done = _train(out, *ARGS, f"method={method}")
            assert done.returncode == 0, done.stderr
            made[method] = _read(out)
        return made[method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_sigkill_mid_epoch_then_restart_gives_identical_metrics(tmp_path, method, reference):
    _skip_unless_available(method)
    args = [*ARGS, f"method={method}"]
    resumed = tmp_path / "resumed"
    killed = _train(resumed, *args, victim=KILL_DURING_STEP.format(at=KILL_AT))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "epoch 2/4" in killed.stdout and "epoch 3/4" not in killed.stdout
    assert (resumed / CHECKPOINT).is_file() and not (resumed / METRICS).exists()

    again = _train(resumed, *args)
    assert again.returncode == 0, again.stderr
    assert f"resuming {resumed} after epoch 2/4" in again.stdout
    assert "epoch 1/4" not in again.stdout and "epoch 3/4" in again.stdout
    assert not (resumed / CHECKPOINT).exists()  # superseded by metrics.json

    expected, got = reference(method), _read(resumed)
    assert got["resumed_after_epochs"] == [2] and expected["resumed_after_epochs"] == []
    assert [r["epoch"] for r in got["history"]] == [1, 2, 3, 4]
    assert _results(got) == _results(expected)
    assert got["final"]["consensus_acc"] == expected["final"]["consensus_acc"]


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, reference):
    resumed = tmp_path / "resumed"
    killed = _train(resumed, *ARGS, victim=KILL_DURING_CHECKPOINT_WRITE.format(at=2))
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p.name for p in resumed.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{CHECKPOINT}.")

    again = _train(resumed, *ARGS)
    assert again.returncode == 0, again.stderr
    assert f"after epoch 1/{EPOCHS}" in again.stdout  # the epoch-2 write never happened
    assert not [p for p in resumed.iterdir() if p.name.endswith(".tmp")]
    assert _results(_read(resumed)) == _results(reference("dsgdm-n"))


def test_rerunning_a_finished_run_is_a_no_op(tmp_path, capsys):
    out = tmp_path / "run"
    config = load_config(None, ARGS)
    first = run(config, out)
    written = (out / METRICS).read_bytes()
    epochs_trained = []
    again = run(config, out, on_epoch=lambda epoch, record: epochs_trained.append(epoch))
    assert epochs_trained == []
    assert (out / METRICS).read_bytes() == written
    assert again == first  # the typed result read back from metrics.json
    assert "nothing to do" in capsys.readouterr().out


def test_absurd_learning_rate_diverges_cleanly_and_the_report_counts_it(tmp_path, capsys):
    good, bad = tmp_path / "seed0", tmp_path / "seed1"
    assert main(["train", "--out", str(good), *ARGS, "seed=0"]) == 0
    assert main(["train", "--out", str(bad), *ARGS, "seed=1", "lr=1e8"]) == 0
    metrics = _read(bad)
    assert metrics["status"] == "diverged" and metrics["diverged_epoch"] == 1
    assert metrics["final"] == {}  # nothing a table could average by mistake
    assert math.isnan(metrics["history"][-1]["train_ce"])
    assert not (bad / CHECKPOINT).exists()
    assert main(["train", "--out", str(bad), *ARGS, "seed=1", "lr=1e8"]) == 0  # finished: no-op

    # the report counts a diverged seed of its cell's config and never averages it (as if seed
    # 1 had diverged at lr 0.05: runs of two configs are never one cell, test_integrity.py)
    metrics["config"]["lr"] = 0.05
    (bad / METRICS).write_text(json.dumps(metrics))
    report = pytest.importorskip("benchmark.report", reason="benchmark.report not landed yet")
    summary = report.summary_table(report.runs_frame(report.load_results([tmp_path])))
    assert len(summary) == 1
    row = summary.iloc[0]
    assert (row["seeds"], row["completed"], row["diverged"]) == (2, 1, 1)
    assert row["consensus_acc_mean"] == _read(good)["final"]["consensus_acc"]


@pytest.mark.parametrize("method", list(PRESETS))
def test_same_config_and_seed_give_identical_metrics(tmp_path, method):
    _skip_unless_available(method)
    config = load_config(None, [*ARGS, f"method={method}", "epochs=2"])
    first, second = run(config, tmp_path / "a"), run(config, tmp_path / "b")
    assert first.status == "completed"
    assert _results(_read(tmp_path / "a")) == _results(_read(tmp_path / "b"))
    assert _results(first.to_dict()) == _results(second.to_dict())
