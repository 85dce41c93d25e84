"""MNIST-1D as a first-class dataset, the `convbase1d` model, and the registries' rows.

The published set is generated once per session (``mnist1d_dir`` in conftest.py, network
blocked); the cache tests replace the package's ``make_dataset`` by a counting stand-in that
returns those arrays, so they check the cache logic without generating again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import mnist1d.data
import numpy as np
import pytest
import torch

from benchmark import cli
from benchmark.config import build_config
from benchmark.data import class_histogram, dirichlet_partition, load_dataset
from benchmark.data import mnist1d_loader as m1d
from benchmark.data.registry import REGISTRY, check_row
from benchmark.errors import ConfigError, DataMissingError, UserError
from benchmark.methods import METHODS

# sha256 over x, y, x_test, y_test as contiguous bytes (float64 x, int64 y), as made by
# mnist1d 0.0.2.post1's make_dataset(get_dataset_args())
PUBLISHED = "2377c0b18c9f643da2b39e66086395782aac2fcfdd678b89f55a22b17ec47631"
# a short run: 4 agents share 4,000 signals (1,000 each), 4 iterations of batch 250
RUN = {"dataset": "mnist1d", "model": "convbase1d", "topology": "ring", "n_agents": 4,
       "alpha": 0.1, "batch_size": 250, "epochs": 1, "lr": 0.05, "lambda_m": 0.1,
       "lambda_d": 0.1, "tracking": False, "threads": 1, "device": "cpu", "vectorize": "loop",
       "save_models": "none"}


@pytest.fixture(scope="module")
def arrays(mnist1d_dir):
    return m1d.load_arrays(mnist1d_dir)


@pytest.fixture
def made(monkeypatch, arrays):
    """Replace the package's generator by one that counts its calls and returns the published
    arrays (copies, as the real one makes new arrays)."""
    calls = []

    def make_dataset(args):
        calls.append(vars(args))
        return {key: value.copy() for key, value in arrays.items()}

    monkeypatch.setattr(mnist1d.data, "make_dataset", make_dataset)
    return calls


def _config(mnist1d_dir, **options):
    return build_config({**RUN, "data_dir": str(mnist1d_dir), **options})


# ------------------------------------------------------------------------------ generation
def test_generation_is_the_published_set_offline_and_deterministic(mnist1d_dir, arrays):
    """The session's cache was generated with every socket connection refused (conftest.py);
    its arrays are the published ones, and generating again gives the same bytes."""
    assert m1d.digest(arrays) == m1d.PUBLISHED_DIGEST == PUBLISHED
    h = hashlib.sha256()
    for key in ("x", "y", "x_test", "y_test"):
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    assert h.hexdigest() == PUBLISHED
    assert (arrays["x"].shape, arrays["x"].dtype, arrays["y"].dtype) == (
        (4000, 40), np.float64, np.int64)
    assert arrays["x_test"].shape == (1000, 40)
    assert np.bincount(arrays["y"]).tolist() == [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]
    # the arguments spelled out are the package's published defaults (less the download URL)
    published = mnist1d.data.get_dataset_args(as_dict=True)
    assert m1d.ARGS == {k: v for k, v in published.items() if k != "url"}
    # the package reseeds the global RNGs; generation restores them
    np.random.seed(7)
    before = np.random.random()
    np.random.seed(7)
    again = m1d._generate()
    assert np.random.random() == before
    assert m1d.digest(again) == PUBLISHED


# ------------------------------------------------------------------------------ the cache
def test_the_cache_is_generated_once_then_read(tmp_path, made):
    first = load_dataset("mnist1d", data_dir=tmp_path)
    assert len(made) == 1 and made[0]["seed"] == 42 and made[0]["num_samples"] == 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist1d.npz"]  # no temporary left
    second = load_dataset("mnist1d", data_dir=tmp_path)
    assert len(made) == 1  # read from the cache
    assert torch.equal(first.train.x, second.train.x) and first.digest == second.digest
    stored = np.load(tmp_path / "mnist1d.npz")
    meta = json.loads(str(stored["meta"]))
    assert meta == {"version": "0.0.2.post1", "args": m1d.ARGS, "digest": PUBLISHED}


def test_fetch_generates_the_cache_that_train_then_reads(tmp_path, made, capsys):
    assert cli.main(["fetch", "mnist1d", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"mnist1d: generated into {tmp_path / 'mnist1d.npz'}"
    assert cli.main(["fetch", "mnist1d", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"mnist1d: already in {tmp_path / 'mnist1d.npz'}"
    load_dataset("mnist1d", data_dir=tmp_path)
    assert len(made) == 1


def _rewrite(path: Path, **changes) -> None:
    """The cache file with some arrays or its meta replaced."""
    with np.load(path) as stored:
        content = {key: stored[key] for key in stored.files}
    content.update(changes)
    with path.open("wb") as fh:
        np.savez(fh, **content)


@pytest.mark.parametrize("damage", ["truncated", "not an npz", "other version", "other args",
                                    "changed signal", "meta missing"])
def test_a_stale_or_corrupt_cache_is_generated_again(mnist1d_dir, tmp_path, made, damage):
    path = tmp_path / "mnist1d.npz"
    shutil.copy(mnist1d_dir / "mnist1d.npz", path)
    meta = json.loads(str(np.load(path)["meta"]))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "not an npz":
        path.write_text("hello")
    elif damage == "other version":
        _rewrite(path, meta=np.array(json.dumps({**meta, "version": "0.0.1"})))
    elif damage == "other args":
        _rewrite(path, meta=np.array(json.dumps({**meta, "args": {**m1d.ARGS, "seed": 1}})))
    elif damage == "changed signal":
        with np.load(path) as stored:
            x = stored["x"].copy()
        x[0, 0] += 1e-9
        _rewrite(path, x=x)
    else:
        with np.load(path) as stored:
            content = {key: stored[key] for key in stored.files if key != "meta"}
        with path.open("wb") as fh:
            np.savez(fh, **content)
    bundle = load_dataset("mnist1d", data_dir=tmp_path)
    assert len(made) == 1 and bundle.digest == PUBLISHED
    assert m1d.digest(m1d.load_arrays(tmp_path)) == PUBLISHED and len(made) == 1  # repaired


def test_a_package_generating_other_data_is_refused_and_nothing_written(tmp_path, monkeypatch,
                                                                        arrays, capsys):
    other = {key: value.copy() for key, value in arrays.items()}
    other["x"][0, 0] += 1.0
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda args: other)
    with pytest.raises(DataMissingError, match=r"generates other data than the published set "
                       r".*pip install mnist1d==0\.0\.2\.post1$"):
        load_dataset("mnist1d", data_dir=tmp_path / "data")
    assert cli.main(["fetch", "mnist1d", "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: dataset mnist1d: mnist1d 0.0.2.post1")
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []


def test_a_write_that_fails_leaves_no_half_file(tmp_path, made, monkeypatch):
    """Concurrent runs each rename a complete file into place; a failing write leaves none."""

    def fail(fh, **arrays):
        fh.write(b"PK half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(UserError, match="cannot write .*mnist1d.npz: No space left on device"):
        load_dataset("mnist1d", data_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ the data
def test_signals_load_as_float32_n_1_40_without_image_size(mnist1d_dir, arrays):
    bundle = load_dataset("mnist1d", data_dir=mnist1d_dir)
    assert bundle.train.x.shape == (4000, 1, 40) and bundle.test.x.shape == (1000, 1, 40)
    assert bundle.train.x.dtype == torch.float32 and bundle.train.y.dtype == torch.long
    assert torch.equal(bundle.train.x[:, 0], torch.as_tensor(arrays["x"], dtype=torch.float32))
    assert (bundle.sample_shape, bundle.kind, bundle.num_classes) == ((1, 40), "signal", 10)
    assert (bundle.mean, bundle.std, bundle.augment) == ((0.0,), (1.0,), "none")
    assert bundle.digest == PUBLISHED and not hasattr(bundle, "image_size")
    # batches are the signals as stored (mean 0, std 1: normalisation is the identity)
    from benchmark.data import AgentBatches, eval_batches

    parts = [np.arange(0, 2000), np.arange(2000, 4000)]
    batches = AgentBatches(bundle.train, parts, 8, bundle.augment, bundle.mean, bundle.std,
                           seed=0)
    xs, ys = next(batches.epoch(0))
    assert xs.shape == (2, 8, 1, 40)
    assert torch.equal(xs, bundle.train.x[batches.indices(0, 0)])
    x, y = next(eval_batches(bundle.test, bundle.mean, bundle.std))
    assert torch.equal(x, bundle.test.x) and torch.equal(y, bundle.test.y)
    with pytest.raises(ConfigError, match=r"^image_size: invalid value 40; allowed: unset for "
                       r"mnist1d \(mnist1d holds 1-D signals \[C, L\] of shape \[1, 40\]"):
        build_config({**RUN, "image_size": 40})


def test_alpha_001_on_16_agents_gives_each_agent_two_to_seven_classes(mnist1d_dir):
    """The `lin` partition (seed 0) of the 4,000 training signals: 250 each, the histogram."""
    labels = load_dataset("mnist1d", data_dir=mnist1d_dir).train.y.numpy()
    parts = dirichlet_partition(labels, 16, 0.01, seed=0, scheme="lin")
    histogram = class_histogram(labels, parts, 10)
    assert [len(p) for p in parts] == [250] * 16
    assert histogram.sum(axis=0).tolist() == np.bincount(labels).tolist()  # every signal once
    assert (histogram > 0).sum(axis=1).tolist() == [2, 2, 2, 2, 2, 3, 2, 2, 4, 7, 2, 3, 3, 2, 5,
                                                    6]
    assert histogram[0].tolist() == [13, 0, 0, 237, 0, 0, 0, 0, 0, 0]
    assert histogram[9].tolist() == [226, 1, 0, 0, 1, 1, 0, 1, 3, 17]
    assert histogram.max(axis=1).min() == 120  # the most even agent: 48% of it one class


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_epoch_of_every_preset_on_mnist1d(mnist1d_dir, method):
    from benchmark.train import run

    metrics = run(_config(mnist1d_dir, method=method, log_cross_features=True), None)
    assert metrics.completed and metrics.n_params == 150 + 2 * 1900 + 1260  # convbase1d
    assert metrics.iterations_per_epoch == 4 and metrics.partition.sizes == [1000] * 4
    record = metrics.history[-1]
    assert all(math.isfinite(getattr(record, k)) for k in ("train_ce", "l_mv", "l_dv"))
    final = metrics.final
    assert 0 <= final.consensus_acc <= 100 and math.isfinite(final.consensus_distance)
    # accuracies are whole numbers of the 1,000 test signals
    assert round(final.consensus_acc * 10) == pytest.approx(final.consensus_acc * 10, abs=1e-3)
    assert metrics.data.model_dump() == {"name": "mnist1d", "train_size": 4000, "val_size": None,
                                         "test_size": 1000, "sample_shape": [1, 40],
                                         "digest": PUBLISHED}
    # CCL's class statistics: class sums of the 125 features + counts, per neighbour: 2 on the
    # ring; RelaySGD's spanning tree of the 4-ring is a chain, 6 directed edges over 4 agents
    sent = metrics.communication.bytes_per_agent_per_iteration
    uses_ldv = (metrics.ccl or {}).get("lambda_d", 0) > 0
    neighbours = 6 / 4 if metrics.algorithm == "relaysgd" else 2
    assert sent.get("class_statistics", 0) == (neighbours * (10 * 125 + 10) * 4 if uses_ldv else 0)


def test_metrics_files_with_and_without_the_data_section_are_read():
    from benchmark.metrics import RunMetrics

    golden = Path(__file__).parent / "golden"
    older = json.loads((golden / "qgm.json").read_text())
    del older["data"]  # as written before the section existed
    assert RunMetrics.parse(older).data is None
    newer = RunMetrics.parse(json.loads((golden / "mnist1d-qgm.json").read_text()))
    assert (newer.data.sample_shape, newer.data.digest) == ([1, 40], PUBLISHED)


def test_evaluation_and_saved_model_on_signals(mnist1d_dir, tmp_path):
    from benchmark.data import eval_batches
    from benchmark.saved import evaluate, load_model
    from benchmark.train import run

    # 2 x 40 iterations of batch 25 at a constant lr 0.1: enough to leave chance (10%) behind
    metrics = run(_config(mnist1d_dir, method="ccl", save_models="consensus", epochs=2,
                          batch_size=25, lr=0.1, lr_milestones=[]), tmp_path)
    model = load_model(tmp_path / metrics.models["consensus"])
    assert type(model).__name__ == "ConvBase1d" and model.feature_dim == 125
    test = load_dataset("mnist1d", data_dir=mnist1d_dir).test
    correct = sum(int((model(x)[1].argmax(1) == y).sum())
                  for x, y in eval_batches(test, model.input_mean, model.input_std))
    assert correct / 10 == pytest.approx(metrics.final.consensus_acc, abs=1e-4)  # float32 %
    assert correct > 250
    # in one call: the file says the dataset and where its data are (the digest matches)
    assert evaluate(tmp_path) == pytest.approx(metrics.final.consensus_acc, abs=1e-6)


def test_memory_estimate_calibration_and_plan_use_the_signal_shape(mnist1d_dir):
    from benchmark import memory
    from benchmark.calibrate import stand_in, time_workload
    from benchmark.models import build_model
    from benchmark.plan import Workload, iterations

    config = _config(mnist1d_dir, n_agents=16, batch_size=32, epochs=40, method="ccl")
    bundle = load_dataset("mnist1d", data_dir=mnist1d_dir)
    model = build_model("convbase1d", 10, sample_shape=bundle.sample_shape)
    estimate = memory.estimate(config, model, bundle, torch.device("cpu"))
    # the stacked batch and its copy: 2 x 4 bytes x 16 agents x 32 signals x 40 samples
    saved, transient = memory.activation_profile(model, (1, 40))
    assert transient == 2 * 25 * 19 * 4  # conv1's output of one signal, twice
    # with oneDNN's blocks of 16 channels, conv1's 25 channels are written as 32 first
    assert memory.activation_profile(model, (1, 40), block=16)[1] == (25 + 32) * 19 * 4
    assert estimate.iteration >= 2 * 4 * 16 * 32 * 40 and estimate.data == 0
    assert Workload.of(config).sample_shape == (1, 40)
    assert iterations(config) == 40 * math.ceil(250 / 32)
    standin = stand_in(config, 1)
    assert standin.synthetic == {"channels": 1, "num_classes": 10, "augment": "none",
                                 "length": 40, "train_size": 16 * 32, "test_size": 16}
    entry = time_workload(_config(mnist1d_dir, method="ccl"), iterations=1, warmup=0)
    assert entry["workload"]["sample_shape"] == [1, 40] and entry["seconds_per_iteration"] > 0


# ------------------------------------------------------------------------------ compatibility
@pytest.mark.parametrize(("overrides", "line"), [
    (["dataset=mnist1d", "model=lenet5"],
     "model: invalid value 'lenet5'; allowed: one of mlp, convbase1d (dataset mnist1d holds 1-D "
     "signals [C, L]; images [C, H, W] (cifar10, cifar100, fmnist, imagenette, imagenet, digits, "
     "synthetic) take resnet20, lenet5, mobilenetv2, resnet18, mlp)"),
    (["dataset=cifar10", "model=convbase1d"],
     "model: invalid value 'convbase1d'; allowed: one of resnet20, lenet5, mobilenetv2, resnet18, "
     "mlp (dataset cifar10 holds images [C, H, W]; 1-D signals [C, L] (mnist1d) take mlp, "
     "convbase1d)"),
    (["dataset=synthetic", "synthetic={length: 40}", "model=resnet20"],
     "model: invalid value 'resnet20'; allowed: one of mlp, convbase1d (dataset synthetic holds "
     "1-D signals"),
    (["dataset=mnist1d", "model=convbase1d", "image_size=40"],
     "image_size: invalid value 40; allowed: unset for mnist1d"),
])
def test_a_model_and_dataset_of_different_sample_kinds_are_refused_before_any_data(
        capsys, tmp_path, overrides, line):
    data = tmp_path / "data"
    code = cli.main(["train", "--out", str(tmp_path / "run"), f"data_dir={data}",
                     "tracking=false", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {line}"), err
    assert not data.exists() and not (tmp_path / "run").exists()  # no data read, nothing written


def test_the_family_file_refuses_a_pair_of_other_kinds_naming_its_entry(tmp_path):
    from benchmark.grid import load_family

    text = (Path(__file__).parents[1] / "config" / "mnist1d.yaml").read_text()
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("model: convbase1d", "model: lenet5"))
    with pytest.raises(UserError, match=r"model: invalid value 'lenet5'; allowed: one of mlp, "
                       r"convbase1d \(dataset mnist1d"):
        load_family(path)


# ------------------------------------------------------------------------------ the registries
def test_every_registry_row_is_complete_and_a_broken_one_is_named():
    from benchmark.models import REGISTRY as MODEL_ROWS
    from benchmark.models import check_model_row

    for name, row in REGISTRY.items():
        check_row(name, row)
    for name, row in MODEL_ROWS.items():
        check_model_row(name, row)
    mnist = REGISTRY["mnist1d"]
    cases = [
        (replace(mnist, train_size=None), "train_size missing or not a positive integer (got "
                                          "None)"),
        (replace(mnist, fetch=None), "fetch missing: a rule of benchmark.data.sources (got None)"),
        (replace(mnist, num_classes=0), "num_classes missing or not a positive integer (got 0)"),
        (replace(mnist, sample_shape=(40,)), "sample_shape invalid (sample_shape: invalid value "
                                             "(40,)"),
        (replace(mnist, augment="cifar"), "augment 'cifar' invalid for 1-D signals [C, L]; "
                                          "allowed: none"),
        (replace(mnist, stats=((0.0, 0.0), (1.0, 1.0))), "stats must be (mean, std) with one "
                                                         "value per channel (1)"),
        (replace(mnist, load=None), "load missing"),
    ]
    for row, problem in cases:
        with pytest.raises(UserError, match=f"^dataset registry row 'new': {re.escape(problem)}"):
            check_row("new", row)
    conv = MODEL_ROWS["convbase1d"]
    for row, problem in [(replace(conv, kinds=("audio",)), "kinds ('audio',) unknown"),
                         (replace(conv, default_norm="evonorm"), "default_norm 'evonorm' not "
                                                                 "among its norms"),
                         (replace(conv, build=None), "build missing")]:
        with pytest.raises(UserError, match=f"^model registry row 'new': {re.escape(problem)}"):
            check_model_row("new", row)


def test_the_fetch_items_and_the_cli_choices_come_from_the_rows():
    from benchmark.data.fetch import ITEMS, fetch_item

    assert ITEMS == ("cifar10", "cifar100", "fmnist", "imagenette-160px", "imagenette-320px",
                     "imagenet", "digits", "mnist1d", "synthetic")
    assert fetch_item(build_config({**RUN})) == "mnist1d"
    _, commands = cli.build_parsers()
    fetch = next(a for a in commands["fetch"]._actions if a.dest == "item")
    assert tuple(fetch.choices) == ITEMS
