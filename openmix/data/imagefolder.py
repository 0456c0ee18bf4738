"""Datasets stored as image files: any ImageFolder tree, and ImageNet in that layout."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms import v2

from openmix.checks import check_int
from openmix.data.base import IMAGENET_MEAN, IMAGENET_STD, ImageDataModule, SeededDataset, register_datamodule

__all__ = ["FileImageDataset", "ImageFolderDataModule", "ImageNetDataModule", "read_image"]

BICUBIC = v2.InterpolationMode.BICUBIC
GREY_MEAN = (0.449,)  # the ImageNet statistics averaged over the three channels
GREY_STD = (0.226,)


def read_image(path: str | os.PathLike, mode: str = "RGB") -> Tensor:
    """An image file as uint8 ``(C, H, W)``, decoded by PIL and converted to ``mode``
    (``"RGB"``: 3 channels, grey, CMYK and palette images included; ``"L"``: 1 grey channel)."""
    with Image.open(path) as img:
        return v2.functional.pil_to_tensor(img.convert(mode))


class FileImageDataset(SeededDataset):
    """``(path, label)`` samples, each decoded to uint8 and passed through ``transform``
    (replayable per sample, see :class:`~openmix.data.base.SeededDataset`).

    Args:
        samples: list of ``(path, label)``.
        transform: uint8 ``(C, H, W)`` in, the model's input out.
        mode: PIL mode every image is converted to: ``"RGB"`` or ``"L"`` (grey).
    """

    def __init__(
        self, samples: Sequence[tuple[str, int]], transform: Callable[[Tensor], Tensor], mode: str = "RGB"
    ) -> None:
        self.samples, self.transform, self.mode = list(samples), transform, mode

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        return self.transform(read_image(path, self.mode)), label


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

    def val_resize(self) -> int:
        """Shorter side the val images are resized to before the centre crop: ``image_size * 256 / 224``."""
        return resize_for_crop(self.image_size)

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
        """Resize the shorter side to :meth:`val_resize` (bicubic), centre crop ``image_size``, normalise."""
        return v2.Compose(
            [
                v2.Resize(self.val_resize(), interpolation=BICUBIC, antialias=True),
                v2.CenterCrop(self.image_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )


@register_datamodule("imagefolder")
class ImageFolderDataModule(_FileDataModule):
    """Any ``<root>/train/<class>/...`` and ``<root>/val/<class>/...`` tree of image files.

    Classes are the sub-folders of ``train/`` in sorted order; ``val/`` uses the same indices and
    may lack classes, but may not add any. What is not given is read from the tree on first use
    of ``num_classes``, ``image_size``, ``in_chans``, ``mean`` or ``std`` (so before ``setup()``,
    e.g. when a model is built for them): ``num_classes`` counts the class folders, and
    ``image_size`` and ``in_chans`` come from the first training image (of the first class, in
    sorted order): its shorter side, and 1 channel if it is grey, else 3. A missing tree, or one
    without class folders or images, is a ``FileNotFoundError`` that says what was expected.

    Train: RandomResizedCrop(image_size) + flip. Val: the shorter side resized, then
    CenterCrop(image_size); resized to ``image_size * 256 / 224`` when ``image_size`` is given
    (the ImageNet recipe, for images larger than the model input), to ``image_size`` when it is
    read from the images (so square images of that size pass unchanged). Both bicubic; ImageNet
    statistics (their channel average for grey images).

    Args:
        *args: the common arguments of :class:`~openmix.data.base.ImageDataModule`.
        image_size: side of the square model input; read from the images when ``None``.
        num_classes: expected number of classes; counted from ``train/`` when ``None``.
        in_chans: 3 (images decoded as RGB) or 1 (as grey); read from the images when ``None``.
        **kwargs: the common arguments, by name.

    Example:
        >>> dm = ImageFolderDataModule(root="my_images", image_size=96, num_classes=5, in_chans=3, batch_size=32)
        >>> dm.num_classes, dm.in_chans, dm.image_size  # all given: nothing is read
        (5, 3, 96)
    """

    title = "Image folder"

    def __init__(
        self,
        *args: Any,
        image_size: int | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if in_chans is not None and check_int("in_chans", in_chans, 1) not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grey), 3 (RGB) or None, got {in_chans}")
        self._image_size = None if image_size is None else check_int("image_size", image_size, 1)
        self._num_classes = None if num_classes is None else check_int("num_classes", num_classes, 1)
        self._in_chans = in_chans

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Given, or the number of class folders in ``<root>/train``."""
        return self._num_classes or len(self.class_to_idx)

    @property
    def image_size(self) -> int:  # type: ignore[override]
        """Given, or the shorter side of the first training image."""
        return self._image_size or self._first_image[0]

    @property
    def in_chans(self) -> int:  # type: ignore[override]
        """Given, or 1 if the first training image is grey, else 3."""
        return self._in_chans or self._first_image[1]

    @property
    def mean(self) -> tuple[float, ...]:  # type: ignore[override]
        """ImageNet's mean; for grey images, its average over the channels."""
        return IMAGENET_MEAN if self.in_chans == 3 else GREY_MEAN

    @property
    def std(self) -> tuple[float, ...]:  # type: ignore[override]
        """ImageNet's std; for grey images, its average over the channels."""
        return IMAGENET_STD if self.in_chans == 3 else GREY_STD

    def val_resize(self) -> int:
        """``image_size * 256 / 224`` when ``image_size`` is given; ``image_size`` when read from the images."""
        return super().val_resize() if self._image_size else self.image_size

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

    @cached_property
    def class_to_idx(self) -> dict[str, int]:
        """Class folder name -> label, as in torchvision's ``ImageFolder`` (listed once)."""
        return {name: i for i, name in enumerate(self.classes())}

    @cached_property
    def _train_samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` of every training image, by class then path (listed once)."""
        train, classes = self.root / "train", self.class_to_idx
        try:
            return make_dataset(str(train), classes, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as error:  # torchvision's "Found no valid file for the classes ..."
            raise FileNotFoundError(f"{train}: {error}") from None

    @cached_property
    def _first_image(self) -> tuple[int, int]:
        """Shorter side and channels (1: grey, else 3) of the first training image, read from its header."""
        with Image.open(self._train_samples[0][0]) as img:
            grey = set(img.getbands()) - {"A"} <= {"1", "L", "I", "F"}
            return min(img.size), 1 if grey else 3

    def _load(self) -> tuple[FileImageDataset, FileImageDataset]:
        classes = self.class_to_idx
        if len(classes) != self.num_classes:
            raise ValueError(
                f"{self.title}: expected {self.num_classes} class folders in {self.root / 'train'}, "
                f"found {len(classes)}"
            )
        extra = sorted({e.name for e in os.scandir(self.root / "val") if e.is_dir()} - set(classes))
        if extra:
            raise ValueError(f"{self.root / 'val'} has class folders that train/ lacks: {', '.join(extra[:10])}")
        val = make_dataset(str(self.root / "val"), classes, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not val:
            raise FileNotFoundError(f"no images in {self.root / 'val'}. " + self.missing_message())
        mode = "RGB" if self.in_chans == 3 else "L"
        return (
            FileImageDataset(self._train_samples, self.train_transform(), mode),
            FileImageDataset(val, self.val_transform(), mode),
        )


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

    def __init__(
        self, *args: Any, image_size: int = 224, num_classes: int | None = 1000, in_chans: int = 3, **kwargs: Any
    ) -> None:
        super().__init__(*args, image_size=image_size, num_classes=num_classes, in_chans=in_chans, **kwargs)

    def missing_message(self) -> str:
        return (
            super().missing_message() + " Download ILSVRC2012 from https://image-net.org (no automatic "
            "download), extract train/ into one folder per wnid, sort val/ into the same folders "
            "(e.g. with valprep.sh), and set root to the folder that holds train/ and val/."
        )
