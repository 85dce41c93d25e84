"""Reports from hand-written metrics.json files: hand-computed means, stds, counts and ratios."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.metrics import RunMetrics
from benchmark.report import (
    FIGURES,
    RunResult,
    build_report,
    family_figures,
    learning_curves_figure,
    load_results,
    markdown_table,
    method_color,
    overhead_table,
    runs_frame,
    scaling_agents_figure,
    spectral_gap_figure,
    summary_table,
)
from benchmark.report.tables import NOT_PLATEAUED

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(method: str, seed: int, alpha: float, consensus: float | None, local: float | None,
             *, status: str = "completed", epoch_time: float = 1.0, bytes_: float = 100.0,
             l_mv: float | None = None, curve: list[float] | None = None,
             protocol: str | None = None, instability: list[int] | None = None) -> dict:
    """A metrics.json as train.py writes it (benchmark.metrics.RunMetrics); ``curve``:
    consensus accuracy per epoch (default: two epochs ending at the final value, plateaued)."""
    final = {} if consensus is None else {"consensus_acc": consensus, "local_acc_mean": local,
                                          "local_acc_std": 1.0, "consensus_distance": 0.1}
    curve = curve or [(consensus or 10.0) - 0.5, consensus or 10.0]
    history = [{"epoch": e, "lr": 0.1, "train_ce": 2.0 / e, "time_s": epoch_time,
                "consensus_acc": acc, "local_acc_mean": 1.0,
                **({"l_mv": l_mv / e} if l_mv is not None else {})}
               for e, acc in enumerate(curve, start=1)]
    extra = {"protocol": protocol} if protocol else {}
    if instability is not None:
        extra["instability"] = {"threshold": 3.0, "epochs": instability, "max_jump": 4.0}
    return {**extra,
        "status": status, "diverged_epoch": 2 if status == "diverged" else None,
        "config": {"family": "hand", "dataset": "digits", "model": "lenet5", "topology": "ring",
                   "n_agents": 8, "alpha": alpha, "seed": seed, "method": method,
                   "epochs": len(curve)},
        "method": method, "algorithm": "x", "ccl": None, "n_params": 100,
        "topology": {"name": "ring", "n_agents": 8, "diameter": 4, "spectral_gap": 0.2,
                     "mixing": "uniform"},
        "iterations_per_epoch": 10, "history": history, "final": final,
        "partition": {"sizes": [10] * 8, "histogram": [[1] * 10] * 8},
        "communication": {"bytes_per_agent_per_iteration": {"parameters": bytes_ - 10.0,
                                                            "class_statistics": 10.0},
                          "bytes_per_agent_total": bytes_ * 10 * len(curve)},
        "wall_time_s": len(curve) * epoch_time,
    }


def _loaded(runs: list[dict]) -> list[RunResult]:
    """Hand-written metrics as the report reads them (typed, as load_results gives them)."""
    return [RunResult(f"hand/{i}/metrics.json", RunMetrics.parse(run))
            for i, run in enumerate(runs)]


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


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hand")
    for i, run in enumerate(RUNS):
        path = root / "results" / f"run{i}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(run))
    return root / "results"


@pytest.fixture(scope="module")
def built(results_dir: Path) -> dict[str, Path]:
    """The report of RUNS, built once for the tests that read it (figures take seconds)."""
    return build_report([results_dir], results_dir.parent / "reports")


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


def test_build_report_writes_tables_and_figures(built: dict[str, Path]) -> None:
    written = built
    out = written["table_csv"].parent
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


def test_overhead_relative_to_base(built: dict[str, Path]) -> None:
    overhead = pd.read_csv(built["overhead_csv"]).set_index("method")
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
    summary = summary_table(runs_frame(_loaded(results)))
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


# ---------------------------------------------------------------------------- issue 16, 17, 11
def _table(runs: list[dict]) -> pd.DataFrame:
    return summary_table(runs_frame(_loaded(runs)))


def test_paired_difference_hand_computed_with_a_diverged_seed() -> None:
    """ccl vs its base qgm over seeds 0-3: seed 3 of ccl diverged -> left out and counted.

    differences seeds 0, 1, 2: 75-70 = 5, 74-72 = 2, 70-71 = -1 -> mean 2, sample std 3,
    95% CI 2 ± t(0.975, 2) * 3 / sqrt(3) = 2 ± 4.302653 * 1.732051 = 2 ± 7.452413; 2 wins of 3.
    """
    base = [70.0, 72.0, 71.0, 69.0]
    ccl = [75.0, 74.0, 70.0, None]
    runs = [_metrics("qgm", s, 0.1, a, a) for s, a in enumerate(base)]
    runs += [_metrics("ccl", s, 0.1, a, a, status="completed" if a else "diverged")
             for s, a in enumerate(ccl)]
    row = _row(_table(runs), "ccl", 0.1)
    assert row["paired_base"] == "qgm"
    assert (row["paired_pairs"], row["paired_left_out"], row["paired_wins"]) == (3, 1, 2)
    assert row["paired_diff_mean"] == pytest.approx(2.0)
    assert row["paired_ci_low"] == pytest.approx(2.0 - 7.452413, abs=1e-5)
    assert row["paired_ci_high"] == pytest.approx(2.0 + 7.452413, abs=1e-5)
    base_row = _row(_table(runs), "qgm", 0.1)  # a base optimiser has no pair
    assert pd.isna(base_row["paired_base"]) and math.isnan(base_row["paired_pairs"])
    md = markdown_table(_table(runs), "hand")
    assert "| dataset | model | graph | alpha | ccl − qgm |" in md
    assert "| digits | lenet5 | ring-8 | 0.1 | +2.00 [-5.45, +9.45], 2/3 wins (1 left out) |" in md
    csv = pd.read_csv(io.StringIO(_table(runs).to_csv(index=False)))  # what the CSV holds
    assert csv.loc[csv["method"] == "ccl", "paired_wins"].item() == 2


def test_every_ccl_preset_is_paired_with_its_own_base() -> None:
    pairs = {"ccl": "qgm", "ccl-mv": "qgm", "ccl-dv": "qgm", "ccl-dsgdm": "dsgdm-n",
             "ccl-relay": "relaysgd"}
    runs = [_metrics(m, s, 1.0, 60.0 + s + (5.0 if m in pairs else 0.0), 50.0)
            for m in ["dsgdm-n", "qgm", "relaysgd", *pairs] for s in range(2)]
    table = _table(runs).set_index("method")
    for method, base in pairs.items():
        assert table.loc[method, "paired_base"] == base
        assert table.loc[method, "paired_diff_mean"] == pytest.approx(5.0)
        assert table.loc[method, "paired_wins"] == 2
        # identical differences: zero-width interval
        assert table.loc[method, "paired_ci_low"] == pytest.approx(5.0)


def test_protocols_are_separate_columns_and_pairs() -> None:
    runs = [_metrics(m, s, 0.1, acc + s, acc, protocol=p)
            for m, p, acc in (("qgm", "fixed", 60.0), ("ccl", "fixed", 62.0),
                              ("qgm", "tuned", 70.0), ("ccl", "tuned", 75.0))
            for s in range(2)]
    table = _table(runs)
    assert list(table["label"]) == ["qgm (fixed)", "qgm (tuned)", "ccl (fixed)", "ccl (tuned)"]
    tuned = table[table["label"] == "ccl (tuned)"].iloc[0]
    assert tuned["paired_diff_mean"] == pytest.approx(5.0)  # against qgm (tuned), not fixed
    md = markdown_table(table, "hand")
    assert "| qgm (fixed) | qgm (tuned) | ccl (fixed) | ccl (tuned) |" in md
    assert "ccl (tuned) − qgm" in md
    # a single protocol: plain method names
    assert list(_table(runs[:4])["label"]) == ["qgm", "ccl"]


def test_tuned_cells_hold_only_values_tuned_on_their_graph(tmp_path: Path) -> None:
    """The runs are on ring-8 (gamma 1): a study that tuned on ring-16 (the previous layout), at
    another gamma, or that did not record its graph is refused by name (left out with
    --skip-invalid); the ring-8 study's runs are tabled, the footnote says its split's size."""
    own = {"topology": "ring", "n_agents": 8, "torus_rows": None, "degree": 3,
           "mixing": "uniform", "gamma": 1.0}

    def tuned(where: str, method: str, seed: int, graph: dict | None) -> Path:
        run = _metrics(method, seed, 0.1, 70.0 + seed, 60.0, protocol="tuned")
        run["tuned"] = {"values": {"lr": 0.2}, "study": f"studies/hand/{method}/{where}.journal",
                        "val_samples": 144, **({"graph": graph} if graph else {})}
        path = tmp_path / where / f"seed{seed}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(run))
        return path

    for seed in range(2):
        tuned("own", "ccl", seed, own)
    others = {"ring-16": ({"topology": "ring", "n_agents": 16}, "tuned on ring-n16, not on "
                          "ring-n8"),
              "gamma": ({**own, "gamma": 0.5}, "tuned with gamma=0.5 (this run: 1.0)"),
              "unrecorded": (None, "its study did not record the graph it tuned on")}
    for where, (graph, why) in others.items():
        path = tuned(where, "qgm", 0, graph)
        with pytest.raises(UserError, match=rf"{path} is a tuned run whose values do not come "
                           rf"from its own graph's study \({re.escape(why)}\)"):
            load_results([tmp_path / "own", path])
    results = load_results([tmp_path], skip_invalid=True)
    assert sorted(r.path for r in results) == sorted(
        str(tmp_path / "own" / f"seed{s}" / "metrics.json") for s in range(2))
    table = summary_table(runs_frame(results))
    assert table["val_samples"].tolist() == [144]
    md = markdown_table(table, "hand")
    assert "| **70.50 ± 0.71** |" in md and "‡" not in md
    assert "(studies/<family>/<method>/<graph>/alpha<a>: a validation split of 144 samples" in md


@pytest.mark.parametrize(("curves", "plateau", "change"), [
    # 10 epochs: the window is epochs 8-10; flat within 0.6 points -> plateaued
    ([[10, 50, 70, 80, 85, 88, 89, 89.5, 89.8, 90.1]] * 2, True, 0.6),
    # still rising 3 points over the last 20% (mean of two runs rising 2 and 4)
    ([[10, 20, 30, 40, 50, 60, 70, 80, 81, 82], [10, 20, 30, 40, 50, 60, 70, 80, 82, 84]],
     False, 3.0),
    # falling counts too
    ([[10, 50, 70, 80, 85, 88, 89, 90, 88, 86]] * 2, False, -4.0),
])
def test_plateau_flag_on_hand_written_histories(curves, plateau: bool, change: float) -> None:
    runs = [_metrics("qgm", s, 0.1, c[-1], 50.0, curve=c) for s, c in enumerate(curves)]
    runs.append(_metrics("qgm", 9, 0.1, None, None, status="diverged", curve=[10.0] * 10))
    row = _row(_table(runs), "qgm", 0.1)
    assert bool(row["plateau"]) is plateau
    assert row["last_change"] == pytest.approx(change)
    assert (row["diverged"], row["completed"]) == (1, 2)
    md = markdown_table(_table(runs), "hand")
    consensus = md.split("## Mean of local models")[0]
    assert (NOT_PLATEAUED in consensus) is not plateau


def test_plateau_unknown_when_every_seed_diverged_or_one_evaluation() -> None:
    diverged = _table([_metrics("qgm", 0, 0.1, None, None, status="diverged")])
    assert math.isnan(diverged.loc[0, "plateau"])
    single = _table([_metrics("qgm", 0, 0.1, 50.0, 40.0, curve=[50.0])])
    assert math.isnan(single.loc[0, "plateau"])


def test_unstable_runs_are_counted_flagged_and_marked(tmp_path: Path) -> None:
    runs = [_metrics("qgm", 0, 0.1, 90.0, 80.0, curve=[40, 60, 80, 90.0]),
            _metrics("qgm", 1, 0.1, 56.0, 50.0, curve=[50, 20, 45, 56.0], instability=[2, 3]),
            _metrics("qgm", 2, 0.1, 88.0, 80.0, curve=[40, 60, 80, 88.0], instability=[])]
    row = _row(_table(runs), "qgm", 0.1)
    assert row["unstable"] == 1 and row["completed"] == 3
    assert row["consensus_acc_mean"] == pytest.approx((90 + 56 + 88) / 3)  # kept, flagged
    assert "(1 unst.)" in markdown_table(_table(runs), "hand")
    fig = learning_curves_figure(_loaded(runs))
    ax = fig.axes[0]
    marks = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(marks) == 1
    assert list(marks[0].get_xdata()) == [2, 3]
    assert list(marks[0].get_ydata()) == [20, 45]


def _artist_colors(fig) -> list[tuple[str, tuple]]:
    """(label, RGBA) of every labelled line, bar and error bar of a figure."""
    found = []
    for ax in fig.axes:
        for line in ax.get_lines():
            found.append((line.get_label(), to_rgba(line.get_color())))
        for container in ax.containers:
            label = container.get_label()
            if hasattr(container, "patches"):
                found += [(label, to_rgba(p.get_facecolor())) for p in container.patches]
            if getattr(container, "lines", None) and container.lines[0] is not None:
                found.append((label, to_rgba(container.lines[0].get_color())))
    return found


def test_every_figure_gives_a_method_the_same_colour(tmp_path: Path) -> None:
    """Read back from the matplotlib artists: a method has one colour in all figures, whatever
    subset of methods a figure shows."""
    methods = ["dsgdm-n", "qgm", "relaysgd", "ccl", "ccl-mv", "ccl-dv"]
    runs = []
    for n, gap in ((8, 0.2), (16, 0.05)):
        for m in methods:
            for s in range(2):
                run = _metrics(m, s, 0.1, 70.0 + s, 60.0, l_mv=3.0)
                run["config"]["n_agents"] = run["topology"]["n_agents"] = n
                run["topology"]["spectral_gap"] = gap
                runs.append(run)
    summary = summary_table(runs_frame(_loaded(runs)))
    figures = family_figures(_loaded(runs), summary, overhead_table(runs_frame(_loaded(runs))))
    seen: dict[str, set] = {}
    for name, fig in figures.items():
        colors = _artist_colors(fig)
        assert colors, f"{name}: no method artist"
        for label, rgba in colors:
            if label.startswith("_unstable "):
                label = label.removeprefix("_unstable ")
            method = label.split(" ÷ ")[0].split(" (")[0]
            if method in methods:
                seen.setdefault(method, set()).add(rgba)
                assert rgba == to_rgba(method_color(method)), (name, label)
        # one legend for the figure, none inside a panel
        assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes), name
    assert set(seen) == set(methods)
    assert len({next(iter(c)) for c in seen.values()}) == len(methods)  # all distinct
    # the band / whisker meaning is written in the legend
    legend = [t.get_text() for t in figures["learning_curves"].legends[0].get_texts()]
    assert "band: mean ± 1 std over seeds" in legend
    # overhead shows the compared methods only, each divided by its base
    labels = {c.get_label() for ax in figures["overhead"].axes for c in ax.containers}
    assert labels == {"ccl ÷ qgm", "ccl-mv ÷ qgm", "ccl-dv ÷ qgm"}


def test_panels_compared_in_a_row_share_the_y_range() -> None:
    runs = [_metrics(m, 0, a, acc, 50.0) for a, acc in ((0.1, 30.0), (1.0, 90.0))
            for m in ("qgm", "ccl", "ccl-mv")]
    fig = learning_curves_figure(_loaded(runs))
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()


def test_placeholders_say_which_axis_fills_them() -> None:
    runs = [_metrics("dsgdm-n", 0, 0.1, 70.0, 60.0)]
    summary = summary_table(runs_frame(_loaded(runs)))
    figures = family_figures(_loaded(runs), summary, overhead_table(runs_frame(_loaded(runs))))
    for name, axis in (("ablation", "grid.methods"), ("scaling_agents", "grid.topologies"),
                       ("spectral_gap", "grid.topologies"), ("overhead", "grid.methods"),
                       ("heterogeneity", "log_cross_features")):
        text = " ".join(t.get_text() for ax in figures[name].axes for t in ax.texts)
        assert axis in text, name


def test_html_table_holds_the_cells(built: dict[str, Path]) -> None:
    cells = html_cells(built["table_html"].read_text())
    assert ["digits", "lenet5", "ring-8", "0.1", "73.00 ± 3.61", "77.00 ± 2.83 (1 div.)"] in cells
    assert ["digits", "lenet5", "ring-8", "0.1", "62.00 ± 2.00", "72.00 ± 2.83 (1 div.)"] in cells
    # status counts: seeds, completed, diverged, unstable per (setting, method)
    header = next(row for row in cells if "seeds" in row)
    ccl = next(row for row in cells if len(row) == len(header) and "ccl" in row
               and "0.1" in row)
    counts = dict(zip(header, ccl, strict=True))
    assert (counts["seeds"], counts["completed"], counts["diverged"]) == ("3", "2", "1")


def html_cells(text: str) -> list[list[str]]:
    """Rows of every table of an HTML page, as lists of cell texts (th and td)."""
    from html.parser import HTMLParser

    rows: list[list[str]] = []

    class Cells(HTMLParser):
        cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                rows.append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                rows[-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    Cells().feed(text)
    return rows


# ---------------------------------------------------------------------------- issue 25: figures
def _graph(run: dict, topology: str, n: int, gap: float) -> dict:
    run["config"].update(topology=topology, n_agents=n)
    run["topology"].update(name=topology, n_agents=n, spectral_gap=gap)
    return run


def test_learning_curves_fit_each_row_and_keep_overlapping_methods_apart() -> None:
    """Two graphs (rows) x two alphas; qgm, ccl, ccl-mv and ccl-dv on one curve. A row's y range
    is its curves over the second half of the epochs (5-10 of 10) plus 10% of their span: ring-8
    ends in 80..87 -> (79.3, 87.7), ring-16 in 40..47 -> (39.3, 47.7); each method keeps its
    own marker, and a line drawn earlier is wider than the next (its rim shows)."""
    high = [10, 20, 40, 60, 80, 82, 84, 85, 86, 87]
    low = [5, 10, 20, 30, 40, 42, 44, 45, 46, 47]
    methods = ("qgm", "ccl", "ccl-mv", "ccl-dv")
    runs = [_graph(_metrics(m, s, a, c[-1], 50.0, curve=c), "ring", n, 0.2)
            for n, c in ((8, high), (16, low)) for a in (0.1, 1.0) for m in methods
            for s in range(2)]
    fig = learning_curves_figure(_loaded(runs))
    panels = {ax.get_title(): ax for ax in fig.axes}
    for graph, limits in (("ring-8", (79.3, 87.7)), ("ring-16", (39.3, 47.7))):
        row = [ax for title, ax in panels.items() if f", {graph}, " in title]
        assert len(row) == 2
        for ax in row:
            assert ax.get_ylim() == pytest.approx(limits)
            lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
            assert [line.get_label() for line in lines] == ["qgm", "ccl", "ccl-mv", "ccl-dv"]
            assert len({line.get_marker() for line in lines}) == 4
            assert all(line.get_markerfacecolor() == "none" for line in lines)
            widths = [line.get_linewidth() for line in lines]
            assert widths == sorted(widths, reverse=True) and len(set(widths)) == 4
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "y range of a row: its curves\nover the second half of the epochs" in legend


def _whisker_ends(container) -> list[float]:
    """Low and high end of each whisker of an errorbar container, in order, flat."""
    return [float(y) for seg in container.lines[2][0].get_segments() for y in (seg[0][1],
                                                                             seg[1][1])]


def _intervals(rows: pd.DataFrame) -> list[float]:
    """The table's 95% interval ends of the rows, flat (as :func:`_whisker_ends`)."""
    return [float(y) for lo, hi in zip(rows["paired_ci_low"], rows["paired_ci_high"],
                                       strict=True) for y in (lo, hi)]


ABLATION_RUNS = [
    # ring-8, alpha 0.1 and 1: qgm at 80 + seed; ccl +0.5, +1.0, +0.0 over seeds 0-2 (mean 0.5,
    # sample std 0.5, 95% interval 0.5 ± 4.302653 * 0.5 / sqrt(3) = 0.5 ± 1.242069); ccl-mv
    # +0.2 on every seed; ccl-dv -0.1 on every seed (zero-width intervals)
    *[_metrics(m, s, a, 80.0 + s + d[s], 70.0)
      for a in (0.1, 1.0) for s in range(3)
      for m, d in (("qgm", (0, 0, 0)), ("ccl", (0.5, 1.0, 0.0)), ("ccl-mv", (0.2,) * 3),
                   ("ccl-dv", (-0.1,) * 3))],
    # ring-16: qgm and ccl only (two bars per group, centred like the four of ring-8)
    *[_graph(_metrics(m, s, a, 60.0 + s + (0.3 if m == "ccl" else 0.0), 50.0), "ring", 16, 0.05)
      for a in (0.1, 1.0) for s in range(3) for m in ("qgm", "ccl")],
]


def test_ablation_headline_is_the_paired_difference_with_its_interval() -> None:
    from benchmark.report import ablation_figure

    summary = _table(ABLATION_RUNS)
    ccl = _row(summary[summary["n_agents"] == 8], "ccl", 0.1)
    assert (ccl["paired_diff_mean"], ccl["paired_ci_low"], ccl["paired_ci_high"]) == \
        pytest.approx((0.5, 0.5 - 1.242069, 0.5 + 1.242069), abs=1e-5)
    fig = ablation_figure(summary)
    difference = [ax for ax in fig.axes if ax.get_ylabel() == "preset − qgm (points)"]
    accuracy = [ax for ax in fig.axes if ax.get_ylabel() == "consensus test accuracy (%)"]
    assert len(difference) == len(accuracy) == 2
    for ax in difference:
        n = 8 if "ring-8" in ax.get_title() else 16
        assert any(list(line.get_ydata()) == [0, 0] for line in ax.get_lines())  # zero line
        rows = summary[(summary["n_agents"] == n) & summary["paired_base"].notna()]
        bars = [c for c in ax.containers if hasattr(c, "patches")]
        assert {c.get_label() for c in bars} == {f"{m} − qgm" for m in rows["method"]}
        for container in bars:
            mine = rows[rows["label"] == container.get_label().split(" − ")[0]].sort_values(
                "alpha")
            heights = [p.get_height() for p in container.patches]
            assert heights == pytest.approx(list(mine["paired_diff_mean"]))
            assert _whisker_ends(container.errorbar) == pytest.approx(_intervals(mine))
    # every group of bars (difference) and of points (accuracy) is centred on its tick
    for ax in fig.axes:
        centres: dict[int, list[float]] = {}
        for container in ax.containers:
            if hasattr(container, "patches"):
                xs = [p.get_x() + p.get_width() / 2 for p in container.patches]
            elif container.lines[0] is not None:
                xs = list(container.lines[0].get_xdata())
            else:
                continue
            for x in xs:
                centres.setdefault(round(x), []).append(x)
        assert sorted(centres) == list(ax.get_xticks()) == [0, 1]
        for tick, xs in centres.items():
            assert sum(xs) / len(xs) == pytest.approx(tick)
            assert len(set(xs)) == len(xs)  # side by side, not on top of each other
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "whiskers of a difference:\n95% Student-t interval over the paired seeds" in legend


def test_overhead_bars_are_centred_on_their_graph() -> None:
    """ring-8 has ccl and ccl-mv beside qgm, ring-16 only ccl: its one bar sits on its tick."""
    runs = [_metrics(m, 0, 0.1, 70.0, 60.0) for m in ("qgm", "ccl", "ccl-mv")]
    runs += [_graph(_metrics(m, 0, 0.1, 70.0, 60.0), "ring", 16, 0.05) for m in ("qgm", "ccl")]
    from benchmark.report import overhead_figure

    fig = overhead_figure(overhead_table(runs_frame(_loaded(runs))))
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["ring-8", "ring-16"]
        centres: dict[int, list[float]] = {}
        for container in ax.containers:
            for p in container.patches:
                centres.setdefault(round(p.get_x() + p.get_width() / 2), []).append(
                    p.get_x() + p.get_width() / 2)
        assert {k: len(v) for k, v in centres.items()} == {0: 2, 1: 1}
        assert [sum(v) / len(v) for _, v in sorted(centres.items())] == pytest.approx([0, 1])


def test_scaling_and_spectral_gap_figures_lead_with_the_paired_difference() -> None:
    """qgm and ccl on ring-8 (gap 0.2) and ring-16 (0.05): a row of ccl − qgm above the
    accuracies, whiskers = the table's 95% interval, a zero line."""
    runs = [_graph(_metrics(m, s, 0.1, 70.0 + s + (n / 8) * (m == "ccl") * (1 + s / 4), 60.0),
                   "ring", n, gap)
            for n, gap in ((8, 0.2), (16, 0.05)) for m in ("qgm", "ccl") for s in range(3)]
    summary = _table(runs)
    paired = summary[summary["method"] == "ccl"]
    for figure, x in ((scaling_agents_figure(summary), "n_agents"),
                      (spectral_gap_figure(summary), "spectral_gap")):
        top, bottom = figure.axes[0], figure.axes[1]
        assert top.get_ylabel() == "CCL preset − its base (points)"
        assert bottom.get_ylabel() == "consensus test accuracy (%)"
        assert any(list(line.get_ydata()) == [0, 0] for line in top.get_lines())
        (container,) = top.containers
        assert container.get_label() == "ccl − qgm"
        mine = paired.sort_values(x)
        assert list(container.lines[0].get_xdata()) == list(mine[x])
        assert list(container.lines[0].get_ydata()) == pytest.approx(list(mine["paired_diff_mean"]))
        assert _whisker_ends(container) == pytest.approx(_intervals(mine))
        assert {c.get_label() for c in bottom.containers} == {"qgm", "ccl"}


def _overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    """Pairs of tick labels (drawn, non-empty, inside the view) whose text boxes intersect."""
    fig.draw_without_rendering()
    overlaps = []
    for ax in fig.axes:
        for axis, view in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(view)
            shown = []
            for locs, labels in ((axis.get_majorticklocs(), axis.get_majorticklabels()),
                                 (axis.get_minorticklocs(), axis.get_minorticklabels())):
                shown += [label for loc, label in zip(locs, labels, strict=False)
                          if lo <= loc <= hi and label.get_visible() and label.get_text()]
            boxes = [(label.get_text(), label.get_window_extent()) for label in shown]
            overlaps += [(a, b) for i, (a, box_a) in enumerate(boxes)
                         for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]
    return overlaps


@pytest.mark.parametrize("gaps", [(0.013, 0.051, 0.195, 0.5), (1e-4, 0.003, 0.2, 1.0),
                                  (0.3, 0.35, 0.5)])
def test_spectral_gap_tick_labels_do_not_overlap(gaps) -> None:
    runs = [_graph(_metrics(m, s, 0.1, 70.0 + s + i, 60.0), "ring", 8 * (i + 1), gap)
            for i, gap in enumerate(gaps) for m in ("qgm", "ccl") for s in range(2)]
    fig = spectral_gap_figure(_table(runs))
    assert _overlapping_tick_labels(fig) == []
    labelled = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert all("\\times" not in text for text in labelled)  # plain numbers, not 2×10⁻²


def test_family_figures_have_no_overlapping_tick_labels() -> None:
    summary = _table(ABLATION_RUNS)
    figures = family_figures(_loaded(ABLATION_RUNS), summary,
                             overhead_table(runs_frame(_loaded(ABLATION_RUNS))))
    for name, fig in figures.items():
        assert _overlapping_tick_labels(fig) == [], name
