"""Optuna tuning of every method with one budget: search spaces, budget, resumption after
SIGKILL, pruning, MLflow, the protocols in the grid, and the guarantee that the objective never
looks at the test split."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from benchmark import train as train_module
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.tuning import objective, sampler, spec, study

optuna.logging.set_verbosity(optuna.logging.WARNING)

RUN = {
    "family": "tiny",
    "dataset": "synthetic",
    "synthetic": {"train_size": 256, "test_size": 64, "image_size": 8, "channels": 1},
    "model": "mlp",
    "topology": "ring",
    "n_agents": 4,
    "alpha": 0.5,
    "batch_size": 16,
    "epochs": 5,
    "lr": 0.05,
    "method": "ccl-dsgdm",
    "threads": 1,
    "tracking": False,
}
TUNING = {"epochs": 2, "pruner": "none", "trials": 3}
PAPER = {"lambda_m": 0.1, "lambda_d": 0.1}
FIXED = {"lambda_m": 0.01, "lambda_d": 0.01}  # the run's own lambdas (RunConfig defaults)


def _config_file(tmp_path: Path, run: dict | None = None, **tuning_opts) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"run": {**RUN, **(run or {})},
                                    "tuning": {**TUNING, **tuning_opts}}))
    return path


def _trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    """The journal as a fresh process would read it."""
    storage = study.storage(journal)
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


def _states(trials) -> list[str]:
    return [t.state.name for t in trials]


def test_tiny_study_writes_best_json_and_mlflow_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = _config_file(tmp_path, run={"tracking": True})
    journal = tmp_path / "studies" / "tiny" / "ccl-dsgdm" / "alpha0.5.journal"

    assert main(["tune", "--config", str(cfg), "--study", str(journal)]) == 0

    trials = _trials(journal)
    assert _states(trials) == ["COMPLETE"] * 3
    assert trials[0].params == PAPER and trials[1].params == FIXED  # the fixed points first
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)  # one report per epoch
    best_trial = max(trials, key=lambda t: (t.value, -t.number))
    out = journal.with_suffix("")
    best = json.loads((out / "best.json").read_text())
    assert best["values"] == best_trial.params and best["value"] == best_trial.value
    assert (best["n_complete"], best["n_pruned"], best["n_failed"]) == (3, 0, 0)
    assert best["alpha"] == 0.5 and best["family"] == "tiny" and best["epochs"] == 2
    assert best["method"] == "ccl-dsgdm" and best["study"] == str(journal)
    assert best["start_point"] == PAPER and best["start_value"] == trials[0].value
    assert best["graph"] == {"topology": "ring", "n_agents": 4, "torus_rows": None,
                             "degree": 3, "mixing": "uniform", "gamma": 1.0}
    assert best["val_samples"] == 26  # ceil(256 x 0.1): one sample is 3.85 points
    for name in ("history.png", "sensitivity.png", "trials.csv"):
        assert (out / name).stat().st_size > 0
    loaded = optuna.load_study(study_name="tiny-ccl-dsgdm-ring-n4-alpha0.5",
                               storage=study.storage(journal))
    assert loaded.metric_names == ["val_consensus_acc"]  # not "Objective 0" in the dashboard

    from mlflow import MlflowClient

    client = MlflowClient()
    # started by hand (not by the workflow): <family>-manual, as hand-started train runs
    assert client.get_experiment_by_name("tiny") is None
    experiment = client.get_experiment_by_name("tiny-manual")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["method"] == "ccl-dsgdm"
    assert parent.info.run_name == "ccl-dsgdm ring-4 a0.5 study"
    assert parent.data.tags["origin"] == "manual"
    assert sorted(r.info.run_name for r in children) == [
        f"ccl-dsgdm ring-4 a0.5 trial {n}" for n in range(3)]
    assert parent.data.metrics["best_value"] == best["value"]
    assert parent.data.metrics["best_lambda_m"] == best["values"]["lambda_m"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"best.json", "history.png", "sensitivity.png", "trials.csv"}
    by_trial = {int(r.data.tags["trial"]): r for r in children}
    for t in trials:
        child = by_trial[t.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["state"] == "complete" and child.info.status == "FINISHED"
        assert float(child.data.params["lambda_m"]) == pytest.approx(t.params["lambda_m"])
        history = client.get_metric_history(child.info.run_id, "val_consensus_acc")
        assert {m.step: m.value for m in history} == pytest.approx(t.intermediate_values)


def test_study_runs_are_named_after_their_study_in_their_experiment(tmp_path, monkeypatch):
    """Two studies in one experiment (the workflow's: the family's) never share a run name; a
    study resumed from the workflow after a start by hand gets a parent there."""
    monkeypatch.setattr(objective, "run", _fake_run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = str(_config_file(tmp_path, run={"tracking": True}))
    hand = tmp_path / "hand.journal"
    assert main(["tune", "--config", cfg, "--study", str(hand), "--trials", "1"]) == 0
    monkeypatch.setenv("BENCHMARK_ORIGIN", "workflow")  # as the Snakefile sets it for its jobs
    for name, overrides in (("a.journal", ["n_agents=8"]), ("b.journal", ["alpha=0.1"]),
                            ("hand.journal", [])):
        assert main(["tune", "--config", cfg, "--study", str(tmp_path / name), "--trials", "2",
                     *overrides]) == 0

    from mlflow import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(f"ccl-dsgdm {graph} a{alpha} {what}"
                           for graph, alpha in (("ring-8", "0.5"), ("ring-4", "0.1"),
                                                ("ring-4", "0.5"))
                           for what in ("study", "trial 0", "trial 1")
                           if (graph, alpha, what) != ("ring-4", "0.5", "trial 0"))
    assert {r.data.tags["origin"] for r in runs if r.data.tags["kind"] == "study"} == \
        {"workflow"}
    manual = client.search_runs([client.get_experiment_by_name("tiny-manual").experiment_id])
    assert sorted(r.info.run_name for r in manual) == ["ccl-dsgdm ring-4 a0.5 study",
                                                       "ccl-dsgdm ring-4 a0.5 trial 0"]


def test_a_study_per_method_searches_the_family_space(tmp_path, monkeypatch):
    """A baseline's study searches only its lr, from the family's range, the family's lr first;
    an ablation preset searches lr (when the family says so) and its own lambda only."""
    monkeypatch.setattr(objective, "run", _fake_run)
    space = {"lr": [0.01, 0.5], "lambda_m": [1e-3, 1.0], "lambda_d": [1e-3, 1.0]}
    cfg = _config_file(tmp_path, trials=3, space=space, ccl=["lr", "lambda_m", "lambda_d"])
    searched = {}
    for method in ("dsgdm-n", "ccl-mv"):
        config, tuning_spec = spec.load_tuning(cfg, [f"method={method}"])
        journal = tmp_path / method / "alpha0.5.journal"
        study.tune(config, tuning_spec, journal)
        trials = _trials(journal)
        searched[method] = {name for t in trials for name in t.params}
        assert len(study.finished_trials(study.open_study(journal, config, tuning_spec))) == 3
        lr = trials[0].distributions["lr"]
        assert (lr.low, lr.high, lr.log) == (0.01, 0.5, True)
        assert trials[0].params["lr"] == 0.05  # the family's fixed lr is trial 0
    assert searched == {"dsgdm-n": {"lr"}, "ccl-mv": {"lr", "lambda_m"}}


def test_sampler_seed_differs_per_study_and_session():
    tuning_spec = spec.build_spec({})
    seeds = {tuning_spec.sampler_seed_for(name, held)
             for name in ("f-qgm-ring-n16-alpha0.1", "f-qgm-ring-n8-alpha0.1") for held in (0, 3)}
    assert len(seeds) == 4  # per graph (and method, alpha), and per session
    assert tuning_spec.sampler_seed_for("s", 2) == spec.build_spec({}).sampler_seed_for("s", 2)
    assert spec.build_spec({"sampler_seed": 1}).sampler_seed_for("s", 2) != \
        tuning_spec.sampler_seed_for("s", 2)


def test_rerun_of_finished_study_adds_no_trial_and_budget_is_a_total(tmp_path, capsys):
    cfg = _config_file(tmp_path, trials=2)
    journal = tmp_path / "alpha0.5.journal"
    args = ["tune", "--config", str(cfg), "--study", str(journal)]
    assert main(args) == 0
    first = _trials(journal)
    best_before = (tmp_path / "alpha0.5" / "best.json").read_text()

    assert main(args) == 0
    assert [(t.number, t.state, t.params) for t in _trials(journal)] == \
        [(t.number, t.state, t.params) for t in first]
    assert (tmp_path / "alpha0.5" / "best.json").read_text() == best_before

    assert main([*args, "--trials", "3"]) == 0  # a larger budget runs only the missing trial
    assert _states(_trials(journal)) == ["COMPLETE"] * 3

    # a smaller budget than the study holds: refused, nothing rewritten ("3 of 2 finished")
    best_file = tmp_path / "alpha0.5" / "best.json"
    before = (journal.read_bytes(), best_file.read_bytes(), best_file.stat().st_mtime_ns)
    capsys.readouterr()
    assert main([*args, "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --trials: invalid value 2; allowed: at least 3, the finished "
                          "trials the study holds") and err.count("\n") == 1
    assert (journal.read_bytes(), best_file.read_bytes(), best_file.stat().st_mtime_ns) == before


def test_the_sampler_never_proposes_a_point_the_study_holds(tmp_path):
    """Two sessions of one study with the same seed, as every resumed study had: TPE alone
    proposes the first session's points again, the study's sampler draws new ones."""
    space = sampler.search_space(spec.build_spec({"space": {"lr": [0.01, 0.5]}}), "dsgdm-n")

    def two_sessions(journal: Path, distinct: bool) -> list[float]:
        for _ in range(2):
            tpe = optuna.samplers.TPESampler(seed=7)
            opened = optuna.create_study(
                storage=study.storage(journal), study_name="s", direction="maximize",
                sampler=sampler.DistinctSampler(tpe, space) if distinct else tpe,
                load_if_exists=True)
            opened.optimize(lambda t: t.suggest_float("lr", 0.01, 0.5, log=True), n_trials=2)
        return [t.params["lr"] for t in opened.trials]

    replayed = two_sessions(tmp_path / "tpe.journal", distinct=False)
    assert replayed[2:] == replayed[:2]  # the waste this sampler prevents
    assert len(set(two_sessions(tmp_path / "distinct.journal", distinct=True))) == 4


def test_an_integer_space_gives_each_point_once_and_no_budget_beyond_it(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr(objective, "run", _fake_run)  # the same value everywhere: no preference
    cfg = _config_file(tmp_path, baseline=["batch_size"],
                       space={"batch_size": {"low": 8, "high": 10, "log": False}})
    journal = tmp_path / "alpha0.5.journal"
    args = ["tune", "--config", str(cfg), "--study", str(journal), "method=dsgdm-n"]
    assert main([*args, "--trials", "3"]) == 0
    assert sorted(t.params["batch_size"] for t in _trials(journal)) == [8, 9, 10]
    capsys.readouterr()
    assert main([*args, "--trials", "4"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: --trials: invalid value 4; allowed: at most 3, the points of tuning.space")
    assert len(_trials(journal)) == 3


def _tune_command(cfg: Path, journal: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmark", "tune", "--config", str(cfg), "--study",
            str(journal), *extra]


def _stop_during_trial(cmd: list[str], journal: Path, number: int, sig: int
                       ) -> tuple[subprocess.Popen, optuna.trial.FrozenTrial | None]:
    """Start ``cmd``, send ``sig`` once trial ``number`` is RUNNING with its point drawn."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    try:
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if journal.exists() and journal.stat().st_size:
                running = [t for t in _trials(journal) if t.state == TrialState.RUNNING
                           and t.number == number and len(t.params) == 2]
                victim = running[0] if running else None
    finally:
        if proc.poll() is None:
            proc.send_signal(sig)
    return proc, victim


def _distinct_finished_points(trials) -> list[dict]:
    """The points of the complete and pruned trials, checked pairwise distinct."""
    points = [t.params for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len({tuple(sorted(p.items())) for p in points}) == len(points), points
    return points


# Trials long enough (a few hundred iterations) to be caught in the middle.
SLOW = {"synthetic": {**RUN["synthetic"], "train_size": 4096}, "epochs": 3}


def test_killed_trial_is_rerun_once_and_no_point_is_evaluated_twice(tmp_path):
    """SIGKILL during trial 2 (the first point the sampler draws: trials 0 and 1 are the fixed
    points), the same command again, then a larger budget: every finished trial has its own
    point. With one sampler seed per process, the resumed process drew trial 2's point again."""
    cfg = _config_file(tmp_path, run=SLOW, trials=4, epochs=3)
    journal = tmp_path / "alpha0.5.journal"
    cmd = _tune_command(cfg, journal)
    proc, victim = _stop_during_trial(cmd, journal, 2, signal.SIGKILL)
    proc.communicate()
    assert victim is not None, "the study finished before trial 2 could be killed"
    assert _trials(journal)[2].state == TrialState.RUNNING  # what a killed process leaves

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "trial 2 was left RUNNING by a killed process" in rerun.stdout
    assert "re-runs trial 2" in rerun.stdout

    trials = _trials(journal)
    assert _states(trials) == ["COMPLETE"] * 2 + ["FAIL"] + ["COMPLETE"] * 2
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 2]
    assert [t.number for t in retries] == [3] and retries[0].params == victim.params
    assert len(_distinct_finished_points(trials)) == 4  # the re-run is the one extra trial
    best = json.loads((tmp_path / "alpha0.5" / "best.json").read_text())
    assert (best["n_complete"], best["n_failed"]) == (4, 1)

    raised = subprocess.run([*cmd, "--trials", "6"], capture_output=True, text=True,
                            timeout=300)
    assert raised.returncode == 0, raised.stderr
    trials = _trials(journal)
    assert len(_distinct_finished_points(trials)) == 6 and len(trials) == 7


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_tune_says_one_line_and_reruns_the_trial_once(tmp_path, sig):
    cfg = _config_file(tmp_path, run=SLOW, trials=3, epochs=3, enqueue_paper=False)
    journal = tmp_path / "alpha0.5.journal"
    cmd = _tune_command(cfg, journal)
    proc, victim = _stop_during_trial(cmd, journal, 1, sig)
    out, err = proc.communicate(timeout=60)
    assert victim is not None, "the study finished before trial 1 could be interrupted"
    assert proc.returncode == 130
    said = [line for line in err.splitlines() if not line.startswith("[I ")]  # Optuna's info
    assert said == ["interrupted: run the same command again to resume the study"], err
    assert "Traceback" not in out + err
    # settled before exiting: the trial is FAIL and its point waits to be run first
    trials = _trials(journal)
    assert _states(trials) == ["COMPLETE", "FAIL", "WAITING"]
    assert trials[2].system_attrs["fixed_params"] == victim.params
    assert not (tmp_path / "alpha0.5" / "best.json").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "left RUNNING" not in rerun.stdout and "trial 2 re-runs trial 1" in rerun.stdout
    trials = _trials(journal)
    assert _states(trials) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == victim.params and trials[2].user_attrs["retry_of"] == 1
    assert len(_distinct_finished_points(trials)) == 3


def test_objective_never_touches_the_test_split(tmp_path, monkeypatch):
    real_load = train_module.load_dataset
    calls = []

    class Poisoned:
        """The test split's size stays known (the memory estimate sizes an evaluation batch
        with it); any access to its images or labels fails the trial."""

        def __init__(self, size: int) -> None:
            self.size = size

        def __getattr__(self, name):
            raise AssertionError(f"tuning read the test split ({name})")

        def __len__(self):
            return self.size

    def load_without_test(*args, **kwargs):
        bundle = real_load(*args, **kwargs)
        calls.append(kwargs["val_fraction"])
        assert bundle.val is not None and len(bundle.val) > 0
        bundle.test = Poisoned(len(bundle.test))
        return bundle

    monkeypatch.setattr(train_module, "load_dataset", load_without_test)
    config, tuning_spec = spec.load_tuning(_config_file(tmp_path, trials=2))
    assert config.val_fraction == 0.1  # carved for tuning although the run config has none
    result = study.tune(config, tuning_spec, tmp_path / "alpha0.5.journal")
    assert result.best["n_complete"] == 2 and calls == [0.1, 0.1]


def _fake_run(config, out_dir, eval_split="test", on_epoch=None):
    """Stands in for train.run: accuracy 100 * (1 - lambda_m) * lr / 0.05 (capped) at every
    epoch, divergence at epoch 1 above lambda_m = 0.8 (reports nothing, as the real loop does)."""
    assert eval_split == "val" and config.val_fraction > 0 and not config.tracking
    assert out_dir is None
    if config.lambda_m > 0.8:
        return SimpleNamespace(status="diverged", diverged_epoch=1,
                               final_value=lambda key: math.nan)
    acc = 100 * (1 - config.lambda_m) * min(1.0, config.lr / 0.05)
    for epoch in range(1, config.epochs + 1):
        on_epoch(epoch, {"epoch": epoch, "consensus_acc": acc, "train_ce": 0.5})
    return SimpleNamespace(status="completed", diverged_epoch=None, final_value=lambda key: acc)


def test_pruned_and_diverged_trials_count_towards_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(objective, "run", _fake_run)
    config, tuning_spec = spec.load_tuning(
        _config_file(tmp_path, run={"tracking": True}, pruner="median", startup_trials=1,
                     warmup_epochs=0, trials=4))
    journal = tmp_path / "alpha0.5.journal"
    opened = study.open_study(journal, config, tuning_spec)
    for lm in (0.001, 0.9, 0.5):  # good, diverges, worse than the median -> pruned at epoch 1
        opened.enqueue_trial({"lambda_m": lm, "lambda_d": 0.01})

    result = study.tune(config, tuning_spec, journal)  # then the paper's (0.1, 0.1): pruned too

    trials = _trials(journal)
    assert _states(trials) == ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"]
    assert trials[1].user_attrs["diverged"] is True and trials[1].intermediate_values == {}
    assert trials[2].intermediate_values == {1: pytest.approx(50.0)}  # stopped after epoch 1
    assert trials[3].params == PAPER
    best = result.best
    assert best["values"] == {"lambda_m": 0.001, "lambda_d": 0.01}
    assert best["value"] == pytest.approx(99.9) and best["start_value"] is None
    assert (best["n_complete"], best["n_pruned"], best["n_diverged"]) == (1, 3, 1)

    from mlflow import MlflowClient

    experiment = MlflowClient().get_experiment_by_name("tiny-manual")  # a study started by hand
    runs = MlflowClient().search_runs([experiment.experiment_id])
    states = {r.data.tags.get("state"): r.info.status for r in runs
              if r.data.tags.get("kind") == "trial"}
    assert states == {"complete": "FINISHED", "pruned": "FINISHED"}  # a pruned trial: no KILLED


def test_a_trial_is_never_pruned_at_its_last_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(objective, "run", _fake_run)
    config, tuning_spec = spec.load_tuning(_config_file(
        tmp_path, pruner="median", startup_trials=1, warmup_epochs=0, trials=3, epochs=1,
        enqueue_paper=False))
    journal = tmp_path / "alpha0.5.journal"
    opened = study.open_study(journal, config, tuning_spec)
    for lm in (0.001, 0.5, 0.6):  # worse than the median at epoch 1 = the last epoch
        opened.enqueue_trial({"lambda_m": lm, "lambda_d": 0.01})
    study.tune(config, tuning_spec, journal)
    assert _states(_trials(journal)) == ["COMPLETE"] * 3


def test_all_trials_diverged_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(objective, "run", _fake_run)
    config, tuning_spec = spec.load_tuning(_config_file(
        tmp_path, trials=2, enqueue_paper=False,
        space={"lambda_m": [0.85, 1.0], "lambda_d": [1e-3, 1.0]}))
    with pytest.raises(UserError, match="no complete trial"):
        study.tune(config, tuning_spec, tmp_path / "alpha0.5.journal")
    assert not (tmp_path / "alpha0.5" / "best.json").exists()


def test_resuming_with_other_settings_or_concurrently_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(objective, "run", _fake_run)
    cfg = _config_file(tmp_path, trials=1)
    journal = tmp_path / "alpha0.5.journal"
    assert main(["tune", "--config", str(cfg), "--study", str(journal)]) == 0

    assert main(["tune", "--config", str(cfg), "--study", str(journal), "alpha=0.1"]) == 2
    assert "created with alpha=0.5, now alpha=0.1" in capsys.readouterr().err
    assert main(["tune", "--config", str(cfg), "--study", str(journal), "method=ccl"]) == 2
    assert "created with method='ccl-dsgdm', now method='ccl'" in capsys.readouterr().err
    # machine options (benchmark.config.result_fields) may change between sessions
    assert main(["tune", "--config", str(cfg), "--study", str(journal), "vectorize=loop",
                 "agent_threads=2", "device=cpu"]) == 0

    # a study begun before an option existed: the option counts as its default (momentum 0.9)
    loaded = optuna.load_study(study_name="tiny-ccl-dsgdm-ring-n4-alpha0.5",
                               storage=study.storage(journal))
    loaded.set_user_attr("fingerprint", {k: v for k, v in loaded.user_attrs["fingerprint"].items()
                                         if k != "momentum"})
    assert main(["tune", "--config", str(cfg), "--study", str(journal)]) == 0
    assert main(["tune", "--config", str(cfg), "--study", str(journal), "momentum=0.5"]) == 2
    assert "created with momentum=0.9, now momentum=0.5" in capsys.readouterr().err

    import fcntl

    with open(journal, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["tune", "--config", str(cfg), "--study", str(journal)]) == 2
    assert "being tuned by another process" in capsys.readouterr().err
    assert len(_trials(journal)) == 1


@pytest.mark.parametrize(("override", "field"), [
    ("tuning.trails=3", "tuning.trails"),
    ("tuning.space={lambda_m: [0, 1]}", "tuning.space.lambda_m"),
    ("tuning.space={lr: [0.5, 0.1]}", "tuning.space.lr"),
    ("tuning.space={lr: [0.01, 0.1], batchsize: [1, 2]}", "tuning.space.batchsize"),
    ("tuning.baseline=[momentum]", "tuning.baseline"),
    ("tuning.method=qgm", "tuning.method"),
    ("tuning.lambdas=tuned", "tuning.lambdas"),
    ("tuning.lambda_m=[0.1, 1]", "tuning.lambda_m"),
    ("tuning.pruner=asha", "tuning.pruner"),
])
def test_bad_tuning_options_are_one_line_errors(tmp_path, capsys, override, field):
    cfg = _config_file(tmp_path)
    code = main(["tune", "--config", str(cfg), "--study", str(tmp_path / "a.journal"), override])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {field}:") and err.count("\n") == 1
    assert not (tmp_path / "a.journal").exists()


def test_study_path_must_be_a_journal(tmp_path, capsys):
    code = main(["tune", "--config", str(_config_file(tmp_path)), "--study",
                 str(tmp_path / "study.db")])
    assert code == 2 and "--study" in capsys.readouterr().err


def test_torn_last_record_is_dropped(tmp_path):
    journal = tmp_path / "alpha0.5.journal"
    journal.write_bytes(b'{"op_code": 0}\n{"op_co')
    with study._exclusive(journal):
        pass
    assert journal.read_bytes() == b'{"op_code": 0}\n'


def _best_json(path: Path, **fields) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"family": "f", "alpha": 1.0, "method": "ccl", "value": 90.0,
                                "start_value": 80.0, "n_complete": 5, "n_pruned": 1,
                                "n_failed": 0, "epochs": 3, "study": "s.journal", **fields}))
    return str(path)


def test_best_table_has_a_column_per_searched_value(tmp_path):
    ring = {"topology": "ring", "n_agents": 16}
    files = [_best_json(tmp_path / "ccl" / "ring-n16" / "alpha1.0" / "best.json", graph=ring,
                        values={"lambda_m": 0.02, "lambda_d": 0.1}, val_samples=144),
             _best_json(tmp_path / "ccl" / "ring-n8" / "alpha1.0" / "best.json",
                        graph={**ring, "n_agents": 8}, values={"lambda_m": 0.3, "lambda_d": 0.1},
                        val_samples=144),
             _best_json(tmp_path / "ccl" / "ring-n16" / "alpha0.01" / "best.json", alpha=0.01,
                        graph=ring, values={"lambda_m": 0.3, "lambda_d": 0.1}, val_samples=144),
             # written before studies recorded their graph and split: empty cells
             _best_json(tmp_path / "qgm" / "alpha1.0" / "best.json", method="qgm",
                        values={"lr": 0.2})]
    assert main(["tune-table", *files, "--out", str(tmp_path / "table")]) == 0
    lines = (tmp_path / "table.csv").read_text().splitlines()
    assert lines[0] == ("family,method,graph,alpha,lambda_d,lambda_m,lr,value,start_value,"
                        "val_samples,n_complete,n_pruned,n_failed,epochs")
    assert [line.split(",")[1:4] for line in lines[1:]] == [
        ["ccl", "ring-n16", "0.01"], ["ccl", "ring-n16", "1.0"], ["ccl", "ring-n8", "1.0"],
        ["qgm", "", "1.0"]]
    assert lines[1].split(",")[4:10] == ["0.1", "0.3", "", "90.0", "80.0", "144"]
    assert lines[4].split(",")[4:10] == ["", "", "0.2", "90.0", "80.0", ""]
    md = (tmp_path / "table.md").read_text()
    assert "| f " in md and "nan" not in md and "<NA>" not in md  # unknown: empty cells


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Relative paths (mlflow.db, data/) land in the test's folder, never in the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))


# two graphs; ring-8 sets its own gamma, so its studies tune with it
GRAPHS = [{"topology": "ring", "n_agents": 4}, {"topology": "ring", "n_agents": 8, "gamma": 0.9}]


def _family_file(tmp_path: Path, protocol: str = "tuned", grid: dict | None = None,
                 **tuning_opts) -> Path:
    path = tmp_path / "fam.yaml"
    grid = {"alpha": [0.1, 1.0], "topologies": GRAPHS, "methods": ["dsgdm-n", "ccl-dsgdm"],
            "seeds": [0], **(grid or {})}
    path.write_text(yaml.safe_dump({"run": {**RUN, "family": "fam", "epochs": 1}, "grid": grid,
                                    "tuning": {**TUNING, "protocol": protocol, **tuning_opts}}))
    return path


def test_tuned_family_has_a_study_per_method_alpha_and_graph(tmp_path):
    from benchmark.grid import load_family
    from benchmark.plan import study_config

    family = load_family(_family_file(tmp_path))
    studies = {(s.method, s.alpha, s.label): s for s in family.studies}
    assert sorted(studies) == sorted((m, a, g) for m in ("dsgdm-n", "ccl-dsgdm")
                                     for a in (0.1, 1.0) for g in ("ring-n4", "ring-n8"))
    for run in family.runs:  # each tuned run reads its own graph's study, no other
        graph = f"{run.config.topology}-n{run.config.n_agents}"
        study = studies[(run.config.method, run.config.alpha, graph)]
        assert run.tuned == study.best == (f"studies/fam/{run.config.method}/{graph}/"
                                           f"alpha{run.config.alpha}/best.json")
        config = study_config(study)  # what its trials train: the run's graph and gamma
        assert (config.topology, config.n_agents, config.gamma) == \
            (run.config.topology, run.config.n_agents, run.config.gamma)
    ring8 = studies[("ccl-dsgdm", 0.1, "ring-n8")]
    assert ring8.journal == "studies/fam/ccl-dsgdm/ring-n8/alpha0.1.journal"
    assert ring8.tune_command(threads=1) == (
        f"python -m benchmark tune --config {tmp_path / 'fam.yaml'} --study {ring8.journal} "
        "method=ccl-dsgdm alpha=0.1 topology=ring n_agents=8 gamma=0.9 threads=1")
    run = family.runs[0]
    assert run.run_dir == "results/fam/tuned/synthetic/mlp/ring-n4/alpha0.1/dsgdm-n/seed0"
    assert f"--tuned {run.tuned} topology=ring" in run.train_command(threads=1)
    # the workflow's switch sets the protocol without editing the file
    assert all(r.tuned is None for r in load_family(_family_file(tmp_path), "fixed").runs)
    both = load_family(_family_file(tmp_path, "fixed"), "both")
    assert [r.protocol for r in both.runs] == ["fixed", "tuned"] * 8
    assert both.runs[0].run_dir == "results/fam/synthetic/mlp/ring-n4/alpha0.1/dsgdm-n/seed0"


def test_one_graph_means_one_topology_entry_per_study(tmp_path):
    """A block that gives ring-n8 another gamma for a method and alpha that already have a
    ring-n8 study would need two studies under one path: refused, naming the entry."""
    from benchmark.grid import load_family

    block = {"topologies": [{"topology": "ring", "n_agents": 8, "gamma": 0.5}],
             "methods": ["ccl-dsgdm", "qgm"]}
    with pytest.raises(UserError, match=r"fam\.yaml: grid\.blocks\[0\]\.topologies\[0\]: .*"
                       r"the options of grid\.topologies\[1\] for ring-n8.*has one study per "
                       r"graph"):
        load_family(_family_file(tmp_path, grid={"blocks": [block]}))
    block["methods"] = ["qgm"]  # a method with no other ring-n8: its own study, its own gamma
    family = load_family(_family_file(tmp_path, grid={"blocks": [block]}))
    assert {s.graph["gamma"] for s in family.studies
            if s.method == "qgm" and s.label == "ring-n8"} == {0.5}


def test_family_file_tuning_mistakes_are_one_line_errors(tmp_path):
    from benchmark.grid import load_family

    with pytest.raises(UserError, match=r"tuning\.trails.*trials"):
        load_family(_family_file(tmp_path, trails=3))
    with pytest.raises(UserError, match=r"fam\.yaml: tuning\.lambdas: .*tuning\.protocol"):
        load_family(_family_file(tmp_path, lambdas="tuned"))
    with pytest.raises(UserError, match=r"tuning\.baseline: .*dsgdm-n"):
        load_family(_family_file(tmp_path, baseline=[]))


RING4 = {"topology": "ring", "n_agents": 4, "torus_rows": None, "degree": 3,
         "mixing": "uniform", "gamma": 1.0}


def test_train_takes_the_tuned_values_of_its_method_alpha_and_graph(tmp_path, capsys):
    best = tmp_path / "studies" / "fam" / "ccl-dsgdm" / "ring-n4" / "alpha0.1" / "best.json"
    values = {"lr": 0.07, "lambda_m": 0.037, "lambda_d": 0.0042}
    _best_json(best, family="fam", alpha=0.1, method="ccl-dsgdm", values=values,
               study="studies/fam/ccl-dsgdm/ring-n4/alpha0.1.journal", graph=RING4,
               val_samples=26)
    cfg = str(_family_file(tmp_path))
    out = tmp_path / "run"
    assert main(["train", "--config", cfg, "--out", str(out), "--tuned", str(best),
                 "alpha=0.1", "method=ccl-dsgdm"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ccl"] == {"lambda_m": 0.037, "lambda_d": 0.0042}
    assert metrics["config"]["lr"] == 0.07 and metrics["protocol"] == "tuned"
    assert metrics["tuned"] == {"values": values, "val_samples": 26, "graph": RING4,
                                "study": "studies/fam/ccl-dsgdm/ring-n4/alpha0.1.journal"}

    capsys.readouterr()
    for wrong in (["alpha=1.0", "method=ccl-dsgdm"], ["alpha=0.1", "method=dsgdm-n"]):
        assert main(["train", "--config", cfg, "--out", str(tmp_path / "other"), "--tuned",
                     str(best), *wrong]) == 2
        assert "--tuned" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # another graph, another gamma, or a best.json that does not say: refused, in one line
    args = ["train", "--config", cfg, "--out", str(tmp_path / "other"), "--tuned", str(best),
            "alpha=0.1", "method=ccl-dsgdm"]
    for extra, why in ((["n_agents=8"], "tuned on ring-n4, not on ring-n8"),
                       (["topology=exponential"], "tuned on ring-n4, not on exponential-n4"),
                       (["gamma=0.9"], "tuned with gamma=1.0 (this run: 0.9)")):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --tuned: invalid value") and err.count("\n") == 1
        assert "allowed: a study of this run's graph" in err and why in err, err
        assert not (tmp_path / "other").exists()
    _best_json(best, family="fam", alpha=0.1, method="ccl-dsgdm", values=values,
               study="studies/fam/ccl-dsgdm/alpha0.1.journal")  # the previous layout's
    assert main(args) == 2
    assert "its study did not record the graph it tuned on" in capsys.readouterr().err


def test_a_preset_records_the_weights_it_uses(tmp_path):
    """ccl-mv zeroes lambda_d: the config says 0 (one truth), metrics.json says who zeroed it."""
    out = tmp_path / "run"
    assert main(["train", "--config", str(_family_file(tmp_path)), "--out", str(out),
                 "method=ccl-mv", "lambda_d=0.3", "lambda_m=0.2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["config"]["lambda_m"], metrics["config"]["lambda_d"]) == (0.2, 0.0)
    assert metrics["ccl"] == {"lambda_m": 0.2, "lambda_d": 0.0}
    assert metrics["ccl_zeroed"] == ["lambda_d"] and metrics["protocol"] == "fixed"
    assert metrics["tuned"] is None


# ---------------------------------------------------------------------------- the workflow
REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile")]


def test_dry_run_of_the_cifar10_grid_tunes_every_method_before_its_tuned_runs(tmp_path):
    proc = subprocess.run(
        [*SNAKEMAKE, "reports/table_cifar10.csv", "-d", str(tmp_path), "-n", "-p", "--cores", "8",
         "--config", f"family_dir={REPO / 'config'}"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out, re.MULTILINE))
    # a study per graph: 6 methods x 3 alphas x 7 graphs; 378 runs per protocol, the paper's
    # and the tuned one
    assert counts["tune"] == str(6 * 3 * 7) and counts["train"] == str(2 * 378)
    assert counts["tuning_table"] == "1"
    commands = [line for line in out.splitlines() if " -m benchmark train " in line]
    tuned = [c for c in commands if "--tuned" in c]
    assert len(tuned) == 378 and all("--out results/cifar10/tuned/" in c for c in tuned)
    assert not any("/tuned/" in c for c in commands if "--tuned" not in c)
    _assert_each_tuned_run_reads_its_own_graph(tuned)
    assert ("--study studies/cifar10/relaysgd/ring-n8/alpha0.01.journal method=relaysgd "
            "alpha=0.01 topology=ring n_agents=8") in out
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlflow.db").exists()


def _assert_each_tuned_run_reads_its_own_graph(commands: list[str]) -> None:
    """``--tuned studies/<f>/<method>/<graph>/alpha<a>/best.json`` names the graph, method and
    alpha of the command's own ``--out results/<f>/tuned/<data>/<model>/<graph>/alpha<a>/
    <method>/...``."""
    for command in commands:
        best = re.search(r"--tuned studies/[^/]+/([^/]+)/([^/]+)/(alpha[^/]+)/best\.json", command)
        out = re.search(r"--out results/[^/]+/tuned/[^/]+/[^/]+/([^/]+)/(alpha[^/]+)/([^/]+)/",
                        command)
        assert best and out, command
        assert (best[1], best[2], best[3]) == (out[3], out[1], out[2]), command


def test_old_workflow_switch_is_refused_with_the_new_spelling(tmp_path):
    proc = subprocess.run(
        [*SNAKEMAKE, "reports/table_digits.csv", "-d", str(tmp_path), "-n", "--cores", "1",
         "--config", f"family_dir={REPO / 'config'}", "lambdas=tuned"],
        capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "--config protocol=fixed|tuned|both" in out


def test_tuned_tiny_grid_runs_a_study_per_method_and_graph_then_both_protocols(tmp_path):
    """Two graphs, two methods, one alpha: `snakemake -n` plans a study per (method, alpha,
    graph); a study of the previous layout (tuned on the run: graph) is named once, with the
    command that adopts it for that graph, and once adopted it is reused, not redone; each
    tuned run trains with its own graph's values; a second invocation has nothing to do."""
    (tmp_path / "config").mkdir()
    cfg = _family_file(tmp_path / "config", grid={"alpha": [0.5]}, trials=2, epochs=1)
    previous = Path("studies/fam/dsgdm-n/alpha0.5.journal")  # the previous layout's study
    assert main(["tune", "--config", str(cfg), "--study", str(previous), "method=dsgdm-n",
                 "alpha=0.5"]) == 0
    adopted = [(t.number, t.params) for t in _trials(previous)]
    oldest = tmp_path / "studies" / "fam" / "alpha0.5.journal"  # CCL's lambdas only
    oldest.write_text("{}\n")
    cmd = [*SNAKEMAKE, "-d", str(tmp_path), "--cores", "2", "reports/table_fam.csv",
           "--config", "protocol=both"]

    plan = subprocess.run([*cmd, "-n", "-p"], capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-4000:]
    out = plan.stdout + plan.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out, re.MULTILINE))
    assert (counts["tune"], counts["train"]) == ("4", "8")  # 2 methods x 2 graphs, 2 protocols
    tuned = [line for line in out.splitlines() if " -m benchmark train " in line
             and "--tuned" in line]
    assert len(tuned) == 4
    _assert_each_tuned_run_reads_its_own_graph(tuned)
    warned = [line for line in plan.stderr.splitlines() if line.startswith("warning: studies/")]
    assert len(warned) == 2 and "studies/fam/alpha0.5.journal is a study of the old layout" in \
        warned[0]
    adopt = ("mkdir -p studies/fam/dsgdm-n/ring-n4 && mv studies/fam/dsgdm-n/alpha0.5.journal "
             "studies/fam/dsgdm-n/ring-n4/alpha0.5.journal")
    assert warned[1].startswith(f"warning: {previous} is a study of the previous layout") and \
        warned[1].endswith(f"to reuse its trials for ring-n4: {adopt}")
    subprocess.run(adopt, shell=True, check=True, cwd=tmp_path)

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sum("old layout" in line for line in proc.stderr.splitlines()) == 1  # said once
    assert oldest.read_text() == "{}\n"  # left alone
    journal = tmp_path / "studies" / "fam" / "dsgdm-n" / "ring-n4" / "alpha0.5.journal"
    assert [(t.number, t.params) for t in _trials(journal)] == adopted  # reused, not redone

    for method, graph in itertools.product(("dsgdm-n", "ccl-dsgdm"), GRAPHS):
        label = f"ring-n{graph['n_agents']}"
        best = json.loads((tmp_path / "studies" / "fam" / method / label / "alpha0.5" /
                           "best.json").read_text())
        assert best["n_complete"] + best["n_pruned"] == 2 and best["method"] == method
        assert {k: best["graph"][k] for k in graph} == graph  # the entry's gamma included
        assert best["val_samples"] == 26  # ceil(256 x 0.1) training samples held out
        tuned_run = (tmp_path / "results" / "fam" / "tuned" / "synthetic" / "mlp" / label
                     / "alpha0.5" / method / "seed0" / "metrics.json")
        metrics = json.loads(tuned_run.read_text())
        assert metrics["protocol"] == "tuned"
        assert metrics["tuned"] == {"values": best["values"], "study": best["study"],
                                    "graph": best["graph"], "val_samples": 26}
        assert metrics["config"]["lr"] == best["values"].get("lr", RUN["lr"])
        fixed_run = Path(str(tuned_run).replace("/tuned/", "/"))
        assert json.loads(fixed_run.read_text())["protocol"] == "fixed"
    assert set(best["values"]) == {"lambda_m", "lambda_d"}  # the family's ccl list
    log = (tmp_path / "studies" / "fam" / "ccl-dsgdm" / "ring-n8" / "alpha0.5.log").read_text()
    assert "0 of 2 trials finished" in log
    # the README's target brings the table of tuned values along
    table = (tmp_path / "reports" / "tuning_fam.csv").read_text().splitlines()
    assert len(table) == 5 and table[0].startswith("family,method,graph,alpha,")
    assert [row.split(",")[1:4] for row in table[1:]] == [
        [m, g, "0.5"] for m in ("ccl-dsgdm", "dsgdm-n") for g in ("ring-n4", "ring-n8")]
    report = (tmp_path / "reports" / "table_fam.md").read_text()
    assert "dsgdm-n (fixed)" in report and "dsgdm-n (tuned)" in report  # labelled columns
    assert ("(tuned) = each method's best values from its own study at that alpha on that "
            "graph (studies/<family>/<method>/<graph>/alpha<a>: a validation split of 26 "
            "samples") in report  # and explained

    again = subprocess.run([*cmd, "-n"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_hyperband_pruner_study_honours_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(objective, "run", _fake_run)
    config, tuning_spec = spec.load_tuning(_config_file(tmp_path, pruner="hyperband", epochs=9,
                                                        trials=3, enqueue_paper=False))
    journal = tmp_path / "alpha0.5.journal"
    opened = study.open_study(journal, config, tuning_spec)
    assert isinstance(opened.pruner, optuna.pruners.HyperbandPruner)
    opened.enqueue_trial({"lambda_m": 0.001, "lambda_d": 0.01})
    result = study.tune(config, tuning_spec, journal)
    trials = _trials(journal)
    assert len(trials) == 3 and set(_states(trials)) <= {"COMPLETE", "PRUNED"}
    assert trials[0].state == TrialState.COMPLETE
    assert sorted(trials[0].intermediate_values) == list(range(1, 10))
    assert result.best["values"]["lambda_m"] == 0.001  # the best possible value of the fake


def test_flags_and_key_values_come_in_any_order(tmp_path, monkeypatch, capsys):
    """The README's `tune ... method=... alpha=... --trials N tuning.epochs=3`, and the same
    mix of flags and words for train and report (argparse's intermixed parsing)."""
    monkeypatch.setattr(objective, "run", _fake_run)
    cfg = str(_config_file(tmp_path))
    journal = tmp_path / "studies" / "alpha0.1.journal"
    assert main(["tune", "--config", cfg, "method=dsgdm-n", "alpha=0.1", "--study", str(journal),
                 "--trials", "2", "tuning.epochs=1", "lr=0.04"]) == 0
    best = json.loads((tmp_path / "studies" / "alpha0.1" / "best.json").read_text())
    assert (best["method"], best["alpha"], best["epochs"], best["trials_budget"]) == \
        ("dsgdm-n", 0.1, 1, 2)
    assert best["start_point"] == {"lr": 0.04}  # the word after the flags was read too

    out = tmp_path / "run"
    assert main(["train", "epochs=1", "--config", cfg, "method=dsgdm-n", "--out", str(out),
                 "seed=3", "--restart", "alpha=0.1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["config"]["epochs"], metrics["config"]["seed"], metrics["method"]) == \
        (1, 3, "dsgdm-n")

    stray = tmp_path / "stray" / "metrics.json"
    stray.parent.mkdir()
    stray.write_text("[]")
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "r"), str(stray),
                 "--skip-invalid", "--family", "mixed"]) == 0
    assert f"skipping {stray}" in capsys.readouterr().err  # both paths read, the flag too
    assert (tmp_path / "r" / "table_mixed.md").is_file()
