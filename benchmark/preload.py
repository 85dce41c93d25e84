"""A fork server for the workflow's jobs: the suite is imported once, every job forks from it.

Why: a digits run trains for a few CPU-seconds, while a fresh ``python -m benchmark`` spends
about 3.5 CPU-seconds importing torch and the rest before its first iteration
(``benchmarks/fixed_cost.py``). The workflow starts one server per ``snakemake`` invocation
(``onstart``) and exports its socket as ``BENCHMARK_PRELOAD``; with that variable set,
``python -m benchmark ...`` (the job command, unchanged) hands its arguments, working directory,
environment and stdin/stdout/stderr (the file descriptors themselves, so ``> log.txt`` holds) to
the server, which forks a child that runs exactly ``benchmark.cli.main`` on them (with the GPU
slot lock the job holds, so the child keeps the slot). The client forwards SIGTERM/SIGINT/SIGHUP
to that child and exits with its exit code.

The server only imports modules, it never runs anything: no thread, no random draw, no CUDA
context exist when it forks, so a child computes what a fresh process computes (the tests
compare ``metrics.json``). The server is an optimisation, never a requirement: without one (not
started, gone, or not answering) the client runs the command itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "BENCHMARK_PRELOAD"
# what jobs import: torch, the training path, MLflow (tracking on: its SQL store's modules alone
# are ~2.5 CPU-s, imported when the first client opens the store), the per-run figures' pandas
# and matplotlib (run_figures on). Modules only: no store is opened, no engine created.
PRELOAD = ("torch", "benchmark.cli", "benchmark.config", "benchmark.train", "benchmark.tracking",
           "mlflow.tracking", "mlflow.entities", "mlflow.store.tracking.sqlalchemy_store",
           "benchmark.report")
_HEADER = struct.Struct("!I")  # length of the JSON request that follows the fds


# -- client --------------------------------------------------------------------------------------
def run_via_server(argv: list[str]) -> int | None:
    """Run ``python -m benchmark argv`` in a child of the server named by ``BENCHMARK_PRELOAD``;
    its exit code, or None when there is no server to ask (the caller then runs it itself)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    with conn:
        try:
            socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2, *_held_locks()])
            conn.sendall(request)
            replies = conn.makefile("r")
            pid = json.loads(replies.readline() or "{}").get("pid")
        except OSError:
            pid = None
        if pid is None:
            return None  # nothing was started (no stdio to pass, server gone): run here
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: os.kill(pid, signum))
        line = replies.readline()
    if not line:
        print(f"error: the preload server died while running this job (pid {pid})",
              file=sys.stderr)
        return 1
    return json.loads(line)["exit"]


def _held_locks() -> list[int]:
    """Lock descriptors this job holds and its training child must hold too: the GPU slot of
    ``benchmark.gpu_slots`` (were only this client to hold it, a killed client would free the
    slot while the child still trains on the GPU)."""
    from .gpu_slots import SLOT_FD_ENV

    try:
        fd = int(os.environ.get(SLOT_FD_ENV, ""))
        os.fstat(fd)
    except (ValueError, OSError):
        return []
    return [fd]


# -- server --------------------------------------------------------------------------------------
# A Unix socket's path is at most 107 bytes on Linux and 103 on macOS (sun_path, with its NUL).
SOCKET_PATH_MAX = 103


def socket_path() -> str:
    """A socket path in a new private folder (``mkdtemp``: mode 0700) under the temporary
    folder, or under /tmp when that one's path is too long for a socket (a long ``TMPDIR``
    once stopped every workflow with "preload server did not start")."""
    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp")):
        folder = tempfile.mkdtemp(prefix="benchmark-preload-", dir=base)
        path = os.path.join(folder, "socket")
        if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
            return path
        os.rmdir(folder)
    raise RuntimeError(f"no socket path of at most {SOCKET_PATH_MAX} bytes: TMPDIR "
                       f"({tempfile.gettempdir()}) and /tmp are too deep")


def start_server(log: str | Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server as a child of this process; returns it and its socket path once the socket
    accepts connections (they queue while it is still importing)."""
    path = socket_path()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.preload", path],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"preload server did not start (exit {proc.poll()})")
        time.sleep(0.01)
    return proc, path


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (running children are asked to stop too), then reap it, so its CPU time and its
    children's count in this process's resource usage."""
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)
    socket_file = Path(proc.args[-1])
    socket_file.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the private folder of socket_path()
        socket_file.parent.rmdir()


def serve(path: str) -> None:
    """Listen first (early clients wait in the backlog), import, then fork one child per request
    until SIGTERM or until the parent that started the server is gone."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(128)
    parent = os.getppid()
    stopping = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the children themselves
    # while importing (seconds of torch...) there is no child to stop: SIGTERM ends it at once
    signal.signal(signal.SIGTERM, _exit_at_once)
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # e.g. MLflow not installed: jobs import what they need themselves
            pass
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    while not stopping and os.getppid() == parent:
        for key, _ in selector.select(timeout=0.2):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                pid = _fork_job(conn, listener, children)
                if pid is not None:
                    children[pid] = conn
                    selector.register(conn, selectors.EVENT_READ, pid)
            elif not key.fileobj.recv(1):  # the client is gone (killed): stop its job
                selector.unregister(key.fileobj)
                _signal(key.data, signal.SIGTERM)
        _reap(children, selector, block=False)
    for pid in children:
        _signal(pid, signal.SIGTERM)
    _reap(children, selector, block=True)
    listener.close()


def _exit_at_once(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _fork_job(conn: socket.socket, listener: socket.socket,
              children: dict[int, socket.socket]) -> int | None:
    try:
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 4)  # stdio + a held lock
        (size,) = _HEADER.unpack(header)
        request = json.loads(conn.makefile("rb").read(size))
    except (OSError, ValueError, struct.error):
        conn.close()
        return None
    pid = os.fork()
    if pid == 0:  # the job: never returns
        code = 1
        try:
            listener.close()
            for other in (conn, *children.values()):
                other.close()
            code = _run_job(request, fds)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    print(f"pid {pid}: benchmark {' '.join(request['argv'])}", flush=True)
    return pid


def _run_job(request: dict, fds: list[int]) -> int:
    """In the forked child: become the client's process (stdio, cwd, environment, signals) and
    run the command line as ``python -m benchmark`` would."""
    import atexit
    import random

    import numpy as np

    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    if fds[3:]:  # the GPU slot lock: kept open until this child exits, under its new number
        from .gpu_slots import SLOT_FD_ENV

        request["env"][SLOT_FD_ENV] = str(fds[3])
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop(ENV, None)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    random.seed()  # unseeded generators draw fresh entropy, as in a new process
    np.random.seed()
    sys.argv = ["benchmark", *request["argv"]]
    from benchmark.cli import main

    code = main(request["argv"])
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _reap(children: dict[int, socket.socket], selector, block: bool) -> None:
    """Tell each finished child's client its exit code."""
    while children:
        pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        try:
            conn.sendall(json.dumps({"exit": code if code >= 0 else 128 - code}).encode() + b"\n")
        except OSError:
            pass  # the client is gone
        try:
            selector.unregister(conn)
        except KeyError:
            pass  # already unregistered when its client went away
        conn.close()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    serve(sys.argv[1])
