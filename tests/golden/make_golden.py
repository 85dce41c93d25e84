"""Regenerate golden metrics.json files (run only in a commit that says why the numbers moved):
``python tests/golden/make_golden.py [digits|mnist1d]`` (default: digits).

A short run per preset on the CPU with a fixed seed, every option spelled out so that a change
of the family file or of a default does not silently move the reference: every preset on
digits (``<preset>.json``), and ``qgm`` and ``ccl`` on MNIST-1D with the paper's CNN
(``mnist1d-<preset>.json``). Writing one set leaves the other's files untouched.
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
# 8 agents share the 4,000 signals (500 each): 32 iterations per epoch, lr / 10 for the last
# epoch; the consensus model ends near 45% (chance: 10%), so a broken model cannot match it
MNIST1D_ARGS = ["dataset=mnist1d", "model=convbase1d", "topology=ring", "n_agents=8",
                "alpha=0.1", "batch_size=16", "epochs=3", "lr=0.1", "lr_milestones=[0.75]",
                "lambda_m=0.1", "lambda_d=0.1", "momentum=0.9", "weight_decay=1e-4", "gamma=1.0",
                "seed=0", "threads=1", "device=cpu", "tracking=false", "log_cross_features=true",
                "vectorize=loop", "agent_threads=1"]
MNIST1D_PRESETS = ("qgm", "ccl")


def golden_args(method: str, dataset: str = "digits") -> list[str]:
    return [*(ARGS if dataset == "digits" else MNIST1D_ARGS), f"method={method}"]


def golden_file(method: str, dataset: str = "digits") -> Path:
    return HERE / (f"{method}.json" if dataset == "digits" else f"{dataset}-{method}.json")


def main(argv: list[str]) -> None:
    from benchmark.cli import main as cli
    from benchmark.methods import METHODS

    dataset = argv[0] if argv else "digits"
    presets = {"digits": tuple(METHODS), "mnist1d": MNIST1D_PRESETS}[dataset]
    with tempfile.TemporaryDirectory() as data:  # mnist1d: generated once, offline
        for method in presets:
            with tempfile.TemporaryDirectory() as tmp:
                code = cli(["train", "--out", tmp, *golden_args(method, dataset),
                            f"data_dir={data}"])
                assert code in (0, None), code
                metrics = json.loads((Path(tmp) / "metrics.json").read_text())
            text = json.dumps(metrics, indent=1, sort_keys=True) + "\n"
            golden_file(method, dataset).write_text(text)
            print(method, metrics.get("final", {}) or metrics.get("status"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
