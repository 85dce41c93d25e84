"""Fixtures shared by several test files."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest


def _no_network(*args, **kwargs):
    raise OSError("network blocked by the test")


@pytest.fixture(scope="session")
def mnist1d_dir(tmp_path_factory) -> Path:
    """A data_dir holding the MNIST-1D cache, generated once per test session (~3 s) with every
    socket connection refused: generation is offline (tests/test_mnist1d.py checks the digest)."""
    from benchmark.data import mnist1d_loader

    data_dir = tmp_path_factory.mktemp("mnist1d-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket.socket, "connect_ex", _no_network)
        path, generated = mnist1d_loader.ensure(data_dir)
    assert generated and path == data_dir / mnist1d_loader.CACHE
    return data_dir


class _StopAfterEpoch(Exception):
    pass


def _run_until_first_checkpoint(out: Path, options: list[str]) -> None:
    from benchmark.checkpoint import CHECKPOINT, METRICS
    from benchmark.config import load_config
    from benchmark.train import run

    def stop(epoch: int, record: dict) -> None:
        raise _StopAfterEpoch

    with pytest.raises(_StopAfterEpoch):
        run(load_config(None, options), out, on_epoch=stop)
    assert (out / CHECKPOINT).is_file() and not (out / METRICS).exists()


@pytest.fixture
def interrupted_run() -> Callable[[Path, list[str]], None]:
    """``interrupted_run(out, options)``: ``out`` left as a run of ``options`` (``key=value``
    strings) that died after epoch 1, in this process: its checkpoint, no metrics.json."""
    return _run_until_first_checkpoint
