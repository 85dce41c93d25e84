"""Kept models (benchmark/saved.py): one call rebuilds a run's test data and scores its model
exactly as the run's metrics.json did; paths, folders and MLflow URIs resolve to the file or
say, in one line, what was looked for, creating nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from benchmark.checksum import with_checksum
from benchmark.config import build_config
from benchmark.errors import UserError
from benchmark.metrics import RunMetrics
from benchmark.saved import CONSENSUS_FILE, DATA_FIELDS, data_folder, evaluate, load_model

# the default family's digits at 8 px with its MLP: load_dataset("digits") alone would give
# 28 px images, which this model refuses with a shape error
RUN = {"family": "fam", "dataset": "digits", "image_size": 8, "model": "mlp", "topology": "ring",
       "n_agents": 4, "alpha": 0.5, "method": "ccl", "batch_size": 16, "epochs": 2, "lr": 0.05,
       "tracking": False, "threads": 1, "device": "cpu", "save_models": "all"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, RunMetrics]:
    from benchmark.train import run

    out = tmp_path_factory.mktemp("saved") / "run"
    return out, run(build_config(RUN), out)


def test_a_kept_model_scores_its_recorded_accuracy_in_one_call(digits_run, tmp_path,
                                                                monkeypatch) -> None:
    out, metrics = digits_run
    monkeypatch.chdir(tmp_path)  # from anywhere: the file says what its data are
    assert evaluate(out) == pytest.approx(metrics.final.consensus_acc, abs=1e-6)  # run folder
    assert evaluate(out / CONSENSUS_FILE) == pytest.approx(metrics.final.consensus_acc, abs=1e-6)
    # each agent's file scores that agent: their mean is the run's mean local accuracy
    local = [evaluate(out / name) for name in metrics.models["agents"]]
    assert sum(local) / len(local) == pytest.approx(metrics.final.local_acc_mean, abs=1e-5)
    data = torch.load(out / CONSENSUS_FILE, weights_only=True)["data"]
    assert set(data) == set(DATA_FIELDS)
    assert (data["dataset"], data["image_size"], data["data_dir"], data["synthetic"]) == (
        "digits", 8, "data", None)  # as the config gave them: relative stays relative
    assert data["sample_shape"] == metrics.data.sample_shape == [1, 8, 8]
    assert (data["digest"], data["test_size"]) == (metrics.data.digest, metrics.data.test_size)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_or_path_without_one_model_is_one_line(digits_run, tmp_path) -> None:
    out, metrics = digits_run
    agents = tmp_path / "agents"
    agents.mkdir()
    for name in metrics.models["agents"][:2]:
        shutil.copy(out / name, agents / name)
    cases = {agents: "holds 2 models and no model_consensus.pt: name one",
             tmp_path / "empty": "no saved model in",
             tmp_path / "nowhere": "no such file or folder",
             out / "metrics.json": "is not a saved model"}
    (tmp_path / "empty").mkdir()
    for path, message in cases.items():
        for call in (evaluate, load_model):
            with pytest.raises(UserError, match=message) as err:
                call(path)
            assert "\n" not in str(err.value)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(out / metrics.models["agents"][0], one)
    assert evaluate(one) == evaluate(out / metrics.models["agents"][0])


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:///{tmp}/store/mlflow.db"])
def test_a_runs_uri_without_a_store_names_it_and_creates_nothing(tmp_path, monkeypatch,
                                                                 uri: str) -> None:
    monkeypatch.chdir(tmp_path)
    uri = uri.format(tmp=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for call in (evaluate, load_model):
        with pytest.raises(UserError, match=rf"no MLflow store at {uri} \(looked for ") as err:
            call("runs:/0123456789abcdef/models/model_consensus.pt")
        assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_files_saved_before_the_data_block_load_and_say_what_evaluate_misses(digits_run,
                                                                            tmp_path) -> None:
    out, metrics = digits_run
    saved = torch.load(out / CONSENSUS_FILE, weights_only=True)
    # a file of format 1: no data block, and no checksum (format 3)
    older = {k: v for k, v in saved.items() if k not in ("data", "sha256")} | {"format": 1}
    torch.save(older, tmp_path / CONSENSUS_FILE)
    old, new = load_model(tmp_path), load_model(out)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(old(x)[1], new(x)[1])
    with pytest.raises(UserError, match=r"saved before models carried their test data \(format "
                       r"1; missing: dataset, data_dir, project, image_size, synthetic, "
                       r"sample_shape, test_size, digest\)"):
        evaluate(tmp_path)


def test_other_data_than_the_run_trained_on_are_refused(digits_run, tmp_path) -> None:
    out, _ = digits_run
    saved = torch.load(out / CONSENSUS_FILE, weights_only=True)
    saved["data"]["digest"] = "0" * 64  # as if the files in data_dir had changed since
    torch.save(with_checksum(saved), tmp_path / CONSENSUS_FILE)  # an intact file, other data
    with pytest.raises(UserError, match=r"the digits data in .* are not the ones .* was trained "
                       r"on \(digest [0-9a-f]{64}, recorded 0{64}\)"):
        evaluate(tmp_path)


def test_a_relative_data_dir_is_found_under_the_project_that_ran_it(tmp_path, monkeypatch
                                                                    ) -> None:
    from benchmark.tracking import repo_root

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert data_folder({"data_dir": "data", "project": str(project)}) == project / "data"
    assert data_folder({"data_dir": str(tmp_path / "abs"), "project": "/x"}) == tmp_path / "abs"
    # the project is gone (another machine): this repository's, then the current folder's
    (tmp_path / "here").mkdir()
    assert data_folder({"data_dir": "here", "project": "/gone"}) == tmp_path / "here"
    assert data_folder({"data_dir": "nothing", "project": "/gone"}) == Path("/gone/nothing")
    assert repo_root() / "benchmark" == data_folder({"data_dir": "benchmark",
                                                     "project": "/gone"})
