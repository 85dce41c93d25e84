"""Shared helpers: wildcard -> run spec lookup, GPU detection, MLflow store preparation."""

import os
import shlex

from benchmark.config import result_fields

# options that change what a run computes (not where or how fast it runs)
RESULT_OPTIONS = result_fields()


wildcard_constraints:
    # a run of the tuned protocol lives under results/<family>/tuned/ (benchmark.grid.run_path)
    family=r"[^/]+(/tuned)?",
    dataset=r"[^/]+",
    model=r"[^/]+",
    topology=r"[^/]+",
    n_agents=r"\d+",
    graph=r"[^/]+",  # a study's graph: <topology>-n<agents>
    alpha=r"[^/]+",
    method=r"[^/]+",
    seed=r"\d+",


# families whose runs the DAG asked for: only their MLflow experiments are prepared
USED_FAMILIES = set()


def run_spec(wildcards):
    """The RunSpec behind a results/ path; a path outside every grid is an error, not a job."""
    run_dir = f"{RESULTS_ROOT}/" + RUN_PATH.format(**wildcards)
    family = FAMILIES.get(wildcards.family.removesuffix("/tuned"))
    spec = family.by_dir.get(run_dir) if family else None
    if spec is None:
        raise WorkflowError(
            f"{run_dir} is not a run of any family in {FAMILY_DIR}/ "
            f"(families: {', '.join(FAMILIES)}); paths are {RESULTS_ROOT}/{RUN_PATH}"
        )
    USED_FAMILIES.add(spec.family)
    return spec


def visible_gpus():
    """GPU ids this machine lets jobs use (CUDA_VISIBLE_DEVICES if set, else all of them)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def slots_per_device(run_config):
    """Runs sharing one GPU: `--config gpu_slots_per_device=k` (command line or profile), else
    the family's `gpu_slots_per_device` run option, else 1 (README "Several runs per GPU")."""
    return OPTIONS.gpu_slots_per_device or run_config.gpu_slots_per_device or 1


# CPU threads of a GPU job (it mostly launches kernels): `--config gpu_threads=N`, default 2;
# the family's `threads` is what its CPU jobs use
GPU_THREADS = OPTIONS.gpu_threads


# Set by profiles/slurm (`config: cluster=slurm`): jobs run on compute nodes, so this host's GPUs
# say nothing; a run on device auto/cuda asks the scheduler for one, which pins it there.
CLUSTER = OPTIONS.cluster


def first_reading(check):
    """True the first time this invocation plans with ``check`` (a name): a warning printed when
    planning is said once, not again by Snakemake's own re-reads of the workflow files (they
    inherit the environment variable this sets)."""
    key = f"BENCHMARK_CHECKED_{check.upper()}"
    if os.environ.get(key):
        return False
    os.environ[key] = "1"
    return True


def warn_unused_gpu():
    """The plan counts the GPUs this torch can use. On a machine whose GPU this torch cannot use
    (a CUDA build newer than the driver, a CPU-only wheel) that is 0, and the whole grid would run
    on the CPU without a word: say it once per invocation, when planning (dry runs included)."""
    if GPUS or CLUSTER or not first_reading("gpu"):
        return
    from benchmark.device import cpu_fallback_warning

    message = cpu_fallback_warning()
    if message:
        print(f"warning: the workflow plans 0 GPUs, so every job runs on the CPU: {message}",
              file=sys.stderr)


GPUS = visible_gpus()
warn_unused_gpu()
if GPUS and "gpu" not in workflow.global_resources.keys():
    # the `gpu` resource counts slots (GPUs x runs per GPU); without it, or --resources gpu=N,
    # Snakemake would not limit GPU jobs at all
    slots = max(slots_per_device(family.base) for family in FAMILIES.values())
    workflow.register_resource("gpu", len(GPUS) * slots)


def on_gpu(config):
    """Whether a job running ``config`` (a RunConfig) takes a GPU: device auto or cuda[:N], and a
    GPU on this machine or on the cluster's nodes."""
    wants = config.device == "auto" or config.device.startswith("cuda")
    return wants and (bool(GPUS) or bool(CLUSTER))


def uses_gpu(wildcards):
    return on_gpu(run_spec(wildcards).config)


def gpu_launcher(config):
    """Prefix that pins a GPU job to one free (GPU, slot) pair (Snakemake does not set
    CUDA_VISIBLE_DEVICES): a file lock per slot, held by the job's process itself, so no slot
    is ever shared and a GPU runs at most k jobs (benchmark/gpu_slots.py; hand-started runs
    take the same locks). Every GPU rule (train, tune) starts its command with this."""
    if not on_gpu(config) or CLUSTER:  # SLURM sets CUDA_VISIBLE_DEVICES for --gpus itself
        return ""
    return shlex.join([PYTHON, "-m", "benchmark.gpu_slots", "--gpus", ",".join(GPUS),
                       "--slots", str(slots_per_device(config)), "--"]) + " "


def job_threads(config):
    """CPU threads of a job: few for a GPU job, the family's `threads` (else 1) otherwise."""
    return GPU_THREADS if on_gpu(config) and not CLUSTER else config.threads or 1


def result_options(options):
    """A rerun trigger: the options of ``options`` that change results (benchmark.config), so
    a changed machine option (device, threads, vectorize...) redoes nothing."""
    return {k: v for k, v in options.items() if k in RESULT_OPTIONS}


def prepare_tracking():
    """Create the MLflow store and experiments once, before the first job (no schema race)."""
    names = sorted(n for n in USED_FAMILIES if FAMILIES[n].base.tracking)
    if not names:
        return
    from benchmark.tracking import prepare_store

    try:
        uri = prepare_store(names)
    except UserError as err:
        raise WorkflowError(f"error: {err}") from None
    print(f"MLflow: {uri} (experiments: {', '.join(names)})", file=sys.stderr)


def start_preload():
    """One fork server for this invocation's jobs (benchmark/preload.py): torch and the training
    path are imported once instead of once per job (~3.5 CPU-s each, more than a digits run's
    training). Jobs find it through BENCHMARK_PRELOAD; stopped (and its CPU time accounted to
    this process) when Snakemake exits. Local runs only: `--config preload=false` turns it off,
    and cluster jobs run on other hosts."""
    if CLUSTER or not OPTIONS.preload:
        return
    import atexit

    from benchmark.preload import ENV, start_server, stop_server

    log = Path(".snakemake") / "preload.log"
    log.parent.mkdir(exist_ok=True)
    try:
        proc, socket = start_server(log)
    except (OSError, RuntimeError) as err:  # an optimisation, never a requirement
        print(f"warning: no preload server ({err}; see {log}): every job imports the suite "
              "itself, slower, same results", file=sys.stderr)
        return
    os.environ[ENV] = socket
    atexit.register(stop_server, proc)
