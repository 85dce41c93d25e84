"""The training step never waits for the device, checked without a GPU.

* ``meta`` tensors have shapes but no data: a step that runs on ``device="meta"`` mixes no
  devices (as CUDA forbids) and cannot read a value back (a hidden host sync fails there).
* A dispatch-mode counter (benchmark/opcount.py) sees every aten op of a CPU step: no scalar
  read (``.item()``, ``float(t)``) and no data-dependent op (``nonzero``) inside ``Swarm.step``,
  for every preset and both forward/backward paths; the training loop reads its statistics back
  once every ``CHECK_EVERY`` iterations only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark import train
from benchmark.config import build_config
from benchmark.data import AgentBatches
from benchmark.data.registry import Split
from benchmark.methods import METHODS, resolve_method
from benchmark.models import build_model
from benchmark.opcount import OpCounter
from benchmark.swarm import Swarm
from benchmark.topology import build_topology

PATHS = ("loop", "vmap")


def _swarm(method: str, vectorize: str, device: str, model: str = "mlp", norm=None, n: int = 4):
    algorithm, ccl = resolve_method(method, 0.1, 0.1)
    torch.manual_seed(0)
    net = build_model(model, num_classes=10, in_channels=3, image_size=32, norm=norm)
    return Swarm(net, build_topology("ring", n), algorithm=algorithm, ccl=ccl, lr=0.1,
                 device=device, vectorize=vectorize, log_cross_features=True)


def _batch(device: str, n: int = 4, b: int = 2):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n, b, 3, 32, 32, generator=g).to(device)
    ys = torch.randint(0, 10, (n, b), generator=g).to(device)
    return xs, ys


@pytest.mark.parametrize("vectorize", PATHS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_preset_steps_on_meta(method, vectorize):
    swarm = _swarm(method, vectorize, "meta", model="resnet20")
    xs, ys = _batch("meta")
    for _ in range(2):  # the second iteration uses what the first left (momentum, messages)
        stats = swarm.step(xs, ys)
    assert stats and all(v.device.type == "meta" for v in stats.values())
    assert swarm.params.device.type == "meta"


def test_ccl_on_a_batchnorm_model_steps_on_meta():
    """The per-edge passes that load each receiver's BatchNorm buffers (loop path only)."""
    swarm = _swarm("ccl", "loop", "meta", model="resnet20", norm="batchnorm")
    xs, ys = _batch("meta")
    swarm.step(xs, ys)
    assert swarm.step(xs, ys)["l_mv"].device.type == "meta"


@pytest.mark.parametrize("augment", ["cifar", "imagenette", "none"])
def test_batch_source_on_meta_uploads_per_epoch_not_per_batch(augment):
    x = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    parts = [np.arange(k, 48, 4) for k in range(4)]  # 12 images per agent: 3 batches of 4
    batches = AgentBatches(Split(x, torch.arange(48) % 10), parts, 4, augment, (0.5,) * 3,
                           (0.25,) * 3, seed=0, device="meta")
    with OpCounter() as ops:
        out = list(batches.epoch(0))
    assert len(out) == 3 and all(xs.device.type == "meta" for xs, _ in out)
    assert out[0][0].shape == (4, 4, 3, 32, 32) and out[0][1].shape == (4, 4)
    # the epoch's order, and (when augmenting) the epoch's augmentation draws: nothing per batch
    assert ops.transfers == (1 if augment == "none" else 2) and ops.syncs == 0


@pytest.mark.parametrize("vectorize", PATHS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_step_reads_nothing_back_from_the_device(method, vectorize):
    swarm = _swarm(method, vectorize, "cpu")
    xs, ys = _batch("cpu")
    swarm.step(xs, ys)  # lazy set-up (CCL's eval-mode copies, edge lists) happens once, here
    with OpCounter() as ops:
        swarm.step(xs, ys)
    assert ops.total > 0
    assert ops.scalar_reads == 0 and ops.ops["nonzero"] == 0 and ops.data_dependent == 0, ops.ops


def test_training_loop_reads_statistics_every_k_iterations(monkeypatch):
    monkeypatch.setattr(train, "CHECK_EVERY", 2)
    config = build_config({"dataset": "synthetic", "model": "mlp", "n_agents": 4,
                           "batch_size": 4, "partition": "iid", "method": "ccl",
                           "device": "cpu", "tracking": False, "threads": 1,
                           "synthetic": {"train_size": 80, "test_size": 8}})
    exp = train.build_experiment(config)
    train.train_epoch(exp, 0)
    with OpCounter() as ops:
        record = train.train_epoch(exp, 1)
    assert exp.batches.iterations_per_epoch == 5
    assert ops.scalar_reads == 5 // 2 and ops.data_dependent == 0  # at iterations 2 and 4
    assert {"train_ce", "l_mv", "l_dv"} <= set(record)
