"""End-to-end checks of the training command on a device: a 2-epoch run killed after its first
checkpoint and resumed (``resume``), and a one-process ``torchrun`` run with ``distributed=true``
(``torchrun``: NCCL on CUDA, gloo on a CPU). CIFAR-shaped synthetic data (no download).

    python benchmarks/e2e.py resume --device cuda --out /tmp/e2e
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SUMMARY_PREFIX = "BENCH "


def run_options(device: str, tiny: bool, epochs: int) -> list[str]:
    """A CCL run of 16 EvoNorm ResNet-20 agents on 8,192 random CIFAR-shaped images (--tiny: 4
    MLP agents on 2,048 8-px images: an epoch of 64 iterations, long enough to be killed in)."""
    if tiny:
        data = {"train_size": 2048, "test_size": 64, "image_size": 8, "channels": 3}
        size = ["model=mlp", "n_agents=4", "batch_size=8"]
    else:
        data = {"train_size": 8192, "test_size": 1000, "image_size": 32, "channels": 3,
                "augment": "cifar"}
        size = ["model=resnet20", "n_agents=16", "batch_size=32"]
    return ["dataset=synthetic", f"synthetic={json.dumps(data)}", *size, "method=ccl",
            f"epochs={epochs}", f"device={device}", "tracking=false", "threads=2"]


def _train(out: Path, options: list[str], launcher: list[str] | None = None) -> subprocess.Popen:
    command = launcher or [sys.executable, "-m"]
    return subprocess.Popen([*command, "benchmark", "train", "--out", str(out), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _summary(out: Path, **extra) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    keep = ("status", "resumed_after_epochs", "wall_time_s", "memory", "environment", "final",
            "distributed")
    return {**{k: metrics.get(k) for k in keep},
            "epoch_seconds": [r.get("time_s") for r in metrics["history"]], **extra}


def resume(args: argparse.Namespace) -> dict:
    """Start, SIGKILL once the epoch-1 checkpoint exists, start again: it must resume and end."""
    out = Path(args.out) / "resume"
    shutil.rmtree(out, ignore_errors=True)
    # --tiny: epochs take ~0.1 s, so a third epoch leaves the watcher a whole epoch to kill in
    # (a loaded machine can delay it past one epoch; the run must still be cut before its end)
    options = run_options(args.device, args.tiny, epochs=3 if args.tiny else 2)
    first = _train(out, options)
    start = time.time()
    while not (out / "checkpoint.pt").exists():
        if first.poll() is not None:
            raise SystemExit(f"the run ended before its first checkpoint:\n{first.stdout.read()}")
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_after = time.time() - start
    second = _train(out, options)
    log = second.communicate()[0]
    print(log)
    if second.returncode != 0:
        raise SystemExit(f"the resumed run failed (exit {second.returncode})")
    return _summary(out, check="resume", killed_after_s=killed_after,
                    resumed="resuming" in log)


def torchrun(args: argparse.Namespace) -> dict:
    """One rank through torchrun with distributed=true (the NCCL path on CUDA)."""
    out = Path(args.out) / "torchrun"
    shutil.rmtree(out, ignore_errors=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "1", "-m"]
    proc = _train(out, [*run_options(args.device, args.tiny, epochs=1), "distributed=true"],
                  launcher)
    log = proc.communicate()[0]
    print(log)
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed (exit {proc.returncode})")
    return _summary(out, check="torchrun")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=("resume", "torchrun"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default="e2e")
    args = p.parse_args(argv)
    summary = {"resume": resume, "torchrun": torchrun}[args.check](args)
    print(SUMMARY_PREFIX + json.dumps({"benchmark": f"e2e_{args.check}", **summary},
                                      default=str), flush=True)
    return summary


if __name__ == "__main__":
    main()
