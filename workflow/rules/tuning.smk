"""Optuna studies: one job per (family, alpha) of a family whose CCL weights are tuned.

A family with `tuning: {lambdas: tuned}` (or every family, with `--config lambdas=tuned`) gets
`studies/<family>/alpha<a>/best.json` before its CCL runs, which depend on it and train with its
lambdas (`train --tuned`). The journal `studies/<family>/alpha<a>.journal` is not an output:
Snakemake never deletes it, so a failed or killed tuning job resumes where it stopped, and a
larger `tuning.trials` only adds the missing trials.
"""

import json
import shlex

from benchmark.grid import STUDIES_ROOT, Tuning, format_float, study_path

STUDY_OUT = f"{STUDIES_ROOT}/{{family}}/alpha{{alpha}}"


def tuning_family(wildcards):
    """The family of a study path; a study outside every tuned family's alphas is an error."""
    family = FAMILIES.get(wildcards.family)
    alphas = [format_float(a) for a in family.spec.grid.alpha] if family else []
    if wildcards.alpha not in alphas:
        raise WorkflowError(
            f"{STUDY_OUT.format(**wildcards)} is not a study of any family in {FAMILY_DIR}/ "
            f"(a family's grid.alpha values: {', '.join(alphas) or 'none'})"
        )
    USED_FAMILIES.add(family.name)  # its MLflow experiment is prepared in onstart
    return family


def tune_command(wildcards, threads):
    """GPU pinning (as train jobs) + `python -m benchmark tune` for this family and alpha."""
    family = tuning_family(wildcards)
    args = [PYTHON, "-m", "benchmark", "tune", "--config", family.path,
            "--study", study_path(family.name, float(wildcards.alpha)),
            f"alpha={wildcards.alpha}", f"threads={threads}"]
    return gpu_launcher(family.base) + shlex.join(args)


def study_options(wildcards):
    """Rerun trigger: the study's settings that change results, and its budget (a changed run
    option makes `tune` refuse the old journal with a one-line error; a larger trial budget
    just adds trials)."""
    family = tuning_family(wildcards)
    tuning = family.spec.tuning.model_dump(mode="json", include=set(result_fields(Tuning)))
    return json.dumps({"run": result_options(family.spec.run), "tuning": tuning},
                      sort_keys=True)


rule tune:
    input:
        data=lambda wildcards: data_ready(tuning_family(wildcards).base),  # rules/data.smk
    output:
        best=f"{STUDY_OUT}/best.json",
        history=report(f"{STUDY_OUT}/history.png", category="{family}",
                       subcategory="tuning", labels={"alpha": "{alpha}", "plot": "history"}),
        sensitivity=report(f"{STUDY_OUT}/sensitivity.png", category="{family}",
                           subcategory="tuning",
                           labels={"alpha": "{alpha}", "plot": "sensitivity"}),
        trials=f"{STUDY_OUT}/trials.csv",
    log:
        f"{STUDY_OUT}/log.txt",
    params:
        command=tune_command,
        options=study_options,
    threads: lambda wildcards: job_threads(tuning_family(wildcards).base)
    resources:
        gpu=lambda wildcards: 1 if on_gpu(tuning_family(wildcards).base) else 0,
    shell:
        "{params.command} > {log} 2>&1"


def tuned_best_files(wildcards):
    family = FAMILIES.get(wildcards.family)
    if family is None:
        raise WorkflowError(f"no family '{wildcards.family}' in {FAMILY_DIR}/ "
                            f"(families: {', '.join(FAMILIES)})")
    return [f"{STUDY_OUT.format(family=family.name, alpha=format_float(a))}/best.json"
            for a in family.spec.grid.alpha]


rule tuning_table:
    """The best lambdas per alpha of a family (runs its studies if they are missing)."""
    input:
        tuned_best_files,
    output:
        csv="reports/tuning_{family}.csv",
        md="reports/tuning_{family}.md",
    log:
        "reports/logs/tuning_{family}.txt",
    shell:
        "{PYTHON} -m benchmark tune-table {input} --out reports/tuning_{wildcards.family} "
        "> {log} 2>&1"
