"""Optuna studies: one job per (family, method, graph, alpha) of a family whose protocol is
tuned/both.

A family with `tuning: {protocol: tuned}` (or `both`; or every family, with `--config
protocol=...` after the targets) gets `studies/<family>/<method>/<graph>/alpha<a>/best.json`
(graph as in run paths: `ring-n16`) for every graph its method runs on at that alpha, before the
tuned runs of that graph, which depend on it and train with its values (`train --tuned`). The
journal `studies/<family>/<method>/<graph>/alpha<a>.journal` and the study log beside it (`.log`,
appended by every attempt) are not outputs: Snakemake never deletes them, so a failed or killed
tuning job resumes where it stopped, and a larger `tuning.trials` only adds the missing trials.
"""

import json

from benchmark.config import graph_label, graph_of, result_fields
from benchmark.grid import STUDIES_ROOT, STUDY_PATH, format_float
from benchmark.tuning.spec import Tuning

STUDY_OUT = f"{STUDIES_ROOT}/{STUDY_PATH}"  # {family}/{method}/{graph}/alpha{alpha} wildcards


def tuning_study(wildcards):
    """The study (benchmark.grid.StudySpec) of a study path; one outside every family's
    (method, graph, alpha) is an error."""
    family = FAMILIES.get(wildcards.family)
    best = f"{STUDY_OUT.format(**wildcards)}/best.json"
    study = family.by_best.get(best) if family else None
    if study is None:
        known = ", ".join(s.best for s in family.studies[:4]) + ", ..." if family else "none"
        raise WorkflowError(f"{best} is not a study of any family in {FAMILY_DIR}/ (its "
                            f"family's studies: {known or 'none'})")
    USED_FAMILIES.add(family.name)  # its MLflow experiment is prepared in onstart
    return study


def tuning_base(wildcards):
    """The family's `run:` config (device, threads) that a study's jobs run with."""
    return FAMILIES[tuning_study(wildcards).family].base


def tune_command(wildcards, threads):
    """GPU pinning (as train jobs) + `python -m benchmark tune` for this method, graph, alpha."""
    return gpu_launcher(tuning_base(wildcards)) + tuning_study(wildcards).tune_command(
        PYTHON, threads)


def study_options(wildcards):
    """Rerun trigger: the study's settings that change results (the family's run: options and
    the graph's), and its budget (a changed run option makes `tune` refuse the old journal with
    a one-line error; a larger trial budget just adds trials)."""
    study = tuning_study(wildcards)
    family = FAMILIES[study.family]
    tuning = family.spec.tuning.model_dump(mode="json", include=set(result_fields(Tuning)))
    return json.dumps({"run": result_options(family.spec.run),
                       "graph": result_options(study.graph), "tuning": tuning}, sort_keys=True)


def study_labels(plot):
    return {"method": "{method}", "graph": "{graph}", "alpha": "{alpha}", "plot": plot}


rule tune:
    input:
        data=lambda wildcards: data_ready(tuning_base(wildcards)),  # rules/data.smk
    output:
        best=f"{STUDY_OUT}/best.json",
        history=report(f"{STUDY_OUT}/history.png", category="{family}",
                       subcategory="tuning", labels=study_labels("history")),
        sensitivity=report(f"{STUDY_OUT}/sensitivity.png", category="{family}",
                           subcategory="tuning", labels=study_labels("sensitivity")),
        trials=f"{STUDY_OUT}/trials.csv",
    log:
        f"{STUDY_OUT}/log.txt",
    params:
        command=tune_command,
        # every attempt appended: the record of the trials before a kill survives the rerun
        study_log=lambda wildcards: tuning_study(wildcards).log,
        options=study_options,
    threads: lambda wildcards: job_threads(tuning_base(wildcards))
    resources:
        gpu=lambda wildcards: 1 if on_gpu(tuning_base(wildcards)) else 0,
    shell:
        # params.command is built with shlex by benchmark.grid; every other field is quoted
        "{params.command} 2>&1 | tee -a {params.study_log:q} > {log:q}"


def tuned_best_files(wildcards):
    family = FAMILIES.get(wildcards.family)
    if family is None:
        raise WorkflowError(f"no family '{wildcards.family}' in {FAMILY_DIR}/ "
                            f"(families: {', '.join(FAMILIES)})")
    return [study.best for study in family.studies]


rule tuning_table:
    """The best values per method, graph and alpha of a family (runs its studies if they are
    missing)."""
    input:
        tuned_best_files,
    output:
        csv="reports/tuning_{family}.csv",
        md="reports/tuning_{family}.md",
    log:
        "reports/logs/tuning_{family}.txt",
    shell:
        # every field quoted (the name alone after "tuning_": the shell joins the two)
        "{PYTHON:q} -m benchmark tune-table {input:q} --out reports/tuning_{wildcards.family:q} "
        "> {log:q} 2>&1"


def warn_old_layout_studies():
    """Journals of earlier layouts are not used by this workflow; say so once per invocation,
    so nobody takes their trials for reused ones:

    - `studies/<family>/alpha<a>.journal`: CCL's lambdas only, before every method got a study
      with the same budget (its space and budget differ: it cannot be resumed);
    - `studies/<family>/<method>/alpha<a>.journal`: one study per method and alpha, tuned on the
      family's `run:` graph and used on every graph. Its trials are valid for that graph, so the
      warning gives the command that adopts it there (`tune` checks the settings on resume)."""
    if not first_reading("old_studies"):
        return
    for name, family in FAMILIES.items():
        if family.spec.tuning.protocol == "fixed":
            continue
        for old in sorted(Path(STUDIES_ROOT, name).glob("alpha*.journal")):
            print(f"warning: {old} is a study of the old layout (CCL's lambdas only) and is not "
                  f"used: every method now has its own study per graph, {STUDIES_ROOT}/{name}/"
                  f"<method>/<graph>/alpha<a>.journal, with the family's one budget; keep it as "
                  f"a record or delete it", file=sys.stderr)
        home = graph_label(graph_of(family.base))  # the run: graph such a study tuned on
        adoptable = {(s.method, f"alpha{format_float(s.alpha)}"): s for s in family.studies
                     if s.label == home}
        for old in sorted(Path(STUDIES_ROOT, name).glob("*/alpha*.journal")):
            study = adoptable.get((old.parent.name, old.stem))
            free = study is not None and not Path(study.journal).exists()
            advice = (f"to reuse its trials for {home}: mkdir -p {Path(study.journal).parent} "
                      f"&& mv {old} {study.journal}" if free
                      else "keep it as a record or delete it")
            print(f"warning: {old} is a study of the previous layout (tuned on the family's run: "
                  f"graph, {home}) and is not used: every graph now has its own study, "
                  f"{STUDIES_ROOT}/{name}/<method>/<graph>/alpha<a>.journal; {advice}",
                  file=sys.stderr)


warn_old_layout_studies()
