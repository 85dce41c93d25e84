"""Trained models kept after a run: loading one back, or scoring it, in one call.

``save_models: consensus`` (default) keeps the consensus model (the average of the agents, the
model the tables score), ``all`` adds every agent's model, ``none`` keeps nothing. Files sit in
the run folder beside ``metrics.json`` (whose ``models`` block names them) and are logged to the
run's MLflow artifacts under ``models/``::

    from benchmark.saved import evaluate, load_model
    model = load_model("results/digits/.../seed0")     # the run folder, a file or "runs:/<id>/..."
    evaluate("results/digits/.../seed0")               # its test accuracy, as metrics.json says

A file holds the weights, what rebuilds the architecture, the input normalisation
(``model.input_mean`` / ``model.input_std``: the model expects normalised samples) and, since
:data:`FORMAT` 2, what rebuilds its test data (``data``: the dataset, its options, the data
folder and the digest of the data it was trained on). The model returns ``(features, logits)``
like every model of the suite. Older files load; ``evaluate`` says what they lack. Files written
before ``sample_shape`` existed name ``in_channels`` and ``image_size`` instead; both load. Since
format 3 a file carries the checksum of its content (:mod:`benchmark.checksum`), verified
whenever it is read: a damaged file is refused, never a model (older files have none).

Why the data travel with the model: the model alone does not say what to feed it (digits at
8 px for the default MLP, 28 px for LeNet-5; synthetic sets are defined by their options), and a
guess fails with a shape error or, worse, scores other data. The digest makes a wrong guess
impossible: ``evaluate`` refuses data that differ from what the run trained on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checksum import checksum_matches, with_checksum
from .errors import UserError
from .io import atomic_open

CONSENSUS_FILE = "model_consensus.pt"
FORMAT = 3  # 2: the ``data`` block; 3: the checksum of the content
# what rebuilds a model's test split (since format 2); the file names those it lacks
DATA_FIELDS = ("dataset", "data_dir", "project", "image_size", "synthetic", "sample_shape",
               "test_size", "digest")


def model_spec(config, bundle) -> dict[str, Any]:
    """The arguments of :func:`benchmark.models.build_model` for a run (one place, so a saved
    model is rebuilt exactly as it was trained)."""
    return {"name": config.model, "num_classes": bundle.num_classes,
            "sample_shape": list(bundle.sample_shape), "norm": config.norm,
            "evonorm_style": config.evonorm_style}


def data_spec(config, bundle) -> dict[str, Any]:
    """What rebuilds a run's test split (:func:`benchmark.data.load_dataset`'s arguments, as the
    config gave them) and checks it is the same: its sample shape, size and digest. A relative
    ``data_dir`` is kept relative, with the folder it was relative to (``project``, the run's
    working directory) beside it."""
    return {"dataset": config.dataset, "data_dir": config.data_dir, "project": os.getcwd(),
            "image_size": config.image_size, "synthetic": config.synthetic,
            "sample_shape": list(bundle.sample_shape), "test_size": len(bundle.test),
            "digest": bundle.digest}


def agent_file(agent: int, n_agents: int) -> str:
    return f"model_agent{agent:0{len(str(n_agents - 1))}d}.pt"


def save_models(exp, out_dir: str | Path) -> dict[str, Any]:
    """Write the models ``exp.config.save_models`` asks for into ``out_dir``; returns the
    ``models`` block of metrics.json (file names relative to the run folder).

    Every process of a sharded run must call it (the consensus model averages over ranks); the
    main rank writes the consensus model, each rank its own agents."""
    which, swarm = exp.config.save_models, exp.swarm
    if which == "none":
        return {}
    out = Path(out_dir)
    header = {"format": FORMAT, "spec": model_spec(exp.config, exp.bundle),
              "input_mean": list(exp.bundle.mean), "input_std": list(exp.bundle.std),
              "data": data_spec(exp.config, exp.bundle), "config": exp.config.model_dump()}
    consensus = swarm.consensus_model()
    if swarm.comm.is_main:
        _write(out / CONSENSUS_FILE, {**header, "state_dict": consensus.state_dict()})
    written: dict[str, Any] = {"consensus": CONSENSUS_FILE}
    if which == "all":
        for agent, model in zip(swarm.agents, swarm.models, strict=True):
            _write(out / agent_file(agent, swarm.n),
                   {**header, "agent": agent, "state_dict": model.state_dict()})
        written["agents"] = [agent_file(a, swarm.n) for a in range(swarm.n)]
    return written


def _write(path: Path, payload: dict[str, Any]) -> None:
    payload = {**payload, "state_dict": {k: v.detach().cpu().clone()
                                         for k, v in payload["state_dict"].items()}}
    with atomic_open(path) as fh:
        torch.save(with_checksum(payload), fh)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A saved model, rebuilt and in eval mode. ``path``: a model file, a run folder (its
    consensus model; :func:`model_file`) or an MLflow URI (``runs:/<run id>/models/...``, or
    ``runs:/<run id>`` for the run's consensus model)."""
    return _model(_read(model_file(path)), device)


def evaluate(path: str | Path, device: str | torch.device = "cpu",
             data_dir: str | Path | None = None) -> float:
    """Test accuracy (%) of a saved model on its dataset's test split, computed as the run
    computed its ``metrics.json`` (``final.consensus_acc`` for the consensus model), for any
    ``path`` :func:`load_model` takes. The data are rebuilt from the file's ``data`` block: a
    relative ``data_dir`` is looked for under the project the run ran in, this repository and
    the current folder (``data_dir`` overrides it), and the loaded data must have the digest
    of the data the run trained on."""
    from .data import load_dataset
    from .evaluation import accuracies

    file = model_file(path)
    saved = _read(file)
    data = saved.get("data") or {}
    missing = [key for key in DATA_FIELDS if key not in data]
    if missing:
        raise UserError(f"evaluate: {file} was saved before models carried their test data "
                        f"(format {saved.get('format', 1)}; missing: {', '.join(missing)}); "
                        "load_model still rebuilds it, or run the run again to score it here")
    folder = Path(data_dir) if data_dir is not None else data_folder(data)
    bundle = load_dataset(data["dataset"], data_dir=folder, image_size=data["image_size"],
                          synthetic=data["synthetic"])
    found = {"sample_shape": list(bundle.sample_shape), "test_size": len(bundle.test),
             "digest": bundle.digest}
    for key, value in found.items():
        if value != data[key]:
            raise UserError(f"evaluate: the {data['dataset']} data in {folder} are not the ones "
                            f"{file} was trained on ({key} {value}, recorded {data[key]}); pass "
                            "data_dir= the folder the run used")
    model = _model(saved, device)
    return accuracies([model], bundle.test, saved["input_mean"], saved["input_std"], device)[0]


def data_folder(data: dict[str, Any]) -> Path:
    """Where a saved model's data are: an absolute ``data_dir`` as recorded; a relative one
    under the first of the run's project, this repository and the current folder that holds it
    (the first of them when none does: the loader then says what is missing, or generates an
    offline set)."""
    recorded = Path(data["data_dir"])
    if recorded.is_absolute():
        return recorded
    from .tracking import repo_root

    bases = list(dict.fromkeys([Path(data["project"]), repo_root(), Path.cwd()]))
    return next((base / recorded for base in bases if (base / recorded).is_dir()),
                bases[0] / recorded)


def model_file(path: str | Path) -> Path:
    """The model file ``path`` names: the file itself; in a folder (a run folder, or a run's
    downloaded artifacts), its consensus model, else its one model file; an MLflow URI's
    artifact downloaded from the tracking store (which must exist: a missing one is named,
    never created). Anything else is one line saying what was looked for."""
    text = str(path)
    local = _download(text) if "://" in text or text.startswith(("runs:/", "models:/")) else \
        Path(text)
    if local.is_file():
        return local
    if not local.is_dir():
        raise UserError(f"no saved model at {text}: no such file or folder")
    for folder in (local, local / "models"):
        if (folder / CONSENSUS_FILE).is_file():
            return folder / CONSENSUS_FILE
    found = sorted(local.glob("model_*.pt")) or sorted(local.glob("models/model_*.pt"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no saved model in {text}: no {CONSENSUS_FILE} nor model_*.pt (a run "
                        "with save_models: none keeps none)")
    raise UserError(f"{text} holds {len(found)} models and no {CONSENSUS_FILE}: name one "
                    f"({', '.join(p.name for p in found[:3])}, ...)")


def _download(uri: str) -> Path:
    """An MLflow artifact (file or folder) in a temporary folder; ``runs:/`` and ``models:/``
    URIs are resolved in the tracking store (:func:`benchmark.tracking.existing_store`)."""
    import mlflow

    from .tracking import existing_store

    store = existing_store() if uri.startswith(("runs:/", "models:/")) else None
    source = uri
    if uri.startswith("runs:/") and "/" not in uri.removeprefix("runs:/").strip("/"):
        source = uri.rstrip("/") + "/models"  # a whole run: where its kept models are
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=store))
    except Exception as exc:  # noqa: BLE001 - MLflow's errors for a run or path it cannot find
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f" in the MLflow store {store}" if store else ""
        raise UserError(f"no saved model at {uri}{where}: {reason}") from None


def _read(file: Path) -> dict[str, Any]:
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's errors for a file that is not one of ours
        raise UserError(f"{file} is not a saved model (torch cannot read it: "
                        f"{type(exc).__name__})") from None
    if not isinstance(saved, dict) or not {"spec", "state_dict"} <= set(saved):
        raise UserError(f"{file} is not a saved model (no spec and state_dict: a checkpoint or "
                        "another torch file?)")
    intact = checksum_matches(saved)
    if intact is False or (intact is None and saved.get("format") not in (None, 1, 2)):
        raise UserError(f"{file}: damaged (its content no longer matches the checksum written "
                        "with it); copy it again from its run's MLflow artifacts (models/), or "
                        "train the run again with --restart")
    return saved


def _model(saved: dict[str, Any], device: str | torch.device) -> nn.Module:
    from .models import build_model

    model = build_model(**saved["spec"]).to(device)
    model.load_state_dict(saved["state_dict"])
    model.input_mean, model.input_std = tuple(saved["input_mean"]), tuple(saved["input_std"])
    return model.eval()
