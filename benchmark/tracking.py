"""MLflow logging of every run: params, tags, per-epoch metrics, artifacts, final status.

``train.run`` uses exactly this interface::

    with track_run(config, out_dir) as tracker:   # a no-op tracker when config.tracking is False
        tracker.log_epoch(epoch, record)          # per-epoch metrics, step=epoch
        tracker.log_result(metrics)               # final figures + artifacts (metrics.json, ...)

Other writers (the tuning studies' parent/child runs) use the same public pieces: :func:`client`,
:func:`experiment_id`, :func:`retry`, and :class:`MlflowTracker` (``create``, ``log_batch``,
``log_files``, ``end``).

Why the care around SQLite: the workflow runs many jobs at once against one ``mlflow.db``. SQLite
takes one writer at a time; a writer that waits past the busy timeout gets "database is locked"
and its transaction is rolled back, i.e. the run or metric point would be *lost*. So every write
goes through :func:`retry` (exponential backoff with jitter; a rolled-back write is safe to
repeat), an epoch's metrics are one ``log_batch`` transaction, and the store's schema and the
experiments are created once, before any job starts (:func:`prepare_store`), because MLflow
runs its schema migrations in whichever process first opens an empty database. The database is
switched to WAL journalling there, so the UI and readers never block the writers.

Results never depend on MLflow: reports read ``metrics.json`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import yaml

from .errors import UserError
from .io import unwritable
from .names import inside

if TYPE_CHECKING:
    from .metrics import RunMetrics

T = TypeVar("T")

# The repository root (where the Snakefile lives) when the package is installed in editable mode;
# otherwise the current directory, which is where the workflow runs.
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent
_RETRIES = 12
_BACKOFF_S = 0.2
_BACKOFF_MAX_S = 10.0
# Tags that make the UI browsable: one column per grid axis.
TAG_KEYS = ("dataset", "model", "topology", "n_agents", "alpha", "method", "seed")


def repo_root() -> Path:
    return _PACKAGE_PARENT if (_PACKAGE_PARENT / "pyproject.toml").is_file() else Path.cwd()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of ``sqlite:///<path>[?options]``, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _is_dataset_race(exc: BaseException) -> bool:
    """Two runs sharing a partition (every method of one seed and alpha) log the same dataset
    at once: MLflow looks it up, finds none, and both insert it; the second insert fails. Tried
    again, it finds the first one's row and links to it."""
    return "UNIQUE constraint failed: datasets." in str(exc)


def retry(fn: Callable[[], T], what: str,
          transient: Callable[[BaseException], bool] = _is_lock_error) -> T:
    """Call ``fn`` until it stops failing on SQLite locking (or another ``transient`` error);
    other errors propagate at once."""
    for attempt in range(_RETRIES):
        try:
            return fn()
        except Exception as exc:  # MLflow wraps the driver's error in its own exception types
            if not transient(exc) or attempt == _RETRIES - 1:
                raise
            delay = min(_BACKOFF_MAX_S, _BACKOFF_S * 2**attempt) * (0.5 + random.random())
            time.sleep(delay)
    raise AssertionError(f"unreachable: {what}")


def client(uri: str | None = None):
    """An ``MlflowClient`` on :func:`tracking_uri` (or ``uri``)."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:  # SQLite creates the file, not its folder (MLflow would retry 100 s)
        db.parent.mkdir(parents=True, exist_ok=True)
    return retry(lambda: MlflowClient(tracking_uri=uri), "open the store")


SERVER_TODO = "start the MLflow server, fix MLFLOW_TRACKING_URI, or set tracking=false"
LOCAL_TODO = "point MLFLOW_TRACKING_URI at a writable place, or set tracking=false"
# A store is checked in at most about this long: MLflow itself retries an unusable one for
# minutes (a read-only sqlite folder: 100 s), after the first epoch, and ends in a traceback.
CHECK_S = 3.0


def check_store(uri: str | None = None, timeout_s: float = CHECK_S) -> None:
    """Fail within seconds, in one line naming the URI and the fix, when the tracking store
    cannot be used; create nothing (a run calls this before its folder exists).

    A local store (``sqlite:///``, ``file:`` or a plain path) must be writable where it lives,
    and an existing database must be SQLite and MLflow's; a server must answer MLflow's REST
    API; any other URI must give MLflow a client (an unknown scheme does not).
    """
    uri = uri or tracking_uri()
    db, folder = _sqlite_path(uri), _local_folder(uri)
    problem = (_sqlite_problem(db, timeout_s) if db is not None
               else unwritable(folder) if folder is not None
               else _server_problem(uri, timeout_s) if _scheme(uri) in ("http", "https")
               else _client_problem(uri, timeout_s))
    if problem is not None:
        local = db is not None or folder is not None
        raise UserError(f"tracking: cannot use the MLflow store {uri} ({problem}); "
                        f"{LOCAL_TODO if local else SERVER_TODO}")


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0].lower() if "://" in uri or uri.startswith("file:") else ""


def _local_folder(uri: str) -> Path | None:
    """The folder of a file store (``file:///x/mlruns`` or a plain path), else None."""
    if _scheme(uri) == "file":
        return Path(urllib.parse.urlparse(uri).path)
    plain = _scheme(uri) == "" and not uri.startswith("databricks")  # "databricks[-uc]": a host
    return Path(uri) if plain else None


SQLITE_HEADER = b"SQLite format 3\x00"


def _sqlite_problem(db: Path, timeout_s: float) -> str | None:
    """Why an SQLite store cannot be used: its folder (which also holds the journal files)
    cannot be written, or the file is not a database, or one of another program."""
    why = unwritable(db.parent)
    if why is not None:
        return why
    if not db.exists():
        return None  # created by the run itself
    if not db.is_file():
        return f"{db} is not a file"
    try:
        with open(db, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as err:
        return f"cannot read {db}: {err.strerror}"
    if not header:
        return None  # an empty file is an empty database to SQLite
    if header != SQLITE_HEADER:
        return f"{db} is not an SQLite database"
    try:
        with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True,
                                     timeout=timeout_s)) as con:
            tables = {row[0] for row in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as err:
        if _is_lock_error(err):
            return None  # in use by a writer: a database, and retried like every write
        return f"{db} is not a readable SQLite database ({err})"
    if tables and "experiments" not in tables:
        return f"{db} is an SQLite database of another program (no MLflow tables)"
    return None


def _server_problem(uri: str, timeout_s: float) -> str | None:
    """Why the server at ``uri`` is not a usable MLflow server: no answer, or an answer that
    is not MLflow's JSON (any web server answers ``/health``; only MLflow's REST API answers
    this request with a JSON object, an error too)."""
    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    try:
        with urllib.request.urlopen(probe, timeout=timeout_s) as response:
            status, body = response.status, response.read(1 << 16)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return None  # it asks for credentials: MLflow's client sends them
        status, body = err.code, err.read(1 << 16)
    except (OSError, ValueError) as exc:
        return f"it does not answer: {getattr(exc, 'reason', exc)}"
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and ("experiment" in answer or "error_code" in answer):
        return None
    return f"it answers HTTP {status} but is not an MLflow server"


def _client_problem(uri: str, timeout_s: float) -> str | None:
    """Why MLflow cannot make a client of ``uri`` (an unknown scheme, a database server that
    does not answer), found within ``timeout_s`` + a second: MLflow may retry for minutes, so
    the attempt runs in a daemon thread that the process leaves behind."""
    import mlflow.tracking  # noqa: F401 - imported here: its seconds are not the store's

    found: list[str | None] = []

    def attempt() -> None:
        try:
            client(uri)
            found.append(None)
        except Exception as exc:  # noqa: BLE001 - MLflow's errors for a URI it cannot serve
            text = str(exc).strip()
            found.append(text.splitlines()[0].split(". ")[0] if text else type(exc).__name__)

    worker = threading.Thread(target=attempt, daemon=True, name="benchmark-store-check")
    worker.start()
    worker.join(timeout_s + 1)
    return found[0] if found else f"no answer within {timeout_s + 1:.0f} s"


def existing_store(uri: str | None = None) -> str:
    """The tracking URI (:func:`tracking_uri` or ``uri``) of a store that is there, for readers:
    a SQLite file that does not exist is one line saying where it was looked for, and is not
    created (MLflow would create an empty one and then find no run); a server must answer."""
    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is None:
        check_store(uri)
    elif not db.is_file():
        raise UserError(f"tracking: no MLflow store at {uri} (looked for {db.resolve()}); run "
                        "from the project that ran it, or set MLFLOW_TRACKING_URI to its store")
    return uri


def _artifact_location(uri: str, name: str) -> str | None:
    """Artifacts beside the database (``mlartifacts/<experiment>``), not under the cwd."""
    db = _sqlite_path(uri)
    return inside(db.resolve().parent / "mlartifacts", name, "experiment").as_uri() if db else None


def experiment_id(store, name: str) -> str:
    """Id of experiment ``name``, creating it if needed (a concurrent creation is not an error)."""
    from mlflow.exceptions import MlflowException

    def get_or_create() -> str:
        found = store.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return store.create_experiment(
                name, artifact_location=_artifact_location(store.tracking_uri, name)
            )
        except MlflowException as exc:
            if "already exists" in str(exc).lower() or "unique" in str(exc).lower():
                return store.get_experiment_by_name(name).experiment_id
            raise

    return retry(get_or_create, f"experiment {name}")


def prepare_store(families: Iterable[str], uri: str | None = None) -> str:
    """Create the store (schema, WAL mode) and one experiment per family; returns the URI.

    Called once before any job starts (the workflow's ``onstart``), so that no two jobs race to
    migrate an empty database or to create the same experiment.
    """
    uri = uri or tracking_uri()
    check_store(uri)  # one line now, not a traceback from MLflow's retries
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(db, timeout=60) as con:  # persistent: every later connection is WAL
            con.execute("PRAGMA journal_mode=WAL")
    store = client(uri)
    for name in families:
        experiment_id(store, name)
    return uri


UI_PORT = 5000


def runs_url(experiment: str, host: str = f"http://127.0.0.1:{UI_PORT}") -> str:
    """The UI page of an experiment's runs. MLflow 3 opens an experiment on its GenAI overview
    ("No data") unless the URL asks for the model-training view."""
    return f"{host.rstrip('/')}/#/experiments/{experiment}/runs?workflowType=machine_learning"


# The UI as the README's "Viewing results" starts it. MLflow 3.17's plain `mlflow ui` starts 15
# processes (~2.0 GiB): 4 web workers, and a job runner with 7 huey consumers for GenAI jobs the
# suite never submits. One worker leaves 10 (~1.3 GiB); without job execution 2 remain (~0.4 GiB).
UI_COMMAND = ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri {uri} "
              "--workers 1")


def ui_hint(families: Iterable[str], uri: str | None = None) -> str:
    """How to look at the runs: the UI command (:data:`UI_COMMAND`, light enough for a laptop)
    and each family's runs URL. Reads the store, creates nothing (empty when there is no store
    yet)."""
    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        return ""
    host = uri if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{UI_PORT}"
    store = client(uri)
    lines = []
    for name in families:
        found = retry(lambda n=name: store.get_experiment_by_name(n), "get_experiment")
        if found is not None:
            lines.append(f"  {name}: {runs_url(found.experiment_id, host)}")
    if not lines:
        return ""
    start = ("" if db is None else
             f"start the UI with `{UI_COMMAND.format(uri=shlex.quote(uri))}`, then ")
    return f"MLflow: {start}open the runs:\n" + "\n".join(lines)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b": value}``; lists stay values (MLflow params are strings)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


ORIGIN_ENV = "BENCHMARK_ORIGIN"  # "workflow" when Snakemake starts the run (Snakefile)
MANUAL_SUFFIX = "-manual"
# the axes a run name shows; anything else that differs from the family file is appended
NAMED_AXES = ("method", "topology", "n_agents", "alpha", "seed", "dataset", "model", "family")


def origin() -> str:
    """``workflow`` for runs the workflow starts, ``manual`` for hand-started ones."""
    return "workflow" if os.environ.get(ORIGIN_ENV) == "workflow" else "manual"


def experiment_name(config) -> str:
    """The family's experiment for workflow runs; ``<family>-manual`` for hand-started ones, so
    a trial run never mixes into the grid's means in the UI (``MLFLOW_EXPERIMENT_NAME`` wins)."""
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return os.environ["MLFLOW_EXPERIMENT_NAME"]
    return config.family if origin() == "workflow" else config.family + MANUAL_SUFFIX


def number(x: float) -> str:
    """One spelling of a number in names, tags and params: ``1`` not ``1.0``, ``0.01``, exact."""
    text = repr(float(x))
    return text.removesuffix(".0")


def setting_name(config) -> str:
    """``ccl ring-16 a0.01``: the method, graph and alpha, as run and study names start."""
    return f"{config.method} {config.topology}-{config.n_agents} a{number(config.alpha)}"


def run_name(config, differs: dict[str, Any] | None = None) -> str:
    """Short enough for the UI's name column: ``ccl ring-16 a0.01 s2`` (+ what differs from the
    family file for a hand-started run, e.g. ``epochs=3``)."""
    name = f"{setting_name(config)} s{config.seed}"
    extra = " ".join(f"{k}={_param(v)}" for k, v in (differs or {}).items())
    return f"{name} {extra}" if extra else name


def family_difference(config) -> dict[str, Any]:
    """Result-changing options where ``config`` differs from its family file's ``run:`` section
    (``config/<family>.yaml``), leaving out the axes the name shows; empty without a file."""
    from .config import build_config, read_yaml, result_fields

    path = inside(repo_root() / "config", f"{config.family}.yaml", "family")
    try:
        base = build_config({**(read_yaml(path).get("run") or {}), "family": config.family})
    except Exception:  # no such family file, or one that does not validate: nothing to compare
        return {}
    return {k: getattr(config, k) for k in sorted(result_fields() - set(NAMED_AXES))
            if getattr(config, k) != getattr(base, k)}


def _param(value: Any) -> str:
    return number(value) if isinstance(value, float) else str(value)


# per-epoch record keys -> MLflow metric names grouped by prefix (the UI groups charts by the
# part before "/"; "acc" sorts first); keys not listed keep their name
METRIC_NAMES = {
    "consensus_acc": "acc/consensus", "local_acc_mean": "acc/local_mean",
    "local_acc_std": "acc/local_std", "train_ce": "loss/ce", "l_mv": "loss/l_mv",
    "l_dv": "loss/l_dv", "lr": "train/lr", "consensus_distance": "train/consensus_distance",
    "bytes_per_agent": "comm/bytes_per_agent", "time_s": "time/epoch_s",
}
PREFIXES = {"bytes_per_agent_": "comm/bytes_per_agent_", "phases.": "time/"}


def metric_name(key: str) -> str:
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    for prefix, group in PREFIXES.items():
        if key.startswith(prefix):
            return group + key.removeprefix(prefix)
    return key


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a history record under their grouped names (:func:`metric_name`;
    nested ones, e.g. phases, flattened first: ``phases.gossip`` -> ``time/gossip``)."""
    return {
        metric_name(k): float(v) for k, v in flatten(record).items()
        if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class NullTracker:
    """What ``track_run`` yields when tracking is off: every call is a no-op."""

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        pass

    def log_result(self, metrics: RunMetrics) -> None:
        pass

    def log_dataset(self, bundle, parts) -> None:
        pass


# Per-epoch metrics are written when an epoch was evaluated, or after this many seconds: one
# SQLite transaction costs ~15 ms, a digits epoch ~80 ms, so writing every epoch took ~15% of
# a run; a long run's charts still move in the UI at least this often.
FLUSH_EVERY_S = 10.0


class MlflowTracker:
    """One MLflow run; every database write is a retried, single transaction."""

    def __init__(self, store, run_id: str, config, out_dir: str | Path | None = None) -> None:
        self.client, self.run_id, self.config = store, run_id, config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.logged: set[int] = set()
        self.pending: list[tuple[str, float, int]] = []
        self.pending_epochs: list[int] = []
        self.flushed_at = time.monotonic()

    @classmethod
    def create(cls, store, experiment: str, name: str, tags: dict[str, Any], config,
               out_dir: str | Path | None = None) -> MlflowTracker:
        """A new run in ``experiment`` (an id) named ``name``, tag values as strings (numbers
        spelt by :func:`number`, as every tag and param of every run)."""
        run = retry(lambda: store.create_run(experiment, run_name=name,
                                             tags={k: _param(v) for k, v in tags.items()}),
                    "create_run")
        return cls(store, run.info.run_id, config, out_dir)

    def log_batch(self, metrics=(), params=(), tags=()) -> None:
        """``metrics`` as (key, value, step), ``params`` and ``tags`` as (key, value) pairs."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v, step in metrics]
        # one spelling of numbers in every run's params and tags, a study's and its trials'
        # too (alpha 1 is `1` whoever logs it: a filter `tags.alpha = '1'` finds them all)
        params = [Param(k, _param(v)) for k, v in params]
        tags = [RunTag(k, _param(v)) for k, v in tags]
        # MLflow caps a batch at 1000 metrics, 100 params, 100 tags and 1000 values in all
        sizes = (800, 100, 100)
        parts = (metrics, params, tags)
        for i in range(max(-(-len(p) // n) for p, n in zip(parts, sizes, strict=True))):
            chunk = [p[i * n:(i + 1) * n] for p, n in zip(parts, sizes, strict=True)]
            retry(lambda c=chunk: self.client.log_batch(self.run_id, *c), "log_batch")

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Buffered (:data:`FLUSH_EVERY_S`): written with the next evaluated epoch, after
        ``FLUSH_EVERY_S`` seconds, or when the run ends however it ends."""
        self.pending += [(k, v, epoch) for k, v in epoch_metrics(record).items()]
        self.pending_epochs.append(epoch)
        evaluated = any(key.endswith("consensus_acc") for key in record)
        if evaluated or time.monotonic() - self.flushed_at >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write the buffered per-epoch metrics (one transaction per 1000 values)."""
        if self.pending:
            self.log_batch(metrics=self.pending)
        self.logged.update(self.pending_epochs)
        self.pending, self.pending_epochs = [], []
        self.flushed_at = time.monotonic()

    def log_result(self, metrics: RunMetrics) -> None:
        self.flush()
        # epochs this process did not log: those before a resume, and a diverged last epoch
        for record in metrics.history:
            if record.epoch not in self.logged:
                self.log_epoch(record.epoch, record.model_dump())
        # summary metrics: one value per run, grouped apart from the per-epoch charts
        final = {f"final/{k}": v for k, v in
                 (metrics.final.model_dump() if metrics.final is not None else {}).items()}
        final["final/wall_time_s"] = metrics.wall_time_s
        final["final/bytes_per_agent_total"] = metrics.communication.bytes_per_agent_total
        final["final/spectral_gap"] = metrics.topology.spectral_gap
        epoch = metrics.diverged_epoch
        diverged = [("diverged_epoch", epoch)] if epoch else []
        # where it ran (device, GPU, torch/CUDA, vectorize path and why): benchmark/device.py
        env = metrics.environment.model_dump() if metrics.environment is not None else {}
        where = [(f"environment.{k}", v) for k, v in env.items() if v is not None]
        self.log_batch(
            metrics=[(k, float(v), len(metrics.history)) for k, v in final.items()],
            tags=[("status", metrics.status)] + diverged + where,
        )
        self._log_artifacts(metrics)

    def _log_artifacts(self, metrics: RunMetrics) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "metrics.json").write_text(metrics.to_json())
            resolved = yaml.safe_dump(self.config.model_dump(), sort_keys=False)
            (tmp / "config.yaml").write_text(resolved)
            figures = {}
            if self.config.run_figures:
                from .report import partition_figure, run_curves_figure

                figures["learning_curves.png"] = run_curves_figure(metrics.history)
                if metrics.partition.histogram:
                    figures["partition.png"] = partition_figure(metrics.partition.histogram)
            for name, fig in figures.items():
                fig.savefig(tmp / name, dpi=110, bbox_inches="tight")
            self.log_files(sorted(tmp.iterdir()))
        models = metrics.models or {}
        files = [models["consensus"], *models.get("agents", [])] if models else []
        if files and self.out_dir is not None:
            self.log_files([self.out_dir / f for f in files], "models")

    def log_files(self, paths: Iterable[str | Path], folder: str | None = None) -> None:
        """Files as artifacts of this run (under ``folder``; retried on SQLite locking)."""
        for path in paths:
            retry(lambda p=str(path): self.client.log_artifact(self.run_id, p, folder),
                  "log_artifact")

    def log_dataset(self, bundle, parts) -> None:
        """The run's data as an MLflow dataset input (the UI's Dataset column): name, split
        sizes, sample shape, the data's own digest (``bundle.digest``, as in metrics.json),
        partition scheme, alpha, and a digest of the exact partition as the input's digest, so
        runs on the same shards show the same digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        config = self.config
        digest = hashlib.sha256()
        for part in parts:  # the agents' sample indices, in agent order
            digest.update(np.asarray(part, dtype=np.int64).tobytes() + b"|")
        splits = {name: len(split.y) for name in ("train", "val", "test")
                  if (split := getattr(bundle, name, None)) is not None}
        profile = {"splits": splits, "sample_shape": list(bundle.sample_shape),
                   "data_digest": bundle.digest, "partition": config.partition,
                   "alpha": config.alpha, "n_agents": len(parts), "seed": config.seed}
        dataset = Dataset(name=config.dataset, digest=digest.hexdigest()[:16],
                          source_type="benchmark", source=json.dumps({"dataset": config.dataset}),
                          profile=json.dumps(profile))
        tags = [InputTag("mlflow.data.context", "train")]
        retry(lambda: self.client.log_inputs(self.run_id, [DatasetInput(dataset, tags)]),
              "log_inputs", lambda exc: _is_lock_error(exc) or _is_dataset_race(exc))

    def end(self, status: str, error: str | None = None) -> None:
        self.flush()  # what a crashed or interrupted run trained is in the charts too
        if error:
            self.log_batch(tags=[("error", error[:4000])])
        retry(lambda: self.client.set_terminated(self.run_id, status), "set_terminated")


@contextmanager
def track_run(config, out_dir: str | Path | None) -> Iterator[NullTracker | MlflowTracker]:
    """An MLflow run for one training run, ended FINISHED / FAILED (exception) / KILLED."""
    if not getattr(config, "tracking", True):
        yield NullTracker()
        return
    store = client()
    exp_id = experiment_id(store, experiment_name(config))
    tags = {k: getattr(config, k) for k in TAG_KEYS}
    tags.update(family=config.family, algorithm=config.algorithm, origin=origin(),
                protocol="tuned" if getattr(config, "tuned", None) else "fixed")
    if out_dir is not None:
        tags["results_dir"] = str(Path(out_dir).resolve())
    differs = family_difference(config) if origin() == "manual" else {}
    tracker = MlflowTracker.create(store, exp_id, run_name(config, differs),
                                   {k: _param(v) for k, v in tags.items()}, config, out_dir)
    tracker.log_batch(params=sorted((k, _param(v))
                                    for k, v in flatten(config.model_dump()).items()))
    try:
        yield tracker
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from Snakemake via the CLI's handler
        tracker.end("KILLED", "interrupted")
        raise
    except BaseException as exc:
        tracker.end("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    tracker.end("FINISHED")
    if out_dir is not None:
        supersede(store, exp_id, tags["results_dir"], tracker.run_id)


def complete_record(config, out_dir: str | Path, metrics: RunMetrics) -> str | None:
    """Complete the MLflow record of a finished run (``metrics.json`` complete) that an
    interrupt cut short: when no FINISHED run of ``out_dir`` exists, its latest run (KILLED,
    FAILED, or RUNNING after a hard kill) gets what it lacks (the epochs not logged, the final
    figures, the artifacts) and status FINISHED. Returns that run's id, None when there was
    nothing to complete (or no record at all: nothing is created)."""
    check_store()
    store = client()
    results_dir = str(Path(out_dir).resolve())
    experiments = [e.experiment_id
                   for e in retry(lambda: store.search_experiments(), "search_experiments")]
    runs = retry(lambda: store.search_runs(
        experiments, f"tags.results_dir = '{results_dir}'",
        order_by=["attributes.start_time DESC"]), "search_runs")
    if not runs or any(run.info.status == "FINISHED" for run in runs):
        return None
    cut_short = runs[0]
    run_id = cut_short.info.run_id
    tracker = MlflowTracker(store, run_id, config, out_dir)
    logged = retry(lambda: store.get_metric_history(run_id, metric_name("time_s")),
                   "get_metric_history")
    tracker.logged = {point.step for point in logged}  # every epoch logs its time
    tracker.log_result(metrics)
    if "error" in cut_short.data.tags:  # "interrupted": no longer true of the record
        retry(lambda: store.delete_tag(run_id, "error"), "delete_tag")
    tracker.log_batch(tags=[("completed_after", cut_short.info.status)])
    tracker.end("FINISHED")
    return run_id


def supersede(store, experiment: str, results_dir: str, run_id: str) -> None:
    """Tag the earlier FINISHED runs of one results folder ``superseded`` (by ``run_id``).

    A job that finished seconds before the workflow was killed is redone on the rerun (Snakemake
    did not record it as complete); both runs are FINISHED, the later one wrote metrics.json.
    Reports read metrics.json only; this keeps the MLflow view honest too.
    """
    earlier = retry(lambda: store.search_runs(
        [experiment], f"tags.results_dir = '{results_dir}' and attributes.status = 'FINISHED'"),
        "search_runs")
    for run in earlier:
        if run.info.run_id != run_id and "superseded" not in run.data.tags:
            retry(lambda r=run.info.run_id: store.set_tag(r, "superseded", run_id), "set_tag")
