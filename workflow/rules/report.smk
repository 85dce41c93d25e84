"""Tables and figures of a family, from its runs' metrics.json files only; where to look next."""

FIGURES = ("learning_curves", "ablation", "heterogeneity", "scaling_agents", "spectral_gap",
           "overhead")


def print_tracking_hint():
    """After a successful run: the MLflow UI command and the runs URL of each family it used."""
    names = sorted(n for n in USED_FAMILIES if FAMILIES[n].base.tracking)
    if names:
        from benchmark.tracking import ui_hint

        hint = ui_hint(names)
        if hint:
            print(hint, file=sys.stderr)


def family_metrics(wildcards):
    if wildcards.family not in FAMILIES:
        raise WorkflowError(f"no family '{wildcards.family}' in {FAMILY_DIR}/ "
                            f"(families: {', '.join(FAMILIES)})")
    return [run.metrics_path for run in FAMILIES[wildcards.family].runs]


def tuning_table(wildcards):
    """A family with tuned runs: the table of tuned values comes with the table it feeds."""
    family = FAMILIES.get(wildcards.family)
    tuned = family is not None and family.spec.tuning.protocol != "fixed"
    return [f"reports/tuning_{wildcards.family}.csv"] if tuned else []


rule report_family:
    input:
        metrics=family_metrics,
        tuning=tuning_table,
    output:
        csv=report("reports/table_{family}.csv", category="{family}", subcategory="tables",
                   caption="../report/table.rst"),
        md="reports/table_{family}.md",
        html=report("reports/table_{family}.html", category="{family}", subcategory="tables",
                    caption="../report/table_html.rst"),
        overhead=report("reports/overhead_{family}.csv", category="{family}",
                        subcategory="tables", caption="../report/overhead.rst"),
        figures=[report(f"reports/figures/{{family}}/{name}.png", category="{family}",
                        subcategory="figures", caption=f"../report/{name}.rst")
                 for name in FIGURES],
    log:
        "reports/logs/report_{family}.txt",
    shell:
        "{PYTHON:q} -m benchmark report --family {wildcards.family:q} --out reports "
        "{input.metrics:q} > {log:q} 2>&1"
