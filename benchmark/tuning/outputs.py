"""What a study leaves beside its journal: ``best.json`` (what the grid reads), ``trials.csv``,
``history.png``, ``sensitivity.png``; and the table of best values of a family (``tune-table``).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import RunConfig, graph_label, graph_of
from ..data.registry import validation_samples
from ..errors import UserError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_text
from .spec import Tuning

METRIC_LABEL = "validation consensus accuracy (%)"


def best_summary(study: optuna.Study, config: RunConfig, spec: Tuning, journal: Path,
                 budget: int) -> dict[str, Any]:
    """The content of ``best.json``: the best values, their validation accuracy, trial counts."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = spec.params_for(config.method)
    if not complete:
        ranges = " / ".join(f"tuning.space.{n}" for n in names)
        raise UserError(f"study {journal}: no complete trial (all pruned, diverged or failed); "
                        f"narrow {ranges} or lower lr")
    best = best_trial(complete)
    counts = {s: sum(t.state == s for t in study.trials)
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    starts = spec.start_points(config)
    return {
        "family": config.family,
        "alpha": config.alpha,
        "method": config.method,
        "values": {n: best.params[n] for n in names},
        "value": best.value,
        "metric": METRIC_LABEL,
        # how finely the value tells trials apart: one sample is 100 / val_samples points
        "val_samples": validation_samples(config.dataset, config.synthetic, config.val_fraction,
                                          config.image_size),
        "best_trial": best.number,
        "n_complete": counts[TrialState.COMPLETE],
        "n_pruned": counts[TrialState.PRUNED],
        "n_failed": counts[TrialState.FAIL],
        "n_diverged": sum(bool(t.user_attrs.get("diverged")) for t in study.trials),
        "trials_budget": budget,
        "epochs": config.epochs,
        "start_value": _value_at(complete, starts[0]) if starts else None,
        "start_point": starts[0] if starts else None,
        "study": str(journal),
        # the graph the values were tuned on: `train --tuned` refuses them on any other
        "graph": graph_of(config),
    }


def best_trial(complete: list[FrozenTrial]) -> FrozenTrial:
    """The complete trial of highest validation accuracy; a tie goes to the earliest trial, so
    a study whose trials all tie keeps trial 0, the fixed protocol's point (a split too small to
    tell trials apart then means "not tuned", never a point picked by chance)."""
    return max(complete, key=lambda t: (t.value, -t.number))


def _value_at(complete: list[FrozenTrial], point: dict[str, float]) -> float | None:
    """Validation accuracy of the study's first point (the fixed protocol's), if it completed."""
    for t in complete:
        if all(math.isclose(t.params.get(k, math.nan), v) for k, v in point.items()):
            return t.value
    return None


def write_outputs(study: optuna.Study, config: RunConfig, spec: Tuning, best: dict[str, Any],
                  out_dir: Path) -> list[Path]:
    """``trials.csv``, the two plots and ``best.json`` (last: its presence means "all
    written"), each atomic; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    files = [out_dir / n for n in ("trials.csv", "history.png", "sensitivity.png", "best.json")]
    atomic_write_text(files[0], frame.to_csv(index=False))
    plot_history(study, files[1])
    plot_sensitivity(study, spec.params_for(config.method), spec, files[2])
    atomic_write_json(files[3], best)
    return files


def plot_history(study: optuna.Study, path: Path) -> None:
    """Value of every complete trial in trial order, the running best, and pruned trials' last
    reported value (Optuna's own history plot leaves pruned trials out, hiding the pruner)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
              if t.intermediate_values]
    if complete:
        xs = [t.number for t in complete]
        ys = [t.value for t in complete]
        ax.scatter(xs, ys, label="complete", color="C0", zorder=3)
        running = [max(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, running, where="post", color="C3", label="best so far")
    if pruned:
        ax.scatter([t.number for t in pruned],
                   [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="grey", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel(METRIC_LABEL)
    ax.set_title(f"{study.study_name}: optimisation history")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_sensitivity(study: optuna.Study, names: tuple[str, ...], spec: Tuning, path: Path
                     ) -> None:
    """Every trial in the searched space, coloured by its value: the value against the
    parameter for one parameter, the first two parameters against each other otherwise.
    Pruned / diverged / failed trials are hollow markers; the best is a star."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    trials = [t for t in study.trials if set(names) <= set(t.params)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    x_name = names[0]
    y_name = names[1] if len(names) > 1 else None

    def ys(group: list[FrozenTrial]) -> list[float]:
        if y_name is not None:
            return [t.params[y_name] for t in group]
        return [t.value if t.value is not None else
                (t.intermediate_values[max(t.intermediate_values)]
                 if t.intermediate_values else math.nan) for t in group]

    if complete:
        points = ax.scatter([t.params[x_name] for t in complete], ys(complete),
                            c=[t.value for t in complete], cmap="viridis", s=50,
                            edgecolors="black", zorder=3)
        fig.colorbar(points, ax=ax, label=METRIC_LABEL)
        best = best_trial(complete)
        ax.scatter([best.params[x_name]], ys([best]), marker="*", s=250, color="C3", zorder=4,
                   label="best")
    if others:
        ax.scatter([t.params[x_name] for t in others], ys(others), facecolors="none",
                   edgecolors="grey", s=50, label="pruned / diverged / failed")
    ax.set_xlim(spec.space[x_name].low, spec.space[x_name].high)
    if spec.space[x_name].log:
        ax.set_xscale("log")
    if y_name is not None:
        ax.set_ylim(spec.space[y_name].low, spec.space[y_name].high)
        if spec.space[y_name].log:
            ax.set_yscale("log")
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name or METRIC_LABEL)
    ax.set_title(f"{study.study_name}: sensitivity")
    if complete or others:
        ax.legend(loc="best", fontsize="small")
    _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Render to memory, then write atomically (a killed job leaves no truncated PNG)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


KEY_COLUMNS = ["family", "method", "graph", "alpha"]
TABLE_COLUMNS = [*KEY_COLUMNS, "value", "start_value", "val_samples", "n_complete", "n_pruned",
                 "n_failed", "epochs"]
OPTIONAL = ("graph", "val_samples")  # absent from older best.json files: empty cells


def best_table(best_files: list[str | Path]) -> Any:
    """One row per study: family, method, graph, alpha, the best value of every searched
    hyperparameter (one column each, empty where a method does not search it), the validation
    accuracy, that of the study's first point, the validation split's size, the trial counts."""
    import pandas as pd

    rows = []
    for path in best_files:
        try:
            best = json.loads(read_text(path, "tune-table"))  # never a FIFO or /dev/zero
            values = best["values"]
            row = {**{k: best[k] for k in TABLE_COLUMNS if k not in OPTIONAL},
                   "graph": graph_label(best["graph"]) if best.get("graph") else None,
                   "val_samples": best.get("val_samples"), **values}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise UserError(f"{path}: not a study's best.json ({type(err).__name__}: {err}); "
                            "pass studies/<family>/<method>/<graph>/alpha<a>/best.json files"
                            ) from None
        rows.append(row)
    params = sorted({k for row in rows for k in row} - set(TABLE_COLUMNS))
    frame = pd.DataFrame(rows, columns=[*KEY_COLUMNS, *params, *TABLE_COLUMNS[len(KEY_COLUMNS):]])
    frame["val_samples"] = frame["val_samples"].astype("Int64")  # a count, empty when unknown
    return frame.sort_values(KEY_COLUMNS).reset_index(drop=True)


def write_best_table(best_files: list[str | Path], out: str | Path) -> None:
    """``<out>.csv`` and ``<out>.md``: the best values per method, graph and alpha."""
    frame = best_table(best_files)
    out = Path(out)
    atomic_write_text(out.with_suffix(".csv"), frame.to_csv(index=False))
    shown = frame.astype(object).where(frame.notna(), None)  # unknown: an empty cell, not "nan"
    atomic_write_text(out.with_suffix(".md"),
                      shown.to_markdown(index=False, floatfmt=".4g", missingval="") + "\n")
