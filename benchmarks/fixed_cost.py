"""Fixed cost of one run: what a training job pays besides its iterations.

Each round starts a fresh interpreter that runs one run exactly as a workflow job does
(``benchmark.train.run`` on a family file, MLflow on by default, into a temporary store prepared
beforehand like the workflow's ``onstart``), and splits its wall time into:

- ``startup``: interpreter start (spawn -> first line of the child);
- ``imports``: ``benchmark.config`` and ``benchmark.train`` (what ``benchmark train`` loads);
- ``setup``: config, data, partition, graph, models, swarm, run folder, MLflow run (-> first step);
- ``first_iteration_excess``: the first step minus the median step (lazy allocations, warm-up);
- ``evaluation``: every evaluation, and ``final_evaluation`` the last one alone;
- ``finish``: after the last step (final evaluation, ``metrics.json``, MLflow results, artifacts);
- ``exit``: ``run`` returned -> process gone (the CLI's summary line, interpreter exit).

``fixed = startup + imports + setup + first_iteration_excess + finish + exit``; its share of the
run's wall time is the figure the digits default is sized by (issue 17: <= 15%). CPU seconds of
the child (user + sys) are reported too: on a shared machine they move less than wall time.

    python benchmarks/fixed_cost.py                       # the digits default, 3 rounds
    python benchmarks/fixed_cost.py --config config/digits-lenet.yaml --rounds 1 epochs=12
"""

from __future__ import annotations

import time

# first thing the child does: wall (CLOCK_MONOTONIC, system-wide) and CPU since the process began
CHILD_START = (time.monotonic(), time.process_time())

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import runpy  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHILD_PREFIX = "FIXED_COST "
TINY_OVERRIDES = ["epochs=2", "n_agents=4", "eval_every=1", "tracking=false"]


def instrument(imports: tuple | None) -> None:
    """Wrap ``train.build_experiment`` (to time every swarm step, ~1 us each) and ``train.run``
    (to print one JSON line of phase boundaries when it returns). ``imports``: the span of the
    imports, None when there were none (preloaded)."""
    from benchmark import train

    steps: list = []
    build, run = train.build_experiment, train.run

    def timed_build(config):
        exp = build(config)
        step = exp.swarm.step

        def timed_step(*args, **kwargs):
            t0 = now()
            out = step(*args, **kwargs)
            steps.append((t0, now()))
            return out

        exp.swarm.step = timed_step
        return exp

    def timed_run(config, out, **kwargs):
        metrics = run(config, out, **kwargs)
        history = metrics.history
        start, end = imports or (CHILD_START, CHILD_START)
        print(CHILD_PREFIX + json.dumps({
            "child_start": CHILD_START, "imports_start": start, "imports_end": end,
            "steps": steps, "run_end": now(),
            "evaluations": [(r.phases or {}).get("evaluation", 0.0) for r in history],
            "epochs": len(history), "iterations_per_epoch": metrics.iterations_per_epoch,
            "model": config.model, "n_agents": config.n_agents, "status": metrics.status,
            "tracking": config.tracking,
        }), flush=True)
        return metrics

    train.build_experiment, train.run = timed_build, timed_run


def now() -> tuple[float, float]:
    return time.monotonic(), time.process_time()


def child(argv: list[str]) -> None:
    """A fresh process: time the imports, then run ``python -m benchmark argv`` (exit path
    included)."""
    t0 = now()
    from benchmark import config as _config  # noqa: F401  (what `benchmark train` loads)
    from benchmark import train  # noqa: F401

    instrument((t0, now()))
    sys.argv = ["benchmark", *argv]
    runpy.run_module("benchmark", run_name="__main__", alter_sys=True)


def fresh_round(argv: list[str], env: dict) -> tuple[float, float, float, str]:
    """``python -m benchmark argv`` in a new interpreter (a job without the preload server)."""
    t_spawn = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--child", "--", *argv], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    t_exit = time.monotonic()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return t_spawn, t_exit, _children_cpu_delta(), proc.stdout


def preloaded_round(argv: list[str], env: dict) -> tuple[float, float, float, str, float]:
    """The same command as a workflow job runs it: forked from this process, which imported
    what the preload server imports, through the server's own child code. The client's
    interpreter start (``python -m benchmark`` up to the request) is timed in a subprocess and
    counted as startup."""
    global CHILD_START
    from benchmark.preload import _run_job

    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import benchmark.preload"], env=env, check=True)
    client_wall, client_cpu = time.monotonic() - t0, _children_cpu_delta()
    read, write = os.pipe()
    t_spawn = time.monotonic() - client_wall
    pid = os.fork()
    if pid == 0:
        CHILD_START = (time.monotonic(), time.process_time())  # a forked child's CPU starts at 0
        os.close(read)
        code = 1
        try:
            fds = [os.open(os.devnull, os.O_RDONLY), write, os.dup(write)]
            code = _run_job({"argv": argv, "cwd": str(ROOT), "env": env}, fds)
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        output = pipe.read()
    _, status, usage = os.wait4(pid, 0)
    t_exit = time.monotonic()
    _children_cpu_delta()  # the child just reaped: counted from its own rusage, not again later
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed ({status}):\n{output[-3000:]}")
    return t_spawn, t_exit, client_cpu + usage.ru_utime + usage.ru_stime, output, client_cpu


def one_round(argv: list[str], env: dict, preload: bool) -> dict:
    """One run; its phase durations (seconds) and CPU seconds."""
    if preload:
        t_spawn, t_exit, cpu, stdout, client_cpu = preloaded_round(argv, env)
    else:
        t_spawn, t_exit, cpu, stdout = fresh_round(argv, env)
        client_cpu = 0.0
    line = next(x for x in stdout.splitlines() if x.startswith(CHILD_PREFIX))
    c = json.loads(line.removeprefix(CHILD_PREFIX))
    out: dict = {}
    # k = 0: wall seconds; k = 1: CPU seconds of the child (less sensitive to other users' load)
    cpu_span = ("_cpu", -client_cpu, cpu - client_cpu)  # CPU clock: 0 = the child's start
    for k, (suffix, start, end) in enumerate((("", t_spawn, t_exit), cpu_span)):
        durations = sorted(b[k] - a[k] for a, b in c["steps"])
        median_step = durations[len(durations) // 2]
        first_start, first_end = c["steps"][0]
        last_end = c["steps"][-1][1]
        phases = {
            "startup": c["child_start"][k] - start,
            "imports": c["imports_end"][k] - c["imports_start"][k],
            "setup": first_start[k] - c["imports_end"][k],
            "first_iteration_excess": max(0.0, first_end[k] - first_start[k] - median_step),
            "finish": c["run_end"][k] - last_end[k],
            "exit": end - c["run_end"][k],
        }
        fixed = sum(phases.values())
        out.update({f"{name}{suffix}": v for name, v in phases.items()})
        out.update({f"median_iteration{suffix}": median_step, f"fixed{suffix}": fixed,
                    f"total{suffix}": end - start, f"fixed_share{suffix}": fixed / (end - start)})
    return {
        **out,
        "final_evaluation": c["evaluations"][-1],
        "evaluation": sum(c["evaluations"]),
        "evaluation_share": sum(c["evaluations"]) / out["total"],
        "info": {k: c[k] for k in ("epochs", "iterations_per_epoch", "model", "n_agents",
                                   "status", "tracking")},
    }


_LAST_CHILDREN_CPU = [0.0]


def _children_cpu_delta() -> float:
    """User + system CPU seconds of the children reaped since the previous call (one child per
    round, so: that round's run)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    delta, _LAST_CHILDREN_CPU[0] = total - _LAST_CHILDREN_CPU[0], total
    return delta


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/digits.yaml", help="family or run file")
    p.add_argument("--rounds", type=int, default=3, help="runs, one after the other")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the run (jobs: 1)")
    p.add_argument("--fresh", action="store_true",
                   help="each run in a new interpreter (no preload server), as by hand")
    p.add_argument("--no-tracking", action="store_true", help="tracking=false")
    p.add_argument("--tiny", action="store_true",
                   help="2 epochs, 4 agents, no MLflow, 1 round: checks the script runs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="run option overrides")
    args = p.parse_args(argv)
    if args.child:
        child(args.overrides)
        return {}
    overrides = list(args.overrides)
    if args.tiny:
        args.rounds = 1
        overrides = TINY_OVERRIDES + overrides
    if args.no_tracking:
        overrides.append("tracking=false")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("BENCHMARK_PRELOAD", None)
    if not args.fresh:  # what the preload server imports, then the same instrumentation
        import importlib

        from benchmark.preload import PRELOAD

        for name in PRELOAD:
            importlib.import_module(name)
        instrument(None)
    _children_cpu_delta()
    # mkdtemp, not TemporaryDirectory: a forked round runs this process's exit handlers (as a
    # preload child does), and TemporaryDirectory's finalizer would delete the store under the
    # next rounds, which then paid for creating a new one (~1.1 s of "setup" that no job pays)
    tmp = tempfile.mkdtemp(prefix="fixed-cost-")
    try:
        if "tracking=false" not in overrides:  # a store prepared beforehand, as by `onstart`
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
            subprocess.run([sys.executable, "-c", "from benchmark.tracking import prepare_store;"
                            " prepare_store(['digits', 'default'])"], env=env, check=True)
            _children_cpu_delta()
        rounds = []
        for r in range(args.rounds):
            argv = ["train", "--config", str(Path(args.config).resolve()), "--out",
                    f"{tmp}/run{r}", *overrides, f"threads={args.threads}"]
            rounds.append(one_round(argv, env, preload=not args.fresh))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from common import report, spread

    keys = [k for k in rounds[0] if k != "info"]
    figures = {"config": args.config, "overrides": overrides, "preload": not args.fresh,
               **rounds[0]["info"], "rounds": args.rounds}
    figures.update({k: spread([r[k] for r in rounds]) for k in keys})
    torch.set_num_threads(args.threads)
    return report("fixed_cost", figures, torch.device("cpu"))


if __name__ == "__main__":
    main()
