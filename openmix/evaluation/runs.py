"""Evaluate the trained model of a run folder (what ``openmix-eval`` does for each folder it is given).

A run folder (``openmix-train``'s) holds ``config.yaml``, the result row and the trained model:
``model.pt`` (its final ``state_dict``) or, from runs before it was written, the Lightning
checkpoint ``checkpoints/last.ckpt``. :func:`load_run` rebuilds the model and the datamodule from
the config; :func:`evaluate_run` evaluates and writes ``eval.json`` beside the result row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from openmix.evaluation.evaluate import EvalSettings, evaluate
from openmix.results import WEIGHTS_FILE, read_eval, write_eval

__all__ = ["load_run", "evaluate_run", "run_weights"]

CHECKPOINT = Path("checkpoints") / "last.ckpt"


def run_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trained model's ``state_dict``: ``model.pt``, else the model's part of ``checkpoints/last.ckpt``.

    Raises:
        FileNotFoundError: the folder holds neither.
    """
    run_dir = Path(run_dir)
    if (run_dir / WEIGHTS_FILE).is_file():
        return torch.load(run_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    if (run_dir / CHECKPOINT).is_file():
        state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)["state_dict"]
        return {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    raise FileNotFoundError(f"{run_dir} holds no trained model ({WEIGHTS_FILE} or {CHECKPOINT})")


def load_run(run_dir: str | Path, **data_changes: Any) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model with the run's trained weights, its datamodule, the run's config)`` from a run folder.

    ``data_changes`` override the data settings of the config (``root=...`` where the data now lives,
    ``num_workers=0``, ...).
    """
    from omegaconf import OmegaConf

    from openmix.data import build_datamodule
    from openmix.models import create_model

    run_dir = Path(run_dir)
    weights = run_weights(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.yaml: not an openmix-train run folder")
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    data = {key: value for key, value in config["data"].items() if key != "name"}
    datamodule = build_datamodule(config["data"]["name"], seed=config.get("seed", 0), **{**data, **data_changes})
    model = create_model(config["model"]["name"], num_classes=datamodule.num_classes, in_chans=datamodule.in_chans,
                         **(config["model"].get("kwargs") or {}))
    model.load_state_dict(weights)
    if config.get("channels_last"):  # as it trained (faster convolutions on CPU and GPU)
        model = model.to(memory_format=torch.channels_last)
    return model, datamodule, config


def evaluate_run(run_dir: str | Path, settings: EvalSettings = EvalSettings(), *, device: str | None = None,
                 force: bool = False, **data_changes: Any) -> tuple[dict[str, Any], bool]:
    """Evaluate a run folder's model and write ``eval.json``; ``(metrics, evaluated now)``.

    A folder whose ``eval.json`` was made with the same settings is left as it is (``force`` redoes it);
    a setting added to :class:`EvalSettings` after the file was written counts as its default there.
    """
    done = read_eval(run_dir)
    if done is not None and not force and isinstance(done.get("settings"), dict):
        if {**EvalSettings().to_dict(), **done["settings"]} == settings.to_dict():
            return done, False
    model, datamodule, _ = load_run(run_dir, **data_changes)
    target = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metrics = evaluate(model.to(target), datamodule, settings, device=target)
    write_eval(run_dir, metrics)
    return metrics, True
