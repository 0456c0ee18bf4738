"""``MixupClassifier``: image classification with any mixer, any timm or CIFAR-stem model."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from openmix.lightning.schedules import EpochMix, MixSchedule, ScheduledMixers, unmixed_step
from openmix.losses import soft_cross_entropy
from openmix.mixer import DataInfo, Mixer
from openmix.model_mixer import LearnedMixer
from openmix.output import StepResult
from openmix.results import median_of_last
from openmix.training import build_mixer, mix_step, mixed_accuracy

__all__ = ["MixupClassifier", "LRSchedule"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "step", "none")


class MixupClassifier(L.LightningModule):
    """Train a classifier with a mixer; mixing happens on the device, in training only.

    Args:
        model: a model name (CIFAR-stem names from :func:`openmix.models.available_models`
            or any timm model) or an ``nn.Module`` returning logits.
        num_classes: number of classes.
        in_chans: input channels (1 for Fashion-MNIST).
        mixer: a mixer, a registry name, a config mapping ``{"name": ..., **kwargs}``, or
            ``None``/``"vanilla"`` for no mixing.
        optimizer: ``{"name": "sgd"|"adamw", "lr", "weight_decay", "momentum", "nesterov", "betas"}``.
        scheduler: ``{"name": "cosine"|"step"|"none", "warmup_epochs" (or "warmup_steps"), "min_lr",
            "milestones" (epochs), "gamma", "interval"}``; see :class:`LRSchedule` for how it follows the
            run's length. ``interval="step"`` moves the schedule every optimizer step even when
            ``max_epochs`` sets the length (smoother for runs of a few epochs); the default ``"epoch"``
            moves it once per epoch, as OpenMixup's recipes do.
        label_smoothing: passed to the mixer (and used for vanilla training).
        mix_seed: seed of the mixer's draws, offset per DDP rank by the mixer itself.
        channels_last: train in channels-last memory format.
        schedule: a :class:`~openmix.lightning.schedules.MixSchedule` (or its config mapping): mixing
            off from an epoch on, ramps of ``prob``/``alpha``, a switch of mixer; ``None``: the mixer as
            it is, every epoch.

    A mixer given as an instance or a config keeps its own settings; ``num_classes``,
    ``label_smoothing`` (when not 0) and ``mix_seed`` (when given) that disagree with them are a
    ``ValueError``, not silently ignored.

    Before training, the mixer learns from the trainer's datamodule what it left to the data
    (:meth:`~openmix.mixer.Mixer.configure_data`: PuzzleMix's normalisation and grid sides).
    A learned mixer (AutoMix, SAMix, AdAutoMix) is attached to the model here (its EMA teacher
    and Mix Block are built and checked against the model), its Mix Block's parameters join the
    optimizer as their own group (``lr`` from the mixer's settings, else the optimizer's; the
    schedule scales both, or, with the mixer's ``min_lr``, the Mix Block follows its own cosine to
    that floor), and ``total_steps`` for its momentum schedule comes from the trainer.

    With a ``schedule``, each training epoch starts by setting the mixer's ``prob``/``alpha`` from its
    own values for that epoch (logged as ``train/mix_prob`` and ``train/mix_alpha``), and from
    ``off_epoch`` on each step is a plain one with the mixer's smoothed soft targets, the mixer not
    called. The schedule is a function of the epoch, which the checkpoint holds, so a resumed run
    follows it exactly. After training the mixers have their own values back.

    Logs ``train/loss``, ``train/top1`` (lam-weighted), the terms of a learned mixer's loss
    (``train/online_mix``, ``train/block_mix``, ...), ``val/loss``, ``val/top1``,
    ``val/top5`` and ``val/top1_median10`` (median top-1 of the last 10 epochs, the
    metric OpenMixup publishes). ``val_top1_history`` holds one top-1 per trained epoch: the
    epoch's last validation during ``fit`` (several per epoch with ``val_check_interval < 1``);
    sanity checks and ``trainer.validate`` add nothing.

    Example:
        >>> module = MixupClassifier("cifar_resnet18", num_classes=10, mixer={"name": "cutmix", "alpha": 0.2})
        >>> module.mixer
        CutMix(alpha=0.2, num_classes=10, mode='batch', prob=1.0, pairing='random')
    """

    def __init__(
        self,
        model: str | nn.Module = "cifar_resnet18",
        num_classes: int = 10,
        in_chans: int = 3,
        mixer: Mixer | str | Mapping[str, Any] | None = "mixup",
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        mix_seed: int | None = None,
        channels_last: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
        schedule: MixSchedule | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[name for name, value in (("model", model), ("mixer", mixer),
                                                                   ("schedule", schedule)) if not _plain(value)])
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if isinstance(model, str):
            from openmix.models import create_model

            model = create_model(model, num_classes=num_classes, in_chans=in_chans, **dict(model_kwargs or {}))
        self.model = model
        self.mixer = build_mixer(mixer, num_classes=num_classes, label_smoothing=label_smoothing, seed=mix_seed)
        _check_mixer_agrees(self.mixer, num_classes, label_smoothing, mix_seed)
        self.optimizer_cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, **dict(optimizer or {})}
        self.scheduler_cfg = {"name": "cosine", **dict(scheduler or {})}
        _check_choice("optimizer name", self.optimizer_cfg["name"], OPTIMIZERS)
        _check_choice("scheduler name", self.scheduler_cfg["name"], SCHEDULERS)
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if isinstance(self.mixer, LearnedMixer):
            self.mixer.attach(self.model)  # its EMA teacher and Mix Block: checked against the model now
        self._scheduled = ScheduledMixers.of(schedule, self.mixer)
        self.schedule = None if self._scheduled is None else self._scheduled.schedule
        self.switch_mixer = None if self._scheduled is None else self._scheduled.switch_mixer  # a checkpointed submodule
        self._epoch_mix: EpochMix | None = None  # this epoch's mixing under a schedule (a tuple: not a submodule)
        self.val_top1_history: list[float] = []  # one per epoch
        self._history_epoch = 0  # the epoch (1-based) of the last entry of val_top1_history
        self.epoch_summary: dict[str, Any] = {}  # the last validated epoch, for EpochMetricsCSV

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        """Tell the mixer what the trainer's datamodule knows (normalisation, image size): see
        :meth:`~openmix.mixer.Mixer.configure_data`. Without a datamodule the mixer keeps its own settings."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.mixer is not None and datamodule is not None:
            for mixer in (self.mixer, self.switch_mixer):
                if mixer is not None:
                    mixer.configure_data(DataInfo.of(datamodule))
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        if stage == "fit" and self.schedule is not None and max_epochs is not None and max_epochs > 0:
            self.schedule.check_run(max_epochs)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(2, device=self.device)  # loss * batch, samples
        if self._scheduled is not None:
            self._epoch_mix = epoch = self._scheduled.start_epoch(self.current_epoch)
            self.log("train/mix_prob", epoch.prob, on_step=False, on_epoch=True, batch_size=1)
            if epoch.alpha is not None:
                self.log("train/mix_alpha", epoch.alpha, on_step=False, on_epoch=True, batch_size=1)

    def on_train_end(self) -> None:
        if self._scheduled is not None:
            self._scheduled.restore()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = self._prepare(batch)
        step = self.train_step(x, y)
        self.log("train/loss", step.loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self.log("train/top1", 100.0 * mixed_accuracy(step.logits, y, step.mix), on_step=False, on_epoch=True,
                 batch_size=x.shape[0])
        for name, value in step.aux.items():  # a learned mixer's loss terms
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=x.shape[0])
        self._train_sums[0] += step.loss.detach() * x.shape[0]
        self._train_sums[1] += x.shape[0]
        return step.loss

    def train_step(self, x: Tensor, y: Tensor) -> StepResult:
        """One training step on the device batch with this epoch's mixer (a plain step on soft
        targets while the schedule has mixing off); :meth:`training_step` logs it."""
        epoch = self._epoch_mix
        if epoch is None:
            return mix_step(self.model, self.mixer, x, y, criterion=self._criterion)
        if not epoch.mixing:
            return unmixed_step(self.model, epoch.mixer, x, y, self._criterion)
        return mix_step(self.model, epoch.mixer, x, y, criterion=self._criterion)

    def epoch_train_loss(self) -> float | None:
        """Mean training loss of this process's batches of the current epoch so far (``None`` before any)."""
        sums = getattr(self, "_train_sums", None)
        return float(sums[0] / sums[1]) if sums is not None and float(sums[1]) else None

    def _criterion(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.ndim == 1:  # vanilla step with class ids
            return nn.functional.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        return soft_cross_entropy(logits, target)

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(3, device=self.device)  # top-1 hits, top-5 hits, loss sum
        self._val_count = 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = self._prepare(batch)
        logits = self.model(x)
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
        loss_sum = nn.functional.cross_entropy(logits, y, reduction="sum")
        self._val_sums += torch.stack([hits[:, 0].float().sum(), hits.any(1).float().sum(), loss_sum.float()])
        self._val_count += y.shape[0]

    def on_validation_epoch_end(self) -> None:
        """Exact epoch metrics from sums over all ranks (uneven DDP shards included)."""
        sums = torch.cat([self._val_sums, self._val_sums.new_tensor([self._val_count])])  # once per epoch
        top1_hits, top5_hits, loss_sum, count = self.trainer.strategy.reduce(sums, reduce_op="sum").tolist()
        top1, top5, loss = 100.0 * top1_hits / max(count, 1), 100.0 * top5_hits / max(count, 1), loss_sum / max(count, 1)
        self.log_dict({"val/top1": top1, "val/top5": top5, "val/loss": loss}, prog_bar=True)
        if self.trainer.sanity_checking or self.trainer.state.fn != TrainerFn.FITTING:
            return  # only the validations of training epochs count
        epoch = self.current_epoch + 1  # epochs completed, as a published "200 epochs" counts
        if self._history_epoch == epoch:  # validated again in the same epoch: its last validation counts
            self.val_top1_history[-1] = top1
        else:
            self.val_top1_history.append(top1)
        self._history_epoch = epoch
        self.log("val/top1_median10", median_of_last(self.val_top1_history, 10))
        train_loss = self.epoch_train_loss()
        self.epoch_summary = {
            "epoch": epoch,
            "val_top1": top1,
            "val_top5": top5,
            "val_loss": loss,
            "train_loss": "" if train_loss is None else train_loss,
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else "",
        }

    # ------------------------------------------------------------------ plumbing
    def _prepare(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch[0], batch[1]
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def configure_optimizers(self) -> Any:
        cfg = dict(self.optimizer_cfg)
        name, lr, wd = cfg.pop("name"), float(cfg.pop("lr")), float(cfg.pop("weight_decay", 0.0))
        params: list[dict[str, Any]] = [{"params": list(self.model.parameters())}]
        learned = isinstance(self.mixer, LearnedMixer)
        if learned:
            params += self.mixer.param_groups()  # the Mix Block, with its own lr when set
            # the teacher's momentum schedule counts training steps (micro-batches under accumulation)
            total = self.trainer.estimated_stepping_batches
            if math.isfinite(total):
                self.mixer.total_steps = int(total) * self.trainer.accumulate_grad_batches
        if name == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.9)), weight_decay=wd,
                                  nesterov=bool(cfg.get("nesterov", False)))
        else:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=tuple(cfg.get("betas", (0.9, 0.999))))
        if self.scheduler_cfg["name"] == "none":
            return opt
        schedules = [LRSchedule.for_trainer(self.trainer, self.scheduler_cfg, lr=lr)]
        if learned and self.mixer.min_lr is not None:  # the Mix Block's own cosine floor
            block_lr = self.mixer.lr if self.mixer.lr is not None else lr
            schedules.append(dataclasses.replace(schedules[0], name="cosine", milestones=None,
                                                 min_factor=self.mixer.min_lr / block_lr if block_lr else 0.0))
        factors = [lambda step, schedule=schedule: schedule(step) for schedule in schedules]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factors if len(factors) > 1 else factors[0])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["openmix_val_top1_history"] = list(self.val_top1_history)
        checkpoint["openmix_val_top1_epoch"] = self._history_epoch

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_top1_history = list(checkpoint.get("openmix_val_top1_history", []))
        self._history_epoch = int(checkpoint.get("openmix_val_top1_epoch", len(self.val_top1_history)))


@dataclass(frozen=True)
class LRSchedule:
    """The learning-rate factor of each optimizer step: linear warmup, then cosine or steps.

    Warmup is per optimizer step: factor ``(k + 1) / (warmup_steps + 1)`` at step ``k``. After
    it, when the run ends at an epoch boundary (``epochs`` set: ``max_epochs`` decides its
    length), the schedule moves once per epoch as in OpenMixup's recipes: epoch ``e`` of ``E``
    gets the cosine factor of ``(e - warmup epochs) / (E - warmup epochs)``, and a milestone
    ``m`` takes effect at the first step of epoch ``m``. When ``max_steps`` ends the run first
    (``epochs`` is ``None``), it moves every step, over ``total_steps``.

    Args:
        name: ``"cosine"`` or ``"step"``.
        total_steps: optimizer steps of the whole run (Lightning's ``estimated_stepping_batches``).
        steps_per_epoch: optimizer steps per epoch (``None`` when unknown: an iterable dataset).
        epochs: the number of epochs when they decide the length, else ``None``.
        warmup_steps: optimizer steps of linear warmup.
        min_factor: the cosine's floor, ``min_lr / lr``.
        milestones: epochs at which ``step`` multiplies the factor by ``gamma``; ``None``: at
            1/2 and 3/4 of the run.
        gamma: the ``step`` factor per milestone.

    Example:
        >>> cosine = LRSchedule("cosine", total_steps=8, steps_per_epoch=2, epochs=4)
        >>> [round(cosine(k), 3) for k in range(8)]  # once per epoch
        [1.0, 1.0, 0.854, 0.854, 0.5, 0.5, 0.146, 0.146]
        >>> by_steps = LRSchedule("cosine", total_steps=4, steps_per_epoch=100, epochs=None, warmup_steps=1)
        >>> [round(by_steps(k), 3) for k in range(4)]  # max_steps ended the run: every step
        [0.5, 1.0, 0.75, 0.25]
    """

    name: str
    total_steps: int
    steps_per_epoch: int | None
    epochs: int | None
    warmup_steps: int = 0
    min_factor: float = 0.0
    milestones: tuple[float, ...] | None = None
    gamma: float = 0.1

    @classmethod
    def for_trainer(cls, trainer: L.Trainer, cfg: Mapping[str, Any], lr: float) -> LRSchedule:
        """The schedule ``cfg`` (see :class:`MixupClassifier`) over the run ``trainer`` is set up for."""
        total = trainer.estimated_stepping_batches  # sets up the train data when max_epochs decides
        if not math.isfinite(total):
            raise ValueError(f"the {cfg['name']!r} lr schedule needs a finite run: set max_epochs or max_steps")
        if trainer.train_dataloader is None:  # max_steps decides: Lightning did not need the data for the total
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        per_epoch = max(math.ceil(batches / trainer.accumulate_grad_batches), 1) if math.isfinite(batches) else None
        max_epochs = trainer.max_epochs
        epochs = max_epochs if per_epoch and max_epochs and max_epochs > 0 and total == per_epoch * max_epochs else None
        interval = cfg.get("interval") or "epoch"
        if interval not in ("epoch", "step"):
            raise ValueError(f"scheduler interval must be 'epoch' or 'step', got {interval!r}")
        if interval == "step":  # a smooth schedule: short runs, where a few coarse epochs would stair-step
            epochs = None
        if cfg.get("warmup_steps") is not None:
            warmup = int(cfg["warmup_steps"])
        elif float(cfg.get("warmup_epochs") or 0) > 0:
            if per_epoch is None:
                raise ValueError("warmup_epochs needs the number of batches per epoch; give warmup_steps instead")
            warmup = round(float(cfg["warmup_epochs"]) * per_epoch)
        else:
            warmup = 0
        milestones = cfg.get("milestones")
        if milestones is not None and epochs is None and per_epoch is None:
            raise ValueError("milestones (in epochs) need the number of batches per epoch")
        return cls(
            name=cfg["name"],
            total_steps=int(total),
            steps_per_epoch=per_epoch,
            epochs=epochs,
            warmup_steps=warmup,
            min_factor=float(cfg.get("min_lr") or 0.0) / lr,
            milestones=None if milestones is None else tuple(float(m) for m in milestones),
            gamma=float(cfg.get("gamma", 0.1)),
        )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.epochs is not None:  # positions in epochs, moving once per epoch
            position, length = step // self.steps_per_epoch, self.epochs
            start = self.warmup_steps / self.steps_per_epoch
            milestones = self.milestones
        else:  # positions in steps
            position, length, start = step, self.total_steps, self.warmup_steps
            milestones = None if self.milestones is None else tuple(m * self.steps_per_epoch for m in self.milestones)
        if self.name == "step":
            milestones = (length // 2, 3 * length // 4) if milestones is None else milestones
            return self.gamma ** sum(position >= m for m in milestones)
        progress = min(max(position - start, 0) / max(length - start, 1), 1.0)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def _check_mixer_agrees(mixer: Mixer | None, num_classes: int, label_smoothing: float, mix_seed: int | None) -> None:
    """Raise if the mixer's own settings contradict the module's arguments."""
    if mixer is None:
        return
    conflicts = []
    if mixer.num_classes is not None and mixer.num_classes != num_classes:
        conflicts.append(f"num_classes={num_classes!r} but the mixer has num_classes={mixer.num_classes!r}")
    if label_smoothing and mixer.label_smoothing != label_smoothing:
        conflicts.append(f"label_smoothing={label_smoothing!r} but the mixer has "
                         f"label_smoothing={mixer.label_smoothing!r}")
    if mix_seed is not None and mixer.seed != mix_seed:
        conflicts.append(f"mix_seed={mix_seed!r} but the mixer has seed={mixer.seed!r}")
    if conflicts:
        raise ValueError(
            f"MixupClassifier got {'; '.join(conflicts)} ({mixer!r}); a mixer instance or config keeps its own "
            "settings: set them on the mixer, or leave these arguments at their defaults"
        )


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, Mapping))


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; available: {', '.join(choices)}")
