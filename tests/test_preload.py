"""The preload fork server (benchmark/preload.py): a job run through it is the job run fresh.

One server per module (it imports torch once); each test runs ``python -m benchmark train`` as
the workflow does, with ``BENCHMARK_PRELOAD`` naming the server's socket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.preload import ENV, start_server, stop_server
from tests.test_reliability import _results

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--config", str(ROOT / "config" / "digits.yaml"), "n_agents=4", "model=mlp",
        "image_size=8", "tracking=false", "threads=1", "eval_every=1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("preload") / "server.log"
    proc, path = start_server(log)
    yield path, log
    stop_server(proc)
    assert proc.returncode == 0 and not Path(path).exists()


def _train(out: Path, *extra: str, socket: str | None, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if socket:
        env[ENV] = socket
    return subprocess.Popen([sys.executable, "-m", "benchmark", "train", "--out", str(out),
                             *TINY, *extra], env=env, cwd=out.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_a_job_through_the_server_is_the_job_run_fresh(server, tmp_path):
    socket, log = server
    preloaded = _train(tmp_path / "preloaded", "epochs=2", "method=ccl", socket=socket)
    out, err = preloaded.communicate(timeout=300)
    assert preloaded.returncode == 0, err
    assert "epoch 2/2" in out and out.rstrip().splitlines()[-1].startswith("completed:")
    assert f"--out {tmp_path / 'preloaded'}" in log.read_text()  # the server ran it
    fresh = _train(tmp_path / "fresh", "epochs=2", "method=ccl", socket=None)
    assert fresh.wait(timeout=300) == 0
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text())
               for d in ("preloaded", "fresh")]
    assert _results(metrics[0]) == _results(metrics[1])


def test_exit_codes_and_messages_come_back(server, tmp_path):
    socket, _ = server
    bad = _train(tmp_path / "bad", "lr=-1", socket=socket)
    out, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and err.startswith("error: lr: invalid value -1")
    assert not (tmp_path / "bad").exists()


def test_sigterm_reaches_the_job_and_it_resumes(server, tmp_path):
    socket, _ = server
    for expected in ("epoch 2/500", "resuming"):  # stop it after a saved epoch, as Snakemake does
        job = _train(tmp_path / "run", "epochs=500", socket=socket)
        for line in job.stdout:
            if line.startswith(expected):
                break
        job.send_signal(signal.SIGTERM)
        out, err = job.communicate(timeout=60)
        assert job.returncode == 130 and "resume" in err


def test_the_training_child_holds_the_gpu_slot_of_its_job(server, tmp_path):
    """A workflow GPU job: gpu_slots locks a slot and execs the client, which hands the lock on
    with its stdio, so the forked child that trains holds the slot too (the client alone would
    free it when killed, while the child still trains)."""
    from benchmark.gpu_slots import try_acquire

    socket, log = server
    locks, out = tmp_path / "locks", tmp_path / "run"
    env = {**os.environ, ENV: socket}
    job = subprocess.Popen(
        [sys.executable, "-m", "benchmark.gpu_slots", "--gpus", "0", "--lock-dir", str(locks),
         "--", sys.executable, "-m", "benchmark", "train", "--out", str(out), *TINY,
         "epochs=500", "device=cpu"],
        env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in job.stdout:
        if line.startswith("epoch 1/500"):
            break
    started = [line for line in log.read_text().splitlines() if f"--out {out}" in line]
    child = int(started[-1].split()[1].rstrip(":"))
    assert child != job.pid
    held = {os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd")}
    assert str(locks / "gpu0-slot0.lock") in held
    assert try_acquire(["0"], 1, locks) is None  # taken
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=60)
    assert job.returncode == 130
    slot = try_acquire(["0"], 1, locks)
    assert slot is not None and (slot.gpu, slot.index) == ("0", 0)  # freed with the child


def test_without_a_server_the_client_runs_it_itself(tmp_path):
    job = _train(tmp_path / "run", "epochs=1", socket=str(tmp_path / "no-such-socket"))
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err
    assert (tmp_path / "run" / "metrics.json").is_file()
