"""Which device a run uses, why it may not be the GPU, and what a run records about it.

``device: auto`` means CUDA when torch can use a GPU, else the CPU. The dangerous case is a
machine that *has* a GPU that this torch cannot use: a CPU-only wheel, or a CUDA build newer than
the NVIDIA driver supports (the README's torch is a CUDA 13 build, which needs driver >= 580).
Then ``auto`` still runs, on the CPU and roughly a hundred times slower, so it says so in one
line on stderr naming the likely cause and the ``pip`` command for a matching build
(:func:`cpu_fallback_warning`), and ``metrics.json`` records it (:func:`environment`).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

WHEEL_INDEX = "https://download.pytorch.org/whl/{tag}"
# newest CUDA major -> the oldest Linux driver that runs every minor of it (NVIDIA's
# minor-version compatibility) and the PyTorch wheel index to take for it
CUDA_DRIVERS: tuple[tuple[int, float, str], ...] = (
    (13, 580.0, "cu130"), (12, 525.0, "cu126"), (11, 450.0, "cu118"),
)
_PROC_VERSION = Path("/proc/driver/nvidia/version")


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when torch can use a GPU, else the CPU (saying why when a GPU is there)."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        message = cpu_fallback_warning()
        if message:
            _warn_once(message)
        return torch.device("cpu")
    return torch.device(device)


def configure(device: torch.device) -> None:
    """Process-wide settings for a run on ``device``: cuDNN picks the fastest convolution
    algorithms once per shape (shapes never change within a run: every batch has the same size)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def environment(device: torch.device, vectorize: str | None = None,
                vectorize_reason: str | None = None) -> dict[str, Any]:
    """What ``metrics.json`` (``environment``) and MLflow record about where a run ran."""
    gpu_name = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
        gpu_name = torch.cuda.get_device_name(device)
    env: dict[str, Any] = {
        "device": str(device), "gpu_name": gpu_name, "torch": torch.__version__,
        "cuda": torch.version.cuda, "vectorize": vectorize, "vectorize_reason": vectorize_reason,
    }
    if device.type == "cpu":
        env["cpu_fallback"] = cpu_fallback_warning()  # None unless a GPU was there, unused
    return env


@functools.cache
def cpu_fallback_warning() -> str | None:
    """One line when torch cannot use a GPU that the machine has; None when there is none (or
    none is meant to be used: ``CUDA_VISIBLE_DEVICES`` empty or -1) or torch can use it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
    # e.g. "CUDA initialization: The NVIDIA driver on your system is too old (found ...)"
    torch_error = " ".join(" ".join(str(w.message).split()) for w in caught
                           if "driver" in str(w.message).lower())
    gpu = _visible_gpu()
    if gpu is None and not torch_error:
        return None
    gpu = gpu or {}
    build = torch.version.cuda
    driver, driver_cuda = gpu.get("driver"), gpu.get("cuda")
    tag = _wheel_tag(driver_cuda, driver)
    what = ", ".join(v for v in (gpu.get("name"), driver and f"driver {driver}",
                                 driver_cuda and f"supports CUDA <= {driver_cuda}") if v)
    if build is None:
        cause = f"this torch {torch.__version__} is a CPU-only build"
    else:
        needed = next((d for major, d, _ in CUDA_DRIVERS if major == int(build.split(".")[0])),
                      None)
        cause = f"this torch {torch.__version__} is built for CUDA {build}"
        if needed:
            cause += f" (needs NVIDIA driver >= {needed:g})"
        too_old = (_version(driver_cuda) < _version(build) if driver_cuda else
                   bool(needed and driver and _driver_number(driver) < needed))
        if too_old:
            cause += ", newer than the driver supports"
        elif torch_error:
            cause += f"; torch says: {torch_error[:200]}"
    version = torch.__version__.split("+")[0]
    fix = (f"pip install --force-reinstall torch=={version} torchvision --index-url "
           f"{WHEEL_INDEX.format(tag=tag)}" if tag else "update the NVIDIA driver")
    return (f"device auto: running on the CPU although a GPU is present ({what or 'nvidia'}): "
            f"{cause}; install a matching build: {fix} (README: 'On a GPU box'), "
            f"or set device: cpu to use the CPU on purpose")


def _visible_gpu() -> dict[str, str] | None:
    """The first NVIDIA GPU the system shows (name, driver, newest CUDA it supports), or None."""
    info: dict[str, str] = {}
    if shutil.which("nvidia-smi"):
        query = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
        first = [part.strip() for part in query.splitlines()[0].split(",")] if query else []
        if len(first) == 2:
            info["name"], info["driver"] = first
        found = re.search(r"CUDA Version:\s*([\d.]+)", _run(["nvidia-smi"]))
        if found:  # the newest CUDA this driver supports (nvidia-smi's header)
            info["cuda"] = found.group(1)
    if not info and _PROC_VERSION.exists():
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", _PROC_VERSION.read_text())
        info["driver"] = found.group(1) if found else "unknown"
    return info or None


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def _driver_number(driver: str) -> float:
    """``"535.104.05"`` -> 535.104 (0 when unknown)."""
    parts = _version(driver)
    return float(f"{parts[0]}.{parts[1] if len(parts) > 1 else 0}") if parts else 0.0


def _wheel_tag(driver_cuda: str | None, driver: str | None) -> str | None:
    """The wheel index for this driver: by the CUDA version it reports, else by its number."""
    for major, min_driver, tag in CUDA_DRIVERS:
        if driver_cuda and _version(driver_cuda)[0] >= major:
            return tag
        if not driver_cuda and driver and _driver_number(driver) >= min_driver:
            return tag
    return None


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


_WARNED: set[str] = set()
