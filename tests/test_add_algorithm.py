"""Adding an algorithm without touching ``benchmark/``: a plugin module defines plain
decentralized SGD (no momentum: gossip, then ``x -= lr g``), registers it and a CCL preset of it,
and is named in ``BENCHMARK_PLUGINS``. Fresh ``python -m benchmark`` processes then train it
(exact resume after a SIGKILL included), report it, and run it in a two-run Snakemake grid.

Everything that sees the plugin runs in a subprocess: the registry of this test process is left
as it was. A plugin that declares no stability analysis is refused at registration, and one that
declares it cannot be analysed is refused at launch unless ``allow_unstable`` is set.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

PLAIN_DSGD = textwrap.dedent('''
    """Plain decentralized SGD: gossip, then x -= lr g (weight decay on), no momentum."""
    from pydantic import Field

    from benchmark.algorithms import Algorithm, Measured, Options, register
    from benchmark.methods import Method, register_preset


    class PlainOptions(Options):
        gossip_rounds: int = Field(1, ge=1, le=4, description="gossip steps per iteration")


    @register
    class PlainDSGD(Algorithm[PlainOptions]):
        name = "dsgd"
        summary = "plain decentralized SGD (no momentum)"
        options_type = PlainOptions

        @classmethod
        def stability(cls, options):
            return Measured("dsgd")  # no closed form: the guard measures it on the run's graph

        @classmethod
        def state_shapes(cls, topology, n_params, options):
            return {}  # nothing beyond the parameters

        @classmethod
        def bytes_per_iteration(cls, topology, n_params, options):
            one = super().bytes_per_iteration(topology, n_params, options)["parameters"]
            return {"parameters": one * options.gossip_rounds}

        def before_gradients(self):
            for _ in range(self.options.gossip_rounds):
                self.state.gossip(self.state.params)

        def apply_gradients(self):
            state = self.state
            state.add_weight_decay(state.grads, state.params)
            state.params.add_(state.grads, alpha=-state.lr)


    register_preset("ccl-dsgd", Method("dsgd", ("lambda_m", "lambda_d"), "plain DSGD + CCL"))
    ''')
UNCHECKED = textwrap.dedent('''
    from benchmark.algorithms import Algorithm, Options, Unanalysed, register


    class NoOptions(Options):
        pass


    @register
    class Unchecked(Algorithm[NoOptions]):
        name = "unchecked"
        summary = "a gossip whose stability nobody analysed"
        options_type = NoOptions

        @classmethod
        def stability(cls, options):
            return Unanalysed("unchecked")

        @classmethod
        def state_shapes(cls, topology, n_params, options):
            return {}

        def apply_gradients(self):
            self.state.gossip(self.state.params)
    ''')
UNDECLARED = textwrap.dedent('''
    from benchmark.algorithms import Algorithm, Options, register


    class NoOptions(Options):
        pass


    @register
    class Undeclared(Algorithm[NoOptions]):  # forgot stability()
        name = "undeclared"
        summary = "a gossip without a stability declaration"
        options_type = NoOptions

        @classmethod
        def state_shapes(cls, topology, n_params, options):
            return {}

        def apply_gradients(self):
            self.state.gossip(self.state.params)
    ''')

ITERATIONS_PER_EPOCH = 4  # 128 training images / 4 agents / batch 8
BASE = ["dataset=synthetic", "synthetic={train_size: 128, test_size: 64, image_size: 8}",
        "model=mlp", "n_agents=4", "batch_size=8", "tracking=false", "threads=1", "device=cpu",
        "epochs=3", "lr=0.05", "family=plug"]
ARGS = [*BASE, "method=dsgd", "gossip_rounds=2"]
KILL_DURING_STEP = textwrap.dedent(f"""
    import os, signal, sys
    from benchmark.swarm import Swarm
    step = Swarm.step
    def dying_step(self, xs, ys):
        if self.iteration == {ITERATIONS_PER_EPOCH + 2}:  # mid-epoch 2, after epoch 1's checkpoint
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, xs, ys)
    Swarm.step = dying_step
    from benchmark.cli import main
    sys.exit(main(sys.argv[1:]))
    """)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    """A folder outside benchmark/ holding the plugin modules."""
    folder = tmp_path_factory.mktemp("plugins")
    for name, source in (("plain_dsgd", PLAIN_DSGD), ("unchecked", UNCHECKED),
                         ("undeclared", UNDECLARED)):
        (folder / f"{name}.py").write_text(source)
    return folder


def _env(plugins: Path, modules: str = "plain_dsgd", **extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(plugins), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "BENCHMARK_PLUGINS": modules,
            "PYTHONHASHSEED": "0", **extra}


def _benchmark(env: dict[str, str], *args: str, victim: str | None = None
               ) -> subprocess.CompletedProcess:
    head = ["-c", victim] if victim else ["-m", "benchmark"]
    return subprocess.run([sys.executable, *head, *args], capture_output=True, text=True,
                          env=env, timeout=600)


def _results(metrics: dict[str, Any]) -> dict[str, Any]:
    """Everything but timings, the resume log and the measured memory peak."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if not (k in ("resumed_after_epochs", "peak_bytes") or k.endswith("_s")
                            or "time" in k or "phase" in k)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(metrics)


def test_train_resume_and_report_a_plugin_algorithm(plugins: Path, tmp_path: Path) -> None:
    env = _env(plugins)
    help_text = _benchmark(env, "train", "--help").stdout
    assert "\n  dsgd          plain decentralized SGD (no momentum)" in help_text
    assert "\n  ccl-dsgd      plain DSGD + CCL" in help_text
    assert "gossip_rounds dsgd, default 1: gossip steps per iteration" in help_text

    reference = tmp_path / "reference"
    done = _benchmark(env, "train", "--out", str(reference), *ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((reference / "metrics.json").read_text())
    assert (metrics["method"], metrics["algorithm"], metrics["status"]) == (
        "dsgd", "dsgd", "completed")
    assert metrics["config"]["gossip_rounds"] == 2
    # two gossip rounds on a ring of 4: 2 neighbours x 2 rounds of P floats per iteration
    sent = metrics["communication"]["bytes_per_agent_per_iteration"]
    assert sent == {"parameters": 4.0 * metrics["n_params"] * 2 * 2}
    assert metrics["history"][-1]["bytes_per_agent"] == sent["parameters"] * ITERATIONS_PER_EPOCH

    # SIGKILL mid-epoch 2, then the same command resumes from epoch 1's checkpoint, exactly
    run = tmp_path / "run"
    killed = _benchmark(env, "train", "--out", str(run), *ARGS, victim=KILL_DURING_STEP)
    assert killed.returncode == -9 and (run / "checkpoint.pt").is_file()
    resumed = _benchmark(env, "train", "--out", str(run), *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1/3" in resumed.stdout
    again = json.loads((run / "metrics.json").read_text())
    assert again["resumed_after_epochs"] == [1]
    assert _results(again) == _results(metrics)

    # the report names the plugin's method and tables its final accuracy
    out = tmp_path / "reports"
    report = _benchmark(env, "report", str(reference), "--out", str(out))
    assert report.returncode == 0, report.stderr[-3000:]
    table = pd.read_csv(out / "table_plug.csv")
    assert table["method"].tolist() == ["dsgd"]
    assert table.loc[0, "consensus_acc_mean"] == pytest.approx(
        metrics["final"]["consensus_acc"])


def test_a_two_run_grid_of_the_plugin_and_its_ccl_preset(plugins: Path, tmp_path: Path) -> None:
    family = {
        "run": {"family": "plug", "dataset": "synthetic", "model": "mlp", "n_agents": 4,
                "synthetic": {"train_size": 128, "test_size": 64, "image_size": 8},
                "epochs": 1, "batch_size": 16, "lr": 0.05, "threads": 1, "tracking": False,
                "run_figures": False, "lambda_m": 0.1, "lambda_d": 0.1, "gossip_rounds": 2},
        "grid": {"alpha": [0.1], "topologies": [{"topology": "ring", "n_agents": 4}],
                 "methods": ["dsgd", "ccl-dsgd"], "seeds": [0]},
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "plug.yaml").write_text(yaml.safe_dump(family))
    env = _env(plugins, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d",
                           str(tmp_path), "--cores", "2", "reports/table_plug.csv"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = tmp_path / "results" / "plug" / "synthetic" / "mlp" / "ring-n4" / "alpha0.1"
    dsgd = json.loads((runs / "dsgd" / "seed0" / "metrics.json").read_text())
    ccl = json.loads((runs / "ccl-dsgd" / "seed0" / "metrics.json").read_text())
    assert (dsgd["algorithm"], ccl["algorithm"]) == ("dsgd", "dsgd")
    assert dsgd["ccl"] is None and ccl["ccl"] == {"lambda_m": 0.1, "lambda_d": 0.1}
    assert "class_statistics" in ccl["communication"]["bytes_per_agent_per_iteration"]
    table = pd.read_csv(tmp_path / "reports" / "table_plug.csv").set_index("method")
    assert list(table.index) == ["dsgd", "ccl-dsgd"]
    assert table.loc["ccl-dsgd", "paired_base"] == "dsgd"  # CCL compared with its base
    assert table.loc["ccl-dsgd", "paired_diff_mean"] == pytest.approx(
        ccl["final"]["consensus_acc"] - dsgd["final"]["consensus_acc"])
    assert math.isfinite(table.loc["dsgd", "consensus_acc_mean"])


def test_a_plugin_without_a_stability_analysis_is_never_launched(plugins: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "run"
    # declared "not analysed": refused at launch, in one line, before any file
    refused = _benchmark(_env(plugins, "unchecked"), "train", "--out", str(out), *BASE,
                         "method=unchecked")
    assert refused.returncode == 2
    line = refused.stderr.strip()
    assert line.startswith("error: allow_unstable: invalid value False; allowed: true for "
                           "unchecked") and "\n" not in line
    assert not out.exists()
    # no stability declaration at all: the plugin cannot even register
    missing = _benchmark(_env(plugins, "undeclared"), "train", "--out", str(out), *BASE,
                         "method=undeclared")
    assert missing.returncode == 2
    line = missing.stderr.strip()
    assert line.startswith("error: register undeclared.Undeclared: declare stability")
    assert not out.exists()
