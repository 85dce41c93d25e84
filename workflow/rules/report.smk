"""Tables and figures of a family, from its runs' metrics.json files only."""

FIGURES = ("learning_curves", "ablation", "heterogeneity", "scaling_agents", "spectral_gap",
           "overhead")


def family_metrics(wildcards):
    if wildcards.family not in FAMILIES:
        raise WorkflowError(f"no family '{wildcards.family}' in {FAMILY_DIR}/ "
                            f"(families: {', '.join(FAMILIES)})")
    return [run.metrics_path for run in FAMILIES[wildcards.family].runs]


rule report_family:
    input:
        family_metrics,
    output:
        csv=report("reports/table_{family}.csv", category="{family}", subcategory="tables",
                   caption="../report/table.rst"),
        md="reports/table_{family}.md",
        overhead=report("reports/overhead_{family}.csv", category="{family}",
                        subcategory="tables", caption="../report/overhead.rst"),
        figures=[report(f"reports/figures/{{family}}/{name}.png", category="{family}",
                        subcategory="figures", caption=f"../report/{name}.rst")
                 for name in FIGURES],
    log:
        "reports/logs/report_{family}.txt",
    shell:
        "{PYTHON} -m benchmark report --family {wildcards.family} --out reports {input} > {log} 2>&1"
