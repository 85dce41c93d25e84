"""A run's peak device memory: estimated before it starts (and refused if it cannot fit), measured
after (``metrics.json`` ``memory`` block: ``estimated_bytes``, ``peak_bytes``).

The estimate adds what the run holds on its device at its worst moment:

* **state**: the stacked ``[n, P]`` parameters, gradients and pre-gossip copy, plus the
  algorithm's own state as it declares it on the run's graph (``state_shapes``: momentum
  ``n P``, RelaySGD's messages ``E (P + 1)``...), plus one transient of the update (gossip's
  ``W X``, relayed messages): twice the larger of ``n P`` and the algorithm's extra state;
* **activations** of the forward/backward: the tensors autograd saves, per sample, measured with
  ``saved_tensors_hooks`` on a 2-sample CPU forward of the run's model (plus a transient: the
  largest activation twice over for the gradients in flight, or on a CPU a convolution's output
  in oneDNN's blocked layout beside torch's), times the per-agent batch, times ``n``
  on the vmap path (all agents at once) or 1 on the loop; CCL's no-grad cross-feature passes
  (a sender's receivers' batches at once, or every edge on vmap, with the gathered rows);
* **batches**: the stacked float batch and its augmentation copy; **data**: the training and
  test sets held on the device (nothing extra on a CPU, where they already live);
* **evaluation**: the consensus model and an inference pass on 1,000 test samples.

Peak = data + state + max(iteration, evaluation). The measured peak is
``torch.cuda.max_memory_allocated`` on CUDA and the process's peak resident set (``VmHWM``) on a
CPU, which also holds Python, torch and the dataset: compare them on CUDA. Tested on CPU against
the resident-set growth of a run (tests/test_memory.py): within 35%.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import UserError

if TYPE_CHECKING:
    from .config import RunConfig
    from .topology import Topology

FLOAT = 4  # bytes: every stacked tensor is float32
EVAL_BATCH = 1000  # samples per evaluation batch (data.loader.eval_batches)
HEADROOM = 0.95  # of a device's share: the CUDA context and allocator rounding need the rest


@dataclass
class Estimate:
    state: int
    iteration: int
    evaluation: int
    data: int

    @property
    def total(self) -> int:
        return self.data + self.state + max(self.iteration, self.evaluation)

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def onednn_block(device: torch.device) -> int:
    """Channels per block of oneDNN's blocked layouts for this CPU (1: none). A convolution on a
    CPU writes its output in that layout, channels rounded up to the block, before the copy back
    to torch's layout: 16 with AVX-512, 8 with AVX2 or AVX (what this torch's kernels use)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available() or \
            not torch.backends.mkldnn.enabled:
        return 1
    capability = torch.backends.cpu.get_cpu_capability()
    return 16 if capability.startswith("AVX512") else 8 if capability.startswith("AVX") else 4


def activation_profile(model: nn.Module, sample_shape: tuple[int, ...],
                       block: int = 1) -> tuple[int, int]:
    """(bytes autograd saves per sample, bytes of the transient peak per sample) of one
    forward/backward, from a 2-sample forward on the CPU (parameters excluded).

    The transient peak is twice the largest activation (one layer's input and output, or its
    output and gradient), or for a convolution with oneDNN's blocked layouts (``block`` > 1,
    :func:`onednn_block`) its output in torch's layout plus its output in the blocked one with
    the channels rounded up: 6 channels of LeNet-5 take 16 on an AVX-512 CPU, 2.7x the plain
    output, and that copy is the peak of a CPU evaluation of 1,000 images."""
    model = _cpu_copy(model)
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}
    peak = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    def track(module, inputs, output) -> None:
        nonlocal peak
        for t in output if isinstance(output, tuple) else (output,):
            size = t.numel() * t.element_size()
            peak = max(peak, 2 * size)
            if block > 1 and isinstance(module, nn.modules.conv._ConvNd) and t.dim() > 2:
                channels = t.shape[1]
                padded = -(-channels // block) * block
                peak = max(peak, size + size * padded // channels)

    hooks = [m.register_forward_hook(track) for m in model.modules()]
    x = torch.rand(2, *sample_shape)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        features, logits = model(x)
    for hook in hooks:
        hook.remove()
    peak = max(peak, 2 * x.numel() * x.element_size())
    return sum(saved.values()) // 2, peak // 2


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy

    model = copy.deepcopy(model).cpu().train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def algorithm_state_floats(config: RunConfig, topology: Topology, n_params: int
                           ) -> tuple[int, int]:
    """(floats of the algorithm's own state, of its momentum) for ``n_params`` parameters, as
    the algorithm declares them (``state_shapes``: what its checkpoint holds)."""
    shapes = config.algorithm_class.state_shapes(topology, n_params, config.algorithm_options)
    floats = {key: math.prod(shape) for key, shape in shapes.items()}
    return sum(floats.values()), floats.get("momentum", 0)


def estimate(config: RunConfig, model: nn.Module, bundle, device: torch.device,
             topology: Topology | None = None) -> Estimate:
    """Peak bytes of a run of ``config`` with ``model`` on ``bundle``'s data (module doc), on
    the run's graph (``config.graph()`` unless given). Leaves torch's random state as it found
    it: the run's numbers do not depend on the check."""
    with torch.random.fork_rng(devices=[]):
        return _estimate(config, model, bundle, device, topology or config.graph())


def _estimate(config: RunConfig, model: nn.Module, bundle, device: torch.device,
              topology: Topology) -> Estimate:
    n, b = config.n_agents, config.batch_size
    vectorize = config.vectorize
    if vectorize == "auto":  # CUDA may pick vmap, the hungrier path: count that one (on a
        # CPU, auto is vmap for a model with its own stacked forward: forward_backward.choose)
        from .forward_backward import stacked_forward

        has_buffers = any(True for _ in model.buffers())
        wants = device.type == "cuda" or stacked_forward(model) is not None
        vectorize = "vmap" if wants and not has_buffers else "loop"
    n_params = sum(p.numel() for p in model.parameters())
    saved, transient = activation_profile(model, bundle.sample_shape, onednn_block(device))
    algo, momentum = algorithm_state_floats(config, topology, n_params)
    rows = 3 * n * n_params + algo  # params, grads, pre-gossip copy + the algorithm's state
    update = 2 * max(n * n_params, algo - momentum)
    state = FLOAT * (rows + n_params)  # + the template model
    step = (saved + transient) * b * (n if vectorize == "vmap" else 1)
    sample = math.prod(bundle.sample_shape)  # floats of one input sample
    batches = 2 * FLOAT * n * b * sample
    cross = 0
    if config.ccl or config.log_cross_features:
        edges = sum(len(topology.neighbors(i)) for i in range(n))
        if vectorize == "vmap":  # every edge at once: gathered rows, receivers' batches
            cross = FLOAT * edges * (n_params + b * sample) + transient * edges * b
        else:  # one sender at a time, on all its receivers' batches
            degree = max(len(topology.neighbors(i)) for i in range(n))
            cross = FLOAT * degree * b * sample + transient * degree * b
    iteration = max(FLOAT * update, batches + step + cross)
    images = min(EVAL_BATCH, len(bundle.test))
    evaluation = FLOAT * (n_params + images * sample) + transient * images
    # a CPU run reads the loaded tensors in place; a GPU run holds a copy (lazy splits: none)
    data = 0 if device.type == "cpu" else sum(
        split.x.numel() * split.x.element_size() + split.y.numel() * split.y.element_size()
        for split in (bundle.train, bundle.val, bundle.test)
        if split is not None and split.x is not None)
    return Estimate(state, iteration, evaluation, data)


def capacity(device: torch.device) -> tuple[int, str]:
    """Bytes a run may use on ``device`` (its slot's share of a GPU) and how that was found."""
    from .gpu_slots import slot_share

    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        k = slot_share()
        share = f" / {k} slots" if k > 1 else ""
        return int(total * HEADROOM / k), f"{device} ({_gb(total)} GB{share})"
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages * HEADROOM), f"this machine's memory ({_gb(pages)} GB)"


def check(estimated: Estimate, device: torch.device) -> None:
    """Refuse, in one line, a run that cannot fit its device or its slot's share."""
    limit, where = capacity(device)
    if estimated.total > limit:
        raise UserError(
            f"memory: this run needs about {_gb(estimated.total)} GB (estimate: state "
            f"{_gb(estimated.state)}, iteration {_gb(estimated.iteration)}, evaluation "
            f"{_gb(estimated.evaluation)}, data {_gb(estimated.data)} GB) but may use "
            f"{_gb(limit)} GB of {where}; use fewer gpu_slots_per_device, agents or batch_size "
            f"(or memory_check: false to run anyway)")


def peak_bytes(device: torch.device) -> int:
    """What the run used at its peak: CUDA's allocator high-water mark, else the peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    unit = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"
