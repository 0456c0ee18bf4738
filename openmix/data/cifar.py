"""CIFAR-10 and CIFAR-100 from torchvision's on-disk layout (the python pickles)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from openmix.checks import check_int
from openmix.data.base import TensorDataModule, register_datamodule
from openmix.data.device import DeviceLoader
from openmix.data.formats import read_cifar_batch

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "ResizedLoader"]

# OpenMixup's normalisation for both CIFAR sets (configs/classification/_base_/datasets/cifar*/sz32_bs100.py).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class _CIFAR(TensorDataModule):
    """Shared by CIFAR-10 and CIFAR-100: 32x32 RGB, train = 50,000 images, val = the 10,000 test images.

    Train augmentation (OpenMixup's recipe): RandomCrop 32 with 4 pixels of reflect padding and
    a horizontal flip. Held on the training device by default (``on_device="auto"``).

    ``image_size`` (default 32, the files' size) resizes every batch, training and validation, to
    ``image_size x image_size`` by bicubic interpolation (:class:`ResizedLoader`) after the crop and
    flip, on the device (or per sample on the DataLoader path, the same numbers), as OpenMixup
    trains ViTs on CIFAR at 224 px; the set stays 32 px in memory. Other arguments: see :class:`~openmix.data.base.TensorDataModule`.
    """

    in_chans = 3
    image_size = 32
    file_size: ClassVar[int] = 32

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

    def __init__(self, *args: Any, image_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if image_size is not None:
            self.image_size = check_int("image_size", image_size, 1)

    @contextmanager
    def _at_file_size(self) -> Iterator[None]:
        """Within it ``image_size`` is the files' 32: the shape checks and the crop work at that size."""
        trained, self.image_size = self.image_size, self.file_size
        try:
            yield
        finally:
            self.image_size = trained

    def _load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        with self._at_file_size():
            return super()._load()

    def train_transform(self) -> v2.Transform:
        with self._at_file_size():
            crop_flip = super().train_transform()
        return self._resized(crop_flip)

    def val_transform(self) -> v2.Transform:
        return self._resized(super().val_transform())

    def train_dataloader(self) -> Any:
        return self._resized(super().train_dataloader())

    def val_dataloader(self) -> Any:
        return self._resized(super().val_dataloader())

    def evaluation_dataloader(self, device: torch.device | str | None = None) -> Any:
        return self._resized(super().evaluation_dataloader(device))

    def _resized(self, source: Any) -> Any:
        """``source`` (a per-sample transform or a device loader) followed by the resize, when there is one."""
        if self.image_size == self.file_size:
            return source
        if isinstance(source, DeviceLoader):
            return ResizedLoader(source, self.image_size)
        if isinstance(source, v2.Transform):
            return v2.Compose([source, v2.Resize(self.image_size, interpolation=v2.InterpolationMode.BICUBIC)])
        return source  # a DataLoader: its dataset's transforms resize
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


class ResizedLoader:
    """A :class:`~openmix.data.device.DeviceLoader` whose batches are resized to ``size x size`` on their device:
    bicubic with torch's antialiased kernel (PIL's bicubic, which OpenMixup's resize uses, and torchvision's
    ``v2.Resize`` on the DataLoader path); everything else (length, sampler, epochs) is the loader's.

    Example:
        >>> images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
        >>> loader = ResizedLoader(DeviceLoader(images, torch.arange(4), 2, (0.5,) * 3, (0.25,) * 3), 16)
        >>> [tuple(x.shape) for x, _ in loader], len(loader)
        ([(2, 3, 16, 16), (2, 3, 16, 16)], 2)
    """

    def __init__(self, loader: DeviceLoader, size: int) -> None:
        self.loader, self.size = loader, size

    def __getattr__(self, name: str) -> Any:  # sampler, batch_sampler, set_epoch, device, ...
        return getattr(self.__dict__["loader"], name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            yield F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True), y

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loader!r}, size={self.size})"


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
