"""One run across processes (gloo, CPU) against the single-process swarm, and the halo's bytes.

Two processes are started once (``torch.multiprocessing.spawn``) and run every case of
``CASES`` in the same process group; the parent runs the same cases in one process and compares
parameters, statistics, the gathered checkpoint state and the bytes each rank put on the wire.
A second test launches the real command, ``torchrun ... -m benchmark train distributed=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from benchmark.distributed import Communicator, Halo, shard_bounds
from benchmark.errors import ConfigError
from benchmark.swarm import Swarm
from benchmark.topology import build_topology

WORLD = 2
N = 8
STEPS = 3
CLASSES, FEATURES = 3, 5
# name -> (topology, Swarm keyword arguments); every case starts from the same seeded model
CASES: dict[str, tuple[str, dict]] = {
    "dsgdm-n": ("ring", {"algorithm": "dsgdm-n", "gamma": 0.9}),
    "qgm": ("ring", {"algorithm": "qgm"}),
    "qgm-lin": ("ring", {"algorithm": "qgm", "qgm_variant": "lin"}),
    "ccl": ("ring", {"algorithm": "qgm", "ccl": {"lambda_m": 0.1, "lambda_d": 0.1}}),
    "ccl-exponential": ("exponential", {"algorithm": "dsgdm-n",
                                        "ccl": {"lambda_m": 0.1, "lambda_d": 0.1}}),
    "relaysgd": ("ring", {"algorithm": "relaysgd"}),  # the chain 0-1-...-7
    "relaysgd-double-binary": ("ring", {"algorithm": "relaysgd", "relay_tree": "double-binary",
                                        "relay_norm": "world"}),
    "ccl-relay": ("exponential", {"algorithm": "relaysgd", "relay_tree": "bfs",
                                  "ccl": {"lambda_m": 0.1, "lambda_d": 0.1}}),
}


class TinyNet(nn.Module):
    """(features, logits) like every model of the suite, small enough for exact comparisons."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, FEATURES)
        self.head = nn.Linear(FEATURES, CLASSES)

    def forward(self, x):
        f = torch.tanh(self.body(x))
        return f, self.head(f)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(N, 4, 6, generator=g), torch.randint(0, CLASSES, (N, 4), generator=g))
            for _ in range(STEPS)]


def _swarm(name: str, comm=None) -> Swarm:
    topology, kwargs = CASES[name]
    torch.manual_seed(0)
    return Swarm(TinyNet(), build_topology(topology, N), lr=0.1, device="cpu", comm=comm,
                 **kwargs)


def _run_case(name: str, comm=None) -> dict:
    """``STEPS`` iterations (the lr changes once, so QGM's eta_{t-1} matters); what to compare.

    Then a checkpoint round trip: the whole state (gathered on rank 0, shared with every rank)
    loaded into a fresh swarm, which must take the next step exactly like the original.
    """
    swarm = _swarm(name, comm)
    stats, sent = [], []
    for t, (xs, ys) in enumerate(_batches()):
        swarm.set_lr(0.1 if t < 2 else 0.05)
        before = swarm.comm.bytes_sent
        stats.append({k: float(v) for k, v in swarm.step(xs, ys).items()})
        sent.append(swarm.comm.bytes_sent - before)
    result = {"params": swarm.params.clone(), "stats": stats, "bytes": sent,
              "state": swarm.state_dict(), "distance": swarm.consensus_distance(),
              "consensus": torch.nn.utils.parameters_to_vector(
                  swarm.consensus_model().parameters()).detach(),
              "n_params": swarm.params.shape[1]}
    whole = swarm.comm.all_gather_objects(result["state"])[0]
    resumed = _swarm(name, comm)
    resumed.load_state_dict(whole)
    for s in (swarm, resumed):
        s.step(*_batches()[0])
    result["resumed_equal"] = torch.equal(resumed.params, swarm.params)
    return result


def _worker(rank: int, port: int, out: str) -> None:
    """One rank, started the way torchrun starts it (environment variables), all cases."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from benchmark.distributed import setup

    results = {}
    for name in CASES:
        comm, _ = setup(N, "cpu")
        results[name] = _run_case(name, comm)
    torch.save(results, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_run_matches_the_single_process_run(sharded, name):
    ref = _run_case(name)
    ranks = [r[name] for r in sharded]
    params = torch.cat([r["params"] for r in ranks])  # rank r holds agents [4r, 4r + 4)
    assert params.shape == ref["params"].shape
    torch.testing.assert_close(params, ref["params"], atol=1e-5, rtol=0)
    assert not torch.equal(params, params[:1].expand_as(params))  # agents really differ
    for rank in ranks:  # statistics are reduced: every rank reports the all-agent means
        assert rank["stats"][-1].keys() == ref["stats"][-1].keys()
        for got, want in zip(rank["stats"], ref["stats"], strict=True):
            for key in want:
                assert got[key] == pytest.approx(want[key], abs=1e-5)
        assert rank["distance"] == pytest.approx(ref["distance"], abs=1e-6)
        torch.testing.assert_close(rank["consensus"], ref["consensus"], atol=1e-6, rtol=0)
    # the checkpoint state is gathered on rank 0 only, and equals the single-process state
    assert ranks[1]["state"] is None
    state = ranks[0]["state"]
    torch.testing.assert_close(state["params"], ref["state"]["params"], atol=1e-5, rtol=0)
    for key, value in ref["state"]["algorithm"].items():
        torch.testing.assert_close(state["algorithm"][key], value, atol=1e-4, rtol=1e-5)
    assert len(state["buffers"]) == N and state["iteration"] == STEPS
    assert all(rank["resumed_equal"] for rank in ranks)


def test_halo_sends_exactly_the_boundary_rows(sharded):
    """Ring of 8 on 2 ranks: boundaries 3|4 and 7|0, one row each way per boundary."""
    p = sharded[0]["dsgdm-n"]["n_params"]
    floats = 4
    for rank in sharded:
        # each rank sends its 2 boundary rows: 2 boundaries x 2 directions x P in all
        assert rank["dsgdm-n"]["bytes"] == [2 * p * floats] * STEPS
        # CCL reuses the gossip halo (X^- rows) and adds C x (D + 1) class statistics per edge
        stats = CLASSES * (FEATURES + 1)
        assert rank["ccl"]["bytes"] == [2 * (p + stats) * floats] * STEPS
        # lin gossips after the local step: only those rows travel (no X^- halo without CCL)
        assert rank["qgm-lin"]["bytes"] == [2 * p * floats] * STEPS
        # RelaySGD on the chain: one boundary edge (3-4); per direction one total row + count
        assert rank["relaysgd"]["bytes"] == [(p + 1) * floats] * STEPS
    total = sum(r["dsgdm-n"]["bytes"][0] for r in sharded)
    assert total == 2 * 2 * p * floats


def test_halo_plan_on_an_uneven_split():
    """n=7 on 2 ranks: shards [0,4) and [4,7); each rank receives what the other sends it."""
    assert shard_bounds(7, 2) == [(0, 4), (4, 7)]
    topo = build_topology("ring", 7)
    neighbors = [topo.neighbors(i) for i in range(7)]
    halos = [Halo(_FakeComm(7, r), neighbors) for r in range(2)]
    assert halos[0].agents == [0, 1, 2, 3, 4, 6]
    assert halos[1].agents == [4, 5, 6, 0, 3]  # local rows first, then the halo in agent order
    for me, other in ((0, 1), (1, 0)):
        sent = [halos[me].comm.lo + i for i in halos[me].send[other].tolist()]
        received = halos[other].agents[halos[other].recv[me]]
        assert sent == received


def test_more_ranks_than_agents_is_a_config_error():
    with pytest.raises(ConfigError, match="n_agents"):
        shard_bounds(3, 4)


class _FakeComm(Communicator):
    """A rank's view of the layout, without a process group (only the plan is computed)."""

    def __init__(self, n: int, rank: int) -> None:
        super().__init__(n, rank, WORLD)


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed next to the interpreter")
def test_torchrun_train_resumes_a_checkpoint_and_writes_the_single_process_metrics(
        tmp_path, interrupted_run):
    """The real command: 2 gloo ranks, CCL on digits, resuming a single-process checkpoint after
    epoch 1 (loaded as shards), checkpointing epoch 2 (gathered), finishing epoch 3: the
    metrics equal an uninterrupted single-process run."""
    from benchmark.config import load_config
    from benchmark.train import run

    options = ["dataset=digits", "model=mlp", "n_agents=8", "topology=ring", "method=ccl",
               "alpha=0.1", "epochs=3", "batch_size=32", "lambda_m=0.1", "lambda_d=0.1",
               "tracking=false", "device=cpu", "save_models=all"]
    single = run(load_config(None, options), tmp_path / "single").to_dict()

    interrupted_run(tmp_path / "sharded", options)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "benchmark", "train",
         "--out", str(tmp_path / "sharded"), *options, "distributed=true"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("completed:") == 1  # rank 0 alone prints
    sharded = json.loads((tmp_path / "sharded" / "metrics.json").read_text())
    assert sharded["status"] == "completed" and sharded["resumed_after_epochs"] == [1]
    assert proc.stdout.count("resuming") == 1
    for key, value in single["final"].items():
        assert sharded["final"][key] == pytest.approx(value, abs=1e-5), key
    for got, want in zip(sharded["history"], single["history"], strict=True):
        for key in ("train_ce", "l_mv", "l_dv", "bytes_per_agent"):
            assert got[key] == pytest.approx(want[key], abs=1e-5), key
    layout = sharded["distributed"]
    assert layout["world_size"] == 2 and layout["backend"] == "gloo"
    assert layout["shards"] == [[0, 4], [4, 8]]
    # per iteration: 2 boundaries x 2 directions x (P parameters + C x (D + 1) class statistics)
    iterations = 2 * sharded["iterations_per_epoch"]  # epochs 2 and 3 ran sharded
    per_edge = sharded["communication"]["bytes_per_agent_per_iteration"]["class_statistics"] / 2
    per_iteration = 2 * 2 * (sharded["n_params"] * 4 + per_edge)
    assert layout["bytes_between_processes"] == iterations * per_iteration
    assert not (tmp_path / "sharded" / "checkpoint.pt").exists()  # finished: checkpoint dropped
    # save_models=all: rank 0 writes the consensus model, each rank its own agents' models;
    # every file equals the single-process run's
    assert sharded["models"] == single["models"]
    assert len(single["models"]["agents"]) == 8
    for name in [single["models"]["consensus"], *single["models"]["agents"]]:
        got, want = (torch.load(tmp_path / d / name, weights_only=False)["state_dict"]
                     for d in ("sharded", "single"))
        assert got.keys() == want.keys(), name
        for key in want:
            assert torch.allclose(got[key], want[key], atol=1e-5), (name, key)
