"""Atomic file writes: a crash never leaves a half-written result that looks complete; and the
one file lock of the suite (run folders, study journals, GPU slots)."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

from .errors import UserError

_UMASK = os.umask(0)  # the only portable way to read the umask is to set it (at import time)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only if the ``with`` block ends without error.

    Writes go to a hidden temporary file in the same folder (``.<name>.<random>.tmp``), which is
    fsynced and renamed over ``path``; the folder is fsynced too so the rename survives a power
    cut. Readers see the old file or the new one, never half of one. Streaming (rather than
    building the bytes first) keeps multi-GB checkpoints out of memory.

    A write that fails for a reason of the file system (disk full, ``ulimit -f``, permissions
    changed mid-run) is a :class:`WriteError` naming ``path`` and the cause. torch's zip
    writer swallows the ``OSError`` of a short write and fails later with a ``RuntimeError``
    of its own, so the cause is looked for along the exception chain.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(exc)
        if cause is None or isinstance(exc, UserError):
            raise
        raise WriteError(f"cannot write {path}: {cause.strerror or cause}") from None
    _fsync_dir(path.parent)


class WriteError(UserError):
    """A result file that could not be written; the previous version of it is intact."""


def _os_error(err: BaseException | None) -> OSError | None:
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def try_lock(file: IO | int) -> bool:
    """Take an exclusive ``flock`` on an open file (object or descriptor) without waiting;
    False when another process holds it. The kernel drops the lock when the file is closed or
    its process ends, however it ends (SIGKILL included): a crash never leaves a stale lock, and
    a descriptor inherited across ``exec`` keeps it for the new program."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")
