"""User-facing errors: one clear line, exit code 2, nothing half-written.

Every mistake a researcher can make in a config, on the command line or in the data directory is
raised as a :class:`UserError`; the CLI prints its message on one line and exits with code 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import itertools
import reprlib
from collections.abc import Iterable
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError, ValidationInfo

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix: printed as one line, exit code 2."""


class ConfigError(UserError):
    """A bad value for a named field: says the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str | Iterable[object], hint: str = ""):
        if not isinstance(allowed, str):
            choices = [str(a) for a in allowed]
            allowed = "one of " + ", ".join(choices)
            # a scalar only: str() of a huge nested value (YAML aliases) would never end
            scalar = isinstance(value, str | int | float)
            close = difflib.get_close_matches(str(value), choices, n=1) if scalar else []
            if close and not hint:
                hint = f"did you mean '{close[0]}'?"
        shown = _SHORT.repr(value)
        if len(shown) > 80:  # a whole list or mapping: its start says enough
            shown = shown[:77] + "..."
        message = f"{field}: invalid value {shown}; allowed: {allowed}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
        self.field, self.value, self.allowed = field, value, allowed


class _ShortRepr(reprlib.Repr):
    """``repr`` of the first few items, levels and characters of a value only: a value may be
    huge (a list repeated through YAML aliases) and the message shows 80 characters of it."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 4
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdict = 12
        self.maxstring = self.maxlong = self.maxother = 200

    def repr_dict(self, x: dict, level: int) -> str:
        """In insertion order, as ``repr`` shows it (``reprlib`` sorts the keys)."""
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                 for k, v in itertools.islice(x.items(), self.maxdict)]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"


_SHORT = _ShortRepr()


class DataMissingError(UserError):
    """A dataset is not where the config says: names the expected path and how to get the files."""


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted (corrupted, truncated or from another config)."""


def validation_error(err: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """pydantic's first complaint as one :class:`ConfigError`: the field as the user spells it
    (``prefix`` + ``grid.topologies[0].n_agents``), the bad value and what is allowed.

    The one translator for every schema (run options, family files, tuning, metrics.json). An
    unknown key comes first: a typo (``alphas:``) also makes the real key look missing, and
    "did you mean 'alpha'?" is the useful message. A :class:`ConfigError` raised by one of our
    validators already names its field and passes through unchanged.
    """
    first = min(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    own = (first.get("ctx") or {}).get("error")
    if isinstance(own, ConfigError):
        return own
    loc = first["loc"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    name = (prefix + path) or prefix.rstrip(".") or model.__name__
    owner = _model_at(model, loc[:-1])
    key = str(loc[-1]) if loc else ""
    if first["type"] == "extra_forbidden":
        return unknown_key(name, key, list(owner.model_fields) if owner else [])
    if first["type"] == "missing":
        return ConfigError(name, "(missing)", "a value is required")
    value = first.get("input")
    if first["type"] == "literal_error" and owner and key in owner.model_fields:
        return ConfigError(name, value, literal_choices(owner.model_fields[key].annotation))
    # "Input should be greater than 0" -> "allowed: greater than 0"
    problem = first["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    return ConfigError(name, value, problem)


def unknown_key(name: str, key: str, known: list[str]) -> ConfigError:
    """``name: invalid value '(unknown key)'; allowed: a known key (...) (did you mean ...?)``."""
    close = difflib.get_close_matches(key, known, n=1)
    allowed = ", ".join(known) if 0 < len(known) <= 16 else "see README for the options"
    hint = f"did you mean '{close[0]}'?" if close else ""
    return ConfigError(name, "(unknown key)", f"a known key ({allowed})", hint)


def no_bool_for_numbers(cls: type[BaseModel], value: object, info: ValidationInfo) -> object:
    """A ``mode="before"`` validator for every field of a schema: YAML reads ``true``/``yes`` as a
    boolean and pydantic would take it for 1 (``n_agents: true`` would train one agent), so a
    number field, or a list of numbers, refuses a boolean.
    Use: ``_numbers = field_validator("*", mode="before")(no_bool_for_numbers)``."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(item, bool) for item in items):
        if _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("a number, not a boolean (true/false)")
    return value


def check_distinct(field: str, values: list) -> list:
    """``values`` if no value is listed twice, else one line naming ``field`` and both positions.

    For every list whose duplicates would silently change its meaning: a learning-rate
    milestone given twice decays twice, a hyperparameter listed twice is searched twice, an
    axis value twice is one run path twice."""
    for i, value in enumerate(values):
        if value in values[:i]:
            raise ConfigError(field, values, "distinct values",
                              hint=f"{value!r} is listed twice, at positions "
                              f"{values.index(value)} and {i}")
    return values


def _is_number(annotation: object) -> bool:
    """``int``, ``float``, ``int | None``, ``list[float]``...: a number type, never ``bool``."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    args = get_args(annotation)
    return bool(args) and get_origin(annotation) is not dict and any(map(_is_number, args))


def literal_choices(annotation: object) -> list[object]:
    """The values a ``Literal[...]`` annotation allows (through ``| None`` and ``Annotated``)."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [c for arg in get_args(annotation) for c in literal_choices(arg)]


def _model_at(model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    """The (nested) model that holds the field at ``path`` (list indices and dict keys skipped)."""
    for part in path:
        field = model.model_fields.get(str(part)) if not isinstance(part, int) else None
        if field is None:
            continue
        inner = _inner_model(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _inner_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_inner_model, get_args(annotation))), None)
