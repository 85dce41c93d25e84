"""One job per run of a family's grid: `python -m benchmark train` into its results folder."""

import json


def job_command(wildcards, threads):
    """GPU pinning (if any) + the train command; torch gets exactly the rule's threads.

    Taking ``threads`` makes Snakemake treat this param as derived, so it is not a rerun
    trigger: the same run on another machine (other GPUs, fewer cores) is not redone.
    """
    spec = run_spec(wildcards)
    return gpu_launcher(spec.config) + spec.train_command(PYTHON, threads)


def run_options(wildcards):
    """The rerun trigger: the options the family sets for this run (its `run:` section plus the
    grid's overrides), not the resolved config, so editing a family redoes exactly the runs
    whose options changed, and a new option with a default in the code redoes nothing."""
    spec = run_spec(wildcards)
    explicit = {**FAMILIES[spec.family].spec.run, **spec.overrides}
    return json.dumps(result_options(explicit), sort_keys=True)


rule train:
    input:
        data=lambda wildcards: data_ready(run_spec(wildcards).config),  # rules/data.smk
        # a tuned run waits for its method's study on its graph at its alpha (rules/tuning.smk)
        tuned=lambda wildcards: run_spec(wildcards).tuned or [],
    output:
        f"{RESULTS_ROOT}/{RUN_PATH}/metrics.json",
    log:
        f"{RESULTS_ROOT}/{RUN_PATH}/log.txt",
    params:
        command=job_command,
        options=run_options,
    threads: lambda wildcards: job_threads(run_spec(wildcards).config)
    resources:
        gpu=lambda wildcards: 1 if uses_gpu(wildcards) else 0,
    shell:
        # params.command is built with shlex by benchmark.grid; every other field is quoted
        "{params.command} > {log:q} 2>&1"
