"""User-given names are identifiers, and the paths built from them stay inside their roots.

A family's name becomes a folder (``results/<family>/``, ``studies/<family>/``), part of file
names (``reports/table_<family>.csv``), an MLflow experiment, and a word in the workflow's shell
commands. So every name a user gives (a family in a config file, on the command line or as a
file's stem; a plugin's method) goes through :func:`check_name`: a small character set with no
separator, no ``..`` and no shell syntax, and a length limit, or one line naming the field, the
value and what is allowed. Every path built from a name is then checked by :func:`inside`, so
a name that slipped past (a stored file of an older version, a future caller) still cannot
write outside its root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath

from .errors import ConfigError

MAX_NAME = 64  # long enough for any family; short enough for a path component and a UI column
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ALLOWED = (f"a name of 1 to {MAX_NAME} characters: letters, digits, '.', '_' and '-', starting "
           "with a letter or a digit, without '..'")


def check_name(field: str, value: object) -> str:
    """``value`` if it is a safe name, else a :class:`ConfigError` naming ``field``."""
    if (not isinstance(value, str) or len(value) > MAX_NAME or not NAME.fullmatch(value)
            or ".." in value):
        raise ConfigError(field, value, ALLOWED)
    return value


def inside(root: str | Path, relative: str | PurePath, field: str = "name") -> Path:
    """``root / relative``, refused unless it stays inside ``root``.

    The check is lexical (``..`` folded, absolute parts refused) rather than through the file
    system: a results folder the user links elsewhere on purpose keeps working, while no
    spelling of a name can climb out of it."""
    relative = os.fspath(relative)
    folded = os.path.normpath(relative) if relative else ""
    if (not folded or PurePath(folded).is_absolute() or folded == os.curdir
            or folded.split(os.sep)[0] == os.pardir):
        raise ConfigError(field, relative, f"a path inside {root}/")
    return Path(root) / folded
