"""Per-phase wall-clock accounting of a run: where an epoch's time goes.

Every run records, per epoch, the seconds spent in each phase (``PHASES``) in ``metrics.json``, so
the workflow's overhead table is built from real runs rather than from a separate benchmark.

Design points:

* **Exclusive time.** Phases nest (gossip inside a RelaySGD update, class-statistics exchange
  inside the CCL loss): the time of an inner phase is subtracted from the enclosing one, so the
  phases of an epoch add up to the time spent inside any phase, never more.
* **CUDA: events, never a synchronisation per phase.** Kernels run asynchronously, so host time
  at a phase boundary says little about where the device spends its time. On CUDA a boundary
  records a CUDA event on the current stream (no wait); the elapsed times are read once, when the
  totals are asked for (``reset()`` at the end of an epoch: one synchronisation per epoch). An
  event completes when the device reaches it, so a phase is charged the device time between its
  boundaries: when the GPU keeps up (launch-bound, e.g. a small model), that is the host time of
  the phase; when it lags, it is the GPU work queued in the phase. A timer can also be disabled
  (``PhaseTimer(enabled=False)``): ``phase()`` then returns one shared no-op context manager.
* **Cheap.** On a CPU a phase boundary is one ``perf_counter`` call and a dict update.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import torch

PHASES: tuple[str, ...] = (
    "data", "forward_backward", "cross_features", "communication", "update", "evaluation"
)
DRAIN_AT = 4096  # CUDA: pending spans above which finished ones are read (memory stays bounded)
_NULL = nullcontext()
_END = object()
T = TypeVar("T")


class _Phase(AbstractContextManager):
    """One timed span: its start and end marks and the spans of the phases directly inside it."""

    __slots__ = ("timer", "name", "start", "end", "children")

    def __init__(self, timer: PhaseTimer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> _Phase:
        timer = self.timer
        self.children: list[_Phase] = []
        timer._stack.append(self)
        self.start = timer._mark()
        return self

    def __exit__(self, *exc: Any) -> None:
        timer = self.timer
        self.end = timer._mark()
        timer._stack.pop()
        if timer._stack:
            timer._stack[-1].children.append(self)
        if timer.cuda:
            timer._pending.append(self)  # events: read when the totals are asked for
            if len(timer._pending) >= DRAIN_AT and not timer._stack:
                timer._drain(wait=False)  # a long epoch: read the events already reached
        else:
            timer._charge(self, lambda a, b: b - a)


class PhaseTimer:
    """Accumulates exclusive seconds per named phase; ``with timer.phase("update"): ...``."""

    def __init__(self, device: torch.device | str | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.cuda = torch.device(device).type == "cuda" if device is not None else False
        self.device = device
        self._totals: dict[str, float] = {}
        self._stack: list[_Phase] = []
        self._pending: list[_Phase] = []  # CUDA: closed phases whose events are not read yet

    @property
    def totals(self) -> dict[str, float]:
        """Exclusive seconds per phase so far (on CUDA: waits for the recorded events)."""
        self._drain(wait=True)
        return self._totals

    def phase(self, name: str) -> AbstractContextManager:
        """A context manager that charges its (exclusive) wall time to ``name``."""
        if not self.enabled:
            return _NULL
        return _Phase(self, name)

    def reset(self) -> dict[str, float]:
        """Return the totals so far (every phase of ``PHASES`` present) and start from zero."""
        totals = {name: self.totals.get(name, 0.0) for name in PHASES}
        totals.update(self._totals)
        self._totals = {}
        return totals

    def _drain(self, wait: bool) -> None:
        """Charge the pending CUDA spans: all of them (``wait``: one synchronisation), or only
        those whose events the device has already reached (no wait)."""
        if not self._pending:
            return
        if wait:
            self._pending[-1].end.synchronize()  # events complete in stream order: the last one
            done = len(self._pending)
        else:
            done = next((k for k, span in enumerate(self._pending) if not span.end.query()),
                        len(self._pending))
        for span in self._pending[:done]:
            self._charge(span, lambda a, b: a.elapsed_time(b) / 1000.0)
        del self._pending[:done]

    def _mark(self) -> Any:
        """Now: a ``perf_counter`` reading, or on CUDA an event recorded on the current stream."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def _charge(self, span: _Phase, seconds: Callable[[Any, Any], float]) -> None:
        """Add ``span``'s exclusive time (its own minus its direct children's) to its phase."""
        inner = sum(seconds(child.start, child.end) for child in span.children)
        own = seconds(span.start, span.end) - inner
        self._totals[span.name] = self._totals.get(span.name, 0.0) + own


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
