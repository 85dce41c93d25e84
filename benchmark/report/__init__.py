"""Tables and figures of a family, built from ``metrics.json`` files only (never from MLflow).

Why only result files: they are what the workflow tracks (Snakemake reruns a report when one
changes), they are self-describing (each holds its resolved config), and a report must be
rebuildable on a machine without the tracking database.

``python -m benchmark report --out reports results/digits`` writes ``table_<family>.csv``,
``table_<family>.md``, ``table_<family>.html``, ``overhead_<family>.csv`` and
``figures/<family>/*.png``. Modules: :mod:`.load` (finding and checking result files),
:mod:`.tables` (per-run and per-setting tables, Markdown and HTML), :mod:`.stats` (paired
differences, plateau check), :mod:`.figures`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from matplotlib.figure import Figure

from ..errors import UserError
from ..io import atomic_write_bytes, atomic_write_text
from ..names import check_name, inside
from .figures import (
    FIGURES,
    ablation_figure,
    family_figures,
    heterogeneity_figure,
    learning_curves_figure,
    method_color,
    overhead_figure,
    partition_figure,
    run_curves_figure,
    scaling_agents_figure,
    spectral_gap_figure,
)
from .load import RunResult, check_out_dir, find_metrics, load_results
from .tables import (
    GROUP,
    SETTING,
    base_method,
    html_table,
    markdown_table,
    method_order,
    overhead_table,
    reference_method,
    runs_frame,
    summary_table,
)

_DPI = 120

__all__ = ["FIGURES", "GROUP", "SETTING", "RunResult", "ablation_figure", "base_method",
           "build_report",
           "family_figures", "find_metrics", "heterogeneity_figure", "html_table",
           "learning_curves_figure", "load_results", "markdown_table", "method_color",
           "method_order", "overhead_figure", "overhead_table", "partition_figure",
           "reference_method", "run_curves_figure", "runs_frame", "scaling_agents_figure",
           "spectral_gap_figure", "summary_table"]


def save_png(fig: Figure, path: Path, dpi: int = _DPI) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def build_report(paths: Iterable[str | Path], out_dir: str | Path = "reports",
                 family: str | None = None, skip_invalid: bool = False) -> dict[str, Path]:
    """Write the tables and figures of one family; returns what was written, by name."""
    out = check_out_dir(out_dir)
    if family is not None:  # a name in file names: refused before any result is read
        check_name("--family", family)
    results = load_results(paths, skip_invalid=skip_invalid)
    runs = runs_frame(results)
    families = sorted(set(runs["family"].dropna()))
    if family is None:
        if len(families) != 1:
            raise UserError(f"report: results of several families {families}; pass --family")
        family = families[0]
    names = output_names(family)
    summary = summary_table(runs)
    overhead = overhead_table(runs)
    written = {name: inside(out, path, "--family") for name, path in names.items()}
    atomic_write_text(written["table_csv"], summary.to_csv(index=False))
    atomic_write_text(written["table_md"], markdown_table(summary, family))
    atomic_write_text(written["table_html"], html_table(summary, family))
    atomic_write_text(written["overhead_csv"], overhead.to_csv(index=False))
    for name, fig in family_figures(results, summary, overhead).items():
        save_png(fig, written[name])
    return written


def output_names(family: str) -> dict[str, str]:
    """Every file a report of ``family`` writes, relative to its ``--out`` folder, by name: the
    report writes these and nothing else there (it deletes nothing)."""
    tables = {name: f"{stem}_{family}.{ext}" for name, stem, ext in (
        ("table_csv", "table", "csv"), ("table_md", "table", "md"),
        ("table_html", "table", "html"), ("overhead_csv", "overhead", "csv"))}
    return {**tables, **{name: f"figures/{family}/{name}.png" for name in FIGURES}}
