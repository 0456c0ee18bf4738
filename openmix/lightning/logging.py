"""Small callbacks that record what a run did: per-epoch metrics and training throughput."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L

from openmix.results import append_metrics

__all__ = ["EpochMetricsCSV", "TrainThroughput"]


class EpochMetricsCSV(L.Callback):
    """Append each validated epoch's ``epoch_summary`` (see :class:`~openmix.lightning.MixupClassifier`)
    to ``run_dir/metrics.csv`` on rank 0: epoch (1-based), val_top1, val_top5, val_loss, train_loss,
    lr. A resumed run appends to the file it left."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._written = -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        summary = getattr(pl_module, "epoch_summary", None)
        if trainer.sanity_checking or trainer.global_rank != 0 or not summary or summary["epoch"] == self._written:
            return
        append_metrics(self.run_dir, summary)
        self._written = summary["epoch"]


class TrainThroughput(L.Callback):
    """Training images per second over all devices, from each epoch's first training batch to its
    last (data loading included, validation excluded; one device sync per epoch on CUDA)."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start: float | None = None

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

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")


def _synchronize(pl_module: L.LightningModule) -> None:
    if pl_module.device.type == "cuda":
        import torch

        torch.cuda.synchronize(pl_module.device)
