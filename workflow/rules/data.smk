"""Data arrive once, before the grid: one `fetch_data` job per (data_dir, dataset) the planned
runs need; every training and tuning job waits for its marker `<data_dir>/.ready/<item>`.

`python -m benchmark fetch` applies the dataset's registry row's fetch rule: it downloads with
torchvision (checksum verified) into a temporary folder and renames it into place, so concurrent
jobs never download or extract into one folder, or generates the data offline (mnist1d: one
cache file, written atomically). Offline, a download's one fetch job fails with the line saying
where to put the files, and no run starts. It runs on the submitting machine (`localrule`):
cluster nodes often have no internet.
"""

from benchmark.data.fetch import fetch_item

DATA_READY = "{data_dir}/.ready/{item}"


def data_ready(config):
    """The marker a job of ``config`` waits for; `ancient`: a marker written after a run (e.g. on
    upgrading to this rule) makes no finished run look out of date."""
    marker = DATA_READY.format(data_dir=os.path.normpath(config.data_dir),
                               item=fetch_item(config))
    return ancient(marker)


rule fetch_data:
    output:
        DATA_READY,
    log:
        "{data_dir}/.ready/{item}.log",
    wildcard_constraints:
        item=r"[^/]+",
    localrule: True
    shell:
        "{PYTHON:q} -m benchmark fetch {wildcards.item:q} --data-dir {wildcards.data_dir:q} "
        "> {log:q} 2>&1 && touch {output:q}"
