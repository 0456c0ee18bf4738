"""``openmix-train``: one training run, or a sweep with ``-m``, configured by Hydra.

Examples::

    openmix-train                                   # quick real run on Fashion-MNIST
    openmix-train experiment=cifar100_r18 mixer=cutmix epochs=400
    openmix-train -m mixer=mixup,cutmix,fmix seed=0,1,2
    openmix-train -m hydra/launcher=slurm trainer=ddp mixer=mixup,cutmix   # on SLURM

Each run has its own folder, ``<out_dir>/<name>/<mixer>/e<epochs>_s<seed>_a<alpha>_id<hash>``: the
hash covers every setting that defines the run (see :func:`openmix.results.defining_settings`), so
runs that differ in any of them (alpha, lr, label smoothing, precision, ...) never share a folder.
A folder whose ``config.yaml`` differs in a defining setting is never skipped or resumed into.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")  # shipped inside the package


class ConfigError(ValueError):
    """An invalid setting, reported before any work starts."""


def _run_id_resolver(*, _root_: DictConfig) -> str:
    """``${openmix.run_id:}``: ``a<alpha>_id<hash>`` (``id<hash>`` for mixers without an alpha), where
    ``<hash>`` is :func:`openmix.results.run_id` of the config (the ``hydra`` node left out)."""
    from openmix.results import run_id

    config = {}
    for key in _root_:
        if key != "hydra":
            value = _root_[key]
            config[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    alpha = (config.get("mixer") or {}).get("alpha")
    tag = f"a{alpha:g}_" if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) else ""
    return f"{tag}id{run_id(config)}"


OmegaConf.register_new_resolver("openmix.run_id", _run_id_resolver, replace=True)  # before Hydra reads train.yaml


def validate(cfg: DictConfig) -> None:
    """Reject settings that cannot train, naming the setting and what is allowed.

    Checks the numbers, the mixer, data and model names, and the data and model arguments
    (the model is built on the ``meta`` device, so this costs no memory or time). An image
    folder is listed here: the model is built for the classes and first image it holds.
    """
    import torch

    import openmix
    from openmix.data import available_datasets
    from openmix.evaluation import EvalSettings
    from openmix.lightning.schedules import MixSchedule, ScheduledMixers
    from openmix.models import create_model
    from openmix.training import build_mixer

    for key in ("epochs", "batch_size"):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    mixer = cfg.mixer.name
    if mixer not in ("vanilla", "none") and mixer not in openmix.available():
        raise ConfigError(f"unknown mixer {mixer!r}; available: vanilla, {', '.join(openmix.available())}")
    if cfg.data.name not in available_datasets():
        raise ConfigError(f"unknown data {cfg.data.name!r}; available: {', '.join(available_datasets())}")
    try:
        datamodule = _datamodule(cfg)
        built = build_mixer(OmegaConf.to_container(cfg.mixer, resolve=True), num_classes=datamodule.num_classes)
        schedule = OmegaConf.to_container(cfg.schedule, resolve=True) if cfg.get("schedule") else None
        if cfg.get("mix_in_workers") and MixSchedule.of(schedule) is not None:
            raise ValueError("a schedule (schedule.*) does not reach mixing in DataLoader workers "
                             "(mix_in_workers=true), which keep the mixer they started with: mix on the device")
        ScheduledMixers.of(schedule, built, epochs=cfg.epochs)
        with torch.device("meta"):
            create_model(cfg.model.name, num_classes=datamodule.num_classes, in_chans=datamodule.in_chans,
                         **_model_kwargs(cfg))
        EvalSettings.from_config(OmegaConf.to_container(cfg.eval, resolve=True) if cfg.get("eval") else None)
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None


def _datamodule(cfg: DictConfig) -> Any:
    """The datamodule of ``cfg.data``; a key it does not take is a ``ValueError`` naming ``data.<key>``.

    With ``mix_in_workers=true`` it mixes its training batches in the DataLoader workers with the
    run's mixer (``collate_mixer``; vanilla: nothing to mix); a mixer that needs the model, or
    ``data.on_device=true``, is a ``ValueError`` then.
    """
    from openmix.data import build_datamodule, check_settings
    from openmix.training import build_mixer

    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "name"}
    check_settings(cfg.data.name, kwargs, prefix="data.")
    datamodule = build_datamodule(cfg.data.name, seed=cfg.seed, **kwargs)
    in_workers = cfg.get("mix_in_workers")
    if in_workers is not None and not isinstance(in_workers, bool):
        raise ValueError(f"mix_in_workers must be true, false or null, got {in_workers!r}")
    if not in_workers:
        return datamodule
    mixer = build_mixer(OmegaConf.to_container(cfg.mixer, resolve=True), num_classes=datamodule.num_classes,
                        label_smoothing=cfg.label_smoothing, seed=cfg.seed)
    if mixer is None:
        return datamodule
    return build_datamodule(cfg.data.name, seed=cfg.seed, collate_mixer=mixer, **kwargs)


def _model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.model.kwargs, resolve=True) if cfg.model.get("kwargs") else {}


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.get("run_dir", "run"))


def check_run_folder(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Refuse (:class:`ConfigError`) a run folder that holds another run than ``config`` (resolved).

    The folder's ``config.yaml`` must agree with ``config`` in every defining setting; a folder
    with a result or a checkpoint but no ``config.yaml`` cannot be told apart, so it is refused too.
    """
    from openmix.results import RESULT_FILE, setting_differences

    stored = run_dir / "config.yaml"
    if not stored.is_file():
        if (run_dir / RESULT_FILE).exists() or (run_dir / "checkpoints" / "last.ckpt").exists():
            raise ConfigError(
                f"{run_dir} holds a result or a checkpoint but no config.yaml, so it cannot be told to be this run; "
                "nothing was changed: use another folder, or delete this one"
            )
        return
    try:
        before = OmegaConf.to_container(OmegaConf.load(stored), resolve=False)
    except Exception as error:  # noqa: BLE001  (any unreadable file is reported the same way)
        raise ConfigError(f"{stored} is unreadable ({type(error).__name__}: {error}); nothing was changed: "
                          "use another folder, or delete this one") from None
    differences = setting_differences(before, config)
    if differences:
        listed = "; ".join(f"{key}: {old!r} there, {new!r} now" for key, old, new in differences)
        raise ConfigError(
            f"{run_dir} holds another run: its config.yaml differs in {listed}. Nothing was changed "
            "(not skipped, not resumed): use another folder, or delete this one"
        )


def train(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one run described by ``cfg`` and return its result row (also written to ``result.json``):
    the stored row when the run is done (``skip_done``), ``{}`` when another process is training it
    (it holds the folder's lock, :mod:`openmix.run_lock`).

    ``callbacks``: more Lightning callbacks for the Trainer.
    """
    from openmix.run_lock import describe_holder, lock_holder, run_lock

    validate(cfg)
    run_dir = run_dir_of(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    check_run_folder(run_dir, config)
    if not _launching_process():  # a DDP rank that Lightning or SLURM started: rank 0 holds the lock
        return _skip_or_fit(cfg, run_dir, config, callbacks)
    with run_lock(run_dir) as held:  # one trainer per run, when one sweep runs in several processes
        if not held:
            print(f"[openmix] {run_dir}: another process ({describe_holder(lock_holder(run_dir))}) "
                  "is training it, skipped")
            return {}
        return _skip_or_fit(cfg, run_dir, config, callbacks)


def _skip_or_fit(cfg: DictConfig, run_dir: Path, config: dict[str, Any], callbacks: Sequence[Any]) -> dict[str, Any]:
    from openmix.results import read_result, result_exists

    if cfg.skip_done and result_exists(run_dir):
        print(f"[openmix] {run_dir}: result.json exists, skipped (skip_done=true)")
        _evaluate_if_missing(run_dir, config)
        return read_result(run_dir)
    return _fit(cfg, run_dir, config, callbacks)


def _evaluate_if_missing(run_dir: Path, config: dict[str, Any]) -> None:
    """Evaluate a finished run's saved model when its ``eval.json`` is missing (its trainer stopped
    after writing the result row and weights, before the evaluation), reading the data as ``config`` says."""
    from openmix.evaluation import EvalSettings, evaluate_run
    from openmix.results import read_eval

    settings = EvalSettings.from_config(config.get("eval"))
    if settings is None or read_eval(run_dir) is not None:
        return
    print(f"[openmix] {run_dir}: no eval.json, evaluating its saved model")
    data = {key: value for key, value in config["data"].items() if key != "name"}  # root, workers as now
    evaluate_run(run_dir, settings, **data)


def _launching_process() -> bool:
    """Whether this process started the run, rather than being a distributed rank started for it."""
    ranks = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID")
    return all(os.environ.get(name, "0") == "0" for name in ranks)


def _fit(cfg: DictConfig, run_dir: Path, config: dict[str, Any], callbacks: Sequence[Any]) -> dict[str, Any]:
    """Train the run in ``run_dir`` (resuming its last checkpoint if allowed) and write its results."""
    import lightning as L
    import torch

    from openmix.lightning import MixupClassifier
    from openmix.lightning.logging import EpochLines, EpochMetricsCSV, TrainThroughput, WallTime
    from openmix.results import result_row, write_atomic, write_result

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    resume_from = checkpoint if cfg.resume and checkpoint.exists() else None
    if resume_from is not None:
        check_checkpoint(resume_from)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = _datamodule(cfg)
    if not cfg.data.get("download", False):
        datamodule.setup("fit")  # a missing dataset fails here, before anything is written in the run folder
    mixer_cfg = OmegaConf.to_container(cfg.mixer, resolve=True)  # the data's settings reach it in MixupClassifier.setup
    if datamodule.collate_mixer is not None:  # mix_in_workers: the module trains on the DataLoader's mixed batches
        mixer_cfg = None
    module = MixupClassifier(
        model=cfg.model.name,
        model_kwargs=_model_kwargs(cfg),
        num_classes=datamodule.num_classes,
        in_chans=datamodule.in_chans,
        mixer=mixer_cfg,
        optimizer=OmegaConf.to_container(cfg.optim.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.optim.scheduler, resolve=True),
        label_smoothing=cfg.label_smoothing,
        mix_seed=cfg.seed,
        channels_last=cfg.channels_last,
        schedule=OmegaConf.to_container(cfg.schedule, resolve=True) if cfg.get("schedule") else None,
    )

    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    print(f"[openmix] {cfg.name}: {cfg.mixer.name} on {cfg.data.name} / {cfg.model.name}, {cfg.epochs} epochs, "
          f"seed {cfg.seed} -> {run_dir}" + (f" (resuming {resume_from.name})" if resume_from else ""))
    wall_time, throughput = WallTime(), TrainThroughput()  # both carried across resumes in the checkpoint
    terminal = sys.stdout.isatty()
    run_callbacks: list[L.Callback] = [
        wall_time,  # first: it starts before the other callbacks set up
        # checkpoints/last.ckpt after every epoch, overwritten (Lightning 2.6 writes save_last=True files only
        # when it also saves a top-k checkpoint, so that option with save_top_k=0 saves at the end of fit only)
        L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1,
                                            enable_version_counter=False),
        EpochMetricsCSV(run_dir),
        throughput,  # before EpochLines, which reads it
        L.pytorch.callbacks.RichProgressBar() if terminal else EpochLines(throughput),
        *callbacks,
    ]
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        default_root_dir=run_dir,
        callbacks=run_callbacks,
        logger=L.pytorch.loggers.CSVLogger(run_dir, name="logs"),  # a new version per attempt
        enable_progress_bar=terminal,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    if trainer.global_rank != 0:
        return {}
    device, top5 = trainer.strategy.root_device, trainer.callback_metrics.get("val/top5")
    row = result_row(
        config,
        module.val_top1_history,
        top5=None if top5 is None else float(top5),
        wall_time_s=wall_time.seconds,
        images_per_s=throughput.images_per_second,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        num_devices=trainer.world_size,
    )
    _save_weights(module.model, run_dir)  # before the result row, which marks the run done
    write_result(run_dir, row)
    _evaluate(module.model, datamodule, run_dir, config.get("eval"))
    return row


def _save_weights(model: Any, run_dir: Path) -> None:
    """Write the trained model's ``state_dict`` (``model.pt``)."""
    import io

    import torch

    from openmix.results import WEIGHTS_FILE, write_atomic

    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in model.state_dict().items()}, buffer)
    write_atomic(run_dir / WEIGHTS_FILE, buffer.getvalue())


def _evaluate(model: Any, datamodule: Any, run_dir: Path, eval_config: Any) -> None:
    """Unless ``eval`` is off, the trained model's evaluation beyond top-1 (``eval.json``, see
    :mod:`openmix.evaluation`)."""
    from openmix.evaluation import EvalSettings, evaluate
    from openmix.results import write_eval

    settings = EvalSettings.from_config(eval_config)
    if settings is not None:
        device = next(model.parameters()).device
        write_eval(run_dir, evaluate(model, datamodule, settings, device=device))


def _remove_empty_tree(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents below ``stop`` while they are empty."""
    folder, stop = folder.resolve(), stop.resolve()
    while folder != stop and stop in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def check_checkpoint(path: Path) -> None:
    """Fail with a clear message, touching nothing, if ``path`` is not a readable Lightning checkpoint."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001  (any unreadable file is reported the same way)
        raise RuntimeError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}); "
            "the run folder was left as it was: delete the file to start over, or run with resume=false"
        ) from error
    if not isinstance(state, dict) or "state_dict" not in state:
        raise RuntimeError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict); run with resume=false")


class SweepTable(HydraCallback):
    """Prints the results table of a sweep when ``-m`` finishes."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("print_table", True):
            return
        from openmix.cli.report import main as report

        report([str(Path(config.hydra.sweep.dir))])


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    quiet_lightning()  # again here: a parallel launcher runs this in worker processes that main() never ran in
    try:
        row = train(cfg)
    except (ConfigError, FileNotFoundError) as error:
        _remove_empty_tree(run_dir_of(cfg), stop=Path.cwd())  # Hydra made the run folder before we ran
        print(f"openmix-train: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if row and cfg.print_table and not HydraConfig.get().mode.name == "MULTIRUN":
        from openmix.cli.report import main as report

        report([str(run_dir_of(cfg))])
    return row.get("top1_median10") if row else None


def main() -> None:
    """Console entry point."""
    quiet_lightning()
    _hydra_main()


def quiet_lightning() -> None:
    """Keep Lightning's start-up tips and a known third-party deprecation out of the console."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (it sets its logger's level on import; override it after)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")


if __name__ == "__main__":
    main()
