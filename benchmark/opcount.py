"""Count what a piece of PyTorch code asks of the device: aten ops, host syncs, transfers.

A GPU step is fast when it launches few kernels and never waits for the device. Both can be
checked on a machine without a GPU: every aten op passes through the dispatcher, where a
``TorchDispatchMode`` sees it. Host synchronisations show up as the ops that read device data on
the host: ``aten._local_scalar_dense`` (behind ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``)
and ops whose output shape depends on the data (``nonzero``, ``masked_select``, ``unique``...,
which must copy a count back before they can allocate). Copies between two devices (a CPU tensor
uploaded to the GPU, or to ``meta`` in a test) are counted as transfers.

    with OpCounter() as ops:
        swarm.step(xs, ys)
    ops.total, ops.scalar_reads, ops.data_dependent, ops.transfers

Used by tests/test_device.py (no scalar read, no ``nonzero`` inside ``Swarm.step``) and by
benchmarks/r7_dispatch.py (op and sync counts per iteration).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

SCALAR_READS = frozenset({aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal})
# output shape depends on the values: the host must learn a count from the device first
DATA_DEPENDENT = frozenset({
    aten.nonzero, aten.argwhere, aten.masked_select, aten.unique_consecutive, aten._unique2,
    aten._unique, aten.unique_dim, aten.repeat_interleave, aten.bincount, aten.histc,
})
COPIES = frozenset({aten._to_copy, aten.copy_, aten._copy_from, aten._copy_from_and_resize})


def _device(value: Any) -> torch.device | None:
    return value.device if isinstance(value, torch.Tensor) else None


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside the ``with`` block (by overload packet name)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.scalar_reads = 0
        self.data_dependent = 0
        self.transfers = 0

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def syncs(self) -> int:
        """Host synchronisations the ops imply on a GPU (scalar reads + data-dependent shapes)."""
        return self.scalar_reads + self.data_dependent

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        self.ops[packet.__name__] += 1
        if packet in SCALAR_READS:
            self.scalar_reads += 1
        elif packet in DATA_DEPENDENT:
            self.data_dependent += 1
        elif packet in COPIES:
            self._count_transfer(packet, args, kwargs)
        return func(*args, **kwargs)

    def _count_transfer(self, packet, args: tuple, kwargs: dict) -> None:
        if packet is aten._to_copy:  # x.to(device): source in args, target in kwargs
            source, target = _device(args[0]), kwargs.get("device")
        else:  # dst.copy_(src) and friends: (dst, src) or (src, dst)
            devices = [_device(a) for a in args[:2]]
            source, target = devices[0], devices[1] if len(devices) > 1 else None
        if source is not None and target is not None and torch.device(target) != source:
            self.transfers += 1
