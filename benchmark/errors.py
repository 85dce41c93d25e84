"""User-facing errors: one clear line, exit code 2, nothing half-written.

Every mistake a researcher can make in a config, on the command line or in the data directory is
raised as a :class:`UserError`; the CLI prints its message on one line and exits with code 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix: printed as one line, exit code 2."""


class ConfigError(UserError):
    """A bad value for a named field: says the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str | Iterable[object], hint: str = ""):
        if not isinstance(allowed, str):
            choices = [str(a) for a in allowed]
            allowed = "one of " + ", ".join(choices)
            close = difflib.get_close_matches(str(value), choices, n=1)
            if close and not hint:
                hint = f"did you mean '{close[0]}'?"
        message = f"{field}: invalid value {value!r}; allowed: {allowed}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
        self.field, self.value, self.allowed = field, value, allowed


class DataMissingError(UserError):
    """A dataset is not where the config says: names the expected path and how to get the files."""


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted (corrupted, truncated or from another config)."""
