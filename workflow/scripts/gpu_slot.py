"""Run a command on one free GPU: ``gpu_slot.py --gpus 0,1 --lock-dir DIR -- cmd args...``.

Snakemake counts GPUs (``resources: gpu=1``) but does not say *which* GPU a job gets, so two
concurrent jobs would both land on GPU 0. This takes an exclusive ``flock`` on
``DIR/gpu-<id>.lock`` for the first free GPU, sets ``CUDA_VISIBLE_DEVICES`` to it and ``exec``s
the command with the lock file still open: the training process itself holds the lock, and the
kernel releases it when that process ends however it ends (no stale slots after a crash).
If every GPU is taken (e.g. another workflow is running) it waits.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time


def acquire(gpus: list[str], lock_dir: str, poll_s: float) -> tuple[str, int]:
    os.makedirs(lock_dir, exist_ok=True)
    while True:
        for gpu in gpus:
            fd = os.open(os.path.join(lock_dir, f"gpu-{gpu}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return gpu, fd
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", required=True, help="comma-separated GPU ids to choose from")
    parser.add_argument("--lock-dir", required=True)
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between tries")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    gpu, fd = acquire([g for g in args.gpus.split(",") if g], args.lock_dir, args.poll)
    os.set_inheritable(fd, True)  # keep the lock across exec
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    print(f"gpu_slot: CUDA_VISIBLE_DEVICES={gpu}", file=sys.stderr, flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
