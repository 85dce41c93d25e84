"""Files in and out: atomic writes (a crash never leaves a half-written result that looks
complete), bounded reads of the small text files users hand us, the check that an output can be
written before any work, and the one file lock of the suite (run folders, study journals, GPU
slots)."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

from .errors import ConfigError, UserError

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


# A config file is a few KiB: anything larger is a mistake (a data file, /dev/zero...), refused
# before it is read into memory.
MAX_TEXT_BYTES = 1 << 20
_NOT_FILES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISSOCK, "a socket"))


class Unreadable(UserError):
    """Not the small text file expected: ``what: <path> <problem>``, one line; ``problem`` for
    a caller that words its own line (a report skipping a file)."""

    def __init__(self, what: str, path: Path, problem: str) -> None:
        super().__init__(f"{what}: {path} {problem}")
        self.problem = problem


def read_text(path: str | Path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a small regular file, or one :class:`Unreadable` line saying what
    ``path`` is instead: missing, a directory, a FIFO or a device (never opened for a blocking
    read: a FIFO would wait for a writer, /dev/zero never ends), larger than ``limit``, binary,
    or in another encoding (with the line of the first bad byte)."""
    path = Path(path)
    try:
        kind = _kind(path)
        if kind is not None:
            raise Unreadable(what, path, f"is {kind}, not a file")
        # O_NONBLOCK: should a FIFO replace the file after the check, reading it cannot hang
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise Unreadable(what, path, "does not exist") from None
    except OSError as err:
        raise Unreadable(what, path, f"cannot be read: {err.strerror or err}") from None
    if len(data) > limit:
        raise Unreadable(what, path, f"is larger than {limit >> 10} KiB, more than such a file "
                         "ever holds: is it the right file?")
    nul = data.find(b"\0")
    if nul >= 0:
        raise Unreadable(what, path, f"is a binary file, not text (a NUL byte at "
                         f"{_where(data, nul)})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Unreadable(what, path, f"is not UTF-8 text (byte 0x{data[err.start]:02x} at "
                         f"{_where(data, err.start)}: another encoding, e.g. Latin-1?); save it "
                         "as UTF-8") from None


def _where(data: bytes, offset: int) -> str:
    """``line L, column C`` of a byte offset (columns in bytes)."""
    newline = b"\n"
    line = data.count(newline, 0, offset) + 1
    return f"line {line}, column {offset - data.rfind(newline, 0, offset)}"


def _kind(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file ("a directory", "a FIFO"...); None for a
    file. Raises OSError when it cannot be looked at (a name too long...)."""
    mode = os.stat(path).st_mode
    return next((name for test, name in _NOT_FILES if test(mode)), None)


def unwritable(path: str | Path) -> str | None:
    """Why ``path`` cannot become a folder we write into (``cannot write in /x: Permission
    denied``, ``/x is a file, not a directory``, ``File name too long``), or None; creates
    nothing.

    Probes the deepest existing ancestor with a temporary file: ``os.access`` says yes to root
    even on a read-only mount, and a read-only folder would otherwise be found by the first
    write, after the work (a training, a calibration, a study's trials).
    """
    path = Path(path)
    try:
        probe = next(p for p in (path, *path.parents) if p.exists() or p.parent == p)
        kind = _kind(probe) if not probe.is_dir() else None
    except OSError as err:  # e.g. a name longer than the file system allows
        return err.strerror or str(err)
    if not probe.is_dir():
        return f"{probe} is {kind or 'a file'}, not a directory"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        return f"cannot write in {probe}: {err.strerror or err}"
    return None


def check_writable_dir(path: str | Path, field: str) -> Path:
    """``path`` as a folder we can write into (:func:`unwritable`), checked before any work;
    else ``field: invalid value ...; allowed: a writable directory (why)``."""
    if str(path).strip() == "":  # Path("") is the current folder
        raise ConfigError(field, str(path), "a folder path (not empty)")
    why = unwritable(path)
    if why is not None:
        raise ConfigError(field, str(path), "a writable directory", why)
    return Path(path)


def check_writable_file(path: str | Path, field: str) -> Path:
    """Like :func:`check_writable_dir` for a file that will be (re)written: its folder must be
    writable, and what is there already a regular file."""
    path = Path(path)
    try:
        kind = _kind(path) if path.exists() else None
    except OSError as err:
        raise ConfigError(field, str(path), "a writable file", err.strerror or str(err)) from None
    if kind is not None:
        raise ConfigError(field, str(path), "a writable file", f"{path} is {kind}")
    check_writable_dir(path.parent, field)
    return path
