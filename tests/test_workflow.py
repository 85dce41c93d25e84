"""The workflow: family schema, planning the paper grid, a real tiny grid, MLflow and its UI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmark.config import build_config, load_config, parse_overrides
from benchmark.errors import UserError
from benchmark.grid import format_float, load_families, load_family

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile")]

TINY = {
    "run": {"family": "tiny", "dataset": "synthetic", "model": "mlp", "n_agents": 4,
            "synthetic": {"train_size": 128, "test_size": 64, "image_size": 8, "channels": 1},
            "epochs": 1, "batch_size": 16, "lr": 0.05, "threads": 1},
    "grid": {"alpha": [0.1, 1.0], "topologies": [{"topology": "ring", "n_agents": 4}],
             "methods": ["dsgdm-n", "ccl"], "seeds": [0]},
}


def _family_file(tmp_path: Path, data: dict, name: str = "fam") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------- the schema
def test_paper_grid_expands_to_the_product_of_its_axes() -> None:
    families = load_families(REPO / "config")
    assert {"digits", "cifar10", "cifar100", "fmnist", "imagenette", "imagenet"} <= set(families)
    cifar = families["cifar10"]
    assert len(cifar.runs) == 2 * 7 * 6 * 3 * 3  # protocol both: the paper's and the tuned one
    assert len({r.run_dir for r in cifar.runs}) == len(cifar.runs)
    assert sum(r.protocol == "tuned" for r in cifar.runs) == 7 * 6 * 3 * 3
    graphs = {(r.config.topology, r.config.n_agents, r.config.gamma) for r in cifar.runs}
    assert graphs == {("ring", n, 1.0) for n in (8, 16, 24, 32, 40)} | {
        ("paper-dyck", 32, 0.9), ("paper-torus", 32, 0.9)}
    run = next(r for r in cifar.runs if r.config.topology == "paper-dyck")
    assert run.run_dir.startswith("results/cifar10/cifar10/resnet20/paper-dyck-n32/alpha0.01/")
    assert run.config.epochs == 200 and run.config.lr == 0.1
    assert len(families["digits"].runs) == 6 * 3 * 3 + 3 * 3 * 3 * 3  # + its block


def test_paths_round_trip_floats_and_commands_rebuild_the_config(tmp_path: Path) -> None:
    data = json.loads(json.dumps(TINY))
    data["grid"]["alpha"] = [0.1, 1e-05, 1.0 / 3]
    family = load_family(_family_file(tmp_path, data))
    for run in family.runs:
        folder = run.run_dir.split("/alpha")[1].split("/")[0]
        assert float(folder) == run.config.alpha  # exact, not approximately
        rebuilt = load_config(run.config_path, run.override_args)
        assert rebuilt == run.config
    assert format_float(1.0 / 3) == "0.3333333333333333"


def test_family_file_works_as_a_train_config() -> None:
    config = load_config(REPO / "config" / "digits.yaml", ["method=ccl", "alpha=0.1"])
    assert (config.family, config.dataset, config.method, config.alpha) == (
        "digits", "digits", "ccl", 0.1)
    assert config.epochs == yaml.safe_load((REPO / "config" / "digits.yaml").read_text())["run"][
        "epochs"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["grid"].update(methods=[]), r"grid\.methods"),
    (lambda d: d["grid"].update(alphas=d["grid"].pop("alpha")),
     r"grid\.alphas.*did you mean 'alpha'"),
    (lambda d: d["grid"].update(methods=["ccl", "qmg"]),
     r"grid\.methods.*'qmg'.*did you mean 'qgm'"),
    (lambda d: d["grid"].update(topologies=[{"topology": "rign", "n_agents": 4}]),
     r"grid\.topologies\[0\]\.topology.*did you mean 'ring'"),
    (lambda d: d["grid"].update(topologies=[{"topology": "paper-dyck", "n_agents": 16}]),
     r"grid\.topologies\[0\]\.n_agents.*16"),
    (lambda d: d["grid"].update(topologies=[{"topology": "ring", "n_agents": 4, "gama": 0.9}]),
     r"gama.*did you mean 'gamma'"),
    (lambda d: d["grid"].update(alpha=[0.1, -1.0]), r"grid\.alpha"),
    (lambda d: d["grid"].update(seeds="0"), r"grid\.seeds"),
    (lambda d: d["run"].update(epochs=0), r"epochs"),
    (lambda d: d["grid"].update(topologies=[{"topology": "ring", "n_agents": 4},
                                            {"topology": "ring", "n_agents": 4, "gamma": 0.5}]),
     r"distinct run paths"),
    (lambda d: d.update(gird=d.pop("grid")), r"gird"),
    (lambda d: d["grid"].update(blocks=[{"methods": ["qmg"]}]),
     r"grid\.blocks\[0\]\.methods.*did you mean 'qgm'"),
    (lambda d: d["grid"].update(blocks=[{"alpha": [0.5]}]), r"grid\.blocks\[0\]\.alpha.*0\.5"),
    (lambda d: d["grid"].update(blocks=[{"methds": ["qgm"]}]),
     r"grid\.blocks\[0\]\.methds.*did you mean 'methods'"),
    (lambda d: d["grid"].update(blocks=[{"methods": ["ccl"]}]), r"distinct run paths"),
    (lambda d: d["grid"].update(blocks=[{"blocks": []}]), r"grid\.blocks\[0\]"),
    (lambda d: d["grid"].update(blocks=[{"topologies": [{"topology": "paper-dyck",
                                                        "n_agents": 16}]}]),
     r"grid\.blocks\[0\]\.topologies\[0\]\.n_agents.*16"),
])
def test_bad_family_files_fail_naming_the_field(tmp_path: Path, change, message: str) -> None:
    data = json.loads(json.dumps(TINY))
    change(data)
    path = _family_file(tmp_path, data)
    with pytest.raises(UserError, match=message) as err:
        load_family(path)
    assert str(err.value).startswith(f"{path}: ")  # names the file too


def test_blocks_add_their_own_products_and_inherit_the_axes_they_leave_out(tmp_path) -> None:
    data = json.loads(json.dumps(TINY))
    data["grid"]["blocks"] = [
        {"topologies": [{"topology": "ring", "n_agents": 8}], "methods": ["dsgdm-n"]},
        {"topologies": [{"topology": "full", "n_agents": 4}], "alpha": [0.1], "seeds": [3, 4]},
    ]
    family = load_family(_family_file(tmp_path, data))
    runs = [(r.config.topology, r.config.n_agents, r.config.alpha, r.config.method,
             r.config.seed) for r in family.runs]
    own = [("ring", 4, a, m, 0) for a in (0.1, 1.0) for m in ("dsgdm-n", "ccl")]
    first = [("ring", 8, a, "dsgdm-n", 0) for a in (0.1, 1.0)]
    second = [("full", 4, 0.1, m, s) for m in ("dsgdm-n", "ccl") for s in (3, 4)]
    assert runs == own + first + second  # grid order: the grid's own product, then each block
    assert family.spec.grid.alpha == [0.1, 1.0]  # studies are per grid alpha, blocks add none


def test_override_args_are_read_back_as_the_same_values() -> None:
    family = load_families(REPO / "config")["cifar10"]
    run = family.runs[-1]
    assert build_config({**family.spec.run, **parse_overrides(run.override_args)}) == run.config


# ---------------------------------------------------------------------------- dry run
AUDIT = textwrap.dedent("""
    import os, sys
    _fd = os.open(os.environ["AUDIT_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    _root = os.environ["AUDIT_DATA_ROOT"]
    os.write(_fd, b"hook installed\\n")

    def _hook(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and args[0] is not None:
            try:
                path = os.path.abspath(os.fsdecode(args[0]))
            except TypeError:
                return
            if path.startswith(_root):
                os.write(_fd, (event + " " + path + "\\n").encode())

    sys.addaudithook(_hook)
    """)


def test_dry_run_plans_the_cifar10_grid_without_reading_data(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT)
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "audit.log"
    env = {**os.environ, "PYTHONPATH": str(hooks), "AUDIT_LOG": str(log),
           "AUDIT_DATA_ROOT": str(work / "data"), "CUDA_VISIBLE_DEVICES": "0,1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(
        [*SNAKEMAKE, "reports/table_cifar10.csv", "-d", str(work), "-n", "--cores", "8",
         "--config", f"family_dir={REPO / 'config'}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    axes = yaml.safe_load((REPO / "config" / "cifar10.yaml").read_text())["grid"]
    expected = (len(axes["alpha"]) * len(axes["topologies"]) * len(axes["methods"])
                * len(axes["seeds"]))
    assert expected == 378
    planned = re.search(r"^train\s+(\d+)\s*$", out, re.MULTILINE)
    assert planned and int(planned.group(1)) == 2 * expected  # fixed + tuned protocol
    assert re.search(r"^report_family\s+1\s*$", out, re.MULTILINE)
    # the data are fetched once, before every training and tuning job (workflow/rules/data.smk)
    assert re.search(r"^fetch_data\s+1\s*$", out, re.MULTILINE)
    rules = re.findall(r"^(?:local)?rule (\w+):", out, re.MULTILINE)
    assert rules[0] == "fetch_data" and rules.count("fetch_data") == 1
    assert "benchmark fetch cifar10 --data-dir data" in out
    # with two GPUs visible every training job takes one, pinned by the slot picker
    assert "gpu=1" in out and "benchmark.gpu_slots --gpus 0,1 --slots 1 --" in out
    assert re.search(r"^\s+threads: 2$", out, re.MULTILINE)  # a GPU job: few CPU threads
    # no data read, nothing created: not the data folder, not the MLflow store
    lines = log.read_text().splitlines()
    assert lines and set(lines) == {"hook installed"}, lines[:5]
    assert not (work / "data").exists() and not (work / "results").exists()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("family", "model"), [("digits", "mlp"), ("mnist1d", "convbase1d")])
def test_dry_run_of_the_default_families_has_every_axis(tmp_path: Path, family, model) -> None:
    """The embedded default (and MNIST-1D, its axes) covers what its figures need: 6 methods x 3
    alphas x 3 seeds on ring-16; dsgdm-n, qgm and ccl on ring-8 and ring-32 (agent count) and
    on exponential-16 (spectral gap), each at every alpha with 3 seeds; the data are fetched
    (MNIST-1D: generated) by one job before the runs."""
    proc = subprocess.run(
        [*SNAKEMAKE, f"reports/table_{family}.csv", "-d", str(tmp_path), "-n", "--cores", "2",
         "--config", f"family_dir={REPO / 'config'}"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    jobs = re.findall(rf"results/{family}/{family}/{model}/(\w+)-n(\d+)/alpha([\d.]+)/"
                      r"([\w-]+)/seed(\d)/metrics\.json", out)
    jobs = set(jobs)
    planned = re.search(r"^train\s+(\d+)\s*$", out, re.MULTILINE)
    assert planned and int(planned.group(1)) == len(jobs) == 135
    assert re.search(r"^fetch_data\s+1\s*$", out, re.MULTILINE)
    assert f"benchmark fetch {family} --data-dir data" in out
    assert not (tmp_path / "data").exists()  # planned, not run
    per_graph = {}
    for graph, agents, *_ in jobs:
        per_graph[f"{graph}-{agents}"] = per_graph.get(f"{graph}-{agents}", 0) + 1
    assert per_graph == {"ring-16": 54, "ring-8": 27, "ring-32": 27, "exponential-16": 27}

    def count(graph: str, agents: int, method: str) -> int:
        return sum(1 for j in jobs if j[:2] == (graph, str(agents)) and j[3] == method)

    every = ("dsgdm-n", "qgm", "relaysgd", "ccl", "ccl-mv", "ccl-dv")
    assert all(count("ring", 16, m) == 9 for m in every)  # 3 alphas x 3 seeds
    for graph, agents in (("ring", 8), ("ring", 32), ("exponential", 16)):
        assert {m: count(graph, agents, m) for m in every} == {
            "dsgdm-n": 9, "qgm": 9, "relaysgd": 0, "ccl": 9, "ccl-mv": 0, "ccl-dv": 0}
    assert {j[2] for j in jobs} == {"0.01", "0.1", "1.0"} and {j[4] for j in jobs} == set("012")


def test_the_mnist1d_fetch_job_generates_the_cache_the_runs_read(tmp_path: Path) -> None:
    """The fetch_data job of the MNIST-1D family (its marker, as the training jobs wait for it)
    generates <data_dir>/mnist1d.npz once; a run needs no fetch of its own."""
    proc = subprocess.run(
        [*SNAKEMAKE, "data/.ready/mnist1d", "-d", str(tmp_path), "--cores", "1",
         "--config", f"family_dir={REPO / 'config'}"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir()) == [".ready", "mnist1d.npz"]
    log = (data / ".ready" / "mnist1d.log").read_text().strip()
    assert log == f"mnist1d: generated into {Path('data') / 'mnist1d.npz'}"


def test_bad_family_stops_the_workflow_before_any_job(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    data = json.loads(json.dumps(TINY))
    data["grid"]["methods"] = ["dsgdm-n", "qmg"]
    _family_file(tmp_path / "config", data, "tiny")
    proc = subprocess.run(
        [*SNAKEMAKE, "-d", str(tmp_path), "--cores", "1", "reports/table_tiny.csv"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "grid.methods" in proc.stdout + proc.stderr and "qmg" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


FAKE_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name,driver_version" ]; then
  echo "NVIDIA H100 80GB HBM3, 535.104.05"
else
  echo "| NVIDIA-SMI 535.104.05     Driver Version: 535.104.05     CUDA Version: 12.2     |"
fi
"""


@pytest.mark.parametrize("gpu_shown", [True, False])
def test_planning_says_when_a_gpu_is_there_but_torch_cannot_use_it(tmp_path, gpu_shown) -> None:
    """A GPU that nvidia-smi shows but this torch cannot use (here: none can) makes the plan
    count 0 GPUs; the dry run says so once, with the cause and the fix; without one, nothing."""
    (tmp_path / "config").mkdir()
    _family_file(tmp_path / "config", TINY, "tiny")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    if gpu_shown:
        (fake_bin / "nvidia-smi").write_text(FAKE_SMI)
        (fake_bin / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES",
                                                            "BENCHMARK_GPU_CHECKED")}
    env["PATH"] = f"{fake_bin}:{BIN}:/usr/bin:/bin"
    proc = subprocess.run([*SNAKEMAKE, "-d", str(tmp_path), "-n", "--cores", "1",
                           "reports/table_tiny.csv"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    warned = [line for line in out.splitlines() if "plans 0 GPUs" in line]
    if gpu_shown:
        assert len(warned) == 1, out[-3000:]
        assert "NVIDIA H100" in warned[0] and "built for CUDA" in warned[0]
        assert "--index-url https://download.pytorch.org/whl/cu126" in warned[0]
    else:
        assert warned == []
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------- a real grid
@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory) -> dict:
    """2 methods x 2 alphas x 1 seed x 1 epoch through `snakemake`, offline.

    One GPU is declared visible (`CUDA_VISIBLE_DEVICES=0`) and the family shares it between 3
    runs (`gpu_slots_per_device: 3`): on this CPU-only machine torch still trains on the CPU,
    but the scheduling is the real one: each job takes gpu=1 of the 3 slots, the workflow
    limits them to the slot count (4 cores would allow 4 jobs) and pins each to its own
    (GPU, slot); `gpu_threads=1` gives each GPU job 1 CPU thread.
    """
    work = tmp_path_factory.mktemp("grid")
    (work / "config").mkdir()
    family = json.loads(json.dumps(TINY))
    family["run"]["gpu_slots_per_device"] = 3
    _family_file(work / "config", family, "tiny")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CUDA_VISIBLE_DEVICES": "0",
           "BENCHMARK_GPU_LOCKS": str(work / "gpu-locks")}
    proc = subprocess.run([*SNAKEMAKE, "-d", str(work), "--cores", "4", "reports/table_tiny.csv",
                           "--config", "gpu_threads=1"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"work": work, "uri": uri, "env": env, "log": proc.stdout + proc.stderr}


def test_tiny_grid_jobs_are_limited_to_and_pinned_on_the_gpus(tiny_grid: dict) -> None:
    running = peak = 0
    for line in tiny_grid["log"].splitlines():
        if line.strip() in ("rule train:", "localrule train:"):
            running += 1
            peak = max(peak, running)
        elif line.startswith("Finished jobid") and "(Rule: train)" in line:
            running -= 1
    assert peak == 3  # gpu=3 (1 GPU x 3 slots) bounds the 4 cores' worth of 1-thread jobs
    slots = [log.read_text().splitlines()[0]
             for log in tiny_grid["work"].glob("results/tiny/**/log.txt")]
    assert len(slots) == 4
    assert set(slots) <= {f"gpu_slot: CUDA_VISIBLE_DEVICES=0 (slot 0:{s}/3)" for s in (0, 1, 2)}


def test_tiny_grid_jobs_ran_in_the_preload_server(tiny_grid: dict) -> None:
    """Every training job was forked from the one server that imported torch (preload.py)."""
    log = (tiny_grid["work"] / ".snakemake" / "preload.log").read_text()
    assert log.count(": benchmark train --config ") == 4


def test_tiny_grid_fetches_its_data_once_before_the_runs(tiny_grid: dict) -> None:
    """synthetic data need no download: the one fetch job only leaves its marker, first."""
    rules = re.findall(r"^(?:local)?rule (\w+):", tiny_grid["log"], re.MULTILINE)
    assert rules.count("fetch_data") == 1 and rules.index("fetch_data") < rules.index("train")
    work = tiny_grid["work"]
    assert (work / "data" / ".ready" / "synthetic").exists()
    assert "nothing to fetch" in (work / "data" / ".ready" / "synthetic.log").read_text()


def test_tiny_grid_writes_runs_tables_and_figures(tiny_grid: dict) -> None:
    work = tiny_grid["work"]
    runs = sorted(work.glob("results/tiny/synthetic/mlp/ring-n4/alpha*/*/seed0/metrics.json"))
    assert len(runs) == 4
    for path in runs:
        assert (path.parent / "log.txt").read_text().strip()
        assert json.loads(path.read_text())["config"]["threads"] == 1  # the rule's threads
    table = pd.read_csv(work / "reports" / "table_tiny.csv")
    assert len(table) == 4
    assert set(zip(table["alpha"], table["method"], strict=True)) == {
        (a, m) for a in (0.1, 1.0) for m in ("dsgdm-n", "ccl")}
    assert (table["seeds"] == 1).all() and (table["completed"] == 1).all()
    md = (work / "reports" / "table_tiny.md").read_text()
    assert "| dataset | model | graph | alpha | dsgdm-n | ccl |" in md
    assert "(tuned) =" not in md  # the fixed protocol alone: no note about tuned values
    for name in ("learning_curves", "ablation", "heterogeneity", "scaling_agents",
                 "spectral_gap", "overhead"):
        assert (work / "reports" / "figures" / "tiny" / f"{name}.png").stat().st_size > 0
    # up to date: a second plan has nothing to do
    proc = subprocess.run([*SNAKEMAKE, "-d", str(work), "-n", "--cores", "2",
                           "reports/table_tiny.csv"], capture_output=True, text=True,
                          env=tiny_grid["env"], timeout=300)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def test_tiny_grid_runs_are_in_mlflow(tiny_grid: dict, monkeypatch) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_grid["uri"])
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert len(runs) == 4
    assert set(runs["status"]) == {"FINISHED"}
    assert set(zip(runs["tags.alpha"], runs["tags.method"], strict=True)) == {
        (a, m) for a in ("0.1", "1") for m in ("dsgdm-n", "ccl")}
    assert set(runs["tags.origin"]) == {"workflow"}
    assert set(runs["tags.topology"]) == {"ring"} and set(runs["tags.n_agents"]) == {"4"}
    assert set(runs["params.epochs"]) == {"1"} and set(runs["params.threads"]) == {"1"}
    client = MlflowClient(tiny_grid["uri"])
    for run_id in runs["run_id"]:
        assert [m.step for m in client.get_metric_history(run_id, "acc/consensus")] == [1]
        assert {a.path for a in client.list_artifacts(run_id)} >= {"metrics.json", "config.yaml",
                                                                  "partition.png",
                                                                  "learning_curves.png",
                                                                  "models"}
        assert client.get_run(run_id).inputs.dataset_inputs[0].dataset.name == "synthetic"
    # one experiment per family the grid used (plus MLflow's own Default)
    experiments = {e.name: e.experiment_id for e in mlflow.search_experiments()}
    assert set(experiments) == {"Default", "tiny"}
    # the workflow's last words: how to open the UI on the family's runs
    url = f"#/experiments/{experiments['tiny']}/runs?workflowType=machine_learning"
    assert url in tiny_grid["log"] and "--workers 1" in tiny_grid["log"]


@pytest.fixture(scope="module")
def html_report(tiny_grid: dict) -> str:
    """`snakemake --report report.html` of the tiny grid: the page's text."""
    work = tiny_grid["work"]
    proc = subprocess.run([*SNAKEMAKE, "-d", str(work), "--report", "report.html",
                           "reports/table_tiny.csv"], capture_output=True, text=True,
                          env=tiny_grid["env"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (work / "report.html").read_text()


def test_snakemake_html_report_shows_the_tables(tiny_grid: dict, html_report: str) -> None:
    """`snakemake --report`: the family's table is inside the page (not a download only)."""
    import base64

    from test_report import html_cells

    work = tiny_grid["work"]
    page = html_report
    embedded = re.findall(r"data:text/html;[^,]*base64,([A-Za-z0-9+/=]+)", page)
    tables = [base64.b64decode(e).decode() for e in embedded]
    table = next(t for t in tables if "final test accuracy" in t)
    cells = html_cells(table)
    csv = pd.read_csv(work / "reports" / "table_tiny.csv")
    ccl = csv[(csv["method"] == "ccl") & (csv["alpha"] == 0.1)].iloc[0]
    row = next(r for r in cells if r[:4] == ["synthetic", "mlp", "ring-4", "0.1"])
    assert f"{ccl['consensus_acc_mean']:.2f}" in " ".join(row)
    assert any("completed" in r for r in cells)  # the status counts are there too


def _page_variable(page: str, name: str):
    """A JSON value the report page assigns to a JavaScript variable (``var name = ...;``)."""
    value = re.search(rf"<script id=\"[\w-]+\">\s*var {name} = (.*?);\s*</script>", page,
                      re.DOTALL)
    assert value is not None, name
    return json.loads(value.group(1))


def test_snakemake_report_opens_on_the_answer(html_report: str) -> None:
    """The landing page (workflow/report/workflow.rst) names the family and opens, in one click
    each, the paired differences (the table at its #paired section, which says why it is empty
    here: the tiny grid has ccl without its base qgm), the table and every figure, each figure
    with the first paragraph of its caption."""
    import base64
    import html

    from benchmark.report import FIGURES

    landing = _page_variable(html_report, "workflow_desc")
    results = _page_variable(html_report, "results")
    assert '<h3 id="landing-tiny">tiny</h3>' in landing
    clicks = {}
    for link in re.finditer(r"<a href=\"#\" onclick='([^']*)'>([^<]*)</a>", landing):
        call, text = html.unescape(link.group(1)), link.group(2)
        opened = re.fullmatch(r'app\.setView\(\{navbarMode: "resultinfo", resultPath: "([^"]+)", '
                              r'content: "(html|img)", contentPath: results\["([^"]+)"\]'
                              r'\.data_uri \+ "(#\w+)?"\}\); return false;', call)
        assert opened is not None, call
        path, _, key, anchor = opened.groups()
        assert key == path and results[path]["data_uri"].startswith("data:")
        clicks[text] = (path, anchor)
    assert clicks["the paired differences"] == ("reports/table_tiny.html", "#paired")
    assert clicks["the accuracy table"] == ("reports/table_tiny.html", None)
    table = base64.b64decode(results["reports/table_tiny.html"]["data_uri"].split(",")[1]).decode()
    assert "<h2 id='paired'>" in table and "add the base to grid.methods" in table
    for name in FIGURES:
        assert clicks[f"{name}.png"] == (f"reports/figures/tiny/{name}.png", None)
        caption = (REPO / "workflow" / "report" / f"{name}.rst").read_text().split("\n\n")[0]
        first_words = " ".join(caption.replace("*", "").replace("``", "").split()[:6])
        item = next(li for li in landing.split("<li>") if f">{name}.png</a>" in li)
        assert first_words in " ".join(item.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: dict | None = None) -> dict:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    # the first request opens the store and imports its backend: seconds, more on a loaded box
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read() or b"{}")


def test_mlflow_ui_server_shows_the_family(tiny_grid: dict, tmp_path: Path) -> None:
    """`mlflow server` over the store the grid wrote: experiment and runs via its REST API."""
    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", tiny_grid["uri"],
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
        start_new_session=True,  # its own process group: stopped with its workers below
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                assert time.time() < deadline, "mlflow server did not start"
                time.sleep(1)
        experiment = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")
        exp_id = experiment["experiment"]["experiment_id"]
        found = _get(f"{base}/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [exp_id], "max_results": 100})
        runs = found["runs"]
        assert len(runs) == 4
        names = {r["info"]["run_name"] for r in runs}
        assert "ccl ring-4 a0.1 s0" in names
        assert {r["info"]["status"] for r in runs} == {"FINISHED"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
