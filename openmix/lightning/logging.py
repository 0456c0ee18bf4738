"""Small callbacks that record what a run did: per-epoch metrics, training throughput and time, a line per epoch."""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import lightning as L

from openmix.results import append_metrics, keep_metrics_until

__all__ = ["EpochMetricsCSV", "TrainThroughput", "WallTime", "EpochLines"]


def _validated_this_epoch(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The module's ``epoch_summary`` if it is of the epoch now ending, else ``{}``."""
    summary = getattr(pl_module, "epoch_summary", None) or {}
    return summary if summary.get("epoch") == trainer.current_epoch + 1 else {}


class EpochMetricsCSV(L.Callback):
    """Append each trained epoch's ``epoch_summary`` (see :class:`~openmix.lightning.MixupClassifier`)
    to ``run_dir/metrics.csv`` on rank 0 when the epoch ends (so with several validations per epoch,
    its last one): epoch (1-based), val_top1, val_top5, val_loss, train_loss, lr. Epochs without a
    validation get no line. When training starts, lines after the epochs it starts from are dropped:
    a resumed run continues the file it left, a fresh start begins a new one."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0:
            keep_metrics_until(self.run_dir, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        summary = _validated_this_epoch(trainer, pl_module)
        if trainer.global_rank == 0 and summary:
            append_metrics(self.run_dir, summary)


class TrainThroughput(L.Callback):
    """Training images per second over all devices, from each epoch's first training batch to its
    last (data loading included, validation excluded; one device sync per epoch on CUDA), for the
    whole run (``images_per_second``) and for the last epoch (``epoch_images_per_second``).

    The images and seconds so far are kept in the checkpoint, so a resumed run counts the
    epochs of its earlier attempts too."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start: float | None = None
        self._epoch_start = (0, 0.0)  # images and seconds when the current epoch began

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = (self.images, self.seconds)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._start is None:
            _synchronize(pl_module)
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.images += len(batch[0]) * trainer.world_size

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(pl_module)

    def _close(self, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            _synchronize(pl_module)
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images, self.seconds = state_dict["images"], state_dict["seconds"]

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    @property
    def epoch_images_per_second(self) -> float:
        images, seconds = self.images - self._epoch_start[0], self.seconds - self._epoch_start[1]
        return images / seconds if seconds else float("nan")


class WallTime(L.Callback):
    """Seconds a run has spent in ``fit`` (``seconds``): this attempt's since its set-up and, in a
    resumed run, its earlier attempts' up to the checkpoint it resumed from (kept in the checkpoint).

    Example:
        >>> clock = WallTime()
        >>> clock.load_state_dict({"seconds": 60.0})  # as a resume from a checkpoint does
        >>> 60.0 <= clock.seconds < 70.0
        True
    """

    def __init__(self) -> None:
        self.earlier = 0.0
        self._started = time.perf_counter()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.earlier + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier = state_dict["seconds"]


class EpochLines(L.Callback):
    """One plain line per trained epoch (rank 0), for logs that are not a terminal (SLURM, CI, ``| tee``)::

        [openmix] epoch 2/3  val top-1 81.25%  train loss 0.8123  5,210 img/s  0:01:04 elapsed

    Val top-1 is ``-`` in an epoch without validation; the train loss is rank 0's mean over the
    epoch; images/s come from ``throughput`` (list it before this callback), elapsed time counts
    from the start of this training (a resumed run counts from its resume).
    """

    def __init__(self, throughput: TrainThroughput | None = None, stream: TextIO | None = None) -> None:
        self.throughput = throughput
        self.stream = stream
        self._started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        summary = _validated_this_epoch(trainer, pl_module)
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        parts = [f"epoch {trainer.current_epoch + 1}/{total}"]
        parts.append(f"val top-1 {summary['val_top1']:.2f}%" if summary else "val top-1 -")
        loss = pl_module.epoch_train_loss() if hasattr(pl_module, "epoch_train_loss") else None
        parts.append("train loss -" if loss is None else f"train loss {loss:.4f}")
        speed = self.throughput.epoch_images_per_second if self.throughput is not None else float("nan")
        parts.append("- img/s" if math.isnan(speed) else f"{speed:,.0f} img/s")
        parts.append(f"{timedelta(seconds=int(time.perf_counter() - self._started))} elapsed")
        print("[openmix] " + "  ".join(parts), file=self.stream or sys.stdout, flush=True)


def _synchronize(pl_module: L.LightningModule) -> None:
    if pl_module.device.type == "cuda":
        import torch

        torch.cuda.synchronize(pl_module.device)
