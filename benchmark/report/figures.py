"""The figures of a report, and of one run (MLflow artifacts).

Reading rules every figure follows: a method has one colour everywhere (:func:`method_color`,
fixed by the preset table, not by which methods a figure happens to show); the tuned protocol is
the same colour, dashed or hatched; one legend per figure, outside the panels; bands and whiskers
say in the legend what they are; panels that are compared share their y-range; a figure the grid
cannot fill says which axis of the family file would fill it.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure  # the OO API: no pyplot state, no display, thread-safe
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..methods import METHODS
from ..metrics import EpochRecord, RunMetrics
from .load import RunResult
from .tables import (
    base_method,
    label_order,
    method_order,
    unstable_epochs,
    with_labels,
)

GRAPH = ["dataset", "model", "topology", "n_agents"]
ABLATION = ("ccl-mv", "ccl-dv", "ccl")
FIGURES = ("learning_curves", "ablation", "heterogeneity", "scaling_agents", "spectral_gap",
           "overhead")
ACC_LABEL = "consensus test accuracy (%)"
BAND = "band: mean ± 1 std over seeds"
WHISKER = "whiskers: mean ± 1 std over seeds"
_PALETTE = colormaps["tab10"]


def method_color(method: str) -> tuple[float, float, float, float]:
    """The colour of a method (or ``method (protocol)`` label) in every figure: its place in the
    preset table picks a tab10 colour; other names take one of the two spare colours. Labels
    such as ``ccl (tuned)`` or ``ccl ÷ qgm`` take the colour of their first method."""
    name = re.split(r" \(| ÷ ", method)[0]
    names = list(METHODS)
    index = names.index(name) if name in names else len(names) + zlib.crc32(name.encode()) % 2
    return _PALETTE(index % _PALETTE.N)


def _style(label: str) -> dict[str, Any]:
    tuned = label.endswith("(tuned)")
    return {"color": method_color(label), "linestyle": "--" if tuned else "-"}


def _bar_style(label: str) -> dict[str, Any]:
    return {"color": method_color(label), "hatch": "//" if label.endswith("(tuned)") else None}


# --------------------------------------------------------------------------- layout helpers
def placeholder(title: str, message: str) -> Figure:
    fig = Figure(figsize=(7, 2.5))
    ax = fig.subplots()
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def _grid(rows: list, cols: list, width: float = 4.6, height: float = 3.4,
          sharey: bool | str = "row") -> tuple[Figure, dict[tuple, Any]]:
    """Panels rows x cols (e.g. graph x alpha), y shared per row; returns {(row, col): ax}."""
    fig = Figure(figsize=(width * len(cols) + 2.2, height * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False, sharey=sharey)
    return fig, {(r, c): axes[i, j] for i, r in enumerate(rows) for j, c in enumerate(cols)}


def _legend(fig: Figure, extra: list | None = None, title: str | None = None) -> None:
    """One legend for the whole figure, right of the panels (never over data), in label order."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    for handle in extra or []:
        handles.setdefault(handle.get_label(), handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8,
                   title=title, title_fontsize=8)


def _graph_title(key: tuple) -> str:
    dataset, model, topo, n = key
    return f"{dataset}/{model}, {topo}-{n}"


def _unused(axes: dict[tuple, Any], used: set[tuple]) -> None:
    for key, ax in axes.items():
        if key not in used:
            ax.axis("off")


def _epoch_panels(frame: pd.DataFrame, ylabel: str) -> tuple[Figure, list[tuple[Any, Any]]]:
    """Per-epoch figures: a panel per (graph, alpha) (rows = graphs, columns = alpha, y shared),
    titled, with epoch on x; returns the figure and (panel, its rows) pairs; empty panels off."""
    graphs = sorted(frame.groupby(GRAPH).groups)
    alphas = sorted(frame["alpha"].unique())
    fig, axes = _grid(graphs, alphas, sharey=True)
    panels, used = [], set()
    for (*graph, alpha), sub in frame.groupby([*GRAPH, "alpha"], sort=True):
        ax = axes[(tuple(graph), alpha)]
        used.add((tuple(graph), alpha))
        ax.set_title(f"{_graph_title(tuple(graph))}, alpha={alpha:g}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        panels.append((ax, sub))
    _unused(axes, used)
    return fig, panels


# --------------------------------------------------------------------------- family figures
def learning_curves_figure(results: Sequence[RunResult]) -> Figure:
    """Consensus test accuracy per epoch: rows = graphs, columns = alpha; mean line and ± std
    band over the completed seeds per method; unstable runs drawn alone (dotted, x at the
    flagged epochs)."""
    runs = _curves(results)
    if runs.empty:
        return placeholder("Learning curves", "no completed run with evaluations")
    fig, panels = _epoch_panels(runs, ACC_LABEL)
    for ax, sub in panels:
        for label in label_order(sub):
            mine = sub[sub["label"] == label]
            curves = pd.concat(list(mine["curve"]), axis=1)
            mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=1).fillna(0)
            ax.plot(mean.index, mean.values, label=label, **_style(label))
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15,
                            color=method_color(label), linewidth=0)
            for _, run in mine[mine["unstable_epochs"].map(bool)].iterrows():
                _mark_unstable(ax, run["curve"], run["unstable_epochs"], label)
    extra = [Patch(facecolor="grey", alpha=0.3, label=BAND)]
    if runs["unstable_epochs"].map(bool).any():
        extra.append(Line2D([], [], color="black", linestyle=":", marker="x",
                            label="unstable run (loss jumped; x = flagged epoch)"))
    _legend(fig, extra)
    return fig


def _curves(results: Sequence[RunResult]) -> pd.DataFrame:
    """Completed runs with evaluations: their axes, label and consensus-accuracy curve."""
    from .tables import runs_frame

    if not results:
        return pd.DataFrame()
    runs = runs_frame(results)
    runs["unstable_epochs"] = [unstable_epochs(r.metrics) for r in results]
    return runs[runs["curve"].map(len) > 0].reset_index(drop=True)


def _mark_unstable(ax, curve: pd.Series, epochs: list[int], label: str) -> None:
    ax.plot(curve.index, curve.values, linestyle=":", linewidth=1, color=method_color(label),
            label=f"_unstable {label}")
    flagged = [curve.index[curve.index >= e].min() for e in epochs if (curve.index >= e).any()]
    ax.plot(flagged, curve.loc[flagged].values, "x", color=method_color(label), markersize=7,
            label=f"_unstable {label}")


def _bars(ax, table: pd.DataFrame, x_key: str, labels: list[str]) -> None:
    xs = sorted(table[x_key].unique())
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        sub = table[table["label"] == label].set_index(x_key).reindex(xs)
        pos = np.arange(len(xs)) + (i - (len(labels) - 1) / 2) * width
        ax.bar(pos, sub["consensus_acc_mean"], width, yerr=sub["consensus_acc_std"].fillna(0),
               label=label, capsize=3, **_bar_style(label))
    ax.set_xticks(np.arange(len(xs)), [f"{x:g}" for x in xs])


def _whisker() -> Line2D:
    return Line2D([], [], color="black", marker="|", linestyle="none", markersize=10,
                  label=WHISKER)


def ablation_figure(summary: pd.DataFrame) -> Figure:
    """Base optimiser vs ``ccl-mv`` vs ``ccl-dv`` vs ``ccl``, per alpha (grouped bars), one
    panel per graph, one y-range."""
    methods = [m for m in (base_method("ccl"), *ABLATION) if m in set(summary["method"])]
    if not {"ccl-mv", "ccl-dv"} & set(methods):
        return placeholder("CCL ablation", "the grid has neither ccl-mv nor ccl-dv: add them "
                           "(with ccl and qgm) to grid.methods to fill it, as the digits and "
                           "cifar10 families do")
    table = summary[summary["method"].isin(methods)]
    groups = list(table.groupby(GRAPH, sort=True))
    fig, axes = _grid([0], [key for key, _ in groups], sharey=True)
    for key, sub in groups:
        ax = axes[(0, key)]
        _bars(ax, sub, "alpha", label_order(table))
        ax.set_title(_graph_title(key), fontsize=9)
        ax.set_xlabel("Dirichlet alpha")
        ax.set_ylabel(ACC_LABEL)
        ax.grid(axis="y", alpha=0.3)
    _legend(fig, [_whisker()])
    return fig


def heterogeneity_figure(results: Sequence[RunResult]) -> Figure:
    """Mean ``L_mv`` per epoch (log scale): rows = graphs, columns = alpha, one line per method
    that logged it (baselines with ``log_cross_features: true``)."""
    rows = []
    for result in results:
        metrics = result.metrics
        if not metrics.completed:
            continue
        for rec in metrics.history:
            if rec.l_mv is not None and math.isfinite(rec.l_mv):
                rows.append({**_axes(metrics), "epoch": rec.epoch, "l_mv": rec.l_mv})
    if not rows:
        return placeholder("Heterogeneity (L_mv)", "no run logged L_mv: set "
                           "log_cross_features: true in the family's run: section to fill it "
                           "for the baselines (CCL presets log it always), as digits does")
    hist = with_labels(pd.DataFrame(rows))
    fig, panels = _epoch_panels(hist, "mean L_mv over agents and seeds (log)")
    for ax, sub in panels:
        for label in label_order(sub):
            mean = sub[sub["label"] == label].groupby("epoch")["l_mv"].mean()
            ax.plot(mean.index, mean.values, label=label, **_style(label))
        ax.set_yscale("log")
    _legend(fig)
    return fig


def _axes(metrics: RunMetrics) -> dict[str, Any]:
    cfg, topo = metrics.config, metrics.topology
    return {"dataset": cfg.dataset, "model": cfg.model, "topology": topo.name,
            "n_agents": topo.n_agents, "alpha": cfg.alpha, "method": metrics.method,
            "protocol": metrics.protocol, "seed": cfg.seed}


def _accuracy_lines(ax, sub: pd.DataFrame, x: str) -> None:
    """One line per method: consensus accuracy (mean ± std over seeds) against column ``x``."""
    for label in label_order(sub):
        line = sub[sub["label"] == label].sort_values(x)
        ax.errorbar(line[x], line["consensus_acc_mean"], yerr=line["consensus_acc_std"].fillna(0),
                    marker="o", capsize=3, label=label, **_style(label))


def scaling_agents_figure(summary: pd.DataFrame) -> Figure:
    """Consensus accuracy vs agent count, for graphs run at two or more sizes: rows = graph
    family, columns = alpha."""
    sizes = summary.groupby(["dataset", "model", "topology"])["n_agents"].nunique()
    scaled = sizes[sizes > 1]
    if scaled.empty:
        return placeholder("Accuracy vs agent count", "every graph runs at one size: list a "
                           "topology at several n_agents in grid.topologies to fill it (e.g. "
                           "the cifar10 family's ring at 8 to 40 agents)")
    table = summary.set_index(["dataset", "model", "topology"]).loc[scaled.index].reset_index()
    rows = sorted(table.groupby(["dataset", "model", "topology"]).groups)
    alphas = sorted(table["alpha"].unique())
    fig, axes = _grid(rows, alphas)
    used = set()
    for (*row, alpha), sub in table.groupby(["dataset", "model", "topology", "alpha"]):
        ax = axes[(tuple(row), alpha)]
        used.add((tuple(row), alpha))
        _accuracy_lines(ax, sub, "n_agents")
        ax.set_title(f"{row[0]}/{row[1]}, {row[2]}, alpha={alpha:g}", fontsize=9)
        ax.set_xlabel("number of agents")
        ax.set_ylabel(ACC_LABEL)
        ax.grid(alpha=0.3)
    _unused(axes, used)
    _legend(fig, [_whisker()])
    return fig


def spectral_gap_figure(summary: pd.DataFrame) -> Figure:
    """Consensus accuracy vs the spectral gap of the mixing matrix (one point per graph and
    size): rows = dataset/model, columns = alpha."""
    if summary[["topology", "n_agents"]].drop_duplicates().shape[0] < 2:
        return placeholder("Accuracy vs spectral gap", "the grid has a single graph: add graphs "
                           "of different connectivity to grid.topologies to fill it (e.g. the "
                           "cifar10 family's ring, paper-dyck and paper-torus)")
    rows = sorted(summary.groupby(["dataset", "model"]).groups)
    alphas = sorted(summary["alpha"].unique())
    fig, axes = _grid(rows, alphas)
    for (*row, alpha), sub in summary.groupby(["dataset", "model", "alpha"]):
        ax = axes[(tuple(row), alpha)]
        _accuracy_lines(ax, sub, "spectral_gap")
        for _, g in sub.drop_duplicates(["topology", "n_agents"]).iterrows():
            ax.annotate(f"{g['topology']}-{g['n_agents']}", (g["spectral_gap"], 0),
                        xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                        va="bottom", ha="right", alpha=0.6)
        ax.set_xscale("log")
        ax.set_title(f"{row[0]}/{row[1]}, alpha={alpha:g}", fontsize=9)
        ax.set_xlabel("spectral gap of W (log)")
        ax.set_ylabel(ACC_LABEL)
        ax.grid(alpha=0.3)
    _legend(fig, [_whisker()])
    return fig


def overhead_figure(overhead: pd.DataFrame) -> Figure:
    """Iteration time and bytes per agent of each method that has a base optimiser in the grid,
    divided by that base's (e.g. ccl ÷ qgm), per graph; 1.0 = same cost."""
    compared = overhead[overhead["base"].notna() & (overhead["base"] != overhead["method"])]
    if compared.empty:
        return placeholder("Overhead", "no method ran beside its base optimiser: add e.g. qgm "
                           "next to ccl in grid.methods to fill it")
    compared = compared.assign(graph=compared["topology"] + "-" + compared["n_agents"].astype(str),
                               label=compared["method"] + " ÷ " + compared["base"])
    graphs = list(compared.sort_values(["topology", "n_agents"])["graph"].unique())
    labels = [label for m in method_order(compared["method"])
              for label in sorted(compared.loc[compared["method"] == m, "label"].unique())]
    fig = Figure(figsize=(2 * max(4.0, 0.5 * len(graphs) * len(labels) + 1.5) + 2.2, 3.8),
                 layout="constrained")
    width = 0.8 / len(labels)
    for ax, col, what in zip(fig.subplots(1, 2), ("time_ratio", "bytes_ratio"),
                             ("time per iteration", "bytes per agent per iteration"), strict=True):
        for i, label in enumerate(labels):
            sub = compared[compared["label"] == label].groupby("graph")[col].mean()
            pos = np.arange(len(graphs)) + (i - (len(labels) - 1) / 2) * width
            ax.bar(pos, sub.reindex(graphs).values, width, label=label,
                   color=method_color(label))
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(graphs)), graphs)
        ax.set_ylabel("method ÷ its base optimiser")
        ax.set_title(f"{what}, relative to the base optimiser", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    _legend(fig, title="method ÷ base (mean over alphas, seeds)")
    return fig


def family_figures(results: Sequence[RunResult], summary: pd.DataFrame,
                   overhead: pd.DataFrame) -> dict[str, Figure]:
    return {
        "learning_curves": learning_curves_figure(results),
        "ablation": ablation_figure(summary),
        "heterogeneity": heterogeneity_figure(results),
        "scaling_agents": scaling_agents_figure(summary),
        "spectral_gap": spectral_gap_figure(summary),
        "overhead": overhead_figure(overhead),
    }


# --------------------------------------------------------------------------- one run
def partition_figure(histogram: list[list[int]]) -> Figure:
    """Heatmap of samples per (agent, class): what a Dirichlet alpha does to the shards."""
    data = np.asarray(histogram)
    fig = Figure(figsize=(0.45 * data.shape[1] + 2.5, 0.25 * data.shape[0] + 1.5))
    ax = fig.subplots()
    image = ax.imshow(data, aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_xlabel("class")
    ax.set_ylabel("agent")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("partition: samples per agent and class")
    return fig


_Value = Callable[[EpochRecord], float | None]
_ACCURACIES: tuple[tuple[_Value, str], ...] = (
    (lambda r: r.consensus_acc, "consensus model"),
    (lambda r: r.local_acc_mean, "local models (mean)"))
_LOSSES: tuple[tuple[_Value, str], ...] = (
    (lambda r: r.train_ce, "train_ce"), (lambda r: r.l_mv, "l_mv"), (lambda r: r.l_dv, "l_dv"))


def run_curves_figure(history: Sequence[EpochRecord]) -> Figure:
    """One run's learning curves: accuracies (left) and training losses (right) per epoch."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    acc, loss = fig.subplots(1, 2)
    for ax, curves in ((acc, _ACCURACIES), (loss, _LOSSES)):
        for value, label in curves:
            pts = [(r.epoch, v) for r in history
                   if (v := value(r)) is not None and math.isfinite(v)]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=label)
    acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    loss.set(xlabel="epoch", ylabel="loss", title="training losses", yscale="log")
    for ax in (acc, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    return fig

