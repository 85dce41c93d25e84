"""Ctrl-C and SIGTERM: the command stops within a second, and never between the last writes of
a finished run.

Schedulers (Snakemake, SLURM) stop a job with SIGTERM, then kill it if it lingers. The command
line treats SIGTERM like Ctrl-C: the handler raises ``KeyboardInterrupt`` at the next bytecode,
so context managers unwind (the MLflow run ends KILLED, the run folder's lock is released; every
result file is written atomically, so none is left half-written).

Two cases need more than that:

- A Python handler runs only between bytecodes of the main thread, so a long C call (a large
  tensor operation, generating a big data set, a library waiting through signals) would keep
  the process going. A watcher thread, woken by the signal itself (``signal.set_wakeup_fd``),
  gives the handler :data:`GRACE_S`; if it has not run by then, the watcher prints the
  command's one line and ends the process (exit code 130, as after Ctrl-C). A C call holding
  the GIL stops the watcher too: what such calls are handed is bounded instead (the YAML
  reader caps what a config expands to, :mod:`benchmark.strict_yaml`).
- The last writes of a finished run (its models, then ``metrics.json``) are one unit: an
  interrupt between them would leave models without a result. :func:`deferred` holds a signal
  until such a block ends (a few local writes), then raises it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT
SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 1.0
# Set by every handler of ours: the main thread got to run Python since the signal.
_handled = threading.Event()


def _raise(signum: int, frame: object) -> None:
    _handled.set()
    raise KeyboardInterrupt


@contextmanager
def stop_on_signals(what_was_left: Callable[[], str]) -> Iterator[None]:
    """While the block runs: SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread;
    if neither is handled within :data:`GRACE_S`, ``interrupted: <what_was_left()>`` goes to
    stderr and the process exits with code 130 at once. Outside the main thread (which signals
    never reach), the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _handled.clear()
    previous = {sig: signal.signal(sig, _raise) for sig in SIGNALS}
    read, write = os.pipe()
    os.set_blocking(write, False)  # set_wakeup_fd's requirement: a signal never blocks on it
    old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read, what_was_left), daemon=True,
                               name="benchmark-signal-watcher")
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(write)  # the watcher reads end-of-file and returns
        watcher.join()
        os.close(read)


def _watch(read: int, what_was_left: Callable[[], str]) -> None:
    """The watcher thread: one byte per signal (its number) arrives on ``read``."""
    while numbers := os.read(read, 64):
        if any(sig in numbers for sig in SIGNALS) and not _handled.wait(GRACE_S):
            print(f"interrupted (inside a long computation): {what_was_left()}",
                  file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise ``KeyboardInterrupt``: for a
    few local writes that must all happen or none. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        _handled.set()
        held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt
