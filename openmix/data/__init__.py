"""Datamodules: CIFAR-10/100, Fashion-MNIST, Tiny-ImageNet, ImageNet, any ImageFolder, synthetic.

Every datamodule knows ``num_classes``, ``in_chans``, ``image_size``, ``mean`` and ``std``
before ``setup()`` (``imagefolder`` reads those it is not given from its tree on first use),
and yields batches ``(x, y)``: ``x`` float32 normalised ``(B, C, H, W)``, ``y`` int64 ``(B,)``.
Validation is the official test/val split, in order, unaugmented. The small sets (CIFAR,
Fashion-MNIST, synthetic) are held on the training device as uint8 and augmented there by
default (``on_device="auto"``, see :mod:`openmix.data.device`); the others stream from disk
through DataLoader workers. ``collate_mixer=`` makes the training DataLoader mix each batch in
its workers (see :mod:`openmix.data.collate`): batches are then ``(mixed x, soft y (B, num_classes))``.

Example:
    >>> from openmix.data import build_datamodule, available_datasets
    >>> available_datasets()
    ['cifar10', 'cifar100', 'fashion_mnist', 'imagefolder', 'imagenet', 'synthetic', 'tiny_imagenet']
    >>> dm = build_datamodule("synthetic", batch_size=16, num_samples=64, seed=0)
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), y.dtype
    ((16, 3, 32, 32), torch.int64)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from openmix.data.base import (
    DATAMODULES,
    EpochSampler,
    ImageDataModule,
    KeyedDataset,
    TensorDataModule,
    register_datamodule,
)
from openmix.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from openmix.data.collate import MixingCollate
from openmix.data.device import DeviceLoader, ShardSampler, crop_flip, random_crop_flip
from openmix.data.fashion_mnist import FashionMNISTDataModule
from openmix.data.imagefolder import ImageFolderDataModule, ImageNetDataModule
from openmix.data.synthetic import SyntheticDataModule
from openmix.data.tiny_imagenet import TinyImageNetDataModule

__all__ = [
    "build_datamodule",
    "available_datasets",
    "check_settings",
    "register_datamodule",
    "ImageDataModule",
    "TensorDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "TinyImageNetDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "SyntheticDataModule",
    "DeviceLoader",
    "ShardSampler",
    "EpochSampler",
    "KeyedDataset",
    "MixingCollate",
    "crop_flip",
    "random_crop_flip",
]


def available_datasets() -> list[str]:
    """Sorted names accepted by :func:`build_datamodule`."""
    return sorted(DATAMODULES)


def _registered(name: str) -> type[ImageDataModule]:
    if name not in DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return DATAMODULES[name]


def _settings(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` takes: its own, then (through ``**kwargs``) its bases'."""
    named, names = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY), []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]  # without self
        names += [p.name for p in params if p.kind in named and p.name not in names]
        if all(p.kind is not p.VAR_KEYWORD for p in params):
            return names
    return names


def check_settings(name: str, settings: Iterable[str], prefix: str = "") -> None:
    """Raise a ``ValueError`` naming each of ``settings`` that the datamodule ``name`` does not take.

    ``prefix`` goes before each name in the message (the command line's ``data.``).

    Example:
        >>> check_settings("cifar10", ["root", "crop_padding"])  # both taken: no error
        >>> check_settings("imagefolder", ["root", "crop_padding"], prefix="data.")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: data.crop_padding is not a setting of imagefolder (it takes: image_size, num_classes, ...)
    """
    accepted = _settings(_registered(name))
    unknown = [f"{prefix}{key}" for key in settings if key not in accepted]
    if unknown:
        verb = "is not a setting" if len(unknown) == 1 else "are not settings"
        raise ValueError(f"{', '.join(unknown)} {verb} of {name} (it takes: {', '.join(accepted)})")


def build_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """The datamodule registered as ``name``, built with ``kwargs``.

    Common arguments: ``root``, ``batch_size``, ``eval_batch_size``, ``num_workers``,
    ``download``, ``on_device``, ``seed``, ``pin_memory``, ``collate_mixer`` (see :class:`ImageDataModule`); some
    datasets take more (``image_size``, ``num_classes``, ``num_samples``, ``in_chans``).

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones), an argument it does not
            take (the message lists those it takes, see :func:`check_settings`), or a bad value.

    Example:
        >>> build_datamodule("cifar100", root="data", batch_size=100).num_classes
        100
    """
    check_settings(name, kwargs)
    return DATAMODULES[name](**kwargs)
