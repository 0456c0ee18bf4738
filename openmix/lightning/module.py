"""``MixupClassifier``: image classification with any mixer, any timm or CIFAR-stem model."""

from __future__ import annotations

import math
from typing import Any, Mapping

import lightning as L
import torch
from torch import Tensor, nn

from openmix.losses import soft_cross_entropy
from openmix.mixer import Mixer
from openmix.results import median_of_last
from openmix.training import build_mixer, mix_step, mixed_accuracy

__all__ = ["MixupClassifier"]

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
        scheduler: ``{"name": "cosine"|"step"|"none", "warmup_epochs", "min_lr", "milestones", "gamma"}``;
            stepped once per epoch.
        label_smoothing: passed to the mixer (and used for vanilla training).
        mix_seed: seed of the mixer's draws, offset per DDP rank by the mixer itself.
        channels_last: train in channels-last memory format.

    Logs ``train/loss``, ``train/top1`` (lam-weighted), ``val/loss``, ``val/top1``,
    ``val/top5`` and ``val/top1_median10`` (median top-1 of the last 10 epochs, the
    metric OpenMixup publishes).

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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[name for name, value in (("model", model), ("mixer", mixer)) if not _plain(value)])
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if isinstance(model, str):
            from openmix.models import create_model

            model = create_model(model, num_classes=num_classes, in_chans=in_chans, **dict(model_kwargs or {}))
        self.model = model
        self.mixer = build_mixer(mixer, num_classes=num_classes, label_smoothing=label_smoothing, seed=mix_seed)
        self.optimizer_cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, **dict(optimizer or {})}
        self.scheduler_cfg = {"name": "cosine", **dict(scheduler or {})}
        _check_choice("optimizer name", self.optimizer_cfg["name"], OPTIMIZERS)
        _check_choice("scheduler name", self.scheduler_cfg["name"], SCHEDULERS)
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.val_top1_history: list[float] = []
        self.epoch_summary: dict[str, Any] = {}  # the last validated epoch, for EpochMetricsCSV

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(2, device=self.device)  # loss * batch, samples

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = self._prepare(batch)
        step = mix_step(self.model, self.mixer, x, y, criterion=self._criterion)
        self.log("train/loss", step.loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self.log("train/top1", 100.0 * mixed_accuracy(step.logits, y, step.mix), on_step=False, on_epoch=True,
                 batch_size=x.shape[0])
        self._train_sums[0] += step.loss.detach() * x.shape[0]
        self._train_sums[1] += x.shape[0]
        return step.loss

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
        if self.trainer.sanity_checking:
            return
        self.val_top1_history.append(top1)
        self.log("val/top1_median10", median_of_last(self.val_top1_history, 10))
        train = getattr(self, "_train_sums", None)
        self.epoch_summary = {
            "epoch": self.current_epoch + 1,  # epochs completed, as a published "200 epochs" counts
            "val_top1": top1,
            "val_top5": top5,
            "val_loss": loss,
            "train_loss": float(train[0] / train[1]) if train is not None and float(train[1]) else "",
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
        params = self.model.parameters()
        if name == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.9)), weight_decay=wd,
                                  nesterov=bool(cfg.get("nesterov", False)))
        else:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=tuple(cfg.get("betas", (0.9, 0.999))))
        sched = self._scheduler(opt)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def _scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        cfg = self.scheduler_cfg
        epochs = max(int(self.trainer.max_epochs or 1), 1) if self._trainer is not None else 1
        warmup = int(cfg.get("warmup_epochs", 0))
        if cfg["name"] == "none":
            return None
        if cfg["name"] == "step":
            milestones = list(cfg.get("milestones", [epochs // 2, 3 * epochs // 4]))
            gamma = float(cfg.get("gamma", 0.1))
            factor = lambda e: gamma ** sum(e >= m for m in milestones)  # noqa: E731
        else:
            floor = float(cfg.get("min_lr", 0.0)) / float(self.optimizer_cfg["lr"])
            span = max(epochs - warmup, 1)
            factor = lambda e: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(e - warmup, span) / span))  # noqa: E731
        if warmup:
            base = factor
            factor = lambda e: (e + 1) / (warmup + 1) if e < warmup else base(e)  # noqa: E731
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["openmix_val_top1_history"] = list(self.val_top1_history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_top1_history = list(checkpoint.get("openmix_val_top1_history", []))


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, Mapping))


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; available: {', '.join(choices)}")
