"""One run across processes or GPUs: each rank simulates a contiguous shard of the agents.

Launch::

    torchrun --nproc_per_node K -m benchmark train --config ... --out DIR distributed=true

(multi-node: the usual ``torchrun --nnodes N --node_rank R --rdzv-endpoint HOST:PORT ...``).

Why shards of the *same* :class:`~benchmark.swarm.Swarm`: a swarm already holds its agents as rows
of stacked tensors, so rank ``r`` simply holds rows ``[lo, hi)`` of the ``n`` agents and runs the
unchanged algorithm code on them. The only thing a rank lacks is the rows of *remote neighbours*:
the agents of other ranks that its own agents read (gossip, CCL's cross-features). Those form the
**halo**, exchanged point-to-point (``batch_isend_irecv``), one message per neighbouring rank,
holding exactly the boundary rows the graph needs. A rank's working tensor is then
``[local rows; halo rows]`` and its slice of the mixing matrix has those columns, so gossip is still
one matrix product. CCL's class statistics travel the other way (:meth:`Halo.reduce`): a receiver
computes them for its remote senders and ships them back to their owners.

The single-process path is the :class:`Communicator` base class: ``world_size == 1``, an empty
halo, every collective the identity, so a run without ``distributed=true`` executes exactly the
code it always did. Backends: gloo on the CPU, NCCL on CUDA with rank ``LOCAL_RANK`` on
``cuda:LOCAL_RANK``. Metrics and checkpoints are gathered on rank 0, which alone writes files and
logs to MLflow.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from typing import Any

import torch

from .errors import ConfigError, UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def shard_bounds(n: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` per rank, sizes differing by at most one (the first ranks larger).

    Contiguous shards keep the boundary small on the graphs of the suite (a ring cut into K arcs
    has 2K boundary edges whatever n is), so the halo stays a few rows.
    """
    if world_size > n:
        raise ConfigError("n_agents", n, f"at least the number of processes ({world_size})")
    base, extra = divmod(n, world_size)
    bounds, lo = [], 0
    for r in range(world_size):
        hi = lo + base + (r < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


class Communicator:
    """The whole swarm in this process: no halo, every collective the identity.

    Subclasses talk to other processes; everything the swarm, the algorithms and the run ask of a
    communicator is defined here, so the single-process path is just this class.
    """

    distributed = False
    backend = "none"

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size
        self.bounds = shard_bounds(n, world_size)
        self.lo, self.hi = self.bounds[rank]
        self.bytes_sent = 0  # bytes this process put on the wire (halo messages, not collectives)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, prints and logs."""
        return self.rank == 0

    @property
    def agents(self) -> range:
        """Global ids of the agents this process simulates (its rows, in order)."""
        return range(self.lo, self.hi)

    def exchange(self, sends: dict[int, torch.Tensor], recvs: dict[int, torch.Tensor]) -> None:
        """Send ``sends[peer]`` to each peer and receive into ``recvs[peer]`` (all at once)."""
        if sends or recvs:
            raise RuntimeError("a single-process communicator has no peers")

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; returns ``tensor``."""
        return tensor

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        return [obj]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0; None on the other ranks."""
        return [obj]

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend,
                "shards": [list(b) for b in self.bounds]}


class ProcessGroupComm(Communicator):
    """Ranks of the default ``torch.distributed`` process group (gloo or NCCL)."""

    distributed = True

    def __init__(self, n: int) -> None:
        import torch.distributed as dist

        self._dist = dist
        super().__init__(n, dist.get_rank(), dist.get_world_size())
        self.backend = str(dist.get_backend())

    def exchange(self, sends: dict[int, torch.Tensor], recvs: dict[int, torch.Tensor]) -> None:
        dist = self._dist
        ops = [dist.P2POp(dist.isend, t.contiguous(), peer) for peer, t in sends.items()]
        ops += [dist.P2POp(dist.irecv, t, peer) for peer, t in recvs.items()]
        if not ops:
            return
        for request in dist.batch_isend_irecv(ops):  # one NCCL group / gloo round: no deadlock
            request.wait()
        self.bytes_sent += sum(t.numel() * t.element_size() for t in sends.values())

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        self._dist.all_reduce(tensor)
        return tensor

    def all_gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def gather_objects(self, obj: Any) -> list[Any] | None:
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        self._dist.gather_object(obj, out, dst=0)
        return out


class Halo:
    """Remote rows that this rank's agents read, and the messages that bring them.

    ``neighbors[i]`` (all ``n`` agents, global ids) lists whose rows agent ``i`` reads. Rows of the
    *extended* tensor are the local agents followed by the halo agents in agent order, so the rows
    coming from one peer are contiguous (shards are) and are received in place.
    """

    def __init__(
        self, comm: Communicator, neighbors: Sequence[Sequence[int]],
        device: torch.device | str = "cpu",
    ) -> None:
        self.comm = comm
        local = comm.agents
        remote = sorted({j for i in local for j in neighbors[i] if j not in local})
        self.agents: list[int] = [*local, *remote]  # extended row -> global agent id
        self.row = {agent: r for r, agent in enumerate(self.agents)}
        self.n_local = len(local)
        # what each peer sends me: a contiguous block of extended rows (its agents, sorted)
        self.recv: dict[int, slice] = {}
        for peer, (lo, hi) in enumerate(comm.bounds):
            rows = [self.row[j] for j in remote if lo <= j < hi]
            if rows:
                self.recv[peer] = slice(rows[0], rows[-1] + 1)
        # what I send each peer: my agents that its agents read, in agent order (= its recv order)
        self.send: dict[int, torch.Tensor] = {}
        for peer, (lo, hi) in enumerate(comm.bounds):
            if peer == comm.rank:
                continue
            mine = sorted({i for j in range(lo, hi) for i in neighbors[j] if i in local})
            if mine:
                self.send[peer] = torch.tensor([i - comm.lo for i in mine], dtype=torch.long,
                                               device=device)

    @property
    def size(self) -> int:
        """Rows of the extended tensor: local agents plus halo."""
        return len(self.agents)

    def fill(self, ext: torch.Tensor) -> None:
        """Rows ``n_local:`` of ``ext`` <- the owners' current rows (``ext[:n_local]`` is mine)."""
        sends = {p: ext.index_select(0, rows) for p, rows in self.send.items()}
        self.comm.exchange(sends, {p: ext[rows] for p, rows in self.recv.items()})

    def reduce(self, ext: torch.Tensor) -> torch.Tensor:
        """Local rows of ``ext`` plus what other ranks computed for my agents in *their* halo rows.

        The transpose of :meth:`fill`: per-edge results a receiver computed for its remote senders
        (CCL's class statistics) travel back to the senders' owners and are summed there.
        """
        local = ext[: self.n_local].clone()
        if not self.send and not self.recv:
            return local
        incoming = {p: ext.new_empty(len(rows), *ext.shape[1:]) for p, rows in self.send.items()}
        self.comm.exchange({p: ext[rows] for p, rows in self.recv.items()}, incoming)
        for peer, rows in self.send.items():
            local.index_add_(0, rows, incoming[peer])
        return local


def _torchrun_env() -> dict[str, str]:
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise UserError(
            f"distributed=true: {', '.join(missing)} not set; launch with "
            f"`torchrun --nproc_per_node K -m benchmark train ... distributed=true`"
        )
    return {v: os.environ[v] for v in TORCHRUN_VARS}


def setup(n: int, device: str = "auto") -> tuple[Communicator, torch.device]:
    """Join the process group torchrun describes; return the communicator and this rank's device.

    CUDA (``device`` auto or cuda, and a GPU visible): NCCL, rank on ``cuda:LOCAL_RANK``.
    Otherwise gloo on the CPU. Joining twice (a second run in the same process) reuses the group.
    """
    import torch.distributed as dist

    env = _torchrun_env()
    local_rank = int(env["LOCAL_RANK"])
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", device, "cpu or auto (no CUDA device visible)")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs "
                            f"visible: use --nproc_per_node <= the GPUs per node")
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if not dist.is_initialized():
        if use_cuda:  # bound to its GPU at once (eager NCCL init)
            dist.init_process_group("nccl", device_id=torch_device)
        else:
            dist.init_process_group("gloo")
        atexit.register(_shutdown)
        # a first collective that every rank joins: NCCL wants all ranks in its first call, and a
        # rank without remote neighbours would otherwise skip the first halo exchange
        dist.barrier()
    return ProcessGroupComm(n), torch_device


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
