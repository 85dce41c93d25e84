"""Per-phase wall-clock accounting of a run: where an epoch's time goes.

Every run records, per epoch, the seconds spent in each phase (``PHASES``) in ``metrics.json``, so
the workflow's overhead table is built from real runs rather than from a separate benchmark.

Design points:

* **Exclusive time.** Phases nest (gossip inside a RelaySGD update, class-statistics exchange
  inside the CCL loss): the time of an inner phase is subtracted from the enclosing one, so the
  phases of an epoch add up to the time spent inside any phase, never more.
* **CUDA.** Kernels run asynchronously; without a synchronisation the time of a phase would be
  charged to whichever later phase first waits for the GPU. On CUDA the timer synchronises at
  every phase boundary. That costs a little throughput, which is why a timer can be disabled
  (``PhaseTimer(enabled=False)``): ``phase()`` then returns one shared no-op context manager.
* **Cheap.** On a CPU a phase boundary is one ``perf_counter`` call and a dict update.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import torch

PHASES: tuple[str, ...] = (
    "data", "forward_backward", "cross_features", "communication", "update", "evaluation"
)
_NULL = nullcontext()
_END = object()
T = TypeVar("T")


class _Phase(AbstractContextManager):
    __slots__ = ("timer", "name", "start", "inner")

    def __init__(self, timer: PhaseTimer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> _Phase:
        timer = self.timer
        timer._sync()
        self.inner = 0.0
        timer._stack.append(self)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        timer = self.timer
        timer._sync()
        elapsed = time.perf_counter() - self.start
        timer._stack.pop()
        timer.totals[self.name] = timer.totals.get(self.name, 0.0) + elapsed - self.inner
        if timer._stack:
            timer._stack[-1].inner += elapsed


class PhaseTimer:
    """Accumulates exclusive seconds per named phase; ``with timer.phase("update"): ...``."""

    def __init__(self, device: torch.device | str | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.cuda = torch.device(device).type == "cuda" if device is not None else False
        self.device = device
        self.totals: dict[str, float] = {}
        self._stack: list[_Phase] = []

    def phase(self, name: str) -> AbstractContextManager:
        """A context manager that charges its (exclusive) wall time to ``name``."""
        if not self.enabled:
            return _NULL
        return _Phase(self, name)

    def reset(self) -> dict[str, float]:
        """Return the totals so far (every phase of ``PHASES`` present) and start from zero."""
        totals = {name: self.totals.get(name, 0.0) for name in PHASES}
        totals.update(self.totals)
        self.totals = {}
        return totals

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def timed(iterable: Iterable[T], timer: PhaseTimer, name: str = "data") -> Iterator[T]:
    """Iterate ``iterable`` charging the time spent producing each item to phase ``name``.

    Batches are produced lazily by a generator, so the data time is the time inside ``next``.
    """
    iterator = iter(iterable)
    while True:
        with timer.phase(name):
            item = next(iterator, _END)
        if item is _END:
            return
        yield item
