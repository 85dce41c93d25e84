"""MLflow tracking: what a run records, how it ends, and that concurrent writers lose nothing."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from benchmark import tracking  # noqa: E402
from benchmark.config import build_config  # noqa: E402
from benchmark.errors import UserError  # noqa: E402
from benchmark.metrics import RunMetrics  # noqa: E402
from benchmark.tracking import NullTracker, prepare_store, track_run  # noqa: E402


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> str:
    """A fresh store; runs count as the workflow's (origin=workflow) unless a test says not."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(tracking.ORIGIN_ENV, "workflow")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return uri


def _config(**kw):
    base = {"family": "fam", "dataset": "synthetic", "model": "mlp", "n_agents": 4, "alpha": 0.1,
            "method": "ccl", "seed": 3, "synthetic": {"train_size": 64}}
    return build_config({**base, **kw})


def _metrics(history: list[dict]) -> RunMetrics:
    config = _config(epochs=history[-1]["epoch"])  # a completed run holds all its epochs
    return RunMetrics.parse({
        "status": "completed", "diverged_epoch": None, "config": config, "history": history,
        "method": config.method, "algorithm": config.algorithm, "ccl": config.ccl,
        "final": {"consensus_acc": 55.0, "local_acc_mean": 50.0, "local_acc_std": 1.0,
                  "consensus_distance": 0.1},
        "partition": {"sizes": [3, 3], "histogram": [[3, 0], [1, 2]]},
        "topology": {"name": "ring", "n_agents": 4, "diameter": 2, "spectral_gap": 0.5,
                     "mixing": "uniform"},
        "communication": {"bytes_per_agent_per_iteration": {"parameters": 1.0},
                          "bytes_per_agent_total": 10.0},
        "n_params": 10, "iterations_per_epoch": 1, "wall_time_s": 1.5,
        "environment": {"device": "cpu", "gpu_name": None, "torch": "2.x", "cuda": None,
                        "vectorize": "loop", "vectorize_reason": "a CPU"}})


def _records(epochs: int) -> list[dict]:
    return [{"epoch": e, "train_ce": 1.0 / e, "consensus_acc": 10.0 * e, "lr": 0.1,
             "phases": {"gossip": 0.01 * e}} for e in range(1, epochs + 1)]


def test_default_uri_is_repo_root_and_env_overrides(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{tracking.repo_root() / 'mlflow.db'}"
    assert (tracking.repo_root() / "Snakefile").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/x.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/x.db"


def test_a_run_records_params_tags_epochs_and_artifacts(store: str, tmp_path: Path) -> None:
    config = _config()
    prepare_store(["fam"])
    out = tmp_path / "run"
    with track_run(config, out) as tracker:
        for record in _records(3):
            tracker.log_epoch(record["epoch"], record)
        tracker.log_result(_metrics(_records(3)))
    runs = mlflow.search_runs(experiment_names=["fam"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["tags.mlflow.runName"] == "ccl ring-4 a0.1 s3"
    for key, value in {"dataset": "synthetic", "model": "mlp", "topology": "ring",
                       "n_agents": "4", "alpha": "0.1", "method": "ccl", "seed": "3",
                       "algorithm": "qgm", "status": "completed", "origin": "workflow",
                       "results_dir": str(out.resolve()), "environment.device": "cpu",
                       "environment.vectorize": "loop",
                       "environment.vectorize_reason": "a CPU"}.items():
        assert run[f"tags.{key}"] == value
    # params = the flattened run config (nested mappings as dotted keys)
    assert run["params.lambda_m"] == str(config.lambda_m)
    assert run["params.synthetic.train_size"] == "64"
    assert run["params.lr_milestones"] == "[0.5, 0.75]"
    client = MlflowClient(store)
    ce = client.get_metric_history(run["run_id"], "loss/ce")
    assert [(m.step, m.value) for m in ce] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    assert [m.step for m in client.get_metric_history(run["run_id"], "time/gossip")] == [1, 2, 3]
    assert run["metrics.final/consensus_acc"] == 55.0
    assert run["metrics.final/spectral_gap"] == 0.5
    # every metric grouped by a prefix (the UI's chart sections), accuracy first
    names = set(client.get_run(run["run_id"]).data.metrics)
    assert names == {"acc/consensus", "loss/ce", "train/lr", "time/gossip", "final/consensus_acc",
                     "final/local_acc_mean", "final/local_acc_std", "final/consensus_distance",
                     "final/wall_time_s", "final/bytes_per_agent_total", "final/spectral_gap"}
    assert min(n.split("/")[0] for n in names) == "acc"
    names = {a.path for a in client.list_artifacts(run["run_id"])}
    assert names == {"metrics.json", "config.yaml", "learning_curves.png", "partition.png"}
    # artifacts live beside the database, not under the current directory
    assert client.get_experiment_by_name("fam").artifact_location.startswith(
        (tmp_path / "mlartifacts").as_uri())


def test_run_figures_off_logs_the_files_only(store: str, tmp_path: Path) -> None:
    """``run_figures: false`` (the digits default): no drawing per run, and no plotting library
    imported for it; metrics.json and config.yaml are still there."""
    prepare_store(["fam"])
    config = _config(run_figures=False)
    with track_run(config, tmp_path / "run") as tracker:
        tracker.log_result(_metrics(_records(2)))
    run_id = mlflow.search_runs(experiment_names=["fam"]).iloc[0]["run_id"]
    names = {a.path for a in MlflowClient(store).list_artifacts(run_id)}
    assert names == {"metrics.json", "config.yaml"}


def test_result_backfills_epochs_logged_before_a_resume(store: str) -> None:
    # a resumed run: epochs 1-2 were trained (and logged) by an earlier process
    with track_run(_config(), None) as tracker:
        tracker.log_epoch(3, _records(3)[2])
        tracker.log_result(_metrics(_records(3)))
    run_id = mlflow.search_runs(experiment_names=["fam"]).iloc[0]["run_id"]
    steps = [m.step for m in MlflowClient(store).get_metric_history(run_id, "acc/consensus")]
    assert sorted(steps) == [1, 2, 3]


def test_epoch_metrics_are_written_with_the_next_evaluated_epoch(store: str) -> None:
    """One transaction per evaluated epoch (eval_every), not per epoch; what is still buffered
    when the run fails is written as it ends."""
    client = MlflowClient(store)

    def steps(run_id: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run_id, "loss/ce"))

    with pytest.raises(RuntimeError), track_run(_config(), None) as tracker:
        for e in range(1, 5):
            tracker.log_epoch(e, {"epoch": e, "train_ce": 1.0 / e, "lr": 0.1})
        assert steps(tracker.run_id) == []
        tracker.log_epoch(5, {"epoch": 5, "train_ce": 0.2, "lr": 0.1, "consensus_acc": 50.0})
        assert steps(tracker.run_id) == [1, 2, 3, 4, 5]
        assert [m.step for m in client.get_metric_history(tracker.run_id, "acc/consensus")] == [5]
        tracker.log_epoch(6, {"epoch": 6, "train_ce": 0.1, "lr": 0.1})
        raise RuntimeError("boom")
    assert steps(tracker.run_id) == [1, 2, 3, 4, 5, 6]


def test_a_long_epoch_is_written_without_waiting_for_an_evaluation(store: str,
                                                                   monkeypatch) -> None:
    monkeypatch.setattr(tracking, "FLUSH_EVERY_S", 0.0)
    with track_run(_config(), None) as tracker:
        tracker.log_epoch(1, {"epoch": 1, "train_ce": 1.0, "lr": 0.1})
        assert [m.step for m in MlflowClient(store).get_metric_history(
            tracker.run_id, "loss/ce")] == [1]


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "FAILED"),
                                               (KeyboardInterrupt(), "KILLED")])
def test_crash_marks_the_run(store: str, error: BaseException, status: str) -> None:
    with pytest.raises(type(error)), track_run(_config(), None) as tracker:
        tracker.log_epoch(1, _records(1)[0])
        raise error
    run = mlflow.search_runs(experiment_names=["fam"]).iloc[0]
    assert run["status"] == status
    if status == "FAILED":
        assert run["tags.error"] == "RuntimeError: boom"


def test_a_redone_run_supersedes_the_earlier_finished_one(store: str, tmp_path: Path) -> None:
    """A job that finished just before the workflow was killed is redone: the earlier FINISHED
    run of that results folder is tagged ``superseded`` (by the new run's id); other folders'
    runs are left alone."""
    ids = []
    for out in ("run", "run", "other"):
        with track_run(_config(), tmp_path / out) as tracker:
            tracker.log_epoch(1, _records(1)[0])
        ids.append(tracker.run_id)
    client = MlflowClient()
    tags = [client.get_run(i).data.tags for i in ids]
    assert tags[0]["superseded"] == ids[1]
    assert "superseded" not in tags[1] and "superseded" not in tags[2]
    assert tags[1]["protocol"] == "fixed"


def test_tracking_off_touches_nothing(store: str, tmp_path: Path) -> None:
    with track_run(_config(tracking=False), None) as tracker:
        assert isinstance(tracker, NullTracker)
        tracker.log_epoch(1, {"train_ce": 1.0})
    assert not (tmp_path / "mlflow.db").exists()


def test_a_dataset_logged_by_two_runs_at_once_is_linked_not_failed(store: str,
                                                                     monkeypatch) -> None:
    """The race of two runs sharing a partition: MLflow finds no dataset row, inserts, and the
    other run's insert won; its IntegrityError is retried and the run links the existing row."""
    from types import SimpleNamespace

    monkeypatch.setattr(tracking, "_BACKOFF_S", 0.0)
    bundle = SimpleNamespace(train=SimpleNamespace(y=[0] * 8), test=SimpleNamespace(y=[0] * 4),
                             sample_shape=(1, 8, 8), digest="0" * 64)
    parts = [[0, 1], [2, 3], [4, 5], [6, 7]]
    with track_run(_config(), None) as first:
        first.log_dataset(bundle, parts)
    with track_run(_config(), None) as second:
        real, calls = second.client.log_inputs, []

        def racing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise mlflow.exceptions.MlflowException(
                    "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                    "datasets.name, datasets.digest")
            return real(*args, **kwargs)

        monkeypatch.setattr(second.client, "log_inputs", racing)
        second.log_dataset(bundle, parts)
    assert len(calls) == 2
    client = MlflowClient(store)
    digests = [d.dataset.digest for run in (first, second)
               for d in client.get_run(run.run_id).inputs.dataset_inputs]
    assert len(digests) == 2 and len(set(digests)) == 1


def test_retry_repeats_only_lock_errors(monkeypatch) -> None:
    monkeypatch.setattr(tracking, "_BACKOFF_S", 0.0)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.retry(flaky, "test") == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise ValueError("schema mismatch")

    calls.clear()
    with pytest.raises(ValueError):
        tracking.retry(broken, "test")
    assert len(calls) == 1


WRITER = textwrap.dedent("""
    import sys, time
    from types import SimpleNamespace
    from benchmark.tracking import track_run

    index, epochs, start = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    config = SimpleNamespace(
        tracking=True, family="conc", dataset="synthetic", model="mlp", topology="ring",
        n_agents=4, alpha=0.1, method="dsgdm-n", seed=index, algorithm="dsgdm-n",
        partition="lin", model_dump=lambda: {"seed": index, "nested": {"a": 1}},
    )
    bundle = SimpleNamespace(train=SimpleNamespace(y=[0] * 8), test=SimpleNamespace(y=[0] * 4),
                             sample_shape=(1, 8, 8), digest="0" * 64)
    time.sleep(max(0.0, start - time.time()))  # all writers hit the store together
    with track_run(config, None) as tracker:
        # one partition for all (as every method of one seed and alpha): one dataset digest,
        # which every writer's run logs at the same moment
        tracker.log_dataset(bundle, [[0, 1], [2, 3], [4, 5], [6, 7]])
        for e in range(1, epochs + 1):
            tracker.log_epoch(e, {"epoch": e, "train_ce": index + e / 1000, "lr": 0.1,
                                  "consensus_acc": float(e)})
    """)


def test_concurrent_writers_lose_no_run_and_no_point(store: str, tmp_path: Path) -> None:
    """8 processes log at once into one SQLite store: every run and every point is there, and
    every run is linked to the one dataset they all logged at once."""
    writers, epochs = 8, 25
    prepare_store(["conc"])  # as the workflow's onstart does
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    start = time.time() + 8  # after every interpreter has imported mlflow
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(epochs), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(writers)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * writers, outputs
    runs = mlflow.search_runs(experiment_names=["conc"])
    assert len(runs) == writers
    assert set(runs["status"]) == {"FINISHED"}
    assert sorted(runs["tags.seed"].astype(int)) == list(range(writers))
    client = MlflowClient(store)
    for _, run in runs.iterrows():
        index = int(run["tags.seed"])
        for key in ("loss/ce", "train/lr", "acc/consensus"):
            history = client.get_metric_history(run["run_id"], key)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key
        ce = sorted(client.get_metric_history(run["run_id"], "loss/ce"), key=lambda m: m.step)
        expected = [index + e / 1000 for e in range(1, epochs + 1)]
        assert [m.value for m in ce] == pytest.approx(expected)
    digests = {d.dataset.digest for _, run in runs.iterrows()
               for d in client.get_run(run["run_id"]).inputs.dataset_inputs}
    assert len(digests) == 1
    assert all(len(client.get_run(r).inputs.dataset_inputs) == 1 for r in runs["run_id"])


# ---------------------------------------------------------------------------- issue 13
def test_hand_started_runs_have_their_own_experiment_and_say_what_differs(
        store: str, monkeypatch) -> None:
    """A run started by hand with the family's config (the README's "one run") must not land
    among the grid's runs: experiment <family>-manual, origin=manual, and its name says what
    differs from the family file; the workflow's run goes to the family with origin=workflow."""
    from benchmark.config import load_config

    family = tracking.repo_root() / "config" / "digits.yaml"
    config = load_config(family, ["epochs=3", "lr=0.125"])
    monkeypatch.delenv(tracking.ORIGIN_ENV)
    with track_run(config, None):
        pass
    monkeypatch.setenv(tracking.ORIGIN_ENV, "workflow")
    with track_run(load_config(family, []), None):
        pass
    manual = mlflow.search_runs(experiment_names=["digits-manual"])
    grid = mlflow.search_runs(experiment_names=["digits"])
    assert len(manual) == 1 and len(grid) == 1
    assert manual.iloc[0]["tags.origin"] == "manual" and grid.iloc[0]["tags.origin"] == "workflow"
    name = manual.iloc[0]["tags.mlflow.runName"]
    assert name == (f"{config.method} {config.topology}-{config.n_agents} "
                    f"a{tracking.number(config.alpha)} s{config.seed} epochs=3 lr=0.125")
    assert " epochs=" not in grid.iloc[0]["tags.mlflow.runName"]


def test_one_spelling_of_numbers_in_names_tags_and_params(store: str) -> None:
    with track_run(_config(alpha=1.0), None):
        pass
    run = mlflow.search_runs(experiment_names=["fam"]).iloc[0]
    assert run["tags.mlflow.runName"] == "ccl ring-4 a1 s3"
    assert run["tags.alpha"] == run["params.alpha"] == "1"
    assert tracking.number(0.01) == "0.01" and tracking.number(1e-5) == "1e-05"
    # every other writer goes through the same tracker: a study's parent and trial runs logged
    # alpha 1 as "1.0" (tags and params given as floats)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("fam").experiment_id
    study = tracking.MlflowTracker.create(client, experiment, "ccl ring-4 a1 study",
                                          {"alpha": 1.0, "n_agents": 4, "kind": "study"},
                                          _config(alpha=1.0))
    study.log_batch(params=[("alpha", 1.0), ("lr", 0.05)], tags=[("gamma", 1.0)])
    logged = client.get_run(study.run_id).data
    assert logged.tags["alpha"] == logged.params["alpha"] == logged.tags["gamma"] == "1"
    assert logged.params["lr"] == "0.05" and logged.tags["n_agents"] == "4"


def test_a_trained_run_logs_its_dataset_and_keeps_a_loadable_model(store: str, tmp_path: Path
                                                                   ) -> None:
    """A real tiny run: the dataset input is logged with a partition digest, the consensus model
    is in the run folder and in MLflow, and loading it gives metrics.json's test accuracy."""
    from benchmark.data import eval_batches, load_dataset
    from benchmark.saved import evaluate, load_model
    from benchmark.train import run

    config = _config(method="dsgdm-n", epochs=1, batch_size=8, threads=1, device="cpu",
                     synthetic={"train_size": 64, "test_size": 40, "image_size": 8})
    out = tmp_path / "run"
    metrics = run(config, out)
    assert metrics.models == {"consensus": "model_consensus.pt"}
    stored = MlflowClient(store).get_run(mlflow.search_runs(experiment_names=["fam"]).iloc[0][
        "run_id"])
    inputs = stored.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.name == "synthetic"
    profile = json.loads(inputs[0].dataset.profile)
    assert profile["splits"] == {"train": 64, "test": 40} and profile["n_agents"] == 4
    assert profile["alpha"] == 0.1 and profile["partition"] == "lin"
    # the data's own digest, the one metrics.json records: sha256 of the loaded tensors
    bundle = load_dataset("synthetic", synthetic=config.synthetic, seed=config.seed)
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in (
        bundle.train.x, bundle.train.y, bundle.test.x, bundle.test.y))).hexdigest()
    assert profile["data_digest"] == metrics.data.digest == digest
    assert profile["sample_shape"] == metrics.data.sample_shape == [3, 8, 8]
    artifacts = MlflowClient(store).list_artifacts(stored.info.run_id, "models")
    assert [a.path for a in artifacts] == ["models/model_consensus.pt"]
    for source in (out / "model_consensus.pt",
                   f"runs:/{stored.info.run_id}/models/model_consensus.pt"):
        model = load_model(source)
        correct = sum(int((model(x)[1].argmax(1) == y).sum())
                      for x, y in eval_batches(bundle.test, model.input_mean, model.input_std))
        assert 100 * correct / 40 == pytest.approx(metrics.final.consensus_acc, abs=1e-9)
    # in one call, from the store: the model's file, or the whole run (its consensus model)
    for source in (f"runs:/{stored.info.run_id}/models/model_consensus.pt",
                   f"runs:/{stored.info.run_id}"):
        assert evaluate(source) == pytest.approx(metrics.final.consensus_acc, abs=1e-6)
    with pytest.raises(UserError, match=rf"no saved model at runs:/0+ in the MLflow store "
                       rf"{re.escape(store)}: "):
        evaluate("runs:/" + "0" * 32)
    # same config and seed, other folder: same partition digest
    run(config, tmp_path / "again")
    digests = {MlflowClient(store).get_run(r).inputs.dataset_inputs[0].dataset.digest
               for r in mlflow.search_runs(experiment_names=["fam"])["run_id"]}
    assert len(digests) == 1


def test_save_models_all_and_none(store: str, tmp_path: Path) -> None:
    from benchmark.train import run

    base = {"method": "dsgdm-n", "epochs": 1, "batch_size": 8, "threads": 1, "device": "cpu",
            "tracking": False, "synthetic": {"train_size": 64, "test_size": 16, "image_size": 8}}
    every = run(_config(**base, save_models="all"), tmp_path / "all")
    assert every.models == {"consensus": "model_consensus.pt",
                            "agents": [f"model_agent{i}.pt" for i in range(4)]}
    assert all((tmp_path / "all" / f).is_file() for f in every.models["agents"])
    assert run(_config(**base, save_models="none"), tmp_path / "none").models == {}
    assert not list((tmp_path / "none").glob("*.pt"))


def test_ui_hint_names_the_runs_url_and_a_light_ui(store: str) -> None:
    assert tracking.ui_hint(["fam"]) == ""  # no store yet: nothing to show, nothing created
    prepare_store(["fam"])
    exp_id = MlflowClient(store).get_experiment_by_name("fam").experiment_id
    hint = tracking.ui_hint(["fam"])
    assert f"#/experiments/{exp_id}/runs?workflowType=machine_learning" in hint
    assert ("start the UI with `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui "
            f"--backend-store-uri {store} --workers 1`") in hint  # as README "Viewing results"
