"""Per-phase accounting: exclusive nesting, the disabled no-op, and ``phases`` in metrics.json.

The accounting is checked against a fake clock (no test measures real time); the end-to-end
test checks invariants of the recorded phases, never their size.
"""

from __future__ import annotations

import itertools

import pytest

from benchmark import timing
from benchmark.config import load_config
from benchmark.timing import PHASES, PhaseTimer, timed
from benchmark.train import run


@pytest.fixture
def clock(monkeypatch):
    """``perf_counter`` returns 0, 1, 2, ...: each call advances the clock by one second."""
    ticks = itertools.count()
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(ticks)))


def test_nested_phases_are_exclusive(clock):
    timer = PhaseTimer("cpu")
    with timer.phase("update"):           # enter at t=0
        with timer.phase("communication"):  # 1 .. 2: one second
            pass
        with timer.phase("communication"):  # 3 .. 4
            pass
    # exit at t=5: update spans 5 s, of which 2 s are communication
    totals = timer.reset()
    assert totals["update"] == 3.0 and totals["communication"] == 2.0
    assert set(PHASES) <= set(totals) and totals["data"] == 0.0
    assert timer.reset() == dict.fromkeys(PHASES, 0.0)  # reset starts from zero


def test_timed_charges_only_the_production_of_items(clock):
    timer = PhaseTimer("cpu")
    seen = []
    for item in timed(iter("ab"), timer, "data"):  # next() inside [0,1], [2,3], end [4,5]
        seen.append(item)
    assert seen == ["a", "b"] and timer.totals == {"data": 3.0}


def test_disabled_timer_records_nothing():
    timer = PhaseTimer("cpu", enabled=False)
    with timer.phase("update"):
        pass
    assert timer.phase("data") is timer.phase("update")  # one shared no-op context
    assert timer.totals == {}


def test_every_epoch_records_its_phases(tmp_path):
    config = load_config(None, [
        "dataset=digits", "model=mlp", "image_size=8", "n_agents=4", "epochs=2", "batch_size=16",
        "eval_every=2", "method=ccl", "lambda_m=0.01", "lambda_d=0.01", "tracking=false",
        "threads=1", "device=cpu",
    ])
    history = run(config, tmp_path).history
    for record in history:
        phases = record.phases
        assert set(phases) == set(PHASES)
        assert all(v >= 0 for v in phases.values())
        for busy in ("data", "forward_backward", "cross_features", "communication", "update"):
            assert phases[busy] > 0, busy
        assert sum(phases.values()) <= record.time_s  # exclusive: nothing counted twice
    assert history[0].phases["evaluation"] == 0  # eval_every=2: no evaluation in epoch 1
    assert history[1].phases["evaluation"] > 0


class _Event:
    """A stand-in ``torch.cuda.Event`` whose record time comes from the fake clock."""

    log: list[str] = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing

    def record(self, stream=None) -> None:
        self.t = timing.time.perf_counter()

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        _Event.log.append("event.synchronize")

    def elapsed_time(self, end: _Event) -> float:
        return (end.t - self.t) * 1000.0  # milliseconds, as CUDA reports them


def test_cuda_timer_records_events_and_waits_once_per_reset(clock, monkeypatch):
    """On CUDA a phase boundary records an event and never synchronises; the totals wait once."""
    _Event.log = []
    monkeypatch.setattr(timing.torch.cuda, "Event", _Event)
    monkeypatch.setattr(timing.torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(timing.torch.cuda, "synchronize",
                        lambda device=None: _Event.log.append("cuda.synchronize"))
    timer = PhaseTimer("cuda")
    for _ in range(3):  # three iterations of nested phases: nothing waits for the device
        with timer.phase("update"):
            with timer.phase("communication"):
                pass
    assert _Event.log == [] and len(timer._pending) == 6
    totals = timer.reset()  # the same exclusive accounting as with perf_counter
    assert _Event.log == ["event.synchronize"]
    assert totals["update"] == 3 * 2.0 and totals["communication"] == 3 * 1.0
    assert timer.reset() == dict.fromkeys(PHASES, 0.0) and _Event.log == ["event.synchronize"]


def test_cuda_timer_drains_reached_events_of_a_long_epoch(clock, monkeypatch):
    monkeypatch.setattr(timing.torch.cuda, "Event", _Event)
    monkeypatch.setattr(timing.torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(timing, "DRAIN_AT", 4)
    timer = PhaseTimer("cuda")
    for _ in range(5):
        with timer.phase("data"):
            pass
    assert len(timer._pending) == 1  # drained at 4 without waiting; the fifth still pending
    assert timer.reset()["data"] == 5.0
