"""GPU slots: ``k`` runs share one GPU, each holding a kernel lock on its (GPU, slot) pair.

Snakemake counts GPU slots (``resources: gpu=1`` against ``gpus x k``) but does not say *which*
slot a job gets, and a hand-started run would land on ``cuda:0`` whatever else is running. Both
go through :func:`acquire`: an exclusive ``flock`` on ``<lock dir>/gpu<id>-slot<s>.lock`` for the
first free pair, slot 0 of every GPU before slot 1 of any (runs spread over GPUs before they
share one). The lock file stays open in the process that trains: the workflow's launcher
(``python -m benchmark.gpu_slots --gpus 0,1 --slots 4 -- cmd ...``) ``exec``s the command with
the descriptor inherited, so the kernel releases the slot when that process ends, however it
ends (SIGKILL included); no stale slots. Through the preload server the descriptor travels on
to the forked child that trains (``BENCHMARK_GPU_SLOT_FD``), which holds the slot as well.

The launched process learns its slot from ``BENCHMARK_GPU_SLOT=<gpu>:<slot>/<k>`` (the memory
check gives a run ``1/k`` of its GPU). The lock folder is machine-wide by default (GPUs are),
``$BENCHMARK_GPU_LOCKS`` moves it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LOCKS_ENV = "BENCHMARK_GPU_LOCKS"
SLOT_ENV = "BENCHMARK_GPU_SLOT"
# the descriptor of the held slot lock in the launched process: a job run through the preload
# server (benchmark/preload.py) hands it on to the forked child that trains, so the slot stays
# held until the training itself ends, not only its forwarding client
SLOT_FD_ENV = "BENCHMARK_GPU_SLOT_FD"


@dataclass(frozen=True)
class Slot:
    """A held (GPU, slot) pair; ``fd`` is the open, locked file that keeps it."""

    gpu: str
    index: int
    per_device: int
    fd: int

    @property
    def label(self) -> str:
        return f"{self.gpu}:{self.index}/{self.per_device}"


def lock_dir() -> Path:
    """Where slot locks live: ``$BENCHMARK_GPU_LOCKS``, else one folder per user in /tmp."""
    default = Path(tempfile.gettempdir()) / f"benchmark-gpu-slots-{os.getuid()}"
    return Path(os.environ.get(LOCKS_ENV) or default)


def try_acquire(gpus: list[str], per_device: int, directory: Path | None = None) -> Slot | None:
    """The first free (GPU, slot) pair, locked; None when all ``gpus x per_device`` are held."""
    from .io import try_lock  # imported on use: the preload client reads this module's names

    directory = Path(directory or lock_dir())
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(per_device):
        for gpu in gpus:
            fd = os.open(directory / f"gpu{gpu}-slot{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            if try_lock(fd):
                return Slot(gpu, index, per_device, fd)
            os.close(fd)
    return None


def acquire(gpus: list[str], per_device: int = 1, directory: Path | None = None,
            poll_s: float = 2.0) -> Slot:
    """Wait for a free slot (e.g. another workflow or a hand-started run holds them all)."""
    if not gpus or per_device < 1:
        raise ValueError(f"no slots: gpus={gpus}, per_device={per_device}")
    while (slot := try_acquire(gpus, per_device, directory)) is None:
        time.sleep(poll_s)
    return slot


def slot_share() -> int:
    """How many runs this process's GPU is split between (1 when not launched in a slot)."""
    label = os.environ.get(SLOT_ENV, "")
    try:
        return max(1, int(label.rpartition("/")[2]))
    except ValueError:
        return 1


def claim_gpu(per_device: int, poll_s: float = 2.0):
    """A hand-started run's GPU: with several visible and no slot given by a launcher, the first
    free slot (same locks as the workflow's), else None (one GPU: cuda as usual). The lock is
    kept for the life of this process."""
    import torch

    count = torch.cuda.device_count()
    if os.environ.get(SLOT_ENV) or count < 2:
        return None
    slot = acquire([str(i) for i in range(count)], per_device, poll_s=poll_s)
    os.environ[SLOT_ENV] = slot.label
    print(f"gpu_slots: cuda:{slot.gpu} (slot {slot.label})", file=sys.stderr, flush=True)
    device = torch.device(f"cuda:{slot.gpu}")
    torch.cuda.set_device(device)  # what "cuda" means for the rest of this process
    return device


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmark.gpu_slots --gpus 0,1 [--slots k] -- command ...``: run the command
    in the first free slot, pinned with ``CUDA_VISIBLE_DEVICES``."""
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--gpus", required=True, help="comma-separated GPU ids to choose from")
    parser.add_argument("--slots", type=int, default=1, help="runs per GPU (default 1)")
    parser.add_argument("--lock-dir", help=f"default: ${LOCKS_ENV} or {lock_dir()}")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between tries")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    if args.slots < 1:
        parser.error(f"--slots: invalid value {args.slots}; allowed: an integer >= 1")
    gpus = [g for g in args.gpus.split(",") if g]
    slot = acquire(gpus, args.slots, Path(args.lock_dir) if args.lock_dir else None, args.poll)
    os.set_inheritable(slot.fd, True)  # the command's process holds the lock after exec
    os.environ.update(CUDA_VISIBLE_DEVICES=slot.gpu,
                      **{SLOT_ENV: slot.label, SLOT_FD_ENV: str(slot.fd)})
    print(f"gpu_slot: CUDA_VISIBLE_DEVICES={slot.gpu} (slot {slot.label})", file=sys.stderr,
          flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
