"""Regenerate golden metrics.json files (run only in a commit that says why the numbers moved):
``python tests/golden/make_golden.py [digits|mnist1d]`` (default: digits).

A short run per preset on the CPU with a fixed seed, every option spelled out so that a change
of the family file or of a default does not silently move the reference: every preset on
digits (``<preset>.json``), and ``qgm`` and ``ccl`` on MNIST-1D with the paper's CNN
(``mnist1d-<preset>.json``). Writing one set leaves the other's files untouched.

Portable numerics: these short runs are chaotic (a last-bit difference in one kernel moves the
4-epoch digits ``ccl`` run's final accuracy by up to 7 points), and the CPU kernels torch picks
depend on the machine's instruction set (AVX-512, AVX2...): golden files written on one CPU
failed on another at the same commit. So golden runs (made here and checked by
tests/test_golden.py) run in a fresh interpreter with every library pinned to kernels any
x86-64 CPU with SSE4.1 runs the same way: ATen's baseline kernels, MKL's conditional numerical
reproducibility and oneDNN's SSE4.1 code (:data:`PORTABLE_ENV`). The runs are then about 1.7x
slower, and their numbers are those of no particular machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",  # torch's own vectorised kernels: the baseline build
    "MKL_CBWR": "COMPATIBLE",          # MKL's reproducible mode: the same results on any CPU
    "DNNL_MAX_CPU_ISA": "SSE41",       # oneDNN (convolutions): its SSE4.1 kernels everywhere
    "OMP_NUM_THREADS": "1",            # one thread: no reduction order depends on the cores
}
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


def presets(dataset: str) -> tuple[str, ...]:
    from benchmark.methods import METHODS

    return {"digits": tuple(METHODS), "mnist1d": MNIST1D_PRESETS}[dataset]


def run_portable(runs: list[tuple[str, str]], data_dir: str | Path,
                 extra_env: dict[str, str] | None = None) -> dict[tuple[str, str], dict]:
    """The metrics of golden runs ``(dataset, method)``, made in fresh interpreters with
    :data:`PORTABLE_ENV` (the environment must be set before torch loads its kernels): one per
    CPU core (at most 2), each taking every other run; every run seeds itself and uses one
    thread, so which interpreter makes it changes no number."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, **PORTABLE_ENV, **(extra_env or {})}
        specs = [f"{dataset}:{method}" for dataset, method in runs]
        workers = max(1, min(2, os.cpu_count() or 1, len(specs)))
        children = [subprocess.Popen([sys.executable, __file__, "--run", out, str(data_dir),
                                      *specs[k::workers]], env=env, stdout=subprocess.DEVNULL)
                    for k in range(workers)]
        failed = [child.args for child in children if child.wait() != 0]
        if failed:
            raise RuntimeError(f"golden runs failed: {failed}")
        return {(d, m): json.loads((Path(out) / f"{d}-{m}" / "metrics.json").read_text())
                for d, m in runs}


def _run_here(out: str, data_dir: str, specs: list[str]) -> None:
    """The child of :func:`run_portable`: each golden run into ``out/<dataset>-<method>/``."""
    from benchmark.cli import main as cli

    for spec in specs:
        dataset, method = spec.split(":")
        code = cli(["train", "--out", str(Path(out) / f"{dataset}-{method}"),
                    *golden_args(method, dataset), f"data_dir={data_dir}"])
        assert code in (0, None), (spec, code)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--run"]:
        return _run_here(argv[1], argv[2], argv[3:])
    dataset = argv[0] if argv else "digits"
    with tempfile.TemporaryDirectory() as data:  # mnist1d: generated once, offline
        results = run_portable([(dataset, m) for m in presets(dataset)], data)
    for (_, method), metrics in results.items():
        text = json.dumps(metrics, indent=1, sort_keys=True) + "\n"
        golden_file(method, dataset).write_text(text)
        print(method, metrics.get("final", {}) or metrics.get("status"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
