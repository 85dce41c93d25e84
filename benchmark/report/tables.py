"""The tables of a report: one row per run, one row per (setting, method, protocol) with its
status counts, means, plateau flag and paired difference, and the paper-layout views of it
(Markdown for the repository, HTML for Snakemake's report).

Conventions: a *setting* is (dataset, model, topology, n_agents, alpha); statistics are over the
seeds of one (setting, method, protocol); ``std`` is the sample standard deviation (ddof=1,
empty for a single seed); runs that did not complete (diverged, ...) are counted and left out
of every mean, curve and pair; completed runs whose training loss jumped (``instability`` in
metrics.json) are counted in ``unstable`` and flagged, and stay in the means.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from ..methods import METHODS
from ..metrics import RunMetrics
from .load import RunResult
from .stats import PLATEAU_TOLERANCE, PLATEAU_WINDOW, paired_difference, plateau

SETTING = ["dataset", "model", "topology", "n_agents", "alpha"]
GROUP = [*SETTING, "method", "protocol"]
ACCURACIES = {"consensus_acc": "consensus model", "local_acc": "mean of local models"}
PROTOCOLS = ("fixed", "tuned")
PAIRED = ("pairs", "left_out", "wins", "diff_mean", "ci_low", "ci_high")
NOT_PLATEAUED = "†"


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


def with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Adds ``label``: the method, or ``method (protocol)`` when both protocols are present, so
    a fixed-hyperparameter column can never be read as a tuned one."""
    both = frame["protocol"].nunique() > 1
    labels = frame["method"] + (" (" + frame["protocol"] + ")" if both else "")
    return frame.assign(label=labels)


def label_order(frame: pd.DataFrame) -> list[str]:
    """Labels in method order, then protocol order (``ccl (fixed)`` before ``ccl (tuned)``)."""
    pairs = frame[["method", "protocol", "label"]].drop_duplicates()
    rank = {m: i for i, m in enumerate(method_order(pairs["method"]))}
    keyed = sorted(pairs.itertuples(index=False),
                   key=lambda p: (rank[p.method], PROTOCOLS.index(p.protocol)
                                  if p.protocol in PROTOCOLS else len(PROTOCOLS), p.protocol))
    return [p.label for p in keyed]


# --------------------------------------------------------------------------- one row per run
def _iteration_time(metrics: RunMetrics) -> float:
    """Seconds per iteration. Uses per-phase timings when present: training phases only, i.e.
    without evaluation, and for a method without CCL without the cross-feature passes it only
    logs (``log_cross_features``); otherwise the epoch time, which includes the evaluation."""
    history = metrics.history
    skip = ("eval",) if METHODS[metrics.method].ccl_terms else ("eval", "cross_feature")
    iters = metrics.iterations_per_epoch * len(history)
    if not iters:
        return math.nan
    total = 0.0
    for record in history:
        if record.phases:
            total += sum(v for k, v in record.phases.items() if not any(x in k for x in skip))
        else:
            total += record.time_s if record.time_s is not None else math.nan
    return total / iters


def _curve(metrics: RunMetrics) -> pd.Series:
    """Consensus accuracy per evaluated epoch (empty for a run that did not complete)."""
    if not metrics.completed:
        return pd.Series(dtype=float)
    return pd.Series({r.epoch: r.consensus_acc for r in metrics.history
                      if r.consensus_acc is not None}, dtype=float)


def unstable_epochs(metrics: RunMetrics) -> list[int]:
    """Epochs the run's ``instability`` block flags (training loss above a multiple of its
    running minimum); empty when there is none."""
    return list(metrics.instability.epochs) if metrics.instability is not None else []


def runs_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run with its axes, status and final figures."""
    rows = []
    for result in results:
        m, cfg, topo = result.metrics, result.metrics.config, result.metrics.topology
        final = m.final if m.completed else None
        bytes_it = m.communication.bytes_per_agent_per_iteration
        rows.append({
            "family": cfg.family,
            "dataset": cfg.dataset, "model": cfg.model,
            "topology": topo.name,
            "n_agents": topo.n_agents,
            "alpha": cfg.alpha,
            "method": m.method,
            "protocol": m.protocol,
            # the validation split of the study a tuned run took its values from
            "val_samples": (m.tuned.val_samples if m.tuned is not None
                            and m.tuned.val_samples is not None else math.nan),
            "seed": cfg.seed,
            "status": m.status,
            "unstable": bool(unstable_epochs(m)),
            "consensus_acc": final.consensus_acc if final is not None else math.nan,
            "local_acc": final.local_acc_mean if final is not None else math.nan,
            "spectral_gap": topo.spectral_gap,
            "time_per_iteration_s": _iteration_time(m),
            "bytes_per_iteration": float(sum(bytes_it.values())) if bytes_it else math.nan,
            "epochs": cfg.epochs,
            "curve": _curve(m),
            "path": result.path,
        })
    return with_labels(pd.DataFrame(rows))


# --------------------------------------------------------------------------- per setting
def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, method, protocol): seeds, status counts, unstable runs, mean/std
    of both accuracies, the plateau check and, for a CCL preset, the paired difference with
    its base optimiser (``paired_*`` columns)."""
    statuses = sorted(set(runs["status"]) | {"completed", "diverged"})
    rows = []
    for key, grp in runs.groupby(GROUP, sort=False):
        row = dict(zip(GROUP, key, strict=True))
        row["label"] = grp["label"].iloc[0]
        row["seeds"] = len(grp)
        for status in statuses:
            row[status] = int((grp["status"] == status).sum())
        row["unstable"] = int(grp["unstable"].sum())
        row["val_samples"] = grp["val_samples"].max()  # one study per cell: one split
        done = grp[grp["status"] == "completed"]
        for acc in ACCURACIES:
            row[f"{acc}_mean"] = done[acc].mean() if len(done) else math.nan
            row[f"{acc}_std"] = done[acc].std(ddof=1) if len(done) > 1 else math.nan
        row.update(plateau(done["curve"], int(grp["epochs"].max())))
        row["spectral_gap"] = grp["spectral_gap"].iloc[0]
        rows.append({**row, **_paired(runs, key, grp)})
    table = pd.DataFrame(rows)
    order = {label: i for i, label in enumerate(label_order(table))}
    table["_m"] = table["label"].map(order)
    return table.sort_values([*SETTING, "_m"]).drop(columns="_m").reset_index(drop=True)


def _paired(runs: pd.DataFrame, key: tuple, grp: pd.DataFrame) -> dict[str, Any]:
    """``paired_*`` columns of a CCL preset's row: per-seed difference with its base optimiser
    run under the same protocol in the same setting (empty for other rows)."""
    setting, method, protocol = key[:len(SETTING)], key[-2], key[-1]
    base = base_method(method)
    empty = {"paired_base": None, **{f"paired_{k}": math.nan for k in PAIRED}}
    if base == method or method not in METHODS:
        return empty
    same = (runs[SETTING] == pd.Series(setting, index=SETTING)).all(axis=1)
    others = runs[same & (runs["method"] == base) & (runs["protocol"] == protocol)]
    if others.empty:
        return empty
    stats = paired_difference(grp.set_index("seed")["consensus_acc"],
                              others.set_index("seed")["consensus_acc"])
    return {"paired_base": base, **{f"paired_{k}": v for k, v in stats.items()}}


# --------------------------------------------------------------------------- paper layout
def _cell(row: pd.Series, acc: str) -> str:
    mean, std = row[f"{acc}_mean"], row[f"{acc}_std"]
    diverged, seeds, unstable = int(row["diverged"]), int(row["seeds"]), int(row["unstable"])
    failed = seeds - int(row["completed"])
    if math.isnan(mean):
        return f"diverged ({diverged}/{seeds})" if diverged == failed and diverged else (
            f"none completed (0/{seeds})" if failed else "n/a")
    text = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    notes = [f"{diverged} div." if diverged else "",
             f"{failed - diverged} failed" if failed > diverged else "",
             f"{unstable} unst." if unstable else ""]
    notes = [n for n in notes if n]
    if notes:
        text += f" ({', '.join(notes)})"
    if acc == "consensus_acc" and not_plateaued(row):
        text += f" {NOT_PLATEAUED}"
    return text


def not_plateaued(row: pd.Series) -> bool:
    flag = row["plateau"]
    return not pd.isna(flag) and not flag


def layout(summary: pd.DataFrame, acc: str) -> tuple[list[str], list[tuple[list[str], list]]]:
    """The paper's layout of one accuracy: column labels and, per setting, its head cells and
    one (text, is_best) per label ((``""``, False) where the method did not run)."""
    labels = label_order(summary)
    rows = []
    for key, grp in summary.groupby(SETTING, sort=False):
        by_label = {r["label"]: r for _, r in grp.iterrows()}
        means = [by_label[m][f"{acc}_mean"] for m in labels if m in by_label]
        best = max((v for v in means if not math.isnan(v)), default=math.nan)
        cells = [(_cell(by_label[m], acc), by_label[m][f"{acc}_mean"] == best)
                 if m in by_label else ("", False) for m in labels]
        dataset, model, topo, n, alpha = key
        rows.append(([dataset, model, f"{topo}-{n}", f"{alpha:g}"], cells))
    return labels, rows


def paired_layout(summary: pd.DataFrame) -> tuple[list[str], list[tuple[list[str], list]]]:
    """Per setting, one cell per (CCL preset - base) pair: mean difference [95% CI], wins."""
    paired = summary[summary["paired_base"].notna()]
    labels = label_order(paired) if len(paired) else []
    columns = [paired_label(label) for label in labels]
    rows = []
    for key, grp in paired.groupby(SETTING, sort=False):
        by_label = {r["label"]: r for _, r in grp.iterrows()}
        cells = [(_paired_cell(by_label[m]), False) if m in by_label else ("", False)
                 for m in labels]
        dataset, model, topo, n, alpha = key
        rows.append(([dataset, model, f"{topo}-{n}", f"{alpha:g}"], cells))
    return columns, rows


def paired_label(label: str) -> str:
    """The name of a CCL preset's paired difference, in tables and figures: ``ccl − qgm``
    (``ccl (tuned) − qgm``: within the tuned protocol)."""
    return f"{label} − {base_method(label.split(' (')[0])}"


def _paired_cell(row: pd.Series) -> str:
    pairs, left_out = int(row["paired_pairs"]), int(row["paired_left_out"])
    if not pairs:
        return f"no pair ({left_out} left out)" if left_out else "no pair"
    text = f"{row['paired_diff_mean']:+.2f}"
    if not math.isnan(row["paired_ci_low"]):
        text += f" [{row['paired_ci_low']:+.2f}, {row['paired_ci_high']:+.2f}]"
    text += f", {int(row['paired_wins'])}/{pairs} wins"
    return text + (f" ({left_out} left out)" if left_out else "")


HEAD = ["dataset", "model", "graph", "alpha"]


def no_pairs_note() -> str:
    """What the paired section says when no CCL preset ran beside its base optimiser."""
    pairs = "; ".join(f"{m} beside {base_method(m)}" for m in METHODS if base_method(m) != m)
    return (f"No CCL preset ran beside its base optimiser ({pairs}): add the base to "
            "grid.methods to compare them seed by seed.")


NOTES = {
    "cells": "Cells: mean ± sample std over the completed seeds; bold = best of the row; "
             "(k div.) = k seeds diverged and are left out; (k unst.) = k completed seeds whose "
             "training loss jumped above a multiple of its running minimum (metrics.json "
             "`instability`), kept in the mean.",
    "plateau": f"{NOT_PLATEAUED} = not plateaued: the mean consensus accuracy still moved by "
               f"{PLATEAU_TOLERANCE:g} point or more over the last {PLATEAU_WINDOW:.0%} of the "
               "epochs (CSV: `plateau`, `last_change`).",
    "tuned": "(tuned) = each method's best values from its own study at that alpha on that "
             "graph (studies/<family>/<method>/<graph>/alpha<a>: {split} carved from the "
             "training set, one budget for all; README \"Tuning\"); (fixed) = the family's "
             "`run:` values for every method.",
    "paired": "Paired: per-seed difference of consensus accuracy (points) between a CCL preset "
              "and its base optimiser under the same protocol and seeds (same partition and "
              "initial model); mean [95% Student-t interval], wins = seeds where the preset is "
              "ahead; a seed where either run did not complete is left out and counted.",
}


def markdown_table(summary: pd.DataFrame, family: str = "") -> str:
    """The paper's layout: rows = settings, columns = methods, ``mean ± std``, best in bold;
    then the paired differences of the CCL presets."""
    lines = [f"# {family}: final test accuracy (%)".replace("# :", "#"), ""]
    sections = [(label.capitalize(), *layout(summary, acc)) for acc, label in ACCURACIES.items()]
    if summary["paired_base"].notna().any():
        sections.append(("Paired difference with the base optimiser (consensus model, points)",
                         *paired_layout(summary)))
    for title, columns, rows in sections:
        lines += [f"## {title}", "", "| " + " | ".join(HEAD + columns) + " |",
                  "|" + "---|" * (len(HEAD) + len(columns))]
        for head, cells in rows:
            texts = [f"**{t}**" if best else t for t, best in cells]
            lines.append("| " + " | ".join(head + texts) + " |")
        lines.append("")
    lines += "\n\n".join(_notes(summary, paired=len(sections) > 2)).split("\n")
    return "\n".join(lines) + "\n"


def _notes(summary: pd.DataFrame, paired: bool) -> list[str]:
    """The footnotes a table needs (from :data:`NOTES`), in order."""
    tuned = [NOTES["tuned"].format(split=_split(summary))] if (
        summary["protocol"] == "tuned").any() else []
    return [NOTES["cells"], NOTES["plateau"], *tuned, *([NOTES["paired"]] if paired else [])]


def _split(summary: pd.DataFrame) -> str:
    """The tuned runs' validation split(s), as their studies' best.json recorded them."""
    sizes = sorted({int(v) for v in summary["val_samples"].dropna()})
    if not sizes:
        return "a validation split"
    return f"a validation split of {' or '.join(f'{n:,}' for n in sizes)} samples"


def html_table(summary: pd.DataFrame, family: str = "") -> str:
    """The same tables as one standalone HTML page (what Snakemake's report shows inline), with
    the status counts per setting and method below them."""
    def table(columns: list[str], rows) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in HEAD + columns)
        body = []
        for cells_head, cells in rows:
            tds = [f"<td>{html.escape(str(c))}</td>" for c in cells_head]
            tds += [f"<td><b>{html.escape(t)}</b></td>" if best else f"<td>{html.escape(t)}</td>"
                    for t, best in cells]
            body.append("<tr>" + "".join(tds) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    columns = list(summary.columns)  # seeds, one column per status, unstable: the counts
    counts = columns[columns.index("seeds"):columns.index("unstable") + 1]
    status = summary[[*SETTING, "label", *counts, "plateau", "last_change"]].assign(
        alpha=summary["alpha"].map("{:g}".format),
        last_change=summary["last_change"].map(lambda v: "" if math.isnan(v) else f"{v:+.2f}"))
    # (anchor, title, body); the report's landing page links straight to #paired
    sections = [(acc, label.capitalize(), table(*layout(summary, acc)))
                for acc, label in ACCURACIES.items()]
    # always there (the report's landing page links to it), saying so when there is no pair
    sections.append(("paired", "Paired difference with the base optimiser (consensus model, "
                     "points)", table(*paired_layout(summary))
                     if summary["paired_base"].notna().any()
                     else f"<p>{html.escape(no_pairs_note())}</p>"))
    sections.append(("status", "Status counts and plateau check",
                     status.rename(columns={"label": "method"}).to_html(index=False, na_rep="")))
    contents = " · ".join(f"<a href='#{key}'>{html.escape(title.split(' (')[0])}</a>"
                          for key, title, _ in sections)
    parts = [f"<h1>{html.escape(family)}: final test accuracy (%)</h1>", f"<p>{contents}</p>"]
    for key, title, body in sections:
        parts += [f"<h2 id='{key}'>{html.escape(title)}</h2>", body]
    parts += [f"<p>{html.escape(note)}</p>" for note in _notes(summary, paired=True)]
    style = ("body{font-family:sans-serif;font-size:14px} table{border-collapse:collapse;"
             "margin-bottom:1em} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(family)}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


# --------------------------------------------------------------------------- cost
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
