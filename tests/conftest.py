"""Fixtures shared by several test files."""

from __future__ import annotations

import socket
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
