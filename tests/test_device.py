"""Never silently on the wrong device: the CPU fallback warning and what a run records.

A GPU is simulated with a stand-in ``nvidia-smi`` on ``PATH`` (and torch told it cannot use it);
nothing here needs a GPU.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from benchmark import device as dev
from benchmark.cli import main

SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name,driver_version" ]; then
  echo "NVIDIA H100 80GB HBM3, 535.104.05"
else
  echo "| NVIDIA-SMI 535.104.05     Driver Version: 535.104.05     CUDA Version: 12.2     |"
fi
"""


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No GPU anywhere, the warning cache empty, CUDA_VISIBLE_DEVICES unset."""
    dev.cpu_fallback_warning.cache_clear()
    dev._WARNED.clear()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(dev, "_PROC_VERSION", tmp_path / "no-driver")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield tmp_path
    dev.cpu_fallback_warning.cache_clear()
    dev._WARNED.clear()


def _with_gpu(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text(SMI)
    smi.chmod(0o755)


def test_no_gpu_means_no_warning(fresh, capsys):
    assert dev.cpu_fallback_warning() is None
    assert dev.pick_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err == ""


def test_cuda_build_newer_than_the_driver_says_why_and_how_once(fresh, monkeypatch, capsys):
    _with_gpu(fresh)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert dev.pick_device("auto") == torch.device("cpu")
    assert dev.pick_device(None) == torch.device("cpu")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: device auto: running on the CPU")
    for part in ("NVIDIA H100 80GB HBM3", "driver 535.104.05", "supports CUDA <= 12.2",
                 "built for CUDA 13.0", "needs NVIDIA driver >= 580",
                 "newer than the driver supports",
                 "--index-url https://download.pytorch.org/whl/cu126", "device: cpu"):
        assert part in err, part
    assert dev.pick_device("cpu") == torch.device("cpu")  # explicit: no second line
    assert capsys.readouterr().err == ""


def test_cpu_only_build_with_a_gpu(fresh, monkeypatch):
    _with_gpu(fresh)
    monkeypatch.setattr(torch.version, "cuda", None)
    message = dev.cpu_fallback_warning()
    assert "is a CPU-only build" in message and "whl/cu126" in message


def test_driver_known_only_from_the_kernel_module(fresh, monkeypatch):
    fresh.joinpath("no-driver").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.82.01  Thu Oct 28 2021\n")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    message = dev.cpu_fallback_warning()
    assert "driver 470.82.01" in message and "needs NVIDIA driver >= 525" in message
    assert "newer than the driver supports" in message and "whl/cu118" in message


def test_torch_reporting_a_driver_mismatch_is_enough(fresh, monkeypatch):
    def unavailable() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old "
                      "(found version 11040).", stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", unavailable)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    message = dev.cpu_fallback_warning()
    assert message and "driver on your system is too old" in message


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_gpus_hidden_on_purpose_are_not_a_fallback(fresh, monkeypatch, hidden):
    _with_gpu(fresh)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    assert dev.cpu_fallback_warning() is None


def test_environment_names_device_versions_and_path(fresh, monkeypatch):
    _with_gpu(fresh)
    env = dev.environment(torch.device("cpu"), "loop", "because")
    assert env["device"] == "cpu" and env["gpu_name"] is None
    assert env["torch"] == torch.__version__ and env["cuda"] == torch.version.cuda
    assert (env["vectorize"], env["vectorize_reason"]) == ("loop", "because")
    assert "running on the CPU although a GPU is present" in env["cpu_fallback"]


def test_metrics_json_records_the_environment(tmp_path):
    args = ["train", "--out", str(tmp_path), "dataset=digits", "model=mlp", "image_size=8",
            "n_agents=4", "epochs=1", "batch_size=16", "tracking=false", "threads=1",
            "device=cpu", "vectorize=vmap"]
    assert main(args) in (0, None)
    env = json.loads((tmp_path / "metrics.json").read_text())["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert env["vectorize"] == "vmap" and env["vectorize_reason"]
