"""How every agent's forward/backward runs: one after the other, on worker threads, or in one
vectorised pass. One object per swarm, chosen once (``choose``); all give the same gradients.

Each pass computes, for every agent ``i``, ``CE(model_i(x_i), y_i)`` plus the CCL loss when there
is one, backpropagates it into row ``i`` of the state's ``grads`` (zeroed by the caller), and
returns the sum of the agents' cross-entropies.

* :class:`LoopPass`: ordinary modules whose parameters view rows of ``params`` (any model).
* :class:`ThreadedPass`: the loop over ``agent_threads`` worker threads (a CPU option).
* :class:`VmapPass`: ``torch.func.vmap`` over the stacked parameters (models without buffers;
  what a GPU needs). It also offers CCL one vectorised pass for every cross-feature edge.
* :class:`AutoPass`: ``vectorize: auto`` on CUDA times the loop and vmap on the first batch and
  keeps the faster (:meth:`settle`).
"""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .config import VECTORIZE
from .errors import ConfigError
from .swarm_state import SwarmState

if TYPE_CHECKING:
    from .algorithms.ccl import CrossFeatureLoss, RowsForward


class LoopPass:
    """One agent after the other."""

    name = "loop"
    rows_forward: RowsForward | None = None  # CCL's cross-feature passes stay per sender model

    def __init__(self, state: SwarmState, reason: str) -> None:
        self.state, self.reason = state, reason

    def settle(self, xs: torch.Tensor, ys: torch.Tensor) -> LoopPass:
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
        self.rows_forward = self.forward_rows

    def __call__(self, xs, ys, cross: CrossFeatureLoss | None) -> torch.Tensor:
        n = len(self.state.models)
        features, logits = self.forward_rows(self._stacked, xs)
        ce = F.cross_entropy(logits.flatten(0, 1), ys.flatten(), reduction="none")
        ce = ce.view(n, -1).mean(dim=1)
        loss = ce.sum()
        if cross is not None:
            loss = loss + sum(cross.loss(i, features[i], ys[i]) for i in range(n))
        loss.backward()
        return ce.detach().sum()

    def forward_rows(self, rows: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(features, logits)`` of model ``rows[k]`` on batch ``xs[k]`` for every k, at once.

        ``rows`` is ``[k, P]`` stacked parameter vectors (agents' rows, or any gathered rows, e.g.
        the senders of CCL's cross-feature passes); only for models without buffers.
        """
        k = rows.shape[0]
        pieces = rows.split(self._sizes, dim=1)
        params = {name: piece.view(k, *shape) for name, piece, shape in
                  zip(self._names, pieces, self._shapes, strict=True)}
        return torch.func.vmap(self._functional_forward)(params, xs)

    def _functional_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor):
        return torch.func.functional_call(self.state.template, params, (x,))


class AutoPass(LoopPass):
    """``auto`` on CUDA: undecided until the first batch, then the faster of loop and vmap."""

    name = "auto"

    def __init__(self, state: SwarmState, loop: LoopPass) -> None:
        super().__init__(state, "auto on CUDA: measured on the first batch")
        self.loop = loop

    def settle(self, xs: torch.Tensor, ys: torch.Tensor) -> LoopPass:
        """Time both paths on ``xs`` (cross-entropy only) and return the faster. The gradients
        computed here are discarded (``grads`` is zeroed before use)."""
        device = self.state.device
        candidates = {"loop": self.loop, "vmap": VmapPass(self.state, "")}
        times = {}
        for path, run in candidates.items():
            samples = []
            for _ in range(3):  # the first call warms up (cuDNN autotuning, allocator)
                torch.cuda.synchronize(device)
                start = time.perf_counter()
                run(xs, ys, None)
                torch.cuda.synchronize(device)
                samples.append(time.perf_counter() - start)
            times[path] = min(samples[1:])
        choice = min(times, key=times.get)
        chosen = candidates[choice]
        chosen.reason = (f"auto on CUDA: {choice} (measured loop {times['loop'] * 1e3:.1f} ms, "
                         f"vmap {times['vmap'] * 1e3:.1f} ms per forward/backward)")
        return chosen


def choose(state: SwarmState, vectorize: str = "auto", agent_threads: int = 1) -> LoopPass:
    """The pass for ``vectorize`` (loop, vmap or auto) and ``agent_threads``, with its reason.

    Buffers (BatchNorm running statistics) are updated in place by each agent's forward, which
    vmap cannot batch; such models keep the loop. On a CPU the loop is as fast as the arithmetic
    allows (R1 in benchmarks/), so ``auto`` only considers vmap on CUDA.
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
        return loop("auto on a CPU: loop (vmap brings no speed-up there)")
    if vectorize == "auto":
        return AutoPass(state, loop(""))
    if vectorize == "vmap":
        return VmapPass(state, "vmap (as configured)")
    return loop("loop (as configured)")
