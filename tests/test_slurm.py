"""Grids on a SLURM cluster: the profile plans the grid and maps resources for sbatch.

Needs the optional ``slurm`` extra (snakemake-executor-plugin-slurm); without it these tests are
skipped. A dry-run never calls sbatch, so no SLURM installation is needed here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile")]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')",
)


def _dry_run(tmp_path: Path, target: str, **env: str) -> str:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    ours = ("SBATCH_ACCOUNT", "SBATCH_PARTITION", "BENCHMARK_SLURM_MEM_MB",
            "BENCHMARK_SLURM_RUNTIME")
    environ = {k: v for k, v in os.environ.items() if k not in ours}
    environ.update(CUDA_VISIBLE_DEVICES="",  # a login node without GPUs
                   MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", **env)
    proc = subprocess.run(
        [*SNAKEMAKE, "-d", str(work), "-n", "--profile", str(REPO / "profiles" / "slurm"),
         "--config", f"family_dir={REPO / 'config'}", "cluster=slurm", "--", target],
        capture_output=True, text=True, env=environ, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (work / "results").exists()  # planned, not run
    return proc.stdout + proc.stderr


def _train_resources(out: str) -> list[dict[str, str]]:
    """The ``resources:`` line of every planned train job, as a dict."""
    jobs = re.findall(r"rule train:.*?resources: ([^\n]*)", out, re.DOTALL)
    return [dict(item.split("=", 1) for item in line.split(", ")) for line in jobs]


def test_slurm_profile_plans_the_grid_with_gpus_memory_time_account_partition(tmp_path):
    out = _dry_run(tmp_path, "reports/table_digits.csv", SBATCH_ACCOUNT="proj42",
                   SBATCH_PARTITION="gpu", BENCHMARK_SLURM_MEM_MB="4000")
    planned = re.search(r"^train\s+(\d+)\s*$", out, re.MULTILINE)
    assert planned and int(planned.group(1)) == 54  # 3 alphas x 6 methods x 3 seeds
    jobs = _train_resources(out)
    assert len(jobs) == 54
    for job in jobs:
        # no GPU on this host, yet every run on device auto asks SLURM for one
        assert job["gpu"] == "1"
        assert job["slurm_account"] == "proj42" and job["slurm_partition"] == "gpu"
        assert job["mem_mb"] == "4000" and job["runtime"] == "720"
    # SLURM pins the GPU (CUDA_VISIBLE_DEVICES): the local slot picker is not used
    assert "gpu_slot.py" not in out


def test_slurm_profile_without_account_leaves_the_choice_to_slurm(tmp_path):
    out = _dry_run(tmp_path, "reports/table_digits.csv", BENCHMARK_SLURM_RUNTIME="90")
    for job in _train_resources(out):
        # empty: the plugin guesses the default account / the cluster's default partition
        assert job["slurm_account"] == "" and job["slurm_partition"] == ""
        assert job["runtime"] == "90" and job["mem_mb"] == "16000"
