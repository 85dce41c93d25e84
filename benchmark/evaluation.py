"""Test accuracy of models on one split, computed one way for the runs and for kept models.

A run scores its models at every evaluation (:func:`benchmark.train.evaluate`) and a kept model
is scored again later (:func:`benchmark.saved.evaluate`); both call :func:`accuracies`, so the
later score equals the recorded one to the last bit: same batches, same float32 arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .data import Split, eval_batches


@torch.inference_mode()
def accuracies(models: Sequence[nn.Module], split: Split, mean: Sequence[float],
               std: Sequence[float], device: torch.device | str) -> list[float]:
    """Accuracy (%) of each model (in the mode the caller set, eval for a score) on ``split``,
    normalised with ``mean``/``std``, without augmentation. Counts are summed in float32 on the
    device (exact below 2^24 samples) and divided there, as the runs' ``metrics.json`` have
    always been computed."""
    correct = torch.zeros(len(models), device=device)
    total = 0
    for x, y in eval_batches(split, mean, std, device=device):
        for k, model in enumerate(models):
            correct[k] += (model(x)[1].argmax(dim=1) == y).sum()
        total += len(y)
    return (correct / total * 100).tolist()
