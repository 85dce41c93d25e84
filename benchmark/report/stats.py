"""Statistics a table adds to its means: paired differences against the base optimiser, and
whether the accuracy had stopped moving when training stopped.

Paired: runs of two methods with the same seed share the partition, the initial model and the
batch order, so the honest comparison is the per-seed difference. A seed where either run did
not complete (diverged, collapsed) is left out of the pair and counted, never imputed.

Plateau: a setting whose mean consensus accuracy still moved by a point or more over the last
20% of its epochs was stopped while climbing (or falling); its ranking is about speed, not
where the methods end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

PLATEAU_TOLERANCE = 1.0  # accuracy points
PLATEAU_WINDOW = 0.2  # fraction of the epochs at the end
CONFIDENCE = 0.95


def paired_difference(method: pd.Series, base: pd.Series) -> dict[str, float | int]:
    """Per-seed ``method - base`` (Series indexed by seed, NaN = that run did not complete):
    mean, Student-t confidence interval, wins, pairs and the seeds left out."""
    both = method.index.intersection(base.index)
    method, base = method.loc[both], base.loc[both]
    ok = method.notna() & base.notna()
    diff = (method[ok] - base[ok]).to_numpy(dtype=float)
    n = len(diff)
    out: dict[str, float | int] = {"pairs": n, "left_out": int((~ok).sum()),
                                   "wins": int((diff > 0).sum()), "diff_mean": math.nan,
                                   "ci_low": math.nan, "ci_high": math.nan}
    if n:
        out["diff_mean"] = float(diff.mean())
    if n > 1:
        from scipy.stats import t

        half = t.ppf(0.5 + CONFIDENCE / 2, n - 1) * diff.std(ddof=1) / math.sqrt(n)
        out["ci_low"], out["ci_high"] = out["diff_mean"] - half, out["diff_mean"] + half
    return out


def plateau(curves: Iterable[pd.Series], epochs: int) -> dict[str, float | bool]:
    """How far the mean curve (over runs; Series of accuracy indexed by epoch) moved over the
    last :data:`PLATEAU_WINDOW` of ``epochs``: ``last_change`` = final value minus the value of
    the window (from the last evaluation at or before its start) furthest from it, signed.

    ``plateau`` is True when that is below :data:`PLATEAU_TOLERANCE` points, False otherwise,
    NaN when it cannot be told (no completed run, or fewer than two evaluations in the window).
    """
    curves = [c.dropna() for c in curves]
    curves = [c for c in curves if len(c)]
    if not curves:
        return {"plateau": math.nan, "last_change": math.nan}
    mean = pd.concat(curves, axis=1).mean(axis=1).sort_index()
    before = mean.index[mean.index <= epochs * (1 - PLATEAU_WINDOW) + 1e-9]
    window = mean.loc[before.max():] if len(before) else mean
    if len(window) < 2:
        return {"plateau": math.nan, "last_change": math.nan}
    moves = window.iloc[-1] - window.to_numpy()
    change = float(moves[np.argmax(np.abs(moves))])
    return {"plateau": bool(abs(change) < PLATEAU_TOLERANCE), "last_change": change}
