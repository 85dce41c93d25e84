"""The layers of the small models, for ``k`` models at once ("rows": one model per leading index).

Why: a swarm of a small model on a CPU spends its time in per-call overheads, not arithmetic. A
16-agent MNIST-1D step computes about 8 million multiply-adds, yet one ``nn.Conv1d`` call costs
~0.1 ms forward and ~0.5 ms backward whatever its size (oneDNN's set-up), and the per-agent loop
makes 16 x 3 of each. Written as batched matrix products over the agents, the same numbers cost a
few large calls instead (``benchmarks/r8_small_models.py`` measures it). A model that offers
``forward_rows(params, xs)`` built from these functions is run that way by the vectorised
forward/backward path (:mod:`benchmark.forward_backward`), on a CPU as well as on a GPU.

Shapes: ``x`` is ``[k, B, ...]`` (model ``r`` sees ``x[r]``), every parameter ``[k, ...]`` (the
shape of one model's parameter behind a leading ``k``). The results equal the per-model layers
(``nn.Linear``, ``nn.Conv1d``) up to float rounding.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``nn.Linear`` of ``k`` models: ``x [k, B, I]``, ``weight [k, O, I]``, ``bias [k, O]``."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


@lru_cache(maxsize=64)
def _selection(length: int, kernel: int, stride: int, padding: int, device: torch.device,
               dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """The 0/1 matrix ``S [Lo * K, L]`` whose row ``(o, t)`` picks input position
    ``o * stride + t - padding`` (all zero where that falls in the padding), and ``Lo``."""
    out = (length + 2 * padding - kernel) // stride + 1
    rows = torch.arange(out * kernel)
    source = (rows // kernel) * stride + rows % kernel - padding
    inside = (source >= 0) & (source < length)
    select = torch.zeros(out * kernel, length, dtype=dtype)
    select[rows[inside], source[inside]] = 1
    return select.to(device), out


def conv1d_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int,
                padding: int) -> torch.Tensor:
    """``nn.Conv1d`` of ``k`` models on channels-last signals: ``x [k, B, L, C]``,
    ``weight [k, O, C, K]`` (``nn.Conv1d``'s layout), ``bias [k, O]`` -> ``[k, B, Lo, O]``.

    Two matrix products: the selection matrix gathers every output position's ``K`` input
    positions (im2col, zero padding included), then each model's ``[K * C, O]`` weight maps them
    to its outputs. Channels-last keeps both products free of transposes between layers. A
    one-channel input (the signal itself) is gathered as a strided view instead: there the
    product would be ``B`` matrix-vector products per model, 17% of a MNIST-1D step, while
    the input needs no gradient (benchmarks/r8_small_models.py).
    """
    k, batch, length, channels = x.shape
    out_channels, kernel = weight.shape[1], weight.shape[3]
    if channels == 1:
        windows = F.pad(x, (0, 0, padding, padding)).unfold(2, kernel, stride)  # [k, B, Lo, 1, K]
        out = windows.shape[2]
        columns = windows.reshape(k, batch * out, kernel)
    else:
        select, out = _selection(length, kernel, stride, padding, x.device, x.dtype)
        columns = torch.matmul(select, x).reshape(k, batch * out, kernel * channels)  # (b, o)
    taps = weight.permute(0, 3, 2, 1).reshape(k, kernel * channels, out_channels)  # (t, c) rows
    return torch.baddbmm(bias.unsqueeze(1), columns, taps).view(k, batch, out, out_channels)
