"""Trained models kept after a run, and loading them back in two lines.

``save_models: consensus`` (default) keeps the consensus model (the average of the agents, the
model the tables score), ``all`` adds every agent's model, ``none`` keeps nothing. Files sit in
the run folder beside ``metrics.json`` (whose ``models`` block names them) and are logged to the
run's MLflow artifacts under ``models/``::

    from benchmark.saved import load_model
    model = load_model("results/digits/.../seed0/model_consensus.pt")  # or "runs:/<id>/models/..."

A file holds the weights, what rebuilds the architecture, and the input normalisation
(``model.input_mean`` / ``model.input_std``: the model expects normalised samples); the model
returns ``(features, logits)`` like every model of the suite. Files written before
``sample_shape`` existed name ``in_channels`` and ``image_size`` instead; both load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import atomic_open

CONSENSUS_FILE = "model_consensus.pt"
FORMAT = 1


def model_spec(config, bundle) -> dict[str, Any]:
    """The arguments of :func:`benchmark.models.build_model` for a run (one place, so a saved
    model is rebuilt exactly as it was trained)."""
    return {"name": config.model, "num_classes": bundle.num_classes,
            "sample_shape": list(bundle.sample_shape), "norm": config.norm,
            "evonorm_style": config.evonorm_style}


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
              "config": exp.config.model_dump()}
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
        torch.save(payload, fh)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A saved model, rebuilt and in eval mode; ``path`` is a file or an MLflow artifact URI
    (``runs:/<run id>/models/model_consensus.pt``)."""
    from .models import build_model

    path = str(path)
    if "://" in path or path.startswith("runs:/"):
        import mlflow

        path = mlflow.artifacts.download_artifacts(path)
    saved = torch.load(path, map_location=device, weights_only=True)
    model = build_model(**saved["spec"]).to(device)
    model.load_state_dict(saved["state_dict"])
    model.input_mean, model.input_std = tuple(saved["input_mean"]), tuple(saved["input_std"])
    return model.eval()
