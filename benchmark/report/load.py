"""Reading result files for a report: find them, check each is a run's ``metrics.json``, and
refuse (or, with ``skip_invalid``, skip with a warning) what is not.

A report over a folder someone has worked in meets stray files: a hand-edited ``metrics.json``,
a list saved under that name, a copy of a run folder, a tuned run of an earlier layout whose
values were tuned on another graph, a hand run of 6 epochs beside a grid's runs of 50. Each must
be named, with what is wrong, never turned into a traceback, a silent NaN, a second "seed" of
the same run, a tuned cell tuned elsewhere or a mean over unlike runs.

A cell of the tables (:data:`CELL`: dataset, model, graph, alpha, method, protocol) is the
seeds of one config: its runs agree on every option that changes results
(:func:`~benchmark.config.result_fields`) but the seed. A run that differs is refused, naming
it and a run of the cell it differs from; ``skip_invalid`` leaves out, with a warning, the runs
that differ from the cell's most common config (on a tie, that of the first file in path order).
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config import result_fields
from ..errors import UserError
from ..io import Unreadable, check_writable_dir, read_text
from ..metrics import NotRunMetrics, RunMetrics

METRICS_BYTES = 256 << 20  # a long run's history with every phase is a few MB


def check_out_dir(out: str | Path, what: str = "out") -> Path:
    """An output folder that exists or can be created and written (not a file, not under a
    file, not read-only), checked before any result is read."""
    return check_writable_dir(out, what)


def expand(paths: Iterable[str | Path], command: str) -> list[Path]:
    """The paths as given, with any pattern the shell left unexpanded (it matched nothing there,
    or was quoted) expanded here; a pattern matching nothing, or a missing path, is one line."""
    out: list[Path] = []
    for path in map(str, paths):
        matched = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]
        if not matched:
            raise UserError(f"{command}: {path} matches no file or folder")
        for one in map(Path, matched):
            if not one.exists():
                raise UserError(f"{command}: no such file or folder: {one}")
            out.append(one)
    return out


def find_metrics(paths: Iterable[str | Path], command: str = "report") -> list[Path]:
    """``metrics.json`` files named directly or found under the given folders (patterns such
    as ``'results/*/digits'`` work quoted), sorted."""
    paths = list(paths)
    found: set[Path] = set()
    for one in expand(paths, command):
        found.update(one.rglob("metrics.json") if one.is_dir() else [one])
    if not found:
        where = ", ".join(map(str, paths)) or "(none)"
        raise UserError(f"{command}: no metrics.json under {where}")
    return sorted(found)


@dataclass(frozen=True)
class RunResult:
    """One run of a report: its typed metrics and the file they came from."""

    path: str
    metrics: RunMetrics


# the axes of a table cell (report.tables.GROUP), as a run's config and metrics name them
CELL = ("dataset", "model", "topology", "n_agents", "alpha")


def _cell(metrics: RunMetrics) -> tuple:
    return (*(getattr(metrics.config, k) for k in CELL), metrics.method, metrics.protocol)


def _describe_cell(cell: tuple) -> str:
    dataset, model, topology, n_agents, alpha, method, protocol = cell
    return f"{method} ({protocol}) on {dataset}/{model}, {topology}-{n_agents}, alpha {alpha:g}"


def _setting(metrics: RunMetrics) -> dict[str, object]:
    """What the seeds of one cell must share: every option that changes results but the seed."""
    return metrics.config.model_dump(mode="json", include=set(result_fields()) - {"seed"})


def unlike_runs(results: list[RunResult]) -> list[tuple[RunResult, str]]:
    """The runs a cell would average with runs of another config: in each cell, those whose
    setting differs from the cell's most common one (ties: the first file's), each with what
    says so (the other file and the first differing options)."""
    cells: dict[tuple, list[tuple[RunResult, dict[str, object]]]] = {}
    for result in results:
        cells.setdefault(_cell(result.metrics), []).append((result, _setting(result.metrics)))
    unlike = []
    for cell, runs in cells.items():
        keys = [json.dumps(setting, sort_keys=True, default=str) for _, setting in runs]
        common = max(keys, key=lambda k: (keys.count(k), -keys.index(k)))
        reference, settled = runs[keys.index(common)]
        for (result, setting), key in zip(runs, keys, strict=True):
            if key == common:
                continue
            differ = [f"{k}: {setting.get(k)!r} there, {settled.get(k)!r} in {reference.path}"
                      for k in sorted(setting.keys() | settled.keys())
                      if setting.get(k) != settled.get(k)]
            unlike.append((result, f"is in the cell of {_describe_cell(cell)} but is not a "
                           f"seed of the same config ({'; '.join(differ[:3])}): a cell never "
                           "averages unlike runs; move it to another folder"))
    return unlike


def _result_key(metrics: RunMetrics) -> str:
    """The run's identity: every config field that changes its numbers (seed included) and the
    protocol it was run under."""
    keep = metrics.config.model_dump(mode="json", include=set(result_fields()))
    return json.dumps([keep, metrics.protocol], sort_keys=True, default=str)


def load_results(paths: Iterable[str | Path], skip_invalid: bool = False,
                 command: str = "report") -> list[RunResult]:
    """Every run's metrics under ``paths``; a file that is not one, or a second copy of the same
    run (same config and seed, options it does not use aside), is an error naming the file(s),
    or with ``skip_invalid`` a warning on stderr and the file is left out."""
    paths = list(paths)
    results: list[RunResult] = []
    seen: dict[str, str] = {}
    for file in find_metrics(paths, command):
        try:
            data = json.loads(read_text(file, command, limit=METRICS_BYTES))
        except json.JSONDecodeError as exc:
            issue = f"is not valid JSON ({exc.msg}, line {exc.lineno})"
        except Unreadable as exc:  # a FIFO or a device is never read (it would never end)
            issue = exc.problem
        except RecursionError:
            issue = "is not valid JSON (nested too deep)"
        else:
            issue = None
            try:
                metrics = RunMetrics.parse(data, str(file))
            except NotRunMetrics as err:
                issue = f"is {err.problem}"
            else:
                key = _result_key(metrics)
                elsewhere = metrics.tuned.other_graph(metrics.config) if metrics.tuned else None
                if elsewhere is not None:  # a tuned cell never holds values tuned elsewhere
                    issue = (f"is a tuned run whose values do not come from its own graph's "
                             f"study ({elsewhere}); delete it and rerun it with that study "
                             "(README \"Tuning\")")
                elif key in seen:
                    issue = (f"is the same run (config and seed) as {seen[key]}: a copy or a "
                             f"rerun elsewhere; remove one of them")
                else:
                    seen[key] = str(file)
        if issue is not None:
            _refuse_or_skip(command, str(file), issue, skip_invalid)
            continue
        results.append(RunResult(str(file), metrics))
    unlike = unlike_runs(results)
    for result, issue in unlike:
        _refuse_or_skip(command, result.path, issue, skip_invalid)
    left_out = {id(result) for result, _ in unlike}
    results = [result for result in results if id(result) not in left_out]
    if not results:
        raise UserError(f"{command}: no valid metrics.json under {', '.join(map(str, paths))}")
    return results


def _refuse_or_skip(command: str, file: str, issue: str, skip_invalid: bool) -> None:
    """A file the report cannot use: one error line, or with ``skip_invalid`` a warning."""
    if not skip_invalid:
        raise UserError(f"{command}: {file} {issue} (or pass --skip-invalid to leave it out)")
    print(f"warning: {command}: skipping {file}: it {issue}", file=sys.stderr)
