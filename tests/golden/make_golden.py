"""Regenerate the golden metrics.json of every preset (run only in a commit that says why the
numbers moved): ``python tests/golden/make_golden.py``.

A short digits run per preset on the CPU with a fixed seed, every option spelled out so that a
change of the family file or of a default does not silently move the reference.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARGS = ["dataset=digits", "model=lenet5", "topology=ring", "n_agents=8", "alpha=0.1",
        "batch_size=16", "epochs=4", "lr=0.05", "lambda_m=0.1", "lambda_d=0.1",
        "momentum=0.9", "weight_decay=1e-4", "gamma=1.0", "seed=0", "threads=1",
        "device=cpu", "tracking=false", "log_cross_features=true", "vectorize=loop",
        "agent_threads=1"]


def golden_args(method: str) -> list[str]:
    return [*ARGS, f"method={method}"]


def main() -> None:
    from benchmark.cli import main as cli
    from benchmark.methods import METHODS

    for method in METHODS:
        with tempfile.TemporaryDirectory() as tmp:
            code = cli(["train", "--out", tmp, *golden_args(method)])
            assert code in (0, None), code
            metrics = json.loads((Path(tmp) / "metrics.json").read_text())
        (HERE / f"{method}.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        print(method, metrics.get("final", {}) or metrics.get("status"))


if __name__ == "__main__":
    sys.exit(main())
