"""Shared helpers: wildcard -> run spec lookup, GPU detection, MLflow store preparation."""

import os

from benchmark.config import result_fields

# options that change what a run computes (not where or how fast it runs)
RESULT_OPTIONS = result_fields()


wildcard_constraints:
    family=r"[^/]+",
    dataset=r"[^/]+",
    model=r"[^/]+",
    topology=r"[^/]+",
    n_agents=r"\d+",
    alpha=r"[^/]+",
    method=r"[^/]+",
    seed=r"\d+",


# families whose runs the DAG asked for: only their MLflow experiments are prepared
USED_FAMILIES = set()


def run_spec(wildcards):
    """The RunSpec behind a results/ path; a path outside every grid is an error, not a job."""
    run_dir = f"{RESULTS_ROOT}/" + RUN_PATH.format(**wildcards)
    family = FAMILIES.get(wildcards.family)
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


GPUS = visible_gpus()
if GPUS and "gpu" not in workflow.global_resources.keys():
    # without --resources gpu=N, Snakemake would not limit GPU jobs at all
    workflow.register_resource("gpu", len(GPUS))


# Set by profiles/slurm (`config: cluster=slurm`): jobs run on compute nodes, so this host's GPUs
# say nothing; a run on device auto/cuda asks the scheduler for one, which pins it there.
CLUSTER = config.get("cluster")


def on_gpu(config):
    """Whether a job running ``config`` (a RunConfig) takes a GPU: device auto or cuda[:N], and a
    GPU on this machine or on the cluster's nodes."""
    wants = config.device == "auto" or config.device.startswith("cuda")
    return wants and (bool(GPUS) or bool(CLUSTER))


def uses_gpu(wildcards):
    return on_gpu(run_spec(wildcards).config)


def gpu_launcher(config):
    """Prefix that pins a GPU job to one free GPU (Snakemake does not set CUDA_VISIBLE_DEVICES):
    a file lock per GPU, held by the job's process itself, so concurrent jobs never share.
    Every GPU rule (train, tune) starts its command with this."""
    if not on_gpu(config) or CLUSTER:  # SLURM sets CUDA_VISIBLE_DEVICES for --gpus itself
        return ""
    return (f"{PYTHON} {WORKFLOW_DIR / 'scripts' / 'gpu_slot.py'} "
            f"--gpus {','.join(GPUS)} --lock-dir .snakemake/gpu-slots -- ")


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

    uri = prepare_store(names)
    print(f"MLflow: {uri} (experiments: {', '.join(names)})", file=sys.stderr)
