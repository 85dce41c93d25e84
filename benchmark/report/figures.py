"""The figures of a report, and of one run (MLflow artifacts).

Reading rules every figure follows: a method has one colour and one marker everywhere
(:func:`method_color`, :func:`method_marker`, fixed by the preset table, not by which methods a
figure happens to show); the tuned protocol is the same colour, dashed, hatched or hollow; one
legend per figure, outside the panels; bands and whiskers say in the legend what they are;
panels that are compared (a row) share their y-range; a figure the grid cannot fill says which
axis of the family file would fill it.

Where the question is "does CCL help", the headline is the paired difference of each CCL preset
from its base optimiser (the table's ``paired_*`` columns: mean over seeds, 95% Student-t
interval), drawn against a zero line, with the absolute accuracies in the row below: CCL presets
differ from their base by a point or less, which is invisible on an axis of absolute accuracies.
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
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import ScaledTranslation

from ..methods import METHODS
from ..metrics import EpochRecord, RunMetrics
from .load import RunResult
from .tables import (
    base_method,
    label_order,
    method_order,
    paired_label,
    unstable_epochs,
    with_labels,
)

GRAPH = ["dataset", "model", "topology", "n_agents"]
ABLATION = ("ccl-mv", "ccl-dv", "ccl")
FIGURES = ("learning_curves", "ablation", "heterogeneity", "scaling_agents", "spectral_gap",
           "overhead")
ACC_LABEL = "consensus test accuracy (%)"
DIFF_LABEL = "CCL preset − its base (points)"
BAND = "band: mean ± 1 std over seeds"
WHISKER = "whiskers: mean ± 1 std over seeds"
CI_WHISKER = "whiskers of a difference:\n95% Student-t interval over the paired seeds"
Y_FIT = "y range of a row: its curves\nover the second half of the epochs"
_PALETTE = colormaps["tab10"]
# one marker per palette colour, open so that markers drawn on the same point all show ("x" is
# left for the flagged epochs of unstable runs)
_MARKERS = ("o", "s", "^", "D", "v", "P", "p", "*", "h", "<")
_MARKERS_PER_LINE = 12  # a longer curve carries about this many, staggered per method


def _method_index(method: str) -> int:
    """A method's place in the preset table (other names: one of the two spare places), for
    labels such as ``ccl (tuned)``, ``ccl ÷ qgm`` or ``ccl − qgm`` too (their first method)."""
    name = re.split(r" \(| ÷ | − ", method)[0]
    names = list(METHODS)
    return names.index(name) if name in names else len(names) + zlib.crc32(name.encode()) % 2


def method_color(method: str) -> tuple[float, float, float, float]:
    """The colour of a method (or ``method (protocol)`` label) in every figure: its place in the
    preset table picks a tab10 colour; other names take one of the two spare colours. Labels
    such as ``ccl (tuned)`` or ``ccl ÷ qgm`` take the colour of their first method."""
    return _PALETTE(_method_index(method) % _PALETTE.N)


def method_marker(method: str) -> str:
    """The marker of a method in every figure, picked like its colour: methods whose curves
    coincide (qgm, ccl-mv, ccl-dv and ccl often do) stay told apart by their markers."""
    return _MARKERS[_method_index(method) % len(_MARKERS)]


def _style(label: str) -> dict[str, Any]:
    tuned = "(tuned)" in label
    return {"color": method_color(label), "linestyle": "--" if tuned else "-"}


def _curve_style(label: str, points: int, rank: int, count: int) -> dict[str, Any]:
    """A learning curve that stays visible under the methods drawn after it: the ``rank``-th of
    ``count`` lines of a panel is drawn wider than the next (a curve hidden under another shows
    as its rim), with open markers of its own shape; on long curves about
    :data:`_MARKERS_PER_LINE` of them, staggered between the methods so they do not coincide."""
    step = max(1, math.ceil(points / _MARKERS_PER_LINE))
    width = 1.2 + 2.0 * (count - 1 - rank) / max(count - 1, 1)
    return {**_style(label), "linewidth": width, "marker": method_marker(label),
            "markerfacecolor": "none", "markersize": 6,
            "markevery": ((rank * step) // count, step)}


def _bar_style(label: str) -> dict[str, Any]:
    return {"color": method_color(label), "hatch": "//" if "(tuned)" in label else None}


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
    fig = Figure(figsize=(width * len(cols) + 3.0, height * len(rows)), layout="constrained")
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


def _epoch_panels(frame: pd.DataFrame, ylabel: str, sharey: bool | str = True
                  ) -> tuple[Figure, list[tuple[Any, Any]]]:
    """Per-epoch figures: a panel per (graph, alpha) (rows = graphs, columns = alpha, y shared
    as ``sharey`` says), titled, with epoch on x; returns the figure and (panel, its rows)
    pairs; empty panels off."""
    graphs = sorted(frame.groupby(GRAPH).groups)
    alphas = sorted(frame["alpha"].unique())
    fig, axes = _grid(graphs, alphas, sharey=sharey)
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
    flagged epochs).

    Methods stay in one panel (they are compared there) and stay visible where their curves
    coincide: each has its own open marker and the lines drawn first are wider
    (:func:`_curve_style`). The y range of a row (its panels are compared) fits what the row
    draws over the second half of the epochs, with a margin: that is where methods differ by a
    point or less, which an axis from 20 to 100 squeezes into a few pixels; the early epochs
    run off the bottom of the panel, as the legend says."""
    runs = _curves(results)
    if runs.empty:
        return placeholder("Learning curves", "no completed run with evaluations")
    fig, panels = _epoch_panels(runs, ACC_LABEL, sharey="row")
    late: dict[tuple, list[float]] = {}  # per row (graph): values drawn in the second half
    for ax, sub in panels:
        labels = label_order(sub)
        row = late.setdefault(tuple(sub[GRAPH].iloc[0]), [])
        half = max(float(c.index.max()) for c in sub["curve"]) / 2
        for rank, label in enumerate(labels):
            mine = sub[sub["label"] == label]
            curves = pd.concat(list(mine["curve"]), axis=1)
            mean, std = curves.mean(axis=1), curves.std(axis=1, ddof=1).fillna(0)
            ax.plot(mean.index, mean.values, label=label,
                    **_curve_style(label, len(mean), rank, len(labels)))
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15,
                            color=method_color(label), linewidth=0)
            row += [*(mean - std)[mean.index >= half], *(mean + std)[mean.index >= half]]
            for _, run in mine[mine["unstable_epochs"].map(bool)].iterrows():
                _mark_unstable(ax, run["curve"], run["unstable_epochs"], label)
                row += list(run["curve"][run["curve"].index >= half])
    by_row = {tuple(sub[GRAPH].iloc[0]): ax for ax, sub in panels}
    for key, values in late.items():
        by_row[key].set_ylim(*_fit(values))  # the row's panels share y
    extra = [Patch(facecolor="grey", alpha=0.3, label=BAND)]
    if runs["unstable_epochs"].map(bool).any():
        extra.append(Line2D([], [], color="black", linestyle=":", marker="x",
                            label="unstable run (loss jumped; x = flagged epoch)"))
    extra.append(Line2D([], [], linestyle="none", label=Y_FIT))
    _legend(fig, extra)
    return fig


def _fit(values: Sequence[float], lowest: float = 0.0, highest: float = 100.0
         ) -> tuple[float, float]:
    """y limits around ``values`` (accuracies): a margin of 10% of their span, at least half
    a point, kept within [lowest, highest]."""
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (lowest, highest)
    margin = max(0.1 * (hi - lo), 0.5)
    return max(lo - margin, lowest), min(hi + margin, highest)


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


def _slots(groups: Sequence[Sequence[str]], order: Sequence[str]) -> tuple[dict, float]:
    """Positions of grouped bars or points: group ``i`` (an x tick at ``i``) holds the labels
    ``groups[i]``, drawn side by side in ``order`` and centred on the tick (a group with fewer
    labels than another is centred too, not left in the slots of absent ones); returns
    ``{(i, label): x}`` and the width of one slot."""
    width = 0.8 / max((len(g) for g in groups), default=1)
    slots = {}
    for i, group in enumerate(groups):
        here = [label for label in order if label in group]
        for j, label in enumerate(here):
            slots[(i, label)] = i + (j - (len(here) - 1) / 2) * width
    return slots, width


def _interval(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Each summary row's drawn value ``y`` and whisker ends ``lo``, ``hi``: for ``difference``
    the CCL preset's paired difference from its base with the 95% interval (labels become
    ``ccl − qgm``), for ``accuracy`` the mean consensus accuracy ± 1 std over seeds."""
    if kind == "difference":
        return table.assign(y=table["paired_diff_mean"], lo=table["paired_ci_low"],
                            hi=table["paired_ci_high"], label=table["label"].map(paired_label))
    std = table["consensus_acc_std"].fillna(0)
    mean = table["consensus_acc_mean"]
    return table.assign(y=mean, lo=mean - std, hi=mean + std)


def _errors(frame: pd.DataFrame) -> np.ndarray:
    """Whisker lengths below and above ``y`` (NaN where there is no interval: no whisker)."""
    return np.vstack([frame["y"] - frame["lo"], frame["hi"] - frame["y"]]).astype(float)


def _grouped(ax, table: pd.DataFrame, x_key: str, bars: bool) -> None:
    """One group per value of ``x_key`` (ticks labelled with it), one bar (``bars``) or point
    per label of the group with its whisker (``table`` from :func:`_interval`), centred."""
    xs = sorted(table[x_key].unique())
    order = list(dict.fromkeys(table.sort_values("_rank")["label"]))
    slots, width = _slots([list(table.loc[table[x_key] == x, "label"]) for x in xs], order)
    for label in order:
        mine = table[table["label"] == label].set_index(x_key)
        keys = [(i, x) for i, x in enumerate(xs) if x in mine.index]
        pos = [slots[(i, label)] for i, _ in keys]
        rows = mine.loc[[x for _, x in keys]]
        if bars:
            ax.bar(pos, rows["y"], width, yerr=_errors(rows), label=label, capsize=3,
                   **_bar_style(label))
        else:
            ax.errorbar(pos, rows["y"], yerr=_errors(rows), label=label, capsize=3,
                        linestyle="none", marker=method_marker(label), color=method_color(label),
                        markerfacecolor="none" if "(tuned)" in label else None)  # hollow: tuned
    ax.set_xticks(np.arange(len(xs)), [f"{x:g}" for x in xs])


def _whisker(label: str = WHISKER) -> Line2D:
    return Line2D([], [], color="black", marker="|", linestyle="none", markersize=10,
                  label=label)


def _ranked(table: pd.DataFrame) -> pd.DataFrame:
    """The rows with ``_rank``: their label's place in the legend order."""
    rank = {label: i for i, label in enumerate(label_order(table))}
    return table.assign(_rank=table["label"].map(rank))


def _no_pairs(ax, base: str) -> None:
    ax.text(0.5, 0.5, f"no paired runs: the base optimiser {base} did not run here",
            ha="center", va="center", transform=ax.transAxes, fontsize=8, wrap=True)


def ablation_figure(summary: pd.DataFrame) -> Figure:
    """``ccl-mv``, ``ccl-dv`` and ``ccl`` against their base optimiser (qgm), per alpha, one
    column per graph. Top row, the headline: each preset's paired difference from the base
    (bars from zero, whiskers = 95% Student-t interval over the paired seeds). Bottom row: the
    absolute consensus accuracies (points, ± 1 std), base included. Each row shares its y."""
    base = base_method("ccl")
    methods = [m for m in (base, *ABLATION) if m in set(summary["method"])]
    if not {"ccl-mv", "ccl-dv"} & set(methods):
        return placeholder("CCL ablation", "the grid has neither ccl-mv nor ccl-dv: add them "
                           "(with ccl and qgm) to grid.methods to fill it, as the digits and "
                           "cifar10 families do")
    table = _ranked(summary[summary["method"].isin(methods)])
    groups = list(table.groupby(GRAPH, sort=True))
    fig, axes = _grid(["difference", "accuracy"], [key for key, _ in groups])
    for key, sub in groups:
        diff_ax, acc_ax = axes[("difference", key)], axes[("accuracy", key)]
        paired = sub[sub["paired_base"].notna()]
        if paired.empty:
            _no_pairs(diff_ax, base)
        else:
            _grouped(diff_ax, _interval(paired, "difference"), "alpha", bars=True)
        diff_ax.axhline(0.0, color="black", lw=0.8)
        diff_ax.set_title(f"{_graph_title(key)}\npaired difference from {base}", fontsize=9)
        diff_ax.set_ylabel(f"preset − {base} (points)")
        _grouped(acc_ax, _interval(sub, "accuracy"), "alpha", bars=False)
        acc_ax.set_title(f"{_graph_title(key)}\naccuracy", fontsize=9)
        acc_ax.set_ylabel(ACC_LABEL)
        for ax in (diff_ax, acc_ax):
            ax.set_xlabel("Dirichlet alpha")
            ax.grid(axis="y", alpha=0.3)
    _legend(fig, [_whisker(CI_WHISKER), _whisker()])
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
                    marker=method_marker(label), capsize=3, label=label, **_style(label))


def _difference_lines(ax, sub: pd.DataFrame, x: str) -> None:
    """One line per CCL preset: its paired difference from its base (95% interval) against
    column ``x``. The presets' points are shifted a few pixels apart (the data stay where they
    are), so whiskers at the same x do not hide each other."""
    paired = sub[sub["paired_base"].notna()]
    labels = label_order(paired) if len(paired) else []
    for k, label in enumerate(labels):
        line = _interval(paired[paired["label"] == label].sort_values(x), "difference")
        shift = ScaledTranslation((k - (len(labels) - 1) / 2) * 4 / 72, 0,
                                  ax.figure.dpi_scale_trans)
        ax.errorbar(line[x], line["y"], yerr=_errors(line), marker=method_marker(label),
                    capsize=3, label=paired_label(label), transform=ax.transData + shift,
                    **_style(label))
        # a shifted artist does not widen the data limits by itself
        ends = pd.concat([line[[x, end]].set_axis([x, "y"], axis=1) for end in ("lo", "hi", "y")])
        ax.update_datalim(ends.dropna().to_numpy(dtype=float))
    ax.axhline(0.0, color="black", lw=0.8)
    ax.autoscale_view()


def _versus_figure(table: pd.DataFrame, rows: list[str], x: str, xlabel: str,
                   title: Callable[[tuple], str], log_x: bool = False,
                   mark: Callable[[Any, pd.DataFrame], None] | None = None) -> Figure:
    """Accuracy against a graph property ``x``: columns = alpha, one row of panels per value
    of ``rows``; above each, when the grid has CCL presets beside their base, the row of their
    paired differences (the headline). Each row of panels shares its y; ``mark(panel, rows)``
    adds to every panel."""
    keys = sorted(table.groupby(rows).groups)
    alphas = sorted(table["alpha"].unique())
    kinds = ["difference", "accuracy"] if table["paired_base"].notna().any() else ["accuracy"]
    fig, axes = _grid([(key, kind) for key in keys for kind in kinds], alphas)
    used = set()
    for (*row, alpha), sub in table.groupby([*rows, "alpha"]):
        for kind in kinds:
            ax = axes[((tuple(row), kind), alpha)]
            used.add(((tuple(row), kind), alpha))
            if kind == "difference":
                _difference_lines(ax, sub, x)
                ax.set_ylabel(DIFF_LABEL)
            else:
                _accuracy_lines(ax, sub, x)
                ax.set_ylabel(ACC_LABEL)
            what = "paired difference from the base" if kind == "difference" else "accuracy"
            ax.set_title(f"{title(tuple(row))}, alpha={alpha:g}\n{what}", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if log_x:
                _log_axis(ax, sub[x])
            if mark is not None:
                mark(ax, sub)
    _unused(axes, used)
    _legend(fig, [*([_whisker(CI_WHISKER)] if "difference" in kinds else []), _whisker()])
    return fig


def _log_axis(ax, values: pd.Series) -> None:
    """A log x axis with plain decimal labels (0.01, 0.02, 0.05, ...; decades only beyond two
    decades) and no labelled minor ticks: over less than two decades matplotlib labels its minor
    ticks too (2×10⁻², 3×10⁻², ...) and they overlap."""
    ax.set_xscale("log")
    decades = math.log10(values.max() / values.min()) if values.min() > 0 else math.inf
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,),
                                          numticks=5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def scaling_agents_figure(summary: pd.DataFrame) -> Figure:
    """Consensus accuracy vs agent count, for graphs run at two or more sizes: rows = graph
    family (with a row of the CCL presets' paired differences above), columns = alpha."""
    sizes = summary.groupby(["dataset", "model", "topology"])["n_agents"].nunique()
    scaled = sizes[sizes > 1]
    if scaled.empty:
        return placeholder("Accuracy vs agent count", "every graph runs at one size: list a "
                           "topology at several n_agents in grid.topologies to fill it (e.g. "
                           "the cifar10 family's ring at 8 to 40 agents)")
    table = summary.set_index(["dataset", "model", "topology"]).loc[scaled.index].reset_index()
    return _versus_figure(table, ["dataset", "model", "topology"], "n_agents",
                          "number of agents", lambda r: f"{r[0]}/{r[1]}, {r[2]}")


def spectral_gap_figure(summary: pd.DataFrame) -> Figure:
    """Consensus accuracy vs the spectral gap of the mixing matrix (one point per graph and
    size, named at the bottom of each panel): rows = dataset/model (with a row of the
    CCL presets' paired differences above), columns = alpha."""
    if summary[["topology", "n_agents"]].drop_duplicates().shape[0] < 2:
        return placeholder("Accuracy vs spectral gap", "the grid has a single graph: add graphs "
                           "of different connectivity to grid.topologies to fill it (e.g. the "
                           "cifar10 family's ring, paper-dyck and paper-torus)")
    def name_graphs(ax, sub: pd.DataFrame) -> None:
        for _, g in sub.drop_duplicates(["topology", "n_agents"]).iterrows():
            ax.annotate(f"{g['topology']}-{g['n_agents']}", (g["spectral_gap"], 0),
                        xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                        va="bottom", ha="right", alpha=0.6)

    return _versus_figure(summary, ["dataset", "model"], "spectral_gap",
                          "spectral gap of W (log)", lambda r: f"{r[0]}/{r[1]}", log_x=True,
                          mark=name_graphs)


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
    slots, width = _slots([list(compared.loc[compared["graph"] == g, "label"]) for g in graphs],
                          labels)
    fig = Figure(figsize=(2 * max(4.0, 0.5 * len(graphs) * len(labels) + 1.5) + 2.2, 3.8),
                 layout="constrained")
    for ax, col, what in zip(fig.subplots(1, 2), ("time_ratio", "bytes_ratio"),
                             ("time per iteration", "bytes per agent per iteration"), strict=True):
        for label in labels:
            sub = compared[compared["label"] == label].groupby("graph")[col].mean()
            here = [(slots[(i, label)], sub[g]) for i, g in enumerate(graphs) if g in sub.index]
            ax.bar(*zip(*here, strict=True), width, label=label, color=method_color(label))
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

