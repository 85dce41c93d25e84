"""CCL safety options (METHOD.md section 4.2, not the paper's): gradient clipping, lambda ramp."""

from __future__ import annotations

import pytest
import torch

from benchmark.config import RunConfig, build_config
from benchmark.swarm import Swarm, clip_rows_
from benchmark.topology import build_topology
from benchmark.train import build_experiment, train_epoch


def test_clip_rows_by_hand():
    grads = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])  # norms 5, 0.5, 0
    clip_rows_(grads, 1.0)
    scale = 1.0 / (5.0 + 1e-6)
    torch.testing.assert_close(grads, torch.tensor([[3 * scale, 4 * scale], [0.3, 0.4],
                                                    [0.0, 0.0]]))


def test_each_agents_step_is_clipped_to_the_norm():
    """Momentum 0, no weight decay, lr 1, agents in agreement: the step of agent i is -g_i, so
    its norm is min(||g_i||, c) and its direction that of the unclipped run."""
    def step(clip):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        wrapped = _FeaturesLogits(model)
        swarm = Swarm(wrapped, build_topology("ring", 4), lr=1.0, momentum=0.0,
                      weight_decay=0.0, device="cpu", clip_grad_norm=clip)
        before = swarm.params.clone()
        g = torch.Generator().manual_seed(1)
        swarm.step(torch.randn(4, 5, 4, generator=g), torch.randint(0, 3, (4, 5), generator=g))
        return swarm.params - before

    free, clipped = step(None), step(0.05)
    norms = free.norm(dim=1)
    assert float(norms.min()) > 0.05  # every agent's gradient is clipped
    torch.testing.assert_close(clipped.norm(dim=1), torch.full((4,), 0.05), rtol=1e-4, atol=0)
    torch.testing.assert_close(clipped, free * (0.05 / (norms + 1e-6))[:, None])


class _FeaturesLogits(torch.nn.Module):
    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        out = self.body(x)
        return out, out


def test_lambda_warmup_ramps_both_weights_linearly_per_epoch():
    config = RunConfig(lambda_warmup_epochs=3)
    assert [config.lambda_scale_at(e) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert RunConfig().lambda_scale_at(0) == 1.0  # off by default


def test_train_epoch_applies_the_ramp_to_the_ccl_weights():
    synthetic = {"num_classes": 4, "train_size": 64, "test_size": 16, "channels": 1,
                 "image_size": 4}
    config = build_config({"dataset": "synthetic", "synthetic": synthetic, "model": "mlp",
                           "n_agents": 4, "epochs": 3, "batch_size": 16, "method": "ccl",
                           "lambda_m": 0.2, "lambda_d": 0.4, "lambda_warmup_epochs": 4,
                           "tracking": False, "device": "cpu", "threads": 1})
    exp = build_experiment(config)
    cross = exp.swarm.cross_features
    for epoch in range(2):
        train_epoch(exp, epoch)
        scale = (epoch + 1) / 5
        assert (cross.lambda_m, cross.lambda_d) == pytest.approx((0.2 * scale, 0.4 * scale))


def test_safety_options_are_validated():
    from benchmark.errors import ConfigError

    with pytest.raises(ConfigError, match="clip_grad_norm"):
        build_config({"clip_grad_norm": 0})
    with pytest.raises(ConfigError, match="lambda_warmup_epochs"):
        build_config({"lambda_warmup_epochs": -1})
