"""YAML as users write it (config files, family files, ``key=value`` overrides): strict and
bounded.

Strict: a key given twice in one mapping is refused (PyYAML silently keeps the last one, so a
forgotten earlier ``lr:`` would quietly decide the run).

Bounded: a config is a few levels deep and a few hundred values large, so what a YAML text can
expand to is capped while it is parsed, before anything is built from it. Aliases repeat what
their anchor holds: nine lines of ``&b [*a, *a, ...]`` make 9^9 values, which every later step
(validation, error messages, fingerprints) would walk, growing memory by tens of MB/s inside
calls that a signal cannot stop. Nesting is capped too: PyYAML builds nested collections
recursively, and a 3000-deep list would end in a ``RecursionError``. Anchors and aliases
themselves stay allowed (``<<: *base`` is a fair way to share options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, UserError
from .io import read_text

MAX_DEPTH = 64  # nested mappings and lists; a family file uses 4
MAX_VALUES = 100_000  # scalars and collections after expanding aliases; a family file has ~100


class Refused(yaml.YAMLError):
    """YAML that parses but that the suite refuses: its message is one line."""


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping, nesting deeper than
    :data:`MAX_DEPTH`, more than :data:`MAX_VALUES` values once aliases are expanded, and an
    alias inside the node it names.

    The bounds are counted on the parser's events as the composer takes them (the parser
    itself is not recursive), so a refusal comes at the first event past the bound.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open: list[list[Any]] = []  # [anchor, values so far] per open collection
        self._sizes: dict[str, int] = {}  # values of each anchored node, once complete
        self._values = 0  # the root's values (a document with a scalar root)

    def get_event(self) -> yaml.Event:
        event = super().get_event()
        if isinstance(event, yaml.CollectionStartEvent):
            if len(self._open) >= MAX_DEPTH:
                raise Refused(f"nested deeper than {MAX_DEPTH} levels{_at(event)}")
            self._open.append([event.anchor, 1])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size = self._open.pop()
            self._complete(anchor, size, event)
        elif isinstance(event, yaml.ScalarEvent):
            self._complete(event.anchor, 1, event)
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _ in self._open):
                raise Refused(f"alias *{event.anchor}{_at(event)} is inside the node it names")
            self._add(self._sizes.get(event.anchor, 1), event)  # unknown: the composer says so
        return event

    def _complete(self, anchor: str | None, size: int, event: yaml.Event) -> None:
        if anchor is not None:
            self._sizes[anchor] = size
        self._add(size, event)

    def _add(self, size: int, event: yaml.Event) -> None:
        if self._open:
            self._open[-1][1] += size
            total = self._open[-1][1]
        else:
            self._values += size
            total = self._values
        if total > MAX_VALUES:
            raise Refused(f"more than {MAX_VALUES:,} values once its aliases are expanded"
                          f"{_at(event)}; write the values out, or repeat fewer")

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *base`` may be overridden by explicit keys on purpose
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                continue  # an unhashable key: the base class says so
            line = key_node.start_mark.line + 1
            if key in seen:
                raise Refused(f"key {key!r} appears twice, at lines {seen[key]} and {line}; "
                              "keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _at(event: yaml.Event) -> str:
    mark = event.start_mark
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""


def load_yaml(text: str) -> Any:
    """One YAML document through :class:`StrictLoader` (raises :class:`Refused` or another
    ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from a file, or one :class:`UserError` line naming it: not a readable
    text file (:func:`benchmark.io.read_text`), malformed YAML (with the line), a refused
    document (:class:`Refused`), or not a mapping."""
    if str(path).strip() == "":  # Path("") is the current folder
        raise ConfigError("--config", str(path), "a YAML file (leave --config out for the "
                          "built-in defaults)")
    path = Path(path)
    text = read_text(path, what)
    try:
        data = load_yaml(text)
    except Refused as err:
        raise UserError(f"{what}: {path}: {err}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", exc)
        raise UserError(f"{what}: malformed YAML in {path}{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"{what}: {path} must hold a mapping of option: value, got {type(data).__name__}"
        )
    return data
