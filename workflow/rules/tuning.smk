"""Optuna studies: one job per (family, method, alpha) of a family whose protocol is tuned/both.

A family with `tuning: {protocol: tuned}` (or `both`; or every family, with
`--config protocol=...` after the targets) gets `studies/<family>/<method>/alpha<a>/best.json`
before its tuned runs, which depend on it and train with its values (`train --tuned`). The
journal `studies/<family>/<method>/alpha<a>.journal` and the study log beside it (`.log`,
appended by every attempt) are not outputs: Snakemake never deletes them, so a failed or killed
tuning job resumes where it stopped, and a larger `tuning.trials` only adds the missing trials.
"""

import json
import shlex

from benchmark.config import result_fields
from benchmark.grid import STUDIES_ROOT, best_path, format_float, study_path
from benchmark.tuning.spec import Tuning

STUDY_OUT = f"{STUDIES_ROOT}/{{family}}/{{method}}/alpha{{alpha}}"


def tuning_family(wildcards):
    """The family of a study path; a study outside the family's methods and alphas is an error."""
    family = FAMILIES.get(wildcards.family)
    studies = family.studies if family else []
    if (wildcards.method, wildcards.alpha) not in {(m, format_float(a)) for m, a in studies}:
        raise WorkflowError(
            f"{STUDY_OUT.format(**wildcards)} is not a study of any family in {FAMILY_DIR}/ "
            f"(a family's (method, alpha) pairs: "
            f"{', '.join(f'{m}/alpha{format_float(a)}' for m, a in studies) or 'none'})"
        )
    USED_FAMILIES.add(family.name)  # its MLflow experiment is prepared in onstart
    return family


def tune_command(wildcards, threads):
    """GPU pinning (as train jobs) + `python -m benchmark tune` for this method and alpha."""
    family = tuning_family(wildcards)
    args = [PYTHON, "-m", "benchmark", "tune", "--config", family.path,
            "--study", study_path(family.name, wildcards.method, float(wildcards.alpha)),
            f"method={wildcards.method}", f"alpha={wildcards.alpha}", f"threads={threads}"]
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
                       subcategory="tuning",
                       labels={"method": "{method}", "alpha": "{alpha}", "plot": "history"}),
        sensitivity=report(f"{STUDY_OUT}/sensitivity.png", category="{family}",
                           subcategory="tuning",
                           labels={"method": "{method}", "alpha": "{alpha}",
                                   "plot": "sensitivity"}),
        trials=f"{STUDY_OUT}/trials.csv",
    log:
        f"{STUDY_OUT}/log.txt",
    params:
        command=tune_command,
        # every attempt appended: the record of the trials before a kill survives the rerun
        study_log=lambda wildcards: study_path(wildcards.family, wildcards.method,
                                               float(wildcards.alpha), ".log"),
        options=study_options,
    threads: lambda wildcards: job_threads(tuning_family(wildcards).base)
    resources:
        gpu=lambda wildcards: 1 if on_gpu(tuning_family(wildcards).base) else 0,
    shell:
        "{params.command} 2>&1 | tee -a {params.study_log} > {log}"


def tuned_best_files(wildcards):
    family = FAMILIES.get(wildcards.family)
    if family is None:
        raise WorkflowError(f"no family '{wildcards.family}' in {FAMILY_DIR}/ "
                            f"(families: {', '.join(FAMILIES)})")
    return [best_path(family.name, m, a) for m, a in family.studies]


rule tuning_table:
    """The best values per method and alpha of a family (runs its studies if they are missing)."""
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


def warn_old_layout_studies():
    """A study of the old layout (`studies/<family>/alpha<a>.journal`: CCL's lambdas only,
    before every method got a study with the same budget) is not used by this workflow; say so
    once per invocation, so nobody takes its trials for reused ones."""
    if not first_reading("old_studies"):
        return
    for name, family in FAMILIES.items():
        if family.spec.tuning.protocol == "fixed":
            continue
        for old in sorted(Path(STUDIES_ROOT, name).glob("alpha*.journal")):
            print(f"warning: {old} is a study of the old layout (CCL's lambdas only) and is not "
                  f"used: every method now has its own study, {STUDIES_ROOT}/{name}/<method>/"
                  f"alpha<a>.journal, with the family's one budget; keep it as a record or "
                  f"delete it", file=sys.stderr)


warn_old_layout_studies()
