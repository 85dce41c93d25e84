"""Grids on a SLURM cluster: the profile plans the grid and maps resources for sbatch.

Needs the optional ``slurm`` extra (snakemake-executor-plugin-slurm); without it these tests are
skipped. A dry-run never calls sbatch, so no SLURM installation is needed for those. The last
test (opt-in, ``BENCHMARK_SLURM_LOCAL=1``, root and Debian's slurmctld/slurmd/munge packages)
starts a single-node SLURM on this host and runs a tiny grid through the executor plugin.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile")]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')",
)


def _dry_run(tmp_path: Path, target: str, *config: str, **env: str) -> str:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    ours = ("SBATCH_ACCOUNT", "SBATCH_PARTITION", "BENCHMARK_SLURM_MEM_MB",
            "BENCHMARK_SLURM_RUNTIME")
    environ = {k: v for k, v in os.environ.items() if k not in ours}
    environ.update(CUDA_VISIBLE_DEVICES="",  # a login node without GPUs
                   MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", **env)
    proc = subprocess.run(
        [*SNAKEMAKE, "-d", str(work), "-n", "--profile", str(REPO / "profiles" / "slurm"),
         "--config", f"family_dir={REPO / 'config'}", "cluster=slurm", *config, "--", target],
        capture_output=True, text=True, env=environ, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (work / "results").exists()  # planned, not run
    return proc.stdout + proc.stderr


def _train_resources(out: str, rule: str = "train") -> list[dict[str, str]]:
    """The ``resources:`` line of every planned job of ``rule``, as a dict."""
    jobs = re.findall(rf"rule {rule}:.*?resources: ([^\n]*)", out, re.DOTALL)
    return [dict(item.split("=", 1) for item in line.split(", ")) for line in jobs]


def test_slurm_profile_plans_the_grid_with_gpus_memory_time_account_partition(tmp_path):
    out = _dry_run(tmp_path, "reports/table_digits.csv", SBATCH_ACCOUNT="proj42",
                   SBATCH_PARTITION="gpu", BENCHMARK_SLURM_MEM_MB="4000")
    planned = re.search(r"^train\s+(\d+)\s*$", out, re.MULTILINE)
    assert planned and int(planned.group(1)) == 135  # 3 alphas x 3 seeds x (6 + 3 x 3)
    jobs = _train_resources(out)
    assert len(jobs) == 135
    for job in jobs:
        # no GPU on this host, yet every run on device auto asks SLURM for one
        assert job["gpu"] == "1"
        assert job["slurm_account"] == "proj42" and job["slurm_partition"] == "gpu"
        assert job["mem_mb"] == "4000" and job["runtime"] == "720"
    # SLURM pins the GPU (CUDA_VISIBLE_DEVICES): the local slot picker is not used
    assert "benchmark.gpu_slots" not in out


def test_slurm_tuning_jobs_ask_for_a_gpu_like_train_jobs(tmp_path):
    """One GPU launcher for every rule: a study on the cluster gets its GPU from SLURM too."""
    out = _dry_run(tmp_path, "reports/tuning_digits.csv", "protocol=tuned")
    jobs = _train_resources(out, "tune")
    # one study per method, alpha and graph: 6 methods on ring-16, 3 on three more graphs
    assert len(jobs) == 6 * 3 + 3 * 3 * 3 and all(job["gpu"] == "1" for job in jobs)
    assert "benchmark.gpu_slots" not in out


def test_slurm_profile_without_account_leaves_the_choice_to_slurm(tmp_path):
    out = _dry_run(tmp_path, "reports/table_digits.csv", BENCHMARK_SLURM_RUNTIME="90")
    for job in _train_resources(out):
        # empty: the plugin guesses the default account / the cluster's default partition
        assert job["slurm_account"] == "" and job["slurm_partition"] == ""
        assert job["runtime"] == "90" and job["mem_mb"] == "16000"


# ------------------------------------------------ stretch: a real single-node SLURM on localhost
SLURM_DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
TINY_FAMILY = """\
run:
  family: tiny
  dataset: synthetic
  model: mlp
  n_agents: 4
  synthetic: {train_size: 128, test_size: 64, image_size: 8, channels: 1}
  epochs: 1
  batch_size: 16
  lr: 0.05
  threads: 1
  device: cpu
  tracking: false
grid:
  alpha: [0.1]
  topologies: [{topology: ring, n_agents: 4}]
  methods: [dsgdm-n, ccl]
  seeds: [0]
"""


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, host: str) -> str:
    return f"""\
ClusterName=benchtest
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldParameters=enable_configless
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=60 State=UP
"""


@pytest.fixture
def local_slurm(tmp_path):
    """munged + slurmctld + slurmd (configless) on this host, stopped again afterwards.

    Configless because the plugin drops every ``SLURM_*`` variable (``SLURM_CONF`` too) inside a
    job, so the job's ``srun`` must find the configuration in slurmd's cache (``/run/slurm``).
    """
    if os.environ.get("BENCHMARK_SLURM_LOCAL") != "1":
        pytest.skip("starts SLURM daemons as root: opt in with BENCHMARK_SLURM_LOCAL=1")
    if os.geteuid() != 0 or any(_which(d) is None for d in SLURM_DAEMONS):
        pytest.skip("needs root and Debian's slurmctld, slurmd, slurm-client and munge")
    host = socket.gethostname().split(".")[0]
    root = tmp_path / "slurm"
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = []
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(exist_ok=True)
        procs.append(subprocess.Popen([_which("munged"), "-F", "--force"]))
        time.sleep(1)
    procs.append(subprocess.Popen([_which("slurmctld"), "-D", "-i", "-f", str(conf)], env=env))
    time.sleep(2)
    # configless: jobs' srun find the config in slurmd's cache (the plugin drops SLURM_CONF)
    port = re.search(r"SlurmctldPort=(\d+)", conf.read_text()).group(1)
    procs.append(subprocess.Popen([_which("slurmd"), "-D", "--conf-server", f"{host}:{port}"],
                                  env=env))
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                                   env=env).stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            pytest.fail(f"local SLURM never became idle: {(root / 'slurmctld.log').read_text()}")
        yield env
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_tiny_grid_runs_through_a_local_slurm(local_slurm, tmp_path):
    family_dir = tmp_path / "families"
    family_dir.mkdir()
    (family_dir / "tiny.yaml").write_text(TINY_FAMILY)
    work = tmp_path / "work"
    work.mkdir()
    env = {**local_slurm, "BENCHMARK_SLURM_MEM_MB": "500", "BENCHMARK_SLURM_RUNTIME": "10"}
    proc = subprocess.run(
        [*SNAKEMAKE, "-d", str(work), "--profile", str(REPO / "profiles" / "slurm"),
         # no accounting database here, so job states come from squeue
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
         "--config", f"family_dir={family_dir}", "cluster=slurm", "--",
         "reports/table_tiny.csv"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # every job went through sbatch: 2 runs + the report
    assert len(re.findall(r"has been submitted with SLURM jobid \d+", out)) == 3
    runs = sorted((work / "results").rglob("metrics.json"))
    assert len(runs) == 2
    assert all(json.loads(p.read_text())["status"] == "completed" for p in runs)
    assert (work / "reports" / "table_tiny.csv").is_file()
