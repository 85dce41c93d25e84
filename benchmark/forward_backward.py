"""How every agent's forward/backward runs: one after the other, on worker threads, or in one
vectorised pass. One object per swarm, chosen once (``choose``); all give the same gradients.

Each pass computes, for every agent ``i``, ``CE(model_i(x_i), y_i)`` plus the CCL loss when there
is one, backpropagates it into row ``i`` of the state's ``grads`` (zeroed by the caller), and
returns the sum of the agents' cross-entropies.

* :class:`LoopPass`: ordinary modules whose parameters view rows of ``params`` (any model).
* :class:`ThreadedPass`: the loop over ``agent_threads`` worker threads (a CPU option).
* :class:`VmapPass`: ``torch.func.vmap`` over the stacked parameters (models without buffers;
  what a GPU needs). It also offers CCL one vectorised pass for every cross-feature edge.
* :class:`AutoPass`: ``vectorize: auto`` on CUDA measures the loop and vmap on the first batch,
  as the step runs them (CCL included), and keeps vmap unless the loop is clearly faster
  (:meth:`AutoPass.settle`). The choice is kept in the checkpoint: a resumed run does not
  measure again, so it cannot switch path (:meth:`AutoPass.adopt`).
"""

from __future__ import annotations

import statistics
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .config import VECTORIZE
from .errors import ConfigError
from .swarm_state import SwarmState

if TYPE_CHECKING:
    from .algorithms.ccl import CrossFeatureLoss, RowsForward

AUTO_WARMUP, AUTO_ROUNDS = 2, 5  # untimed calls of each path, then alternating timed rounds
LOOP_MARGIN = 0.9  # auto keeps vmap unless the loop's median is below 0.9x vmap's


class LoopPass:
    """One agent after the other."""

    name = "loop"
    rows_forward: RowsForward | None = None  # CCL's cross-feature passes stay per sender model

    def __init__(self, state: SwarmState, reason: str) -> None:
        self.state, self.reason = state, reason

    def settle(self, xs: torch.Tensor, ys: torch.Tensor,
               cross: CrossFeatureLoss | None = None) -> LoopPass:
        """The pass to use from now on (itself; :class:`AutoPass` decides here)."""
        return self

    def __call__(self, xs, ys, cross: CrossFeatureLoss | None) -> torch.Tensor:
        ce_sum = torch.zeros((), device=self.state.device)
        for i, agent_model in enumerate(self.state.models):
            features, logits = agent_model(xs[i])
            ce = F.cross_entropy(logits, ys[i])
            loss = ce if cross is None else ce + cross.loss(i, features, ys[i])
            loss.backward()
            ce_sum += ce.detach()
        return ce_sum


class ThreadedPass(LoopPass):
    """The loop, with agents spread over ``threads`` worker threads (a CPU option).

    One agent's batch (32 CIFAR images) is too small for a CPU's intra-op threads to share well:
    every op synchronises them. Giving each worker thread whole agents and one intra-op thread
    instead measured about 1.2x faster on 2 cores (benchmarks/r1_overhead.py). Safe because
    agents share nothing in the forward/backward: each accumulates into its own row of
    ``grads``; only CCL's ``loss`` (which sums statistics) is taken one at a time.
    """

    def __init__(self, state: SwarmState, reason: str, threads: int) -> None:
        super().__init__(state, reason)
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None  # started on first use
        self._loss_lock = threading.Lock()

    def __call__(self, xs, ys, cross: CrossFeatureLoss | None) -> torch.Tensor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="agent",
                                            initializer=torch.set_num_threads, initargs=(1,))
            weakref.finalize(self, self._pool.shutdown, wait=False)  # no threads left behind
        models = self.state.models

        def agent(i: int) -> torch.Tensor:
            features, logits = models[i](xs[i])
            ce = F.cross_entropy(logits, ys[i])
            loss = ce
            if cross is not None:
                with self._loss_lock:
                    loss = ce + cross.loss(i, features, ys[i])
            loss.backward()
            return ce.detach()

        return torch.stack(list(self._pool.map(agent, range(len(models))))).sum()


class VmapPass(LoopPass):
    """All agents in one vectorised forward (``torch.func.vmap`` over stacked parameters).

    Agent i's loss depends only on row i, so one backward of the *sum* of the agents' losses
    gives every agent its own gradient, in one pass of a few large kernels instead of ``n``
    passes of many small ones (what a GPU needs; a CPU gains nothing from it). ``split`` +
    ``view`` hand ``functional_call`` views of the rows (no copy); the split's backward is one
    concatenation, accumulated into ``grads`` in place.
    """

    name = "vmap"

    def __init__(self, state: SwarmState, reason: str) -> None:
        super().__init__(state, reason)
        # differentiate w.r.t. one [n, P] leaf that aliases ``params``, with ``grads`` as its
        # .grad: backward then accumulates into ``grads`` in place, like the loop
        self._stacked = state.params.detach().requires_grad_(True)
        self._stacked.grad = state.grads
        named = list(state.template.named_parameters())
        self._names = [name for name, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._sizes = [p.numel() for _, p in named]
        self._own_rows = stacked_forward(state.template)
        self.rows_forward = self.forward_rows

    def __call__(self, xs, ys, cross: CrossFeatureLoss | None) -> torch.Tensor:
        n = len(self.state.models)
        features, logits = self.forward_rows(self._stacked, xs)
        ce = F.cross_entropy(logits.flatten(0, 1), ys.flatten(), reduction="none")
        ce = ce.view(n, -1).mean(dim=1)
        loss = ce.sum()
        if cross is not None:
            loss = loss + cross.loss_all(features, ys)
        loss.backward()
        return ce.detach().sum()

    def forward_rows(self, rows: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(features, logits)`` of model ``rows[k]`` on batch ``xs[k]`` for every k, at once.

        ``rows`` is ``[k, P]`` stacked parameter vectors (agents' rows, or any gathered rows, e.g.
        the senders of CCL's cross-feature passes); only for models without buffers. A model with
        its own stacked forward (``forward_rows``, benchmark/models/rows.py) runs that one: the
        same numbers in a few batched products; any other runs under ``torch.func.vmap``.
        """
        k = rows.shape[0]
        pieces = rows.split(self._sizes, dim=1)
        params = {name: piece.view(k, *shape) for name, piece, shape in
                  zip(self._names, pieces, self._shapes, strict=True)}
        if self._own_rows is not None:
            return self._own_rows(params, xs)
        return torch.func.vmap(self._functional_forward)(params, xs)

    def _functional_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor):
        return torch.func.functional_call(self.state.template, params, (x,))


class AutoPass(LoopPass):
    """``auto`` on CUDA: undecided until the first batch, then vmap unless the loop is faster."""

    name = "auto"

    def __init__(self, state: SwarmState, loop: LoopPass) -> None:
        super().__init__(state, "auto on CUDA: measured on the first batch")
        self.loop = loop
        self.vmap = VmapPass(state, "")

    def settle(self, xs: torch.Tensor, ys: torch.Tensor,
               cross: CrossFeatureLoss | None = None) -> LoopPass:
        """Time both paths on this batch as the step runs them (CCL's cross-feature passes and
        loss included) and return the one to keep.

        ``AUTO_WARMUP`` untimed calls of each (cuDNN autotuning, the allocator, CCL's lazy
        set-up), then ``AUTO_ROUNDS`` rounds that alternate the order (loop first, then vmap
        first, ...) so that drift and other users' load hit both; the medians decide, with a
        margin for vmap (one pass of large kernels, the GPU's strength, and far fewer launches).
        What the calls compute is discarded: the step zeroes ``grads`` and prepares CCL again.
        """
        candidates = {"loop": self.loop, "vmap": self.vmap}

        def run(path: str) -> Callable[[], object]:
            def call() -> object:
                if cross is not None:
                    cross.prepare(xs, ys, candidates[path].rows_forward)
                return candidates[path](xs, ys, cross)
            return call

        samples: dict[str, list[float]] = {path: [] for path in candidates}
        for r in range(AUTO_WARMUP + AUTO_ROUNDS):
            for path in (("loop", "vmap") if r % 2 == 0 else ("vmap", "loop")):
                seconds = self._seconds(run(path))
                if r >= AUTO_WARMUP:
                    samples[path].append(seconds)
        median = {path: statistics.median(values) for path, values in samples.items()}
        choice = "loop" if median["loop"] < LOOP_MARGIN * median["vmap"] else "vmap"
        what = "forward/backward" + (" with CCL" if cross is not None else "")
        reason = (f"auto on CUDA: {choice} (median of {AUTO_ROUNDS} alternating rounds after "
                  f"{AUTO_WARMUP} warm-up calls: loop {median['loop'] * 1e3:.1f} ms, vmap "
                  f"{median['vmap'] * 1e3:.1f} ms per {what}; vmap unless the loop is "
                  f"{1 - LOOP_MARGIN:.0%} faster)")
        comm = self.state.comm
        if comm.distributed:  # every rank measured its own shard; all take rank 0's choice, so
            # one run has one path (and one line in metrics.json), whatever each GPU measured
            choice, reason = comm.all_gather_objects((choice, reason))[0]
            reason = f"rank 0's measurement, taken by all {comm.world_size} ranks: {reason}"
        return self.adopt(choice, reason)

    def adopt(self, path: str, reason: str) -> LoopPass:
        """The pass ``path`` (loop or vmap) with ``reason``: a measured or a checkpointed choice."""
        chosen = self.loop if path == "loop" else self.vmap
        chosen.reason = reason
        return chosen

    def _seconds(self, call: Callable[[], object]) -> float:
        """Wall seconds of ``call`` including its GPU work (one-off: synchronising is fine)."""
        device = self.state.device
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


def stacked_forward(model: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, ...]] | None:
    """The model's own forward of ``k`` copies at once (``forward_rows(params, xs)``), if any."""
    own = getattr(model, "forward_rows", None)
    return own if callable(own) else None


def choose(state: SwarmState, vectorize: str = "auto", agent_threads: int = 1) -> LoopPass:
    """The pass for ``vectorize`` (loop, vmap or auto) and ``agent_threads``, with its reason.

    Buffers (BatchNorm running statistics) are updated in place by each agent's forward, which
    vmap cannot batch; such models keep the loop. On a CPU, ``auto`` is the vectorised pass for a
    model that has its own stacked forward (the small models, whose per-agent calls cost more
    than their arithmetic: 2.7x to 4x faster, benchmarks/r8_small_models.py) and the loop for
    any other (as fast as the arithmetic allows for ResNet-20, R1 in benchmarks/; vmap there was
    1.5x slower). The rule is fixed, not measured, so a CPU run is the same on every rerun.
    """
    if vectorize not in VECTORIZE:
        raise ConfigError("vectorize", vectorize, VECTORIZE)
    if isinstance(agent_threads, bool) or not isinstance(agent_threads, int) or agent_threads < 1:
        raise ConfigError("agent_threads", agent_threads, "an integer >= 1")
    threads = min(agent_threads, len(state.agents))

    def loop(reason: str) -> LoopPass:
        return ThreadedPass(state, reason, threads) if threads > 1 else LoopPass(state, reason)

    if any(True for _ in state.template.buffers()):
        if vectorize == "vmap":
            raise ConfigError("vectorize", vectorize, "loop or auto for a model with buffers",
                              hint="BatchNorm running statistics cannot be updated under vmap")
        return loop("model has buffers (BatchNorm running statistics): loop")
    if vectorize == "auto" and state.device.type != "cuda":
        if stacked_forward(state.template) is not None:
            return VmapPass(state, f"auto on a CPU: vmap ({type(state.template).__name__} has its "
                                   "own stacked forward: a few batched products instead of "
                                   "per-agent calls)")
        return loop("auto on a CPU: loop (vmap brings no speed-up there)")
    if vectorize == "auto":
        return AutoPass(state, loop(""))
    if vectorize == "vmap":
        return VmapPass(state, "vmap (as configured)")
    return loop("loop (as configured)")
