"""Issue 23, points 5-7: bounded input, the outside world failing fast in one line, and
interrupts that leave consistent records.

One test per class, each with several cases. A refused case asserts exit code 2, exactly one
line on stderr with the expected message, and that nothing was written. The CLI runs
in-process (``benchmark.cli.main`` returns the exit code) unless the case needs a process of
its own (signals, a server).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main

# 128 training images over 4 agents: 32 per agent, 4 iterations of 8 per epoch
SYNTH = ["dataset=synthetic", "synthetic={train_size: 128, test_size: 64, image_size: 8}",
         "model=mlp", "n_agents=4", "batch_size=8", "tracking=false", "threads=1", "device=cpu"]


def _refused(capsys, argv: list[str], *parts: str, cwd: Path | None = None) -> str:
    """``main(argv)`` exits 2 with one stderr line holding every part, and writes nothing
    under ``cwd``; returns the line."""
    before = sorted(cwd.rglob("*")) if cwd else None
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own complaints
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for part in parts:
        assert part in err, f"{part!r} not in {err!r}"
    if cwd is not None:
        assert sorted(cwd.rglob("*")) == before, "a refused command must write nothing"
    return err.strip()


# ------------------------------------------------------------------ point 5: bounded input
def _alias_bomb(indent: str, levels: int = 9) -> str:
    """``levels`` anchored lists of 9, each repeating the one before: 9**levels values."""
    lines = [f"{indent}l0: &l0 [x, x, x, x, x, x, x, x, x]\n"]
    lines += [f"{indent}l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]\n"
              for k in range(1, levels)]
    return "".join(lines)


DEEP = "[" * 3000 + "]" * 3000
FAMILY_HEAD = ("grid: {alpha: [0.1], topologies: [{topology: ring, n_agents: 4}], "
               "methods: [dsgdm-n], seeds: [0]}\n")


@pytest.mark.parametrize(("case", "message"), [
    # an alias bomb where a dict of anything is accepted (synthetic:), in a run file,
    # a family file read by `plan` (as the workflow reads it) and an override
    ("bomb in run:", "config: {file}: more than 100,000 values once its aliases are expanded "
                     "(line 9, column 19); write the values out, or repeat fewer"),
    ("bomb in a family", "config: {file}: more than 100,000 values once its aliases"),
    ("bomb override", "override 'synthetic={l0: &l0 [x, x, x, x, x, x, x, x, x], l1: &l1 [*l0, "
                      "*l0, *l0, *l0, ...': more than 100,000 values once its aliases are "
                      "expanded (line 1, column 273)"),
    ("deep list", "config: {file}: nested deeper than 64 levels (line 1, column 79)"),
    ("deep override", f"override 'lr_milestones={'[' * 63}...': nested deeper than 64 levels "
                      "(line 1, column 65)"),
    ("recursive alias", "config: {file}: alias *a (line 2, column 19) is inside the node it "
                        "names"),
    ("Latin-1", "config: {file} is not UTF-8 text (byte 0xe9 at line 2, column 12: another "
                "encoding, e.g. Latin-1?); save it as UTF-8"),
    ("binary", "config: {file} is a binary file, not text (a NUL byte at line 1, column 4)"),
    ("directory", "config: {file} is a directory, not a file"),
    ("FIFO", "config: {file} is a FIFO (named pipe), not a file"),
    ("/dev/zero", "config: /dev/zero is a character device, not a file"),
    ("2 MB", "config: {file} is larger than 1024 KiB, more than such a file ever holds"),
])
def test_class5_config_input_is_bounded_and_read_as_text(capsys, tmp_path, case, message):
    """Every way a config can be too big, too deep or not text is one line at once: never a
    RecursionError, a traceback, a blocked read of a FIFO or an endless one of /dev/zero."""
    folder = tmp_path / "in"
    folder.mkdir()
    file = folder / "run.yaml"
    overrides = []
    if case == "bomb in run:":
        file.write_text("run:\n  dataset: digits\n  synthetic:\n" + _alias_bomb("    "))
    elif case == "bomb in a family":
        file = folder / "fam.yaml"
        file.write_text(FAMILY_HEAD + "run:\n  synthetic:\n" + _alias_bomb("    "))
    elif case == "bomb override":
        bomb = ", ".join(line.strip() for line in _alias_bomb("").splitlines())
        overrides = [f"synthetic={{{bomb}}}"]
        file = None
    elif case == "deep list":
        file.write_text(f"lr_milestones: {DEEP}\n")
    elif case == "deep override":
        overrides, file = [f"lr_milestones={DEEP}"], None
    elif case == "recursive alias":
        file.write_text("dataset: synthetic\nsynthetic: &a {x: *a}\n")
    elif case == "Latin-1":
        file.write_bytes("lr: 0.1\nfamily: caf\u00e9\n".encode("latin-1"))
    elif case == "binary":
        file.write_bytes(b"lr:\x00\x01\x02\xff")
    elif case == "directory":
        file.mkdir()
    elif case == "FIFO":
        os.mkfifo(file)
    elif case == "/dev/zero":
        file = Path("/dev/zero")
    elif case == "2 MB":
        file.write_text("# padding\n" * 200_000)
    if case == "bomb in a family":
        argv = ["plan", "fam", "--config-dir", str(folder)]
    else:
        argv = ["train", "--out", str(tmp_path / "run"), *SYNTH, *overrides,
                *(["--config", str(file)] if file else [])]
    line = _refused(capsys, argv, cwd=tmp_path)
    assert line.startswith("error: " + message.replace("{file}", str(file))), line


def test_class5_anchors_within_the_bounds_still_work(tmp_path):
    """Bounded, not banned: a merge key and an alias give the config written out in full."""
    from benchmark.config import load_config

    shared = tmp_path / "shared.yaml"
    shared.write_text("base: &base {lr: 0.2, momentum: 0.5}\nrun:\n  <<: *base\n  momentum: 0.8\n"
                      "  lr_milestones: &m [0.25, 0.5]\ngrid: null\n")
    plain = tmp_path / "plain.yaml"
    plain.write_text("run: {lr: 0.2, momentum: 0.8, lr_milestones: [0.25, 0.5]}\ngrid: null\n")
    assert load_config(shared, ["family=f"]) == load_config(plain, ["family=f"])
    assert load_config(shared, ["family=f"]).lr == 0.2


STOPPED_WHILE = """
import os, sys, time
import benchmark.train
def busy(*args, **kwargs):
    print("inside", flush=True)
    {work}
benchmark.train.load_dataset = busy
from benchmark.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("work", "first_words"), [
    # glibc's system() waits through signals: one 60-second C call (the GIL released); `exec`
    # and the redirections leave no process holding this test's pipes
    ("os.system('exec sleep 60 < /dev/null > /dev/null 2>&1')",
     "interrupted (inside a long computation): "),
    ("while True: pass", "interrupted: "),  # Python bytecode: the handler raises at once
    ("time.sleep(60)", "interrupted: "),  # a system call: interrupted, then the handler
])
def test_class5_sigterm_is_honoured_within_a_second_whatever_runs(tmp_path, work, first_words):
    """SIGTERM while data are being made: the process is gone long before the work would end
    (60 s and more), exit code 130, one line saying nothing was saved."""
    proc = subprocess.Popen([sys.executable, "-c", STOPPED_WHILE.format(work=work), "train",
                             "--out", str(tmp_path / "run"), *SYNTH],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: `sleep` is killed below
    try:
        assert proc.stdout.readline() == "inside\n"
        if "os.system" in work:  # signal once inside the C call: when `sleep` has started
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            deadline = time.monotonic() + 60
            while not children.read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert err == (f"{first_words}no epoch was saved; run the same command again to start "
                   "over\n")
    assert not (tmp_path / "run").exists()


# ------------------------------------ point 6: the outside world fails fast, in one line
def _refuses_writes(folder: Path) -> bool:
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return True
    return False


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A folder that refuses new files: mode 0555 for a user; for root, whom modes do not stop,
    /sys (which refuses new files to everyone)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if _refuses_writes(folder):
        yield folder
        folder.chmod(0o755)
        return
    folder.chmod(0o755)
    if not _refuses_writes(Path("/sys")):
        pytest.skip("no folder here refuses writes")
    yield Path("/sys")


FAMILY = ("run: {family: fam, dataset: synthetic, model: mlp, n_agents: 4, epochs: 1, "
          "synthetic: {train_size: 128, test_size: 64, image_size: 8}, tracking: false}\n"
          + FAMILY_HEAD)


@pytest.mark.parametrize(("command", "field", "where"), [
    ("train", "out", "{ro}/run"),
    ("report", "out", "{ro}/reports"),
    ("tune", "--study", "{ro}/studies/alpha0.1"),
    ("calibrate", "--out", "{ro}"),
    ("tune-table", "out", "{ro}/tables"),
    ("fetch", "--data-dir", "{ro}/data"),
])
def test_class6_an_output_that_cannot_be_written_is_refused_before_any_work(
        capsys, tmp_path, monkeypatch, read_only, command, field, where):
    """Nothing is trained, read, timed or tuned first: the refusal names the flag, the path and
    the folder that refuses writes."""
    import benchmark.calibrate
    import benchmark.train

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(benchmark.train, "build_experiment", no_work)
    monkeypatch.setattr(benchmark.calibrate, "time_workload", no_work)
    (tmp_path / "fam.yaml").write_text(FAMILY)
    (tmp_path / "best.json").write_text("{}")
    argv = {
        "train": ["train", "--out", f"{read_only}/run", *SYNTH],
        "report": ["report", str(tmp_path), "--out", f"{read_only}/reports"],
        "tune": ["tune", "--study", f"{read_only}/studies/alpha0.1.journal", *SYNTH,
                 "method=qgm"],
        "fetch": ["fetch", "cifar10", "--data-dir", f"{read_only}/data"],  # before downloading
        "calibrate": ["calibrate", "--config-dir", str(tmp_path), "--out",
                      f"{read_only}/calibration.json"],
        "tune-table": ["tune-table", str(tmp_path / "best.json"), "--out",
                       f"{read_only}/tables/tuning_fam"],
    }[command]
    line = _refused(capsys, argv, f"; allowed: a writable directory (cannot write in "
                                  f"{read_only}: ", cwd=tmp_path)
    shown = repr(where.format(ro=read_only))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."  # (ConfigError's own cut)
    assert line.startswith(f"error: {field}: invalid value {shown}; "), line


@pytest.mark.parametrize("command", ["fetch", "train"])
def test_class6_mnist1d_without_a_cache_in_a_folder_that_cannot_be_written_is_named(
        capsys, tmp_path, monkeypatch, read_only, command):
    """MNIST-1D is generated into its data folder: one refused write is one line naming the
    folder, before generating (was: a PermissionError traceback after it)."""
    from benchmark.data import mnist1d_loader

    def no_work():
        raise AssertionError("generated before the folder was checked")

    monkeypatch.setattr(mnist1d_loader, "_generate", no_work)
    data = read_only / "data"
    argv = {"fetch": ["fetch", "mnist1d", "--data-dir", str(data)],
            "train": ["train", "--out", str(tmp_path / "run"), "dataset=mnist1d",
                      f"data_dir={data}", "model=mlp", "n_agents=4", "tracking=false"]}[command]
    _refused(capsys, argv, f"error: dataset mnist1d: no valid cache at {data / 'mnist1d.npz'}, "
             f"and it cannot be generated there (cannot write in {read_only}: ",
             "point data_dir (fetch: --data-dir) at a writable folder", cwd=tmp_path)


@pytest.mark.parametrize(("argv", "field", "why"), [
    # what is already there is checked too: a run's own files, the calibration file
    (["train", "--out", "{tmp}/run", *SYNTH], "out",
     "a writable file ({tmp}/run/metrics.json is a directory)"),
    (["calibrate", "--config-dir", "{tmp}", "--out", "{tmp}/run"], "--out",
     "a writable file ({tmp}/run is a directory)"),
    (["calibrate", "--config-dir", "{tmp}", "--out", "{tmp}/fam.yaml/c.json"], "--out",
     "a writable directory ({tmp}/fam.yaml is a file, not a directory)"),
    (["tune", "--study", "{tmp}/fam.yaml.journal", *SYNTH, "method=qgm"],  # its outputs' folder
     "--study", "a writable directory ({tmp}/fam.yaml is a file, not a directory)"),
    (["train", "--out", "{tmp}/fifo/run", *SYNTH], "out",
     "a writable directory ({tmp}/fifo is a FIFO (named pipe), not a directory)"),
    (["train", "--out", "{tmp}/" + "x" * 300 + "/run", *SYNTH], "out",
     "a writable directory (File name too long)"),
])
def test_class6_what_is_in_the_way_of_an_output_is_named(capsys, tmp_path, monkeypatch, argv,
                                                        field, why):
    import benchmark.calibrate

    monkeypatch.setattr(benchmark.calibrate, "time_workload", None)  # never reached
    (tmp_path / "fam.yaml").write_text(FAMILY)
    (tmp_path / "run" / "metrics.json").mkdir(parents=True)
    os.mkfifo(tmp_path / "fifo")
    line = _refused(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv], cwd=tmp_path)
    assert line.startswith(f"error: {field}: invalid value '"), line
    assert line.endswith("; allowed: " + why.replace("{tmp}", str(tmp_path))), line


@pytest.mark.parametrize(("argv", "first_line"), [
    (["plan", "fam", "--gpus", "0"], "--gpus: invalid value 0; allowed: greater than or equal "
                                     "to 1"),
    (["plan", "fam", "--gpus", "-2", "--slots", "-1"], "--gpus: invalid value -2"),
    (["plan", "fam", "--slots", "-1"], "--slots[0]: invalid value -1; allowed: greater than 0"),
    (["plan", "fam", "--slots", "1,0"], "--slots[1]: invalid value 0; allowed: greater than 0"),
    (["plan", "fam", "--calibration", "/dev/zero"],
     "calibration: /dev/zero is a character device, not a file"),
    (["calibrate", "--iterations", "0"], "--iterations: invalid value 0; allowed: greater than "
                                         "or equal to 1"),
    (["calibrate", "--warmup", "-1"], "--warmup: invalid value -1; allowed: greater than or "
                                      "equal to 0"),
    (["calibrate", "--device", "tpu"], "--device: invalid value 'tpu'; allowed: auto, cpu, "
                                       "cuda, cuda:N (N a GPU index) or mps"),
    (["calibrate", "--concurrency", "0"], "--concurrency[0]: invalid value 0; allowed: greater "
                                          "than 0"),
    (["calibrate", "--concurrency", "2,-4"], "--concurrency[1]: invalid value -4"),
    (["calibrate", "--concurrency-seconds", "-1"], "--concurrency-seconds: invalid value -1.0; "
                                                   "allowed: greater than 0"),
    (["calibrate", "--concurrency-seconds", "inf"], "--concurrency-seconds: invalid value inf; "
                                                    "allowed: a finite number"),
    (["calibrate", "--threads", "0"], "--threads: invalid value 0; allowed: greater than or "
                                      "equal to 1"),
    (["calibrate", "--agents", "16,0"], "--agents[1]: invalid value 0; allowed: greater than 0"),
    # what argparse refuses is one line too
    (["plan", "fam", "--gpus", "1.5"], "benchmark plan: argument --gpus: invalid int value: "
                                       "'1.5' (see benchmark plan --help)"),
    (["calibrate", "--concurrency", "2,x"], "benchmark calibrate: argument --concurrency: "
                                            "'2,x': expected integers separated by commas"),
])
def test_class6_every_plan_and_calibrate_number_is_checked(capsys, tmp_path, monkeypatch, argv,
                                                           first_line):
    import benchmark.calibrate

    monkeypatch.setattr(benchmark.calibrate, "time_workload", None)  # never reached
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fam.yaml").write_text(FAMILY)
    line = _refused(capsys, [*argv, "--config-dir", str(tmp_path)], cwd=tmp_path)
    assert line.startswith("error: " + first_line), line


@pytest.fixture(scope="module")
def web_server():
    """A web server that is not MLflow (it answers /health and every path with a 404 page)."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind",
                             "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        port = proc.stdout.readline().split(" port ")[1].split()[0]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(("store", "reason", "fix"), [
    ("sqlite:///{ro}/m.db", "cannot write in {ro}: ", "local"),
    ("sqlite:///{tmp}/garbage.db", "{tmp}/garbage.db is not an SQLite database", "local"),
    ("sqlite:///{tmp}/torn.db", "{tmp}/torn.db is not a readable SQLite database (file is not "
                                "a database)", "local"),
    ("sqlite:///{tmp}/other.db", "{tmp}/other.db is an SQLite database of another program (no "
                                 "MLflow tables)", "local"),
    ("sqlite:///{tmp}/a-folder", "{tmp}/a-folder is not a file", "local"),
    ("file://{ro}/mlruns", "cannot write in {ro}: ", "local"),
    ("{web}", "it answers HTTP 404 but is not an MLflow server", "server"),
    ("{web}/", "it answers HTTP 404 but is not an MLflow server", "server"),
    ("http://127.0.0.1:9", "it does not answer: ", "server"),
    ("mlflow://127.0.0.1:5000", "", "server"),
])
def test_class6_a_tracking_store_that_cannot_be_used_is_one_line_before_any_work(
        capsys, tmp_path, monkeypatch, read_only, web_server, store, reason, fix):
    """Within seconds (MLflow itself retried a read-only sqlite folder for 108 s, then a
    traceback), before the run folder or the store exist, naming the URI and the fix."""
    import sqlite3

    (tmp_path / "garbage.db").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "torn.db").write_bytes(b"SQLite format 3\x00" + b"\x01" * 100)
    with contextlib.closing(sqlite3.connect(tmp_path / "other.db")) as con:
        con.execute("CREATE TABLE notes (text)")
        con.commit()
    (tmp_path / "a-folder").mkdir()
    uri = store.format(ro=read_only, tmp=tmp_path, web=web_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    line = _refused(capsys, ["train", "--out", str(tmp_path / "run"), *SYNTH, "tracking=true"],
                    cwd=tmp_path)
    assert time.monotonic() - started < 60  # seconds, not MLflow's minutes of retries
    todo = {"local": "point MLFLOW_TRACKING_URI at a writable place, or set tracking=false",
            "server": "start the MLflow server, fix MLFLOW_TRACKING_URI, or set tracking=false"}
    assert line.startswith(f"error: tracking: cannot use the MLflow store {uri} ("
                           + reason.format(ro=read_only, tmp=tmp_path)), line
    assert line.endswith(f"); {todo[fix]}"), line


def _fake_dataset(root: Path, name: str, monkeypatch) -> None:
    """Tiny files in torchvision's layout; for CIFAR the class's MD5 list is set to the fake
    files' own, so torchvision's integrity check runs as it does on the real files."""
    import hashlib

    import torchvision.datasets as tvd
    from test_loaders import _idx, _pattern, _write_cifar

    if name == "imagenette":  # only its cache of resized images: the JPEGs are not read then
        import torch

        cache = root / "imagenette_cache"
        cache.mkdir(parents=True)
        for split, n in (("train", 32), ("val", 8)):
            torch.save({"x": torch.from_numpy(_pattern(n, 3, 32)), "y": torch.arange(n) % 10},
                       cache / f"{split}_32px_from160px.pt")
        return
    if name == "fmnist":
        raw = root / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for prefix, n in (("train", 32), ("t10k", 8)):
            _idx(raw / f"{prefix}-images-idx3-ubyte", _pattern(n, 1, 28)[:, 0])
            _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
        return
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    _write_cifar(root, name, 32, 8)
    folder = root / cls.base_folder

    def md5(file: str) -> list[str]:
        return [file, hashlib.md5((folder / file).read_bytes()).hexdigest()]

    monkeypatch.setattr(cls, "train_list", [md5(f) for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [md5(f) for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])[1]})


FETCH = "delete {top} and run `python -m benchmark fetch {name} --data-dir {data}`"


@pytest.mark.parametrize(("name", "file", "keep", "message"), [
    # was: "files not found (or corrupted)", not naming the file
    ("fmnist", "FashionMNIST/raw/train-images-idx3-ubyte", 1000, "truncated or corrupted; "
     + FETCH),
    # was: a ValueError traceback (an AssertionError with other lengths)
    ("fmnist", "FashionMNIST/raw/train-images-idx3-ubyte", 10, "truncated or corrupted; "
     + FETCH),
    ("fmnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte", 12, "truncated or corrupted; "
     + FETCH),
    ("fmnist", "FashionMNIST/raw/t10k-images-idx3-ubyte", None, "missing; " + FETCH),
    ("cifar10", "cifar-10-batches-py/data_batch_3", 500, "truncated or corrupted; " + FETCH),
    ("cifar10", "cifar-10-batches-py/batches.meta", 0, "truncated or corrupted; " + FETCH),
    ("cifar100", "cifar-100-python/test", 4000, "truncated or corrupted; " + FETCH),
    ("imagenette", "imagenette_cache/train_32px_from160px.pt", 300, "truncated or corrupted; "
     "delete it (it is rebuilt from the images)"),
])
def test_class6_a_damaged_dataset_file_is_named_with_the_fetch_command(
        capsys, tmp_path, monkeypatch, name, file, keep, message):
    data = tmp_path / "data"
    _fake_dataset(data, name, monkeypatch)
    args = [f"dataset={name}", f"data_dir={data}", "model=mlp", "n_agents=4", "batch_size=4",
            "tracking=false", "device=cpu"]
    assert main(["train", "--out", str(tmp_path / "intact"), *args, "epochs=1",
                 "save_models=none"]) == 0
    capsys.readouterr()
    damaged = data / file
    if keep is None:
        damaged.unlink()
    else:
        damaged.write_bytes(damaged.read_bytes()[:keep])
    subject = f"the cache {damaged}" if name == "imagenette" else str(damaged)
    top = data / file.split("/")[0]
    _refused(capsys, ["train", "--out", str(tmp_path / "run"), *args],
             f"error: dataset {name}: {subject} is "
             + message.format(top=top, name=name, data=data) + "\n", cwd=tmp_path)


@pytest.mark.parametrize("depth", [0, 60, 200])
def test_class6_a_long_tmpdir_does_not_stop_the_preload_server(tmp_path, monkeypatch, depth):
    """A Unix socket's path has at most ~107 bytes: under a deep TMPDIR the server's socket
    goes to a private folder under /tmp instead (every workflow failed with "preload server
    did not start"); the folder is mode 0700 and gone once the server stops."""
    import socket
    import stat

    from benchmark.preload import SOCKET_PATH_MAX, start_server, stop_server

    base = tmp_path / ("d" * depth) if depth else tmp_path
    base.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    fits = len(os.fsencode(f"{base}/benchmark-preload-12345678/socket")) <= SOCKET_PATH_MAX
    proc, path = start_server()
    folder = Path(path).parent
    try:
        assert folder.parent == (base if fits else Path("/tmp"))
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        with contextlib.closing(socket.socket(socket.AF_UNIX)) as client:
            client.connect(path)  # it listens
    finally:
        stop_server(proc)
    assert proc.returncode == 0 and not folder.exists()
    assert fits or depth > 0  # pytest's own folder is short enough; 200 more bytes are not


@pytest.mark.parametrize(("space", "first_line"), [
    ("{momentum: [0.5, 1.5]}", "tuning.space.momentum: invalid value [0.5, 1.5]; allowed: a "
                               "range within momentum's own limits (>= 0 and < 1)"),
    ("{momentum: [1.0, 1.5]}", "tuning.space.momentum: invalid value [1.0, 1.5]; allowed: a "
                               "range within momentum's own limits (>= 0 and < 1)"),
    ("{gamma: [0.5, 2]}", "tuning.space.gamma: invalid value [0.5, 2.0]; allowed: a range "
                          "within gamma's own limits (> 0 and <= 1)"),
    ("{lr_decay: {low: 0, high: 0.5, log: false}}", "tuning.space.lr_decay: invalid value "
     "[0.0, 0.5]; allowed: a range within lr_decay's own limits (> 0 and <= 1)"),
    ("{val_fraction: [0.1, 0.9]}", "tuning.space.val_fraction: invalid value [0.1, 0.9]; "
                                   "allowed: a range within val_fraction's own limits"),
    ("{epochs: [1.5, 10]}", "tuning.space.epochs: invalid value [1.5, 10.0]; allowed: "
                            "whole-number bounds (epochs is an integer option)"),
    ("{batch_size: {low: 0, high: 64, log: false}}", "tuning.space.batch_size: invalid value "
     "[0.0, 64.0]; allowed: a range within batch_size's own limits (>= 1)"),
])
@pytest.mark.parametrize("command", ["tune", "plan"])
def test_class6_a_search_range_outside_the_option_s_own_limits(capsys, tmp_path, space,
                                                               first_line, command):
    """Refused before a study exists (``[1.0, 1.5]`` made the study, then an Optuna
    traceback), by `tune` and when a family file is read (plan, the workflow)."""
    name = space[1:].split(":")[0]
    (tmp_path / "fam.yaml").write_text(
        FAMILY + f"tuning: {{protocol: tuned, space: {space}, baseline: [{name}]}}\n")
    journal = tmp_path / "studies" / "fam" / "dsgdm-n" / "alpha0.1.journal"
    argv = (["tune", "--config", str(tmp_path / "fam.yaml"), "--study", str(journal),
             "method=dsgdm-n", "alpha=0.1"] if command == "tune"
            else ["plan", "fam", "--config-dir", str(tmp_path)])
    prefix = "" if command == "tune" else f"{tmp_path / 'fam.yaml'}: "
    _refused(capsys, argv, f"error: {prefix}{first_line}", cwd=tmp_path)


def test_class6_a_range_inside_the_limits_is_kept():
    from benchmark.tuning.spec import build_spec

    spec = build_spec({"space": {"momentum": [0.5, 0.99], "epochs": [1, 10]},
                       "baseline": ["momentum", "epochs"]})
    assert (spec.space["momentum"].low, spec.space["momentum"].high) == (0.5, 0.99)
    assert (spec.space["epochs"].low, spec.space["epochs"].high) == (1, 10)


BOMB: list = ["x"] * 9
for _ in range(8):
    BOMB = [BOMB] * 9


@pytest.mark.parametrize(("config", "first_line"), [
    ({"protcol": "both"}, "--config protcol: invalid value '(unknown key)'; allowed: a known "
                          "key (family_dir, protocol, gpu_slots_per_device, gpu_threads, "
                          "cluster, preload) (did you mean 'protocol'?)"),
    ({"gpu_thread": 4}, "--config gpu_thread: invalid value '(unknown key)'; allowed: a known "
                        "key (family_dir, protocol, gpu_slots_per_device, gpu_threads, cluster, "
                        "preload) (did you mean 'gpu_threads'?)"),
    ({"protocol": "tunned"}, "--config protocol: invalid value 'tunned'; allowed: one of fixed, "
                             "tuned, both (did you mean 'tuned'?)"),
    ({"gpu_threads": 0}, "--config gpu_threads: invalid value 0; allowed: greater than or "
                         "equal to 1"),
    ({"gpu_slots_per_device": True}, "--config gpu_slots_per_device: invalid value True; "
                                     "allowed: a number, not a boolean"),
    ({"preload": "maybe"}, "--config preload: invalid value 'maybe'; allowed: a valid boolean"),
    ({"cluster": "slurn"}, "--config cluster: invalid value 'slurn'; allowed: one of slurm "
                           "(did you mean 'slurm'?)"),
    ({"family_dir": ""}, "--config family_dir: invalid value ''"),
    # Snakemake reads --config values as YAML with aliases: 9**9 values sharing 9 lists
    ({"protocol": BOMB}, "--config protocol: invalid value [[[[[...], [...], [...], [...], "
                         "[...], [...], [...], [...], [...]], [[...], [...; allowed: one of "
                         "fixed, tuned, both"),
    ({"gpu_threads": BOMB}, "--config gpu_threads: invalid value [[[[[...], [...], "),
])
def test_class6_workflow_config_keys_and_values_are_checked(config, first_line):
    """Every key the Snakefile and workflow/rules/*.smk read is listed once
    (benchmark.grid.WorkflowOptions); an unknown key or a bad value is one line."""
    from benchmark.errors import UserError
    from benchmark.grid import workflow_options

    with pytest.raises(UserError) as refused:
        workflow_options(config)
    assert str(refused.value).startswith(first_line), refused.value
    options = workflow_options({"protocol": "both", "gpu_threads": "4", "preload": "false",
                                "cluster": "slurm", "gpu_slots_per_device": 2})
    assert (options.protocol, options.gpu_threads, options.preload, options.cluster,
            options.gpu_slots_per_device, options.family_dir) == ("both", 4, False, "slurm", 2,
                                                                  "config")


def test_class6_snakemake_stops_on_a_mistyped_config_key(tmp_path):
    """`--config protcol=both` exited 0 with "Nothing to be done"; now nothing is planned."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "fam.yaml").write_text(FAMILY)
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s",
                           str(repo / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1",
                           "reports/table_fam.csv", "--config", "protcol=both"],
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("\nerror: --config protcol: invalid value '(unknown key)'; allowed: a known key "
            in output) and "(did you mean 'protocol'?)\n" in output
    assert "Nothing to be done" not in output


@pytest.mark.parametrize(("run", "topology", "first_line"), [
    ("lrr: 0.1", "", "run.lrr: invalid value '(unknown key)'; allowed: a known key (see README "
                     "for the options) (did you mean 'lr'?)"),
    ("momentum: 1.5", "", "run.momentum: invalid value 1.5; allowed: less than 1"),
    ("synthetic: {train_size: -5}", "", "run.synthetic.train_size: invalid value -5"),
    ("lr_milestones: [0.5, 2]", "", "run.lr_milestones: invalid value [0.5, 2.0]"),
    # what an axis entry sets is still named after the entry
    ("", ", gama: 0.9", "grid.topologies[0]: gama: invalid value '(unknown key)'"),
    ("gamma: 0.5", ", gamma: 2", "grid.topologies[0]: gamma: invalid value 2"),
])
def test_class6_a_mistake_under_run_is_named_run_key(capsys, tmp_path, run, topology,
                                                     first_line):
    family = tmp_path / "fam.yaml"
    family.write_text(
        "run: {family: fam, dataset: synthetic, model: mlp, epochs: 1"
        + (f", {run}" if run else "") + "}\n"
        "grid: {alpha: [0.1], methods: [dsgdm-n], seeds: [0], "
        f"topologies: [{{topology: ring, n_agents: 4{topology}}}]}}\n")
    _refused(capsys, ["plan", "fam", "--config-dir", str(tmp_path)],
             f"error: {family}: {first_line}", cwd=tmp_path)


# --------------------------------------- point 7: interrupts leave consistent records
def _signal_before(monkeypatch, owner, name: str, sig: int) -> None:
    """``owner.name`` sends ``sig`` to this process, then does its work."""
    original = getattr(owner, name)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)


@pytest.mark.parametrize(("moment", "sig"), [
    ("saving the models", signal.SIGINT),
    ("saving the models", signal.SIGTERM),
    ("writing metrics.json", signal.SIGINT),
    ("logging the MLflow result", signal.SIGTERM),
])
def test_class7_an_interrupt_after_the_last_epoch_leaves_a_complete_run(
        capsys, tmp_path, monkeypatch, moment, sig):
    """The last writes (models, then metrics.json) finish before the interrupt is honoured;
    the line says the run is complete ("no epoch was saved" before); the MLflow run, KILLED,
    is completed and marked FINISHED by the next run of the same command, once."""
    from mlflow.tracking import MlflowClient

    import benchmark.checkpoint
    import benchmark.tracking
    import benchmark.train
    from benchmark.checkpoint import CHECKPOINT, METRICS
    from benchmark.saved import CONSENSUS_FILE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), *SYNTH, "tracking=true", "epochs=2", "eval_every=1"]
    owner, name = {"saving the models": (benchmark.train, "save_models"),
                   "writing metrics.json": (benchmark.checkpoint.RunDir, "finish"),
                   "logging the MLflow result": (benchmark.tracking.MlflowTracker,
                                                 "log_result")}[moment]
    with monkeypatch.context() as patch:
        _signal_before(patch, owner, name, sig)
        assert main(argv) == 130
    err = capsys.readouterr().err  # after MLflow's own lines on creating the store
    assert err.endswith(f"\ninterrupted: the run had finished: {out / METRICS} is complete; run "
                        "the same command again to complete its MLflow record\n")
    result = json.loads((out / METRICS).read_text())
    assert result["status"] == "completed" and result["final"]["consensus_acc"] > 0
    assert (out / CONSENSUS_FILE).is_file() and not (out / CHECKPOINT).exists()
    store = MlflowClient(tracking_uri=uri)
    (record,) = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert record.info.status == "KILLED"

    assert main(argv) == 0
    out_text = capsys.readouterr().out
    assert "nothing to do" in out_text
    assert f"MLflow run {record.info.run_id}: the result logged, marked FINISHED" in out_text
    (repaired,) = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert repaired.info.run_id == record.info.run_id and repaired.info.status == "FINISHED"
    assert repaired.data.metrics["final/consensus_acc"] == result["final"]["consensus_acc"]
    assert repaired.data.tags["completed_after"] == "KILLED" and "error" not in repaired.data.tags
    steps = [m.step for m in store.get_metric_history(record.info.run_id, "acc/consensus")]
    assert sorted(steps) == [1, 2]  # each epoch once: none logged twice by the repair
    artifacts = {f.path for f in store.list_artifacts(record.info.run_id)}
    assert {"metrics.json", "config.yaml", "models"} <= artifacts

    assert main(argv) == 0  # complete now: nothing more to repair
    assert "MLflow run" not in capsys.readouterr().out


@pytest.mark.parametrize(("command", "what"), [
    (command, what) for command in ("train --tuned", "plan --calibration", "tune-table", "report")
    for what in ("FIFO", "/dev/zero", "directory")
    if (command, what) != ("report", "directory")  # a report searches a folder for results
])
def test_class5_every_input_file_is_read_bounded(capsys, tmp_path, monkeypatch, command, what):
    """Not only configs: a study's best.json, a calibration, metrics.json files given to a
    report are never opened for a blocking read either; each is named with what it is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fam.yaml").write_text(FAMILY)
    folder = tmp_path / "results" / "run"
    folder.mkdir(parents=True)
    given = {"FIFO": folder / "metrics.json", "/dev/zero": Path("/dev/zero"),
             "directory": tmp_path / "results" / "a-folder.json"}[what]
    if what == "FIFO":
        os.mkfifo(given)
    elif what == "directory":
        given.mkdir()
    kind = {"FIFO": "a FIFO (named pipe)", "/dev/zero": "a character device",
            "directory": "a directory"}[what]
    argv = {"train --tuned": ["train", "--out", "run", *SYNTH, "--tuned", str(given)],
            "plan --calibration": ["plan", "fam", "--config-dir", str(tmp_path),
                                   "--calibration", str(given)],
            "tune-table": ["tune-table", str(given), "--out", "tables/t"],
            "report": ["report", str(given), "--out", "reports"]}[command]
    what_reads = {"train --tuned": "--tuned", "plan --calibration": "calibration",
                  "tune-table": "tune-table", "report": "report"}[command]
    _refused(capsys, argv, f"error: {what_reads}: {given} is {kind}, not a file",
             cwd=tmp_path / "results")
