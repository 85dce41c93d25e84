"""Every bad input of issue 5, point 4, through the command line.

Each case asserts: exit code 2, exactly one line on stderr naming the field, the bad value and
what is allowed, and that no result or checkpoint appeared. The CLI runs in-process
(``benchmark.cli.main`` returns the exit code), so these tests cost no subprocess start-up.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
import torch

from benchmark.checkpoint import CHECKPOINT, LOCK, MARKER, METRICS
from benchmark.cli import main

# 128 training images over 4 agents: 32 per agent, 4 iterations of 8 per epoch
SYNTH = ["dataset=synthetic", "synthetic={train_size: 128, test_size: 64, image_size: 8}",
         "model=mlp", "n_agents=4", "batch_size=8", "tracking=false", "threads=1", "device=cpu"]


def _fail(capsys, out: Path, *args: str, config: Path | None = None) -> str:
    """Run ``train`` expecting a user error; return its one line (without 'error: ')."""
    before = _files(out)
    argv = ["train", "--out", str(out), *(["--config", str(config)] if config else []), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert _files(out) == before, "a bad input must not write anything"
    return err.removeprefix("error: ").strip()


def _files(out: Path) -> dict[str, bytes]:
    if not out.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK}


def _assert_parts(line: str, *parts: str) -> None:
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"


@pytest.mark.parametrize(
    ("override", "field", "value", "suggestion"),
    [
        ("dataset=cifar", "dataset", "'cifar'", "did you mean 'cifar10'?"),
        ("model=resnet21", "model", "'resnet21'", "did you mean 'resnet20'?"),
        ("topology=rign", "topology", "'rign'", "did you mean 'ring'?"),
        ("method=cll", "method", "'cll'", "did you mean 'ccl'?"),
        ("partition=lni", "partition", "'lni'", "did you mean 'lin'?"),
        ("alhpa=0.1", "alhpa", "unknown key", "did you mean 'alpha'?"),
    ],
)
def test_unknown_names_suggest_the_closest(capsys, tmp_path, override, field, value, suggestion):
    line = _fail(capsys, tmp_path / "run", *SYNTH, override)
    _assert_parts(line, f"{field}:", value, "allowed:", suggestion)


@pytest.mark.parametrize(
    ("override", "field", "value", "allowed"),
    [
        ("alpha=0", "alpha", "0", "greater than 0"),
        ("alpha=-1", "alpha", "-1", "greater than 0"),
        ("lambda_m=-0.1", "lambda_m", "-0.1", "greater than or equal to 0"),
        ("lambda_d=-1", "lambda_d", "-1", "greater than or equal to 0"),
        ("lr=-0.5", "lr", "-0.5", "greater than or equal to 0"),
        ("epochs=0", "epochs", "0", "greater than or equal to 1"),
        ("epochs=-3", "epochs", "-3", "greater than or equal to 1"),
    ],
)
def test_out_of_range_numbers(capsys, tmp_path, override, field, value, allowed):
    line = _fail(capsys, tmp_path / "run", *SYNTH, override)
    _assert_parts(line, f"{field}: invalid value {value};", f"allowed: {allowed}")


def test_agent_count_the_topology_does_not_support(capsys, tmp_path):
    line = _fail(capsys, tmp_path / "run", *SYNTH, "topology=dyck", "n_agents=16")
    _assert_parts(line, "n_agents: invalid value 16", "exactly 32 for dyck")
    line = _fail(capsys, tmp_path / "run", *SYNTH, "topology=torus", "n_agents=10")
    _assert_parts(line, "n_agents: invalid value 10", "r x c", "nearest valid: 9 or 12")


def test_batch_larger_than_the_shard(capsys, tmp_path):
    line = _fail(capsys, tmp_path / "run", *SYNTH, "batch_size=64")
    _assert_parts(line, "batch_size: invalid value 64", "at most the smallest shard size (32)")


@pytest.mark.parametrize(("dataset", "folder"), [("cifar10", "cifar-10-batches-py"),
                                                 ("fmnist", "FashionMNIST")])
def test_data_dir_without_the_dataset(capsys, tmp_path, dataset, folder):
    empty = tmp_path / "data"
    empty.mkdir()
    line = _fail(capsys, tmp_path / "run", f"dataset={dataset}", f"data_dir={empty}",
                 "model=mlp", "tracking=false")
    _assert_parts(line, f"dataset {dataset}", str(empty / folder), "download: true")


def test_malformed_yaml(capsys, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dataset: synthetic\nepochs: [1, 2\nlr: 0.1\n")
    line = _fail(capsys, tmp_path / "run", config=config)
    _assert_parts(line, "malformed YAML", str(config), "line 3")
    config.write_text("- just\n- a list\n")
    line = _fail(capsys, tmp_path / "run", config=config)
    _assert_parts(line, str(config), "mapping of option: value", "got list")


def test_unwritable_output_directory(capsys, tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    line = _fail(capsys, a_file / "run", *SYNTH)
    _assert_parts(line, "out: invalid value", str(a_file / "run"), "a writable directory",
                  f"{a_file} is a file, not a directory")
    if Path("/proc/self").is_dir():  # a folder nobody can create files in, even root
        line = _fail(capsys, Path("/proc/benchmark-test-run"), *SYNTH)
        _assert_parts(line, "out: invalid value '/proc/benchmark-test-run'",
                      "cannot write in /proc")


@pytest.fixture
def checkpointed(interrupted_run):
    """``checkpointed(out, *overrides)``: a run folder left by a 3-epoch SYNTH run that died
    after epoch 1 (checkpoint, no metrics.json)."""
    return lambda out, *overrides: interrupted_run(out, [*SYNTH, "epochs=3", *overrides])


def test_mismatched_checkpoint_names_the_fields_and_offers_restart(capsys, tmp_path, checkpointed):
    out = tmp_path / "run"
    checkpointed(out)
    line = _fail(capsys, out, *SYNTH, "epochs=3", "lr=0.1", "alpha=0.5")
    _assert_parts(line, f"checkpoint {out / CHECKPOINT}", "different config",
                  "alpha: 1.0 -> 0.5", "lr: 0.05 -> 0.1", "--restart")
    # offered way out: --restart discards the checkpoint and trains the new config
    assert main(["train", "--out", str(out), "--restart", *SYNTH, "epochs=3", "lr=0.1"]) == 0
    metrics = json.loads((out / METRICS).read_text())
    assert metrics["config"]["lr"] == 0.1 and metrics["resumed_after_epochs"] == []
    assert not (out / CHECKPOINT).exists()


def test_fields_that_do_not_change_results_may_differ_on_resume(capsys, tmp_path, checkpointed):
    out = tmp_path / "run"
    checkpointed(out, "vectorize=auto", "agent_threads=1")
    # a checkpoint of an older version (format 1: no checksum) also fingerprinted machine
    # options: still resumable
    state = torch.load(out / CHECKPOINT, weights_only=True)
    state["config"].update(vectorize="auto", agent_threads=1, device="cpu")
    del state["sha256"]
    torch.save({**state, "format": 1}, out / CHECKPOINT)
    assert main(["train", "--out", str(out), *SYNTH, "epochs=3", "threads=2", "family=x",
                 "vectorize=loop", "agent_threads=2"]) == 0
    assert json.loads((out / METRICS).read_text())["resumed_after_epochs"] == [1]


def test_machine_options_are_exactly_the_fields_marked_so():
    """One flag (``changes_results: False``) drives the checkpoint fingerprint, the study's
    resume check and the workflow's rerun trigger."""
    from benchmark.checkpoint import fingerprint
    from benchmark.config import RunConfig, result_fields

    machine = {"family", "data_dir", "download", "device", "threads", "vectorize",
               "agent_threads", "tracking", "distributed"}
    assert machine <= RunConfig.model_fields.keys() - result_fields()
    assert {"seed", "lr", "alpha", "method", "eval_every"} <= result_fields()
    assert set(fingerprint(RunConfig())) == result_fields()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupted_checkpoint(capsys, tmp_path, damage, checkpointed):
    out = tmp_path / "run"
    checkpointed(out)
    path = out / CHECKPOINT
    data = path.read_bytes()
    path.write_bytes({"garbage": os.urandom(4096), "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    line = _fail(capsys, out, *SYNTH, "epochs=3")
    _assert_parts(line, f"checkpoint {path}", "cannot be read, truncated or corrupted",
                  "--restart")


def test_a_finished_run_of_another_config_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SYNTH, "epochs=1"]) == 0
    line = _fail(capsys, out, *SYNTH, "epochs=2")
    _assert_parts(line, str(out / METRICS), "finished run of a different config",
                  "epochs: 1 -> 2", "--restart")


def test_a_folder_in_use_by_another_process(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / LOCK, "a") as held:  # flock conflicts across open files, even in-process
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = _fail(capsys, out, *SYNTH, "epochs=1")
    _assert_parts(line, f"out: {out} is in use by another running process")


def test_grid_config_with_an_empty_or_mistyped_axis(tmp_path):
    grid = pytest.importorskip("benchmark.grid", reason="benchmark.grid (workflow issue) absent")
    from benchmark.errors import ConfigError

    family = tmp_path / "fam.yaml"
    base = ("run: {family: fam, dataset: synthetic, model: mlp, epochs: 1}\n"
            "grid:\n  topologies: [{topology: ring, n_agents: 4}]\n  seeds: [0]\n")
    family.write_text(base + "  alpha: []\n  methods: [dsgdm-n]\n")
    with pytest.raises(ConfigError, match=r"grid\.alpha: invalid value \[\]; allowed:.*at least 1"):
        grid.load_family(family)
    family.write_text(base + "  alpha: [0.1]\n  methods: dsgdm-n\n")
    with pytest.raises(ConfigError, match=r"grid\.methods: invalid value 'dsgdm-n';.*list"):
        grid.load_family(family)
    family.write_text(base + "  alpha: [0.1]\n  methods: [dsgdm-m]\n")
    with pytest.raises(ConfigError, match=r"grid\.methods: invalid value 'dsgdm-m'.*dsgdm-n"):
        grid.load_family(family)


# ---------------------------------------------------------------- issue 12: the classes of bug
# Each class: several cases through the command line, each exit code 2 with one line saying what
# is wrong, and nothing written (no run folder content, no checkpoint, no MLflow store).
NO_GPU = not torch.cuda.is_available()
DIGITS = ["dataset=digits", "model=mlp", "tracking=false", "device=cpu"]


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An MLflow store path that must not appear: every case below runs with tracking on."""
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db


@pytest.mark.parametrize(("overrides", "first_line"), [
    (["lr=.inf"], "lr: invalid value inf; allowed: a finite number"),
    (["lambda_m=.inf"], "lambda_m: invalid value inf; allowed: a finite number"),
    (["alpha=.nan"], "alpha: invalid value nan; allowed: a finite number"),
    (["lr_milestones=[0.5, .nan]"], "lr_milestones[1]: invalid value nan; allowed: a finite"),
    (["synthetic={train_size: 128, noise: .inf}"], "synthetic.noise: invalid value inf"),
    (["seed=4294967296"], "seed: invalid value 4294967296; allowed: less than or equal to "
                          "4294967295"),
    (["threads=1099511627776"], "threads: invalid value 1099511627776; allowed: less than"),
    (["image_size=100000"], "image_size: invalid value 100000; allowed: less than or equal"),
    (["device=gpu"], "device: invalid value 'gpu'; allowed: auto, cpu, cuda, cuda:N"),
    (["device=cuda:x"], "device: invalid value 'cuda:x'; allowed: auto, cpu, cuda, cuda:N"),
    pytest.param(["device=cuda"], "device: invalid value 'cuda'; allowed: one of auto, cpu (torch",
                 marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")),
    pytest.param(["device=cuda:7"], "device: invalid value 'cuda:7'; allowed: one of auto, cpu",
                 marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")),
    (["topology=torus", "n_agents=12", "torus_rows=5"], "torus_rows: invalid value 5; allowed: "
                                                        "a divisor r of n_agents=12"),
    # a bad value is refused whoever reads it (another algorithm's option, normalised once valid)
    (["method=dsgdm-n", "qgm_variant=nope"], "qgm_variant: invalid value 'nope'; allowed: one "
                                              "of aketi, lin"),
    (["topology=ring", "degree=0"], "degree: invalid value 0; allowed: greater than or equal"),
    (["data_dir="], "data_dir: invalid value None"),
    (["data_dir=''"], "data_dir: invalid value ''; allowed: String should have at least 1"),
    # YAML reads true/yes as booleans, which pydantic would take for 1 (`n_agents=true` would
    # train one agent): every number field refuses them; boolean fields still take them
    (["n_agents=true"], "n_agents: invalid value True; allowed: a number, not a boolean"),
    (["lr=false"], "lr: invalid value False; allowed: a number, not a boolean"),
    (["seed=yes"], "seed: invalid value True; allowed: a number, not a boolean"),
    (["lr_milestones=[0.5, true]"], "lr_milestones: invalid value [0.5, True]; allowed: a number"),
    (["clip_grad_norm=true"], "clip_grad_norm: invalid value True; allowed: a number"),
])
def test_class1_every_option_is_validated_before_anything(capsys, tmp_path, store, overrides,
                                                          first_line):
    line = _fail(capsys, tmp_path / "run", *SYNTH, "tracking=true", *overrides)
    assert line.startswith(first_line), line
    assert not store.exists() and not (tmp_path / "run").exists()


def test_class1_the_largest_seed_the_libraries_hold_runs(tmp_path):
    assert main(["train", "--out", str(tmp_path), *SYNTH, "epochs=1", "seed=4294967295"]) == 0


@pytest.mark.parametrize(("overrides", "first_line"), [
    (["n_agents=20000"], "n_agents: invalid value 20000; allowed: at most 1437 (the training "
                         "samples of digits"),
    (["n_agents=100000"], "n_agents: invalid value 100000; allowed: at most 1437"),
    (["n_agents=1000", "val_fraction=0.5"], "n_agents: invalid value 1000; allowed: at most 718"),
    (["dataset=synthetic", "synthetic={train_size: 128}", "n_agents=200"],
     "n_agents: invalid value 200; allowed: at most 128"),
    (["dataset=synthetic", "synthetic={train_size: 100000}", "n_agents=5000"],
     "n_agents: invalid value 5000; allowed: at most 4096 (the mixing matrix"),
    (["dataset=synthetic", "synthetic={train_size: 10000000000}"],
     "synthetic: invalid value {'train_size': 10000000000}; allowed: a set of at most 2e+09"),
    (["dataset=synthetic", "synthetic={train_size: -5}"],
     "synthetic.train_size: invalid value -5; allowed: a positive integer"),
])
def test_class2_cheap_checks_come_before_expensive_ones(capsys, tmp_path, store, monkeypatch,
                                                        overrides, first_line):
    import benchmark.topology

    def never(*args, **kwargs):
        raise AssertionError("the graph was built before the cheap checks")

    # every graph is built there (build_topology's cached builder), wherever it is asked for
    monkeypatch.setattr(benchmark.topology, "_build", never)
    line = _fail(capsys, tmp_path / "run", *DIGITS, "tracking=true", *overrides)
    assert line.startswith(first_line), line
    assert not store.exists()


@pytest.mark.parametrize("saved", [False, True])
def test_class2_resume_hint_only_when_an_epoch_was_saved(capsys, tmp_path, monkeypatch, saved,
                                                         checkpointed):
    import benchmark.train

    out = tmp_path / "run"
    if saved:
        checkpointed(out)

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark.train, "build_experiment", interrupted)
    assert main(["train", "--out", str(out), *SYNTH, "epochs=3"]) == 130
    err = capsys.readouterr().err
    hint = "to resume from the last completed epoch" if saved else "no epoch was saved"
    assert err.startswith("interrupted: ") and hint in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("text", "first_line"), [
    ("lr: 0.1\nepochs: 1\nlr: 0.2\n", "key 'lr' appears twice, at lines 1 and 3"),
    ("dataset: synthetic\nsynthetic:\n  train_size: 64\n  train_size: 128\n",
     "key 'train_size' appears twice, at lines 3 and 4"),
    ("run: {lr: 0.1}\ngrid: {}\nrun: {lr: 0.2}\n", "key 'run' appears twice, at lines 1 and 3"),
])
def test_class3_a_key_given_twice_is_refused(capsys, tmp_path, store, text, first_line):
    config = tmp_path / "twice.yaml"
    config.write_text(text)
    line = _fail(capsys, tmp_path / "run", config=config)
    assert line == f"config: {config}: {first_line}; keep one"
    assert not store.exists()


@pytest.mark.parametrize(("args", "first_line"), [
    (["--out", ""], "out: invalid value ''; allowed: a folder path"),
    (["--out", " "], "out: invalid value ' '; allowed: a folder path"),
    (["--out", "run", "--config", ""], "--config: invalid value ''; allowed: a YAML file"),
    (["--out", "run", "synthetic={train_size: 64, train_size: 32}"],
     "override 'synthetic={train_size: 64, train_size: 32}': key 'train_size' appears twice"),
])
def test_class3_silent_wrong_configuration_is_refused(capsys, tmp_path, store, monkeypatch, args,
                                                      first_line):
    monkeypatch.chdir(tmp_path)  # an empty --out would write here
    assert main(["train", *args, *SYNTH]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {first_line}") and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize(("uri", "first_line"), [
    ("http://127.0.0.1:9", "tracking: cannot use the MLflow store http://127.0.0.1:9 (it does "
                           "not answer"),
    ("https://127.0.0.1:9/", "tracking: cannot use the MLflow store https://127.0.0.1:9/ (it "
                             "does not answer"),
    ("htp://127.0.0.1:5000", "tracking: cannot use the MLflow store htp://127.0.0.1:5000"),
    ("sqlite3:///x.db", "tracking: cannot use the MLflow store sqlite3:///x.db"),
])
def test_class4_a_tracking_store_that_cannot_be_used_fails_at_once(capsys, tmp_path, monkeypatch,
                                                                   uri, first_line):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    line = _fail(capsys, tmp_path / "run", *SYNTH, "tracking=true", "epochs=1")
    assert line.startswith(first_line), line
    assert line.endswith("start the MLflow server, fix MLFLOW_TRACKING_URI, or set tracking=false")
    assert os.listdir(tmp_path) == []  # no run folder, no lock, no store


def test_class4_a_study_checks_the_tracking_store_before_its_journal(capsys, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    family = tmp_path / "fam.yaml"
    family.write_text("run: {dataset: synthetic, model: mlp, n_agents: 4, epochs: 1}\n"
                      "tuning: {trials: 1}\n")
    journal = tmp_path / "studies" / "alpha1.0.journal"
    assert main(["tune", "--config", str(family), "--study", str(journal), "method=ccl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tracking: cannot use the MLflow store http://127.0.0.1:9 (it "
                          "does not answer")
    assert err.count("\n") == 1 and os.listdir(tmp_path) == ["fam.yaml"]


FULL_DISK = """\
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from benchmark.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("epochs", "saved", "failing", "models"), [
    (3, True, CHECKPOINT, "none"),  # the epoch-2 checkpoint of a run resumed after epoch 1
    (2, True, METRICS, "none"),  # the last epoch writes metrics.json only
    (2, True, "model_consensus.pt", "consensus"),  # ... and first the consensus model
    (2, False, CHECKPOINT, "none"),  # the first checkpoint: nothing to resume from
])
def test_class4_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, epochs,
                                                                          saved, failing, models,
                                                                          checkpointed):
    import subprocess
    import sys

    out = tmp_path / "run"
    args = ["train", "--out", str(out), *SYNTH, f"epochs={epochs}", f"save_models={models}"]
    if saved:
        checkpointed(out, f"epochs={epochs}", f"save_models={models}")
    before = (out / CHECKPOINT).read_bytes() if saved else None
    limit = len(before) // 2 if failing == CHECKPOINT and saved else 1000
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    then = ("the last checkpoint is intact: fix the cause and run the same command again to "
            "resume" if saved else "no epoch was saved: fix the cause and run the same command "
            "again")
    assert proc.stderr == f"error: cannot write {out / failing}: File too large; {then}\n"
    assert not (out / METRICS).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK, MARKER,
                                                            *([CHECKPOINT] if saved else [])])
    if saved:
        assert (out / CHECKPOINT).read_bytes() == before
    assert main(args) == 0  # space is back
    assert json.loads((out / METRICS).read_text())["resumed_after_epochs"] == ([1] if saved else [])


@pytest.mark.parametrize(("axis", "values", "first_line"), [
    ("alpha", "[0.1, 1.0e-1]", "grid.alpha: invalid value [0.1, 0.1]; allowed: distinct values "
                               "(0.1 is listed twice, at positions 0 and 1)"),
    ("seeds", "[0, 1, 0]", "grid.seeds: invalid value [0, 1, 0]; allowed: distinct values (0 is "
                           "listed twice, at positions 0 and 2)"),
    ("methods", "[qgm, ccl, qgm]", "grid.methods: invalid value ['qgm', 'ccl', 'qgm']; allowed: "
                                   "distinct values ('qgm' is listed twice"),
])
def test_class7_a_value_listed_twice_on_an_axis(capsys, tmp_path, axis, values, first_line):
    axes = {"alpha": "[0.1]", "seeds": "[0]", "methods": "[dsgdm-n]", axis: values}
    _plan_fails(capsys, tmp_path, "  topologies: [{topology: ring, n_agents: 4}]\n"
                + "".join(f"  {k}: {v}\n" for k, v in axes.items()), first_line)


def _plan_fails(capsys, tmp_path: Path, grid_and_tuning: str, first_line: str) -> None:
    """``plan`` of a family file (a synthetic run: section, then ``grid_and_tuning``) exits 2
    with one line naming the file and ``first_line``, and writes nothing."""
    family = tmp_path / "fam.yaml"
    family.write_text("run: {family: fam, dataset: synthetic, model: mlp, epochs: 1}\ngrid:\n"
                      + grid_and_tuning)
    assert main(["plan", "fam", "--config-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {family}: {first_line}") and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == ["fam.yaml"]


@pytest.mark.parametrize(("where", "text", "first_line"), [
    ("seeds", "  seeds: [0, true]\n", "grid.seeds: invalid value [0, True]; allowed: a number"),
    ("graph", "  topologies: [{topology: ring, n_agents: true}]\n",
     "grid.topologies[0].n_agents: invalid value True; allowed: a number"),
    ("tuning", "tuning: {trials: true}\n", "tuning.trials: invalid value True; allowed: a number"),
    ("tuning", "tuning: {space: {lr: [true, 1.0]}}\n",
     "tuning.space.lr.low: invalid value True; allowed: a number"),
])
def test_class7_a_boolean_on_a_numeric_axis_or_budget(capsys, tmp_path, where, text, first_line):
    parts = {"seeds": "  seeds: [0]\n", "graph": "  topologies: [{topology: ring, n_agents: 4}]\n",
             "tuning": "", where: text}
    _plan_fails(capsys, tmp_path, "  alpha: [0.1]\n  methods: [dsgdm-n]\n" + parts["seeds"]
                + parts["graph"] + parts["tuning"], first_line)


# ---------------------------------------------------------------------------- issue 12, class 5
def _run_metrics(seed: int = 0) -> dict:
    """A finished run's metrics.json (benchmark.metrics.RunMetrics) of family ``hand``."""
    from test_report import _metrics

    return _metrics("dsgdm-n", seed, 0.1, 50.0, 40.0)


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("case", "expected"), [
    ("list", ["stray/metrics.json", "a JSON list, expected an object", "--skip-invalid"]),
    ("missing", ["stray/metrics.json", "not a valid run's metrics.json",
                 "invalid value '(missing)'"]),
    ("duplicate", ["copy/metrics.json", "same run (config and seed) as",
                   "seed0/metrics.json"]),
    ("glob", ["report: results/*/nothing* matches no file or folder"]),
    ("out-file", ["out: invalid value", "a writable directory", "is a file"]),
])
def test_class5_report_over_messy_folders(capsys, tmp_path, monkeypatch, case, expected):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    _write(results / "seed0" / METRICS, _run_metrics(0))
    _write(results / "seed1" / METRICS, _run_metrics(1))
    out, args = tmp_path / "reports", [str(results)]
    if case == "list":
        _write(results / "stray" / METRICS, [1, 2])
    elif case == "missing":
        _write(results / "stray" / METRICS, {"status": "completed", "config": {"family": "x"}})
    elif case == "duplicate":
        _write(results / "copy" / METRICS, _run_metrics(0))
    elif case == "glob":
        args = ["results/*/nothing*"]
    elif case == "out-file":
        out.write_text("a file")
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["report", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    _assert_parts(err, *expected)
    assert sorted(p for p in tmp_path.rglob("*")) == before, "a refused report writes nothing"
    if case in ("list", "missing", "duplicate"):  # asked to, it leaves the file out and says so
        assert main(["report", *args, "--out", str(out), "--skip-invalid"]) == 0
        err = capsys.readouterr().err
        assert err.startswith("warning: report: skipping ") and expected[0] in err
        table = (out / "table_hand.csv").read_text().splitlines()
        assert len(table) == 2 and ",2,2,0," in table[1]  # one row: 2 seeds, both completed


@pytest.mark.parametrize(("case", "expected"), [
    ("glob", "error: tune-table: studies/*/nothing*/best.json matches no file or folder"),
    ("missing", "error: tune-table: no such file or folder: studies/fam/alpha0.1/best.json"),
    ("out-file", "error: out: invalid value"),
])
def test_class5_tune_table_over_missing_files_or_a_file_as_out(capsys, tmp_path, monkeypatch,
                                                               case, expected):
    monkeypatch.chdir(tmp_path)
    args = {"glob": ["studies/*/nothing*/best.json"],
            "missing": ["studies/fam/alpha0.1/best.json"]}.get(case, ["best.json"])
    (tmp_path / "best.json").write_text("{}")
    (tmp_path / "reports").write_text("a file, not a folder")
    out = "reports/tuning_fam" if case == "out-file" else "tables/tuning_fam"
    before = sorted(tmp_path.rglob("*"))
    assert main(["tune-table", *args, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == before


# ------------------------------------------------------------------ issue 12, class 6: studies
RECORD = b'{"op_code":0,"worker_id":"w","study_name":"s","directions":[1]}\n'
JUNK = bytes(range(256)) * 4  # binary, with a newline at byte 10


@pytest.mark.parametrize(("journal_bytes", "bad_line"), [
    (RECORD + b"this is not json\n" + RECORD, 2),      # a garbage line in the middle
    (RECORD + b"[1, 2]\n", 2),                         # JSON, but not a record
    (JUNK, 1),                                         # binary junk (1024 bytes)
    (RECORD + b"\x00\xff\xfe no newline", 2),          # a binary tail is not a torn record
])
def test_class6_a_journal_that_is_not_optuna_is_refused_never_cut(capsys, tmp_path,
                                                                 journal_bytes, bad_line):
    journal = tmp_path / "studies" / "alpha0.5.journal"
    journal.parent.mkdir()
    journal.write_bytes(journal_bytes)
    assert main(["tune", "--study", str(journal), *SYNTH, "method=qgm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    _assert_parts(err, f"error: study {journal}: line {bad_line} is not an Optuna journal record",
                  "nothing was changed", f"rm {journal}")
    assert journal.read_bytes() == journal_bytes
    assert sorted(p.name for p in journal.parent.iterdir()) == ["alpha0.5.journal"]


@pytest.mark.parametrize(("override", "field"), [
    ("tuning.space={lr: [0.01, .inf]}", "tuning.space.lr"),
    ("tuning.space={lambda_m: [.nan, 1.0]}", "tuning.space.lambda_m"),
    ("tuning.space={lr: [-.inf, 0.1]}", "tuning.space.lr"),
])
def test_class6_a_search_range_with_a_non_finite_bound(capsys, tmp_path, override, field):
    journal = tmp_path / "alpha0.5.journal"
    assert main(["tune", "--study", str(journal), *SYNTH, "method=ccl", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}: invalid value") and err.count("\n") == 1
    assert "finite [low, high]" in err and not journal.exists()


@pytest.mark.parametrize("where", ["directory", "under a file"])
def test_class6_a_study_path_that_cannot_be_a_journal(capsys, tmp_path, where):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    study = {"directory": tmp_path / "d.journal", "under a file": a_file / "a.journal"}[where]
    if where == "directory":
        study.mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert main(["tune", "--study", str(study), *SYNTH, "method=qgm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --study: invalid value '") and err.count("\n") == 1
    _assert_parts(err, {"directory": "it is a directory",
                        "under a file": f"{a_file} is a file"}[where])
    assert sorted(tmp_path.rglob("*")) == before
