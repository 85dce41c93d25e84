"""A checksum inside every torch file the suite writes (checkpoints, saved models).

``torch.load`` does not notice a flipped byte inside a tensor's storage: a damaged checkpoint
resumed "fine" and ended 44 points below its uninterrupted run. So a payload carries the sha256
of its own content (:func:`with_checksum`), computed over the values themselves (every tensor's
dtype, shape and bytes, every other value's type and ``repr``, in order) rather than over the
file's bytes: the file stays a plain ``torch.save`` dict that anyone can load, and a reader
recomputes the digest over what it loaded (:func:`checksum_matches`) before using any of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

KEY = "sha256"


def content_digest(payload: Mapping[str, Any]) -> str:
    """sha256 over ``payload`` without its own checksum entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != KEY})
    return h.hexdigest()


def with_checksum(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` plus its checksum (what is then saved)."""
    return {**payload, KEY: content_digest(payload)}


def checksum_matches(payload: Mapping[str, Any]) -> bool | None:
    """True when a loaded payload's content is what was written, False when it changed since;
    None when it carries no checksum (a file of an earlier version)."""
    if KEY not in payload:
        return None
    return payload[KEY] == content_digest(payload)


def _feed(h: Any, value: Any) -> None:
    """Each value tagged with its kind and size, so no two structures feed the same bytes."""
    if isinstance(value, torch.Tensor):
        h.update(f"tensor {value.dtype} {tuple(value.shape)}\n".encode())
        flat = value.detach().reshape(-1).contiguous()
        h.update(flat.view(torch.uint8).cpu().numpy())  # its buffer, whatever the dtype
    elif isinstance(value, Mapping):
        h.update(f"map {len(value)}\n".encode())
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, list | tuple):  # torch.load gives back what was saved
        h.update(f"{type(value).__name__} {len(value)}\n".encode())
        for item in value:
            _feed(h, item)
    else:  # numbers, strings, None: repr is exact (floats round-trip)
        h.update(f"{type(value).__name__} {value!r}\n".encode())
