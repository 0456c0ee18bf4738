"""Datasets stored as image files: any ImageFolder tree, and ImageNet in that layout."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms import v2

from openmix.data.base import IMAGENET_MEAN, IMAGENET_STD, ImageDataModule, SeededDataset, register_datamodule

__all__ = ["FileImageDataset", "ImageFolderDataModule", "ImageNetDataModule", "read_rgb"]

BICUBIC = v2.InterpolationMode.BICUBIC


def read_rgb(path: str | os.PathLike) -> Tensor:
    """An image file as uint8 RGB ``(3, H, W)``, decoded by PIL (grey, CMYK and palette images converted)."""
    with Image.open(path) as img:
        return v2.functional.pil_to_tensor(img.convert("RGB"))


class FileImageDataset(SeededDataset):
    """``(path, label)`` samples, each decoded to uint8 RGB and passed through ``transform``
    (replayable per sample, see :class:`~openmix.data.base.SeededDataset`).

    Args:
        samples: list of ``(path, label)``.
        transform: uint8 ``(3, H, W)`` in, the model's input out.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Tensor], Tensor]) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        return self.transform(read_rgb(path)), label


def resize_for_crop(image_size: int) -> int:
    """Shorter side to resize to before the centre crop: the ImageNet ratio 256/224.

    Example:
        >>> resize_for_crop(224), resize_for_crop(32)
        (256, 36)
    """
    return int(image_size * 256 / 224)


class _FileDataModule(ImageDataModule):
    """Base of the file datasets: RGB, ImageNet statistics, torchvision v2 transforms in DataLoader workers."""

    in_chans = 3
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def train_transform(self) -> v2.Transform:
        """RandomResizedCrop(image_size, bicubic, as OpenMixup) + horizontal flip, then normalise."""
        return v2.Compose(
            [
                v2.RandomResizedCrop(self.image_size, interpolation=BICUBIC, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )

    def val_transform(self) -> v2.Transform:
        """Resize the shorter side to ``image_size * 256 / 224`` (bicubic), centre crop, normalise."""
        return v2.Compose(
            [
                v2.Resize(resize_for_crop(self.image_size), interpolation=BICUBIC, antialias=True),
                v2.CenterCrop(self.image_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )


@register_datamodule("imagefolder")
class ImageFolderDataModule(_FileDataModule):
    """Any ``<root>/train/<class>/...`` and ``<root>/val/<class>/...`` tree of image files.

    Classes are the sub-folders of ``train/`` in sorted order; ``val/`` uses the same indices and
    may lack classes, but may not add any. Train: RandomResizedCrop(image_size) + flip; val:
    Resize(image_size * 256 / 224) + CenterCrop(image_size); both bicubic, ImageNet statistics.

    Args:
        *args: the common arguments of :class:`~openmix.data.base.ImageDataModule`.
        image_size: side of the square model input.
        num_classes: expected number of classes; counted from ``train/`` when ``None``.
        **kwargs: the common arguments, by name.

    Example:
        >>> dm = ImageFolderDataModule(root="my_images", image_size=96, num_classes=5, batch_size=32)
        >>> dm.num_classes, dm.in_chans, dm.image_size
        (5, 3, 96)
    """

    title = "Image folder"

    def __init__(self, *args: Any, image_size: int = 224, num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be an integer >= 1, got {image_size!r}")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"num_classes must be an integer >= 1 or None, got {num_classes!r}")
        self.image_size = image_size
        self._num_classes = num_classes

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Given, or the number of class folders in ``<root>/train`` (read from disk on first use)."""
        if self._num_classes is None:
            self._num_classes = len(self.classes())
        return self._num_classes

    def missing_message(self) -> str:
        return (
            f"{self.title} not found: expected {self.root / 'train'}/<class>/<image files> and "
            f"{self.root / 'val'}/<class>/<image files>."
        )

    def classes(self) -> list[str]:
        """Sorted class folder names of ``<root>/train``."""
        train = self.root / "train"
        if not train.is_dir() or not (self.root / "val").is_dir():
            raise FileNotFoundError(self.missing_message())
        names = sorted(e.name for e in os.scandir(train) if e.is_dir())
        if not names:
            raise FileNotFoundError(f"no class folders in {train}. " + self.missing_message())
        return names

    def _load(self) -> tuple[FileImageDataset, FileImageDataset]:
        classes = self.classes()
        if len(classes) != self.num_classes:
            raise ValueError(
                f"{self.title}: expected {self.num_classes} class folders in {self.root / 'train'}, "
                f"found {len(classes)}"
            )
        extra = sorted({e.name for e in os.scandir(self.root / "val") if e.is_dir()} - set(classes))
        if extra:
            raise ValueError(f"{self.root / 'val'} has class folders that train/ lacks: {', '.join(extra[:10])}")
        index = {name: i for i, name in enumerate(classes)}
        train = make_dataset(str(self.root / "train"), index, extensions=IMG_EXTENSIONS)
        val = make_dataset(str(self.root / "val"), index, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not val:
            raise FileNotFoundError(f"no images in {self.root / 'val'}. " + self.missing_message())
        return FileImageDataset(train, self.train_transform()), FileImageDataset(val, self.val_transform())


@register_datamodule("imagenet")
class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k (ILSVRC2012) as an ImageFolder tree: ``<root>/train/<wnid>/*.JPEG``, ``<root>/val/<wnid>/*.JPEG``.

    Train: RandomResizedCrop 224 + flip; val: Resize 256 + CenterCrop 224 (bicubic, as OpenMixup).
    There is no download: get the archives from image-net.org and sort the val images into
    class folders (e.g. with the widely used ``valprep.sh``).

    Example:
        >>> dm = ImageNetDataModule(root="/datasets/imagenet", batch_size=256)
        >>> dm.num_classes, dm.image_size
        (1000, 224)
    """

    title = "ImageNet"

    def __init__(self, *args: Any, image_size: int = 224, num_classes: int | None = 1000, **kwargs: Any) -> None:
        super().__init__(*args, image_size=image_size, num_classes=num_classes, **kwargs)

    def missing_message(self) -> str:
        return (
            super().missing_message() + " Download ILSVRC2012 from https://image-net.org (no automatic "
            "download), extract train/ into one folder per wnid, sort val/ into the same folders "
            "(e.g. with valprep.sh), and set root to the folder that holds train/ and val/."
        )
