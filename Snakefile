"""The benchmark workflow: experiment families (config/*.yaml) -> one job per run -> reports.

    snakemake --cores 2 reports/table_mnist1d.csv      # the README's first command, offline
    snakemake --cores 2 reports/table_digits.csv       # the smoke family (default target), offline
    snakemake -n --cores 8 reports/table_cifar10.csv   # plan the paper's grid (reads no data)
    snakemake --report reports/report.html             # tables + figures, opens on the answer
    snakemake --cores 2 reports/table_digits.csv reports/tuning_digits.csv --config protocol=both
        # tune every method (same budget), then the fixed and the tuned grid side by side
    snakemake --unlock reports/table_digits.csv        # after a hard kill, then rerun as before

Targets go BEFORE `--config` (it takes every word after it as a key=value).

Every family file is validated (benchmark.grid) when the workflow is parsed, i.e. before any job
starts; a bad field is one error line. Runs write results/<family>/.../metrics.json (+ log.txt);
reports are built from those files only. MLflow's store is prepared once in `onstart`; the end
of a successful run prints the command that starts the MLflow UI and each family's runs URL.
"""

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from benchmark.errors import UserError
from benchmark.grid import RESULTS_ROOT, RUN_PATH, load_families, workflow_options


try:
    # every `--config key=value` this workflow reads, validated (benchmark.grid.WorkflowOptions)
    OPTIONS = workflow_options(config)
    FAMILY_DIR = OPTIONS.family_dir
    # `--config protocol=fixed|tuned|both` overrides every family's tuning.protocol
    FAMILIES = load_families(FAMILY_DIR, protocol=OPTIONS.protocol)
except UserError as err:
    raise WorkflowError(f"error: {err}") from None

# the jobs' MLflow runs are tagged origin=workflow and go to the family's experiment; runs started
# by hand go to <family>-manual (benchmark/tracking.py), so they never mix into a grid's means
os.environ["BENCHMARK_ORIGIN"] = "workflow"
PYTHON = sys.executable  # the interpreter running Snakemake, i.e. the one with `benchmark`
WORKFLOW_DIR = Path(workflow.basedir) / "workflow"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tuning.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    """Default target: the embedded default's tables and figures."""
    input:
        [f"reports/{kind}_{name}.{ext}" for name in ("digits",) if name in FAMILIES
         for kind in ("table", "tuning")
         if kind == "table" or FAMILIES[name].spec.tuning.protocol != "fixed"
         for ext in ("csv", "md")],


onstart:
    prepare_tracking()
    start_preload()


onsuccess:
    print_tracking_hint()
