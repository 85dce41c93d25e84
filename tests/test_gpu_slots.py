"""GPU slots (benchmark/gpu_slots.py): k runs per GPU, one per (GPU, slot) lock, on a CPU machine.

GPUs are only declared (ids handed to the picker); what is checked is the scheduling: never two
holders on one slot, at most k per GPU, slots spread over GPUs first, a slot freed by SIGKILL.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark import gpu_slots

JOB = ("import os, sys, time; open(sys.argv[1], 'w').write(os.environ['BENCHMARK_GPU_SLOT']);"
       " time.sleep(float(sys.argv[2]))")


def _launch(tmp_path: Path, name: str, hold: float, gpus: str = "3,5", slots: int = 2):
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark.gpu_slots", "--gpus", gpus, "--slots", str(slots),
         "--lock-dir", str(tmp_path / "locks"), "--poll", "0.05", "--",
         sys.executable, "-c", JOB, str(tmp_path / name), str(hold)],
        stderr=subprocess.DEVNULL)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while not path.exists() or not path.read_text():
        assert time.time() < deadline, f"{path.name} never got a slot"
        time.sleep(0.05)
    return path.read_text()


def test_in_process_picking_fills_every_gpu_before_sharing_one(tmp_path: Path) -> None:
    held = [gpu_slots.try_acquire(["0", "1", "2"], 2, tmp_path) for _ in range(6)]
    assert [(s.gpu, s.index) for s in held] == [
        ("0", 0), ("1", 0), ("2", 0), ("0", 1), ("1", 1), ("2", 1)]
    assert gpu_slots.try_acquire(["0", "1", "2"], 2, tmp_path) is None  # 3 GPUs x 2 slots taken
    os.close(held[4].fd)  # the holder of (1, 1) ends
    again = gpu_slots.try_acquire(["0", "1", "2"], 2, tmp_path)
    assert (again.gpu, again.index) == ("1", 1)
    for slot in [*held[:4], held[5], again]:
        os.close(slot.fd)


def test_launched_jobs_never_share_a_slot_and_a_killed_holder_frees_its_slot(
        tmp_path: Path) -> None:
    """4 jobs fill 2 GPUs x 2 slots; a 5th waits; SIGKILL of a holder hands its slot over."""
    holders = {name: _launch(tmp_path, name, 60) for name in "abcd"}
    slots = {name: _wait_for(tmp_path / name, proc) for name, proc in holders.items()}
    assert sorted(slots.values()) == ["3:0/2", "3:1/2", "5:0/2", "5:1/2"]  # all distinct
    assert set(collections.Counter(s.split(":")[0] for s in slots.values()).values()) == {2}
    late = _launch(tmp_path, "e", 0)
    time.sleep(1.0)
    assert not (tmp_path / "e").exists() and late.poll() is None  # every slot is held: it waits
    victim = holders["c"]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert _wait_for(tmp_path / "e", late) == slots["c"]  # the kernel released the lock
    assert late.wait(timeout=60) == 0
    for proc in holders.values():
        proc.kill()
        proc.wait(timeout=30)


def test_launcher_pins_cuda_visible_devices_and_rejects_bad_slot_counts(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.gpu_slots", "--gpus", "7", "--lock-dir",
         str(tmp_path), "--", sys.executable, "-c",
         "import os; print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['BENCHMARK_GPU_SLOT'])"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["7", "7:0/1"]
    bad = subprocess.run([sys.executable, "-m", "benchmark.gpu_slots", "--gpus", "0", "--slots",
                          "0", "--", "true"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--slots: invalid value 0" in bad.stderr


def test_hand_started_run_with_several_gpus_claims_a_free_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(gpu_slots.LOCKS_ENV, str(tmp_path))
    monkeypatch.delenv(gpu_slots.SLOT_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    taken = gpu_slots.try_acquire(["0", "1"], 1)  # e.g. a workflow job on GPU 0
    assert taken.gpu == "0"
    assert gpu_slots.claim_gpu(per_device=1) == torch.device("cuda:1")
    assert os.environ[gpu_slots.SLOT_ENV] == "1:0/1" and gpu_slots.slot_share() == 1
    # launched in a slot already (or a single GPU): nothing to claim
    assert gpu_slots.claim_gpu(per_device=1) is None
    monkeypatch.setenv(gpu_slots.SLOT_ENV, "0:2/4")
    assert gpu_slots.slot_share() == 4
    os.close(taken.fd)


@pytest.mark.parametrize("label", ["", "junk", "0:0/x"])
def test_slot_share_defaults_to_the_whole_gpu(label, monkeypatch) -> None:
    monkeypatch.setenv(gpu_slots.SLOT_ENV, label)
    assert gpu_slots.slot_share() == 1
