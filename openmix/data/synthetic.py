"""A synthetic image classification set, generated in memory: for fast tests and smoke runs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.checks import check_int
from openmix.data.base import TensorDataModule, register_datamodule
from openmix.data.device import derive_seed

__all__ = ["SyntheticDataModule", "make_synthetic"]


def make_synthetic(
    num_samples: int, num_classes: int, in_chans: int, image_size: int, seed: int, split: int = 0
) -> tuple[Tensor, Tensor]:
    """uint8 images ``(N, C, S, S)`` whose class shows as a smooth colour pattern under noise; labels ``(N,)``.

    Every class has one pattern (random 4x4 colours, bilinearly upsampled), fixed by ``seed``;
    each image is its class's pattern plus Gaussian pixel noise (std 0.15 of the range), so a
    small model learns the classes in a few steps but not in one. ``split`` picks an
    independent draw of images from the same classes (0 = train, 1 = val).

    Example:
        >>> x, y = make_synthetic(6, 3, 1, 8, seed=0)
        >>> x.dtype, tuple(x.shape), y.shape
        (torch.uint8, (6, 1, 8, 8), torch.Size([6]))
    """
    g = torch.Generator().manual_seed(derive_seed(seed, 0))
    patterns = torch.rand(num_classes, in_chans, 4, 4, generator=g)
    patterns = F.interpolate(patterns, size=(image_size, image_size), mode="bilinear", align_corners=False)
    g.manual_seed(derive_seed(seed, split + 1))
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)
    images = torch.empty(num_samples, in_chans, image_size, image_size, dtype=torch.uint8)
    for start in range(0, num_samples, 4096):  # bounded float memory for large sets
        y = labels[start : start + 4096]
        noise = torch.randn(y.shape[0], in_chans, image_size, image_size, generator=g)
        x = 0.2 + 0.6 * patterns[y] + 0.15 * noise
        images[start : start + 4096] = x.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return images, labels


@register_datamodule("synthetic")
class SyntheticDataModule(TensorDataModule):
    """Random images with a learnable class signal (see :func:`make_synthetic`), generated at ``setup()``.

    Same seed, same data and batches. Train augmentation: random crop with ``image_size // 8``
    pixels of reflect padding and horizontal flip, as for CIFAR. ``root`` and ``download`` are
    accepted and ignored.

    Args:
        *args: the common arguments of :class:`~openmix.data.base.ImageDataModule`.
        num_samples: train set size.
        num_val_samples: val set size; ``num_samples // 4`` (at least 1) when ``None``.
        num_classes: classes.
        image_size: side of the square images.
        in_chans: channels.
        **kwargs: the common arguments, by name.

    Example:
        >>> dm = SyntheticDataModule(batch_size=8, num_samples=32, num_classes=4, image_size=16, in_chans=1)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.dtype, tuple(x.shape), y.dtype, dm.num_classes
        (torch.float32, (8, 1, 16, 16), torch.int64, 4)
    """

    def __init__(
        self,
        *args: Any,
        num_samples: int = 1024,
        num_val_samples: int | None = None,
        num_classes: int = 10,
        image_size: int = 32,
        in_chans: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.num_samples = check_int("num_samples", num_samples, 1)
        default_val = max(num_samples // 4, 1)
        self.num_val_samples = (
            default_val if num_val_samples is None else check_int("num_val_samples", num_val_samples, 1)
        )
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.image_size = check_int("image_size", image_size, 2)
        self.in_chans = check_int("in_chans", in_chans, 1)
        if kwargs.get("crop_padding") is None:
            self.padding = image_size // 8
        self.mean, self.std = (0.5,) * in_chans, (0.25,) * in_chans

    def _load_tensors(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        shape = (self.num_classes, self.in_chans, self.image_size, self.seed)
        return make_synthetic(self.num_samples, *shape, split=0), make_synthetic(self.num_val_samples, *shape, split=1)
