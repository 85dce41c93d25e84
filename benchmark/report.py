"""Tables and figures of a family, built from ``metrics.json`` files only (never from MLflow).

Why only result files: they are what the workflow tracks (Snakemake reruns a report when one
changes), they are self-describing (each holds its resolved config), and a report must be
rebuildable on a machine without the tracking database.

Conventions: a *setting* is (dataset, model, topology, n_agents, alpha); statistics are over the
seeds of one (setting, method); ``std`` is the sample standard deviation (ddof=1, empty for a
single seed); diverged runs are counted in ``diverged`` and left out of every mean and curve.

``python -m benchmark report --out reports results/digits`` writes ``table_<family>.csv``,
``table_<family>.md``, ``overhead_<family>.csv`` and ``figures/<family>/*.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure  # the OO API: no pyplot state, no display, thread-safe
from matplotlib.ticker import MaxNLocator

from .errors import UserError
from .io import atomic_write_bytes, atomic_write_text
from .methods import METHODS

SETTING = ["dataset", "model", "topology", "n_agents", "alpha"]
GROUP = [*SETTING, "method"]
ACCURACIES = {"consensus_acc": "consensus model", "local_acc": "mean of local models"}
ABLATION = ("ccl-mv", "ccl-dv", "ccl")
FIGURES = ("learning_curves", "ablation", "heterogeneity", "scaling_agents", "spectral_gap",
           "overhead")
_DPI = 120


# --------------------------------------------------------------------------- loading
def find_metrics(paths: Iterable[str | Path]) -> list[Path]:
    """``metrics.json`` files named directly or found under the given folders, sorted."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found.update(path.rglob("metrics.json"))
        elif path.is_file():
            found.add(path)
        else:
            raise UserError(f"report: no such file or folder: {path}")
    if not found:
        raise UserError(f"report: no metrics.json under {', '.join(map(str, paths)) or '(none)'}")
    return sorted(found)


def load_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    results = []
    for file in find_metrics(paths):
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            where = f"{exc.msg}, line {exc.lineno}"
            raise UserError(f"report: {file} is not valid JSON ({where})") from None
        data["_path"] = str(file)
        results.append(data)
    return results


def base_method(method: str) -> str:
    """The preset a method is compared with: its base optimiser without CCL (``ccl`` -> ``qgm``)."""
    return METHODS[method].algorithm if method in METHODS else method


def reference_method(method: str, available: Iterable[str]) -> str | None:
    """What ``method`` is compared with among the methods a grid ran: its base optimiser, else
    ``dsgdm-n`` (the plainest baseline), else none."""
    available = set(available)
    for candidate in (base_method(method), "dsgdm-n"):
        if candidate in available:
            return candidate
    return None


def method_order(methods: Iterable[str]) -> list[str]:
    """Methods in the order of :data:`benchmark.methods.METHODS` (unknown names last, sorted)."""
    methods = set(methods)
    known = [m for m in METHODS if m in methods]
    return known + sorted(methods - set(known))


def _iteration_time(result: dict[str, Any]) -> float:
    """Seconds per iteration. Uses per-phase timings when present: training phases only, i.e.
    without evaluation, and for a method without CCL without the cross-feature passes it only
    logs (``log_cross_features``); otherwise the epoch time, which includes the evaluation."""
    history = result.get("history") or []
    method = METHODS.get(result.get("method", ""))
    skip = ("eval",) if method is None or method.ccl_terms else ("eval", "cross_feature")
    iters = (result.get("iterations_per_epoch") or 0) * len(history)
    if not iters:
        return math.nan
    total = 0.0
    for record in history:
        phases = record.get("phases")
        if isinstance(phases, dict) and phases:
            total += sum(float(v) for k, v in phases.items()
                         if isinstance(v, int | float) and not any(x in k for x in skip))
        else:
            total += float(record.get("time_s", math.nan))
    return total / iters


def runs_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run with its axes, status and final figures."""
    rows = []
    for r in results:
        cfg, final = r.get("config", {}), r.get("final") or {}
        completed = r.get("status") == "completed"
        bytes_it = (r.get("communication") or {}).get("bytes_per_agent_per_iteration") or {}
        rows.append({
            "family": cfg.get("family"),
            "dataset": cfg.get("dataset"), "model": cfg.get("model"),
            "topology": (r.get("topology") or {}).get("name", cfg.get("topology")),
            "n_agents": int((r.get("topology") or {}).get("n_agents", cfg.get("n_agents", 0))),
            "alpha": float(cfg.get("alpha", math.nan)),
            "method": r.get("method", cfg.get("method")), "seed": cfg.get("seed"),
            "status": r.get("status", "unknown"),
            "consensus_acc": final.get("consensus_acc", math.nan) if completed else math.nan,
            "local_acc": final.get("local_acc_mean", math.nan) if completed else math.nan,
            "spectral_gap": (r.get("topology") or {}).get("spectral_gap", math.nan),
            "time_per_iteration_s": _iteration_time(r),
            "bytes_per_iteration": float(sum(bytes_it.values())) if bytes_it else math.nan,
            "path": r.get("_path"),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tables
def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, method): seeds, status counts, mean/std of both accuracies."""
    statuses = sorted(set(runs["status"]) | {"completed", "diverged"})
    rows = []
    for key, grp in runs.groupby(GROUP, sort=False):
        row = dict(zip(GROUP, key, strict=True))
        row["seeds"] = len(grp)
        for status in statuses:
            row[status] = int((grp["status"] == status).sum())
        done = grp[grp["status"] == "completed"]
        for acc in ACCURACIES:
            row[f"{acc}_mean"] = done[acc].mean() if len(done) else math.nan
            row[f"{acc}_std"] = done[acc].std(ddof=1) if len(done) > 1 else math.nan
        row["spectral_gap"] = grp["spectral_gap"].iloc[0]
        rows.append(row)
    table = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(method_order(table["method"]))}
    table["_m"] = table["method"].map(order)
    return table.sort_values([*SETTING, "_m"]).drop(columns="_m").reset_index(drop=True)


def _cell(mean: float, std: float, diverged: int, seeds: int) -> str:
    if math.isnan(mean):
        return f"diverged ({diverged}/{seeds})" if diverged else "n/a"
    text = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return text + (f" ({diverged} div.)" if diverged else "")


def markdown_table(summary: pd.DataFrame, family: str = "") -> str:
    """The paper's layout: rows = settings, columns = methods, ``mean ± std``, best in bold."""
    methods = method_order(summary["method"])
    lines = [f"# {family}: final test accuracy (%)".replace("# :", "#"), ""]
    for acc, label in ACCURACIES.items():
        lines += [f"## {label.capitalize()}", "",
                  "| dataset | model | graph | alpha | " + " | ".join(methods) + " |",
                  "|" + "---|" * (4 + len(methods))]
        for key, grp in summary.groupby(SETTING, sort=False):
            by_method = {r["method"]: r for _, r in grp.iterrows()}
            means = [by_method[m][f"{acc}_mean"] for m in methods if m in by_method]
            best = max((v for v in means if not math.isnan(v)), default=math.nan)
            cells = []
            for m in methods:
                if m not in by_method:
                    cells.append("")
                    continue
                r = by_method[m]
                text = _cell(r[f"{acc}_mean"], r[f"{acc}_std"], int(r["diverged"]), int(r["seeds"]))
                cells.append(f"**{text}**" if r[f"{acc}_mean"] == best else text)
            dataset, model, topo, n, alpha = key
            head = f"| {dataset} | {model} | {topo}-{n} | {alpha:g} | "
            lines.append(head + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Cells: mean ± sample std over the completed seeds; bold = best of the row; "
                 "(k div.) = k seeds diverged and are left out.")
    return "\n".join(lines) + "\n"


def overhead_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Time per iteration and bytes per agent per iteration, relative to the base method."""
    keys = ["dataset", "model", "topology", "n_agents", "method"]
    agg = (runs.groupby(keys, sort=False)[["time_per_iteration_s", "bytes_per_iteration"]]
           .mean().reset_index())
    ref = agg.set_index(keys)
    ratios: dict[str, list] = {"base": [], "time_ratio": [], "bytes_ratio": []}
    for _, row in agg.iterrows():
        setting = (row["dataset"], row["model"], row["topology"], row["n_agents"])
        ran = agg.loc[(agg[keys[:-1]] == pd.Series(setting, index=keys[:-1])).all(axis=1), "method"]
        name = reference_method(row["method"], ran)
        base = ref.loc[(*setting, name)] if name is not None else None
        ratios["base"].append(name)
        for col, src in (("time_ratio", "time_per_iteration_s"),
                         ("bytes_ratio", "bytes_per_iteration")):
            ratios[col].append(row[src] / base[src] if base is not None else math.nan)
    return agg.assign(**ratios)


# --------------------------------------------------------------------------- figures
def _placeholder(title: str, message: str) -> Figure:
    fig = Figure(figsize=(6, 2.5))
    ax = fig.subplots()
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def _panels(n: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    cols = min(3, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _colors(methods: list[str]) -> dict[str, Any]:
    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _history_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-epoch records of the completed runs, with their axes."""
    rows = []
    for r in results:
        if r.get("status") != "completed":
            continue
        cfg = r["config"]
        topo = r.get("topology") or {}
        axes = {"dataset": cfg["dataset"], "model": cfg["model"],
                "topology": topo.get("name", cfg["topology"]),
                "n_agents": int(topo.get("n_agents", cfg["n_agents"])),
                "alpha": float(cfg["alpha"]), "method": r["method"], "seed": cfg["seed"]}
        for rec in r.get("history", []):
            rows.append({**axes, **{k: v for k, v in rec.items() if not isinstance(v, dict)}})
    return pd.DataFrame(rows)


def learning_curves_figure(results: list[dict[str, Any]]) -> Figure:
    """Consensus test accuracy per epoch, one panel per setting, mean (± std band) over seeds."""
    hist = _history_frame(results)
    if hist.empty or "consensus_acc" not in hist:
        return _placeholder("Learning curves", "no completed run with evaluations")
    hist = hist.dropna(subset=["consensus_acc"])
    settings = list(hist.groupby(SETTING, sort=True).groups)
    colors = _colors(method_order(hist["method"]))
    fig, axes = _panels(len(settings))
    for ax, key in zip(axes, settings, strict=True):
        sub = hist[(hist[SETTING] == pd.Series(key, index=SETTING)).all(axis=1)]
        for method in method_order(sub["method"]):
            curve = sub[sub["method"] == method].groupby("epoch")["consensus_acc"]
            mean, std = curve.mean(), curve.std(ddof=1).fillna(0)
            ax.plot(mean.index, mean.values, label=method, color=colors[method])
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15, color=colors[method])
        dataset, model, topo, n, alpha = key
        ax.set_title(f"{dataset}/{model}, {topo}-{n}, alpha={alpha:g}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("consensus test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _bar_groups(ax, table: pd.DataFrame, x_key: str, methods: list[str], colors) -> None:
    xs = sorted(table[x_key].unique())
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        sub = table[table["method"] == method].set_index(x_key).reindex(xs)
        pos = np.arange(len(xs)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(pos, sub["consensus_acc_mean"], width, yerr=sub["consensus_acc_std"].fillna(0),
               label=method, color=colors[method], capsize=3)
    ax.set_xticks(np.arange(len(xs)), [f"{x:g}" for x in xs])


def ablation_figure(summary: pd.DataFrame) -> Figure:
    """Base optimiser vs ``ccl-mv`` vs ``ccl-dv`` vs ``ccl``, per alpha (grouped bars)."""
    base = base_method("ccl")
    methods = [m for m in (base, *ABLATION) if m in set(summary["method"])]
    if not {"ccl-mv", "ccl-dv"} & set(methods):
        return _placeholder("CCL ablation", "the grid has neither ccl-mv nor ccl-dv")
    keys = ["dataset", "model", "topology", "n_agents"]
    table = summary[summary["method"].isin(methods)]
    groups = list(table.groupby(keys, sort=True))
    colors = _colors(methods)
    fig, axes = _panels(len(groups))
    for ax, (key, sub) in zip(axes, groups, strict=True):
        _bar_groups(ax, sub, "alpha", methods, colors)
        ax.set_title(f"{key[0]}/{key[1]}, {key[2]}-{key[3]}")
        ax.set_xlabel("Dirichlet alpha")
        ax.set_ylabel("consensus test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def heterogeneity_figure(results: list[dict[str, Any]]) -> Figure:
    """Mean ``L_mv`` per epoch for each alpha: the base optimiser (solid) vs CCL (dashed)."""
    hist = _history_frame(results)
    if hist.empty or "l_mv" not in hist:
        return _placeholder("Heterogeneity (L_mv)",
                            "no run logged L_mv (set log_cross_features: true for baselines)")
    pair = [reference_method("ccl", hist["method"]) or base_method("ccl"), "ccl"]
    hist = hist[hist["method"].isin(pair)].dropna(subset=["l_mv"])
    if hist.empty:
        return _placeholder("Heterogeneity (L_mv)", f"no {' or '.join(pair)} run logged L_mv")
    keys = ["dataset", "model", "topology", "n_agents"]
    groups = list(hist.groupby(keys, sort=True))
    alphas = sorted(hist["alpha"].unique())
    cmap = colormaps["viridis"]
    fig, axes = _panels(len(groups))
    for ax, (key, sub) in zip(axes, groups, strict=True):
        for j, alpha in enumerate(alphas):
            for method, style in zip(pair, ("-", "--"), strict=True):
                curve = sub[(sub["alpha"] == alpha) & (sub["method"] == method)]
                if curve.empty:
                    continue
                mean = curve.groupby("epoch")["l_mv"].mean()
                ax.plot(mean.index, mean.values, style, color=cmap(j / max(len(alphas) - 1, 1)),
                        label=f"{method}, alpha={alpha:g}")
        ax.set_yscale("log")
        ax.set_title(f"{key[0]}/{key[1]}, {key[2]}-{key[3]}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean L_mv over agents (log)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _accuracy_lines(ax, sub: pd.DataFrame, x: str, colors: dict[str, Any]) -> None:
    """One line per method: consensus accuracy (mean ± std over seeds) against column ``x``."""
    for method in method_order(sub["method"]):
        line = sub[sub["method"] == method].sort_values(x)
        ax.errorbar(line[x], line["consensus_acc_mean"], yerr=line["consensus_acc_std"].fillna(0),
                    marker="o", capsize=3, label=method, color=colors[method])


def scaling_agents_figure(summary: pd.DataFrame) -> Figure:
    """Consensus accuracy vs agent count, for graphs run at two or more sizes."""
    sizes = summary.groupby(["dataset", "model", "topology"])["n_agents"].nunique()
    scaled = sizes[sizes > 1]
    if scaled.empty:
        return _placeholder("Accuracy vs agent count", "the grid runs every graph at one size")
    keys = ["dataset", "model", "topology", "alpha"]
    table = summary.set_index(["dataset", "model", "topology"]).loc[scaled.index].reset_index()
    groups = list(table.groupby(keys, sort=True))
    colors = _colors(method_order(table["method"]))
    fig, axes = _panels(len(groups))
    for ax, (key, sub) in zip(axes, groups, strict=True):
        _accuracy_lines(ax, sub, "n_agents", colors)
        ax.set_title(f"{key[0]}/{key[1]}, {key[2]}, alpha={key[3]:g}")
        ax.set_xlabel("number of agents")
        ax.set_ylabel("consensus test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def spectral_gap_figure(summary: pd.DataFrame) -> Figure:
    """Consensus accuracy vs the spectral gap of the mixing matrix (one point per graph)."""
    if summary[["topology", "n_agents"]].drop_duplicates().shape[0] < 2:
        return _placeholder("Accuracy vs spectral gap", "the grid has a single graph")
    keys = ["dataset", "model", "alpha"]
    groups = list(summary.groupby(keys, sort=True))
    colors = _colors(method_order(summary["method"]))
    fig, axes = _panels(len(groups))
    for ax, (key, sub) in zip(axes, groups, strict=True):
        _accuracy_lines(ax, sub, "spectral_gap", colors)
        graphs = sub.drop_duplicates(["topology", "n_agents"])
        for _, g in graphs.iterrows():
            ax.annotate(f"{g['topology']}-{g['n_agents']}", (g["spectral_gap"], ax.get_ylim()[0]),
                        fontsize=7, rotation=90, va="bottom", ha="right", alpha=0.6)
        ax.set_xscale("log")
        ax.set_title(f"{key[0]}/{key[1]}, alpha={key[2]:g}")
        ax.set_xlabel("spectral gap of W (log)")
        ax.set_ylabel("consensus test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def overhead_figure(overhead: pd.DataFrame) -> Figure:
    """Iteration time and bytes per agent relative to each method's base optimiser."""
    if overhead.empty:
        return _placeholder("Overhead", "no runs")
    methods = method_order(overhead["method"])
    overhead = overhead.assign(graph=overhead["topology"] + "-" + overhead["n_agents"].astype(str))
    graphs = sorted(overhead["graph"].unique())
    fig = Figure(figsize=(2 * max(4.0, 0.7 * len(methods) + 1.5), 3.8))
    axes = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    width = 0.8 / len(graphs)
    for ax, col, label in ((axes[0], "time_ratio", "time per iteration"),
                           (axes[1], "bytes_ratio", "bytes per agent per iteration")):
        for i, graph in enumerate(graphs):
            sub = overhead[overhead["graph"] == graph].groupby("method")[col].mean()
            sub = sub.reindex(methods)
            pos = np.arange(len(methods)) + (i - (len(graphs) - 1) / 2) * width
            ax.bar(pos, sub.values, width, label=graph, color=cmap(i % 10))
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
        ax.set_ylabel("ratio to the base method")
        ax.set_title(f"{label} (relative)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, title="graph")
    fig.tight_layout()
    return fig


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


def run_curves_figure(history: list[dict[str, Any]]) -> Figure:
    """One run's learning curves: accuracies (left) and training losses (right) per epoch."""
    fig = Figure(figsize=(10, 3.6))
    acc, loss = fig.subplots(1, 2)
    for key, label in (("consensus_acc", "consensus model"),
                       ("local_acc_mean", "local models (mean)")):
        pts = [(r["epoch"], r[key]) for r in history if key in r]
        if pts:
            acc.plot(*zip(*pts, strict=True), marker=".", label=label)
    for key in ("train_ce", "l_mv", "l_dv"):
        pts = [(r["epoch"], r[key]) for r in history if key in r and math.isfinite(r[key])]
        if pts:
            loss.plot(*zip(*pts, strict=True), marker=".", label=key)
    acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    loss.set(xlabel="epoch", ylabel="loss", title="training losses", yscale="log")
    for ax in (acc, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- entry point
def _save(fig: Figure, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def build_report(paths: Iterable[str | Path], out_dir: str | Path = "reports",
                 family: str | None = None) -> dict[str, Path]:
    """Write the tables and figures of one family; returns what was written, by name."""
    results = load_results(paths)
    runs = runs_frame(results)
    families = sorted(set(runs["family"].dropna()))
    if family is None:
        if len(families) != 1:
            raise UserError(f"report: results of several families {families}; pass --family")
        family = families[0]
    out = Path(out_dir)
    summary = summary_table(runs)
    overhead = overhead_table(runs)
    written = {
        "table_csv": out / f"table_{family}.csv",
        "table_md": out / f"table_{family}.md",
        "overhead_csv": out / f"overhead_{family}.csv",
    }
    atomic_write_text(written["table_csv"], summary.to_csv(index=False))
    atomic_write_text(written["table_md"], markdown_table(summary, family))
    atomic_write_text(written["overhead_csv"], overhead.to_csv(index=False))
    figures = {
        "learning_curves": learning_curves_figure(results),
        "ablation": ablation_figure(summary),
        "heterogeneity": heterogeneity_figure(results),
        "scaling_agents": scaling_agents_figure(summary),
        "spectral_gap": spectral_gap_figure(summary),
        "overhead": overhead_figure(overhead),
    }
    for name, fig in figures.items():
        written[name] = out / "figures" / family / f"{name}.png"
        _save(fig, written[name])
    return written
