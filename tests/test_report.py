"""Reports from hand-written metrics.json files: hand-computed means, stds, counts and ratios."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.report import (
    FIGURES,
    build_report,
    load_results,
    runs_frame,
    scaling_agents_figure,
    spectral_gap_figure,
    summary_table,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(method: str, seed: int, alpha: float, consensus: float | None, local: float | None,
             *, status: str = "completed", epoch_time: float = 1.0, bytes_: float = 100.0,
             l_mv: float | None = None) -> dict:
    """A minimal metrics.json as train.py writes it (the fields the report reads)."""
    final = {} if consensus is None else {"consensus_acc": consensus, "local_acc_mean": local,
                                          "local_acc_std": 1.0, "consensus_distance": 0.1}
    history = [{"epoch": e, "lr": 0.1, "train_ce": 2.0 / e, "time_s": epoch_time,
                "consensus_acc": (consensus or 10.0) * e / 2, "local_acc_mean": 1.0,
                **({"l_mv": l_mv / e} if l_mv is not None else {})} for e in (1, 2)]
    return {
        "status": status, "diverged_epoch": 2 if status == "diverged" else None,
        "config": {"family": "hand", "dataset": "digits", "model": "lenet5", "topology": "ring",
                   "n_agents": 8, "alpha": alpha, "seed": seed, "method": method},
        "method": method, "algorithm": "x",
        "topology": {"name": "ring", "n_agents": 8, "diameter": 4, "spectral_gap": 0.2},
        "iterations_per_epoch": 10, "history": history, "final": final,
        "communication": {"bytes_per_agent_per_iteration": {"parameters": bytes_ - 10.0,
                                                            "class_statistics": 10.0}},
        "wall_time_s": 2 * epoch_time,
    }


RUNS = [
    # alpha 0.1, dsgdm-n: consensus 70, 72, 77 -> mean 73, sample std sqrt(26/2) = sqrt(13)
    #                     local     60, 62, 64 -> mean 62, sample std 2
    _metrics("dsgdm-n", 0, 0.1, 70.0, 60.0, l_mv=4.0),
    _metrics("dsgdm-n", 1, 0.1, 72.0, 62.0, l_mv=4.0),
    _metrics("dsgdm-n", 2, 0.1, 77.0, 64.0, l_mv=4.0),
    # alpha 0.1, ccl: 75, 79 -> mean 77, std sqrt(8); seed 2 diverged (left out, counted)
    _metrics("ccl", 0, 0.1, 75.0, 70.0, epoch_time=1.5, bytes_=130.0, l_mv=2.0),
    _metrics("ccl", 1, 0.1, 79.0, 74.0, epoch_time=1.5, bytes_=130.0, l_mv=2.0),
    _metrics("ccl", 2, 0.1, None, None, status="diverged", epoch_time=1.5, bytes_=130.0),
    # alpha 1.0: one seed each -> no std; ccl diverged on its only seed
    _metrics("dsgdm-n", 0, 1.0, 90.0, 88.0),
    _metrics("ccl", 0, 1.0, None, None, status="diverged", epoch_time=1.5, bytes_=130.0),
]


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    for i, run in enumerate(RUNS):
        path = tmp_path / "results" / f"run{i}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(run))
    return tmp_path / "results"


def _row(table: pd.DataFrame, method: str, alpha: float) -> pd.Series:
    rows = table[(table["method"] == method) & (table["alpha"] == alpha)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_summary_means_stds_and_counts(results_dir: Path) -> None:
    table = summary_table(runs_frame(load_results([results_dir])))
    assert len(table) == 4  # (alpha, method) pairs
    base = _row(table, "dsgdm-n", 0.1)
    assert base["consensus_acc_mean"] == pytest.approx(73.0)
    assert base["consensus_acc_std"] == pytest.approx(math.sqrt(13.0))
    assert base["local_acc_mean"] == pytest.approx(62.0)
    assert base["local_acc_std"] == pytest.approx(2.0)
    assert (base["seeds"], base["completed"], base["diverged"]) == (3, 3, 0)
    ccl = _row(table, "ccl", 0.1)
    assert ccl["consensus_acc_mean"] == pytest.approx(77.0)
    assert ccl["consensus_acc_std"] == pytest.approx(math.sqrt(8.0))
    assert ccl["local_acc_mean"] == pytest.approx(72.0)
    assert (ccl["seeds"], ccl["completed"], ccl["diverged"]) == (3, 2, 1)
    single = _row(table, "dsgdm-n", 1.0)
    assert single["consensus_acc_mean"] == pytest.approx(90.0)
    assert math.isnan(single["consensus_acc_std"])
    gone = _row(table, "ccl", 1.0)
    assert math.isnan(gone["consensus_acc_mean"]) and gone["diverged"] == 1
    # rows sorted by setting, methods in preset order (dsgdm-n before ccl)
    assert list(table["method"]) == ["dsgdm-n", "ccl", "dsgdm-n", "ccl"]


def test_build_report_writes_tables_and_figures(results_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    written = build_report([results_dir], out)
    csv = pd.read_csv(out / "table_hand.csv")
    assert csv.loc[(csv["method"] == "dsgdm-n") & (csv["alpha"] == 0.1),
                   "consensus_acc_std"].item() == pytest.approx(math.sqrt(13.0))
    md = (out / "table_hand.md").read_text()
    consensus = md.split("## Mean of local models")[0]
    # best of the row in bold; the diverged seed is reported, not averaged
    row = "| digits | lenet5 | ring-8 | 0.1 | 73.00 ± 3.61 | **77.00 ± 2.83 (1 div.)** |"
    assert row in consensus
    assert "| digits | lenet5 | ring-8 | 1 | **90.00** | diverged (1/1) |" in consensus
    local = md.split("## Mean of local models")[1]
    assert "| 62.00 ± 2.00 | **72.00 ± 2.83 (1 div.)** |" in local
    for name in FIGURES:
        assert written[name] == out / "figures" / "hand" / f"{name}.png"
        assert written[name].read_bytes().startswith(PNG_MAGIC)
    # no stray temporary files from the atomic writes
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_overhead_relative_to_base(results_dir: Path, tmp_path: Path) -> None:
    build_report([results_dir], tmp_path / "reports")
    overhead = pd.read_csv(tmp_path / "reports" / "overhead_hand.csv").set_index("method")
    # 2 epochs x 1.0 s / (2 x 10 iterations) = 0.1 s; ccl: 1.5 s per epoch -> 0.15 s
    assert overhead.loc["dsgdm-n", "time_per_iteration_s"] == pytest.approx(0.1)
    assert overhead.loc["ccl", "time_per_iteration_s"] == pytest.approx(0.15)
    # ccl's base optimiser (qgm) is not in this grid: compared with dsgdm-n instead
    assert overhead.loc["ccl", "base"] == "dsgdm-n"
    assert overhead.loc["ccl", "time_ratio"] == pytest.approx(1.5)
    assert overhead.loc["ccl", "bytes_ratio"] == pytest.approx(1.3)
    assert overhead.loc["dsgdm-n", "time_ratio"] == pytest.approx(1.0)


def test_overhead_uses_training_phases_when_present(tmp_path: Path) -> None:
    run = _metrics("dsgdm-n", 0, 0.1, 70.0, 60.0, epoch_time=9.0)
    for record in run["history"]:
        record["phases"] = {"forward_backward": 0.6, "gossip": 0.4, "eval": 8.0}
    (tmp_path / "metrics.json").write_text(json.dumps(run))
    frame = runs_frame(load_results([tmp_path / "metrics.json"]))
    assert frame.loc[0, "time_per_iteration_s"] == pytest.approx(2 * 1.0 / 20)
    # a baseline's cross-feature passes only log L_mv: not part of its cost; CCL's are
    for record in run["history"]:
        record["phases"]["cross_features"] = 0.5
    (tmp_path / "metrics.json").write_text(json.dumps(run))
    assert runs_frame(load_results([tmp_path / "metrics.json"])).loc[
        0, "time_per_iteration_s"] == pytest.approx(2 * 1.0 / 20)
    run["method"] = "ccl"
    (tmp_path / "metrics.json").write_text(json.dumps(run))
    assert runs_frame(load_results([tmp_path / "metrics.json"])).loc[
        0, "time_per_iteration_s"] == pytest.approx(2 * 1.5 / 20)


def test_cli_report_and_user_errors(results_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(results_dir), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "table_hand.md").is_file()
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_results([bad])


def test_scaling_and_spectral_gap_figures_plot_each_method_mean_per_graph() -> None:
    """Two ring sizes: one line per method through the per-size means over seeds."""
    results = []
    for n, gap in ((8, 0.2), (16, 0.05)):
        for method, base in (("dsgdm-n", 70.0), ("ccl", 75.0)):
            for seed in range(2):  # consensus base + n/8 + seed -> mean base + n/8 + 0.5
                m = _metrics(method, seed, 0.1, base + n / 8 + seed, base)
                m["config"]["n_agents"] = m["topology"]["n_agents"] = n
                m["topology"]["spectral_gap"] = gap
                results.append(m)
    summary = summary_table(runs_frame(results))
    for figure, xs in ((scaling_agents_figure(summary), [8, 16]),
                       (spectral_gap_figure(summary), [0.05, 0.2])):
        ax = figure.axes[0]
        lines = {c.get_label(): c.lines[0] for c in ax.containers}
        assert set(lines) == {"dsgdm-n", "ccl"}
        for method, base in (("dsgdm-n", 70.0), ("ccl", 75.0)):
            x, y = lines[method].get_data()
            assert list(x) == xs
            by_n = {8: base + 1.5, 16: base + 2.5}
            expected = [by_n[8], by_n[16]] if xs == [8, 16] else [by_n[16], by_n[8]]
            assert list(y) == pytest.approx(expected)
