"""CIFAR-10 and CIFAR-100 from torchvision's on-disk layout (the python pickles)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from openmix.data.base import TensorDataModule, register_datamodule
from openmix.data.formats import read_cifar_batch

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule"]

# OpenMixup's normalisation for both CIFAR sets (configs/classification/_base_/datasets/cifar*/sz32_bs100.py).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class _CIFAR(TensorDataModule):
    """Shared by CIFAR-10 and CIFAR-100: 32x32 RGB, train = 50,000 images, val = the 10,000 test images.

    Train augmentation (OpenMixup's recipe): RandomCrop 32 with 4 pixels of reflect padding and
    a horizontal flip. Held on the training device by default (``on_device="auto"``).
    """

    in_chans = 3
    image_size = 32
    mean = CIFAR_MEAN
    std = CIFAR_STD
    padding = 4
    padding_mode = "reflect"
    title: ClassVar[str]
    folder: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    val_files: ClassVar[tuple[str, ...]]
    label_key: ClassVar[str]
    archive: ClassVar[str]
    torchvision_class: ClassVar[str]

    def _paths(self) -> list[Path]:
        folder = self.root / self.folder
        return [folder / name for name in self.train_files + self.val_files]

    def _download(self) -> None:
        if all(p.is_file() for p in self._paths()):
            return
        import torchvision.datasets

        getattr(torchvision.datasets, self.torchvision_class)(str(self.root), download=True)

    def _load_tensors(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        paths = self._paths()
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.title} not found under {self.root}: expected {self.root / self.folder}/"
                f"{{{', '.join(self.train_files + self.val_files)}}} (the python version, {self.archive}, "
                f"extracted); missing {', '.join(missing)}. Pass download=True (data.download=true) to fetch it."
            )

        def read(names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
            parts = [read_cifar_batch(self.root / self.folder / n, self.label_key) for n in names]
            return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])

        return read(self.train_files), read(self.val_files)


@register_datamodule("cifar10")
class CIFAR10DataModule(_CIFAR):
    """CIFAR-10: ``<root>/cifar-10-batches-py/data_batch_1..5`` and ``test_batch``; 10 classes.

    Example:
        >>> dm = CIFAR10DataModule(root="data", batch_size=100)
        >>> dm.num_classes, dm.in_chans, dm.image_size, dm.on_device
        (10, 3, 32, True)
    """

    title = "CIFAR-10"
    num_classes = 10
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    val_files = ("test_batch",)
    label_key = "labels"
    archive = "cifar-10-python.tar.gz"
    torchvision_class = "CIFAR10"


@register_datamodule("cifar100")
class CIFAR100DataModule(_CIFAR):
    """CIFAR-100: ``<root>/cifar-100-python/train`` and ``test``; 100 fine classes.

    Example:
        >>> CIFAR100DataModule(root="data").num_classes
        100
    """

    title = "CIFAR-100"
    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    val_files = ("test",)
    label_key = "fine_labels"
    archive = "cifar-100-python.tar.gz"
    torchvision_class = "CIFAR100"
