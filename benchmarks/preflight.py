"""Before a GPU check: is a GPU visible, to the driver and to torch, and do driver and torch's
CUDA build match? Prints the facts and one verdict line; exit 1 if ``--device cuda`` cannot work.

The driver supports CUDA up to the version ``nvidia-smi`` prints; a torch wheel built for a newer
CUDA finds no GPU (``torch.cuda.is_available()`` is False) although ``nvidia-smi`` shows one:
install the wheel for the driver's CUDA (README, "On a GPU box", step 1).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess

import torch


def driver() -> dict:
    """What nvidia-smi says (empty when there is no nvidia-smi or it fails)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30)
        banner = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", banner.stdout)
    return {"gpus": [line.strip() for line in query.stdout.splitlines() if line.strip()],
            "driver_cuda": cuda.group(1) if cuda else None}


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or ""))[:2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
             "cuda_available": torch.cuda.is_available(),
             "device_count": torch.cuda.device_count(), **driver()}
    if facts["cuda_available"]:
        facts["device_name"] = torch.cuda.get_device_name(0)
    ok = True
    if args.device != "cuda":
        verdict = f"device {args.device}: no GPU needed"
    elif facts["cuda_available"]:
        verdict = f"ok: torch sees {facts['device_count']} GPU(s), {facts['device_name']}"
    elif facts.get("gpus"):
        ok = False
        newer = _version(facts["torch_cuda"]) > _version(facts.get("driver_cuda"))
        verdict = (f"GPU visible to the driver ({facts['gpus'][0]}) but not to torch: "
                   + (f"torch is built for CUDA {facts['torch_cuda']}, the driver supports up to "
                      f"{facts['driver_cuda']}; install a torch wheel for CUDA <= "
                      f"{facts['driver_cuda']} (README)" if newer else
                      f"torch CUDA build {facts['torch_cuda']} (a CPU-only wheel?)"))
    else:
        ok = False
        verdict = "no GPU: nvidia-smi missing or shows none, and torch sees none"
    facts["verdict"] = verdict
    print("PREFLIGHT " + json.dumps(facts))
    print(verdict)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
