"""The datamodule base classes and the name -> datamodule registry.

``ImageDataModule`` holds what every dataset shares: argument checks, the static facts a model
needs before ``setup()`` (``num_classes``, ``in_chans``, ``image_size``, ``mean``, ``std``), and
DataLoader construction. ``TensorDataModule`` is for small datasets held in memory as one uint8
tensor: they train either from the device (:class:`~openmix.data.device.DeviceLoader`) or
through a DataLoader with per-sample torchvision transforms. With ``collate_mixer`` the training
DataLoader also mixes each batch in its workers (:class:`~openmix.data.collate.MixingCollate`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from openmix.checks import check_bool, check_int
from openmix.data.collate import MixingCollate
from openmix.data.device import DeviceLoader, ShardSampler, derive_seed
from openmix.mixer import DataInfo, Mixer

__all__ = [
    "ImageDataModule",
    "TensorDataModule",
    "TensorImageDataset",
    "SeededDataset",
    "EpochSampler",
    "KeyedDataset",
    "register_datamodule",
    "DATAMODULES",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DATAMODULES: dict[str, type[ImageDataModule]] = {}
T = TypeVar("T", bound=type)


def register_datamodule(name: str) -> Callable[[T], T]:
    """Class decorator: make a datamodule buildable as ``build_datamodule(name, ...)``."""

    def decorate(cls: T) -> T:
        if name in DATAMODULES and DATAMODULES[name] is not cls:
            raise ValueError(f"a datamodule named {name!r} is already registered ({DATAMODULES[name].__name__})")
        cls.name = name
        DATAMODULES[name] = cls
        return cls

    return decorate


class ImageDataModule(L.LightningDataModule):
    """Common base: arguments, static dataset facts and DataLoaders for an image classification set.

    Subclasses set the class attributes below (or properties) and implement ``_load``, which
    returns the train and validation datasets. ``setup()`` loads once; ``prepare_data()``
    downloads when ``download=True`` (Lightning calls it on one process; outside a Trainer,
    ``setup()`` calls it). The validation split is the dataset's official test/val split, in
    order, without augmentation; ``test_dataloader`` gives the same.

    Args:
        root: folder holding the dataset (see each subclass for the layout).
        batch_size: training batch size (per process under DDP).
        eval_batch_size: validation batch size; ``batch_size`` when ``None``.
        num_workers: DataLoader worker processes (unused on the device path).
        download: fetch the dataset into ``root`` if it is missing (where a download exists).
        on_device: hold the train and val sets on the training device and augment there:
            ``True``, ``False`` or ``"auto"`` (on for the small in-memory sets). Only small sets.
        seed: seed of shuffling and augmentation; same seed, same batches. On the DataLoader
            path the order of an epoch comes from ``(seed, epoch)`` (:class:`EpochSampler`) and
            each sample's augmentation from ``(seed, epoch, index)`` (:class:`SeededDataset`), so
            the batches do not depend on ``num_workers`` and a resumed run sees what an
            uninterrupted one would.
        pin_memory: pin DataLoader batches when a CUDA device is present.
        collate_mixer: an input mixer (e.g. ``openmix.build("cutmix", num_classes=10)``) that mixes
            each training batch inside the DataLoader workers (:class:`~openmix.data.collate.MixingCollate`):
            training batches are then ``(mixed x, soft targets (B, num_classes))``, drawn from
            ``(seed, epoch, batch indices)``, so they too do not depend on ``num_workers`` and
            resume exactly. Train on them without a second mixing (``MixupClassifier(mixer=None)``).
            It needs the DataLoader path: ``on_device="auto"`` then takes it, ``True`` is an error.
    """

    name: ClassVar[str] = ""
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    small: ClassVar[bool] = False  # may be held on the device

    def __init__(
        self,
        root: str | os.PathLike = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        download: bool = False,
        on_device: bool | str = "auto",
        seed: int = 0,
        pin_memory: bool = True,
        collate_mixer: Mixer | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(root, (str, os.PathLike)):
            raise ValueError(f"root must be a path, got {root!r}")
        self.root = Path(root).expanduser()
        self.batch_size = check_int("batch_size", batch_size, 1)
        if eval_batch_size is not None:
            check_int("eval_batch_size", eval_batch_size, 1)
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.download = check_bool("download", download)
        self.seed = check_int("seed", seed, 0)
        self.pin_memory = check_bool("pin_memory", pin_memory)
        self.collate_mixer = collate_mixer
        self._collate = None if collate_mixer is None else MixingCollate(collate_mixer)  # refuses model mixers
        if on_device == "auto":
            on_device = self.small and collate_mixer is None
        elif not isinstance(on_device, bool):
            raise ValueError(f"on_device must be True, False or 'auto', got {on_device!r}")
        elif on_device and not self.small:
            raise ValueError(
                f"on_device=True holds a dataset in device memory, which is only offered for small datasets "
                f"({', '.join(sorted(n for n, c in DATAMODULES.items() if c.small))}); {self.name} streams from disk"
            )
        elif on_device and collate_mixer is not None:
            raise ValueError(
                "collate_mixer mixes batches in DataLoader workers, and on_device=True trains without a DataLoader: "
                "use on_device=False (or 'auto'), or leave collate_mixer=None and mix on the device"
            )
        self.on_device = on_device
        self.train_set: Any = None
        self.val_set: Any = None

    # -- loading -------------------------------------------------------------------------
    def _download(self) -> None:
        """Fetch the dataset into ``root``; subclasses with a download override this."""

    def _load(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self.download:
            self._download()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.trainer is None:
            self.prepare_data()
        self.train_set, self.val_set = self._load()

    def _require_setup(self) -> None:
        if self.train_set is None:
            raise RuntimeError(f"call {type(self).__name__}.setup() before asking for a dataloader")

    # -- loaders --------------------------------------------------------------------------
    def _placement(self) -> tuple[torch.device, int, int]:
        """Training device, rank and world size (from the attached Trainer; CPU, 0, 1 without one)."""
        if self.trainer is None:
            return torch.device("cpu"), 0, 1
        return self.trainer.strategy.root_device, self.trainer.global_rank, self.trainer.world_size

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        """A DataLoader; for training (``shuffle``) with an :class:`EpochSampler` on this rank's shard,
        and the collate mixer, if any, mixing its batches."""
        sampler, collate = None, None
        if shuffle:
            _, rank, world = self._placement()
            sampler = EpochSampler(dataset, seed=self.seed, rank=rank, world_size=world)
            if self._collate is not None:
                self._check_collate_mixer()
                dataset, collate = KeyedDataset(dataset), self._collate
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def _check_collate_mixer(self) -> None:
        """Before the first batch: the mixer's classes are the data's, it learns the data's facts, and
        no ``MixupClassifier`` or ``MixupCallback`` of the attached Trainer mixes the batches again."""
        mixer = self.collate_mixer
        if mixer.num_classes != self.num_classes:
            raise ValueError(
                f"collate_mixer has num_classes={mixer.num_classes!r}, but {self.name} has {self.num_classes} "
                f"classes: build it with num_classes={self.num_classes}"
            )
        mixer.configure_data(DataInfo.of(self))
        if self.trainer is None:
            return
        from openmix.lightning import MixupCallback, MixupClassifier

        module = self.trainer.lightning_module
        again = [f"{type(module).__name__}(mixer={module.mixer!r})"] if isinstance(module, MixupClassifier) and (
            module.mixer is not None) else []
        again += [f"MixupCallback({c.mixer!r})" for c in self.trainer.callbacks if isinstance(c, MixupCallback)]
        if again:
            raise ValueError(
                f"the datamodule mixes its training batches in the DataLoader (collate_mixer={mixer!r}) and "
                f"{' and '.join(again)} would mix them again on the device: give the mixer to one of them "
                "(MixupClassifier(mixer=None) trains on the datamodule's mixed batches)"
            )

    def train_dataloader(self) -> Any:
        self._require_setup()
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> Any:
        self._require_setup()
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> Any:
        return self.val_dataloader()

    def evaluation_dataloader(self, device: torch.device | str | None = None) -> Any:
        """The whole validation split, in order, on one process (no DDP shard): for evaluation after
        training. ``device`` is where the batches may live (the on-device path puts them there)."""
        self._require_setup()
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def __repr__(self) -> str:
        def fact(name: str) -> Any:
            try:
                return getattr(self, name)
            except FileNotFoundError:  # read from files that are not there (yet)
                return "?"

        return (
            f"{type(self).__name__}(root={str(self.root)!r}, num_classes={fact('num_classes')}, "
            f"in_chans={fact('in_chans')}, image_size={fact('image_size')}, batch_size={self.batch_size}, "
            f"eval_batch_size={self.eval_batch_size}, num_workers={self.num_workers}, on_device={self.on_device}, "
            f"seed={self.seed}{'' if self.collate_mixer is None else f', collate_mixer={self.collate_mixer!r}'})"
        )


class SeededDataset(Dataset):
    """A dataset whose random transforms can be replayed: ``dataset[(i, seed)]`` is sample ``i``
    transformed with torch's CPU generator seeded from ``(seed, i)``; ``dataset[i]`` draws from
    the generator as it is. Subclasses implement ``sample(i)``.

    :class:`EpochSampler` yields such ``(i, seed)`` keys, one seed per epoch, so augmentation is
    a function of the run's seed, the epoch and the index: the same in every worker layout and
    after a resume. The generator's state is restored afterwards (it is the main process's own
    generator when ``num_workers=0``).
    """

    def sample(self, i: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.sample(key)
        i, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derive_seed(seed, i))
            return self.sample(i)


class EpochSampler(DistributedSampler):
    """The training order of the DataLoader path: this rank's share of one permutation per epoch.

    The permutation of epoch ``e`` comes from ``(seed, e)``, as on the device path
    (:class:`~openmix.data.device.ShardSampler`, which does the drawing): every rank draws the
    same one and takes every ``world_size``-th entry, the remainder dropped so that all ranks take
    the same number of steps. Each entry is a key ``(index, epoch seed)`` for a
    :class:`SeededDataset`. Lightning calls ``set_epoch`` at each epoch start (a resumed run
    included); without it, each iteration moves on to the next epoch. Being a
    ``DistributedSampler``, it is kept as it is under DDP (Lightning replaces other samplers).

    Example:
        >>> sampler = EpochSampler(range(6), seed=0)
        >>> first = [i for i, _ in sampler]  # epoch 0; iterating again gives epoch 1
        >>> sorted(first), first == [i for i, _ in sampler]
        ([0, 1, 2, 3, 4, 5], False)
        >>> sampler.set_epoch(0)  # as Lightning does at each epoch start, a resumed run included
        >>> first == [i for i, _ in sampler]
        True
        >>> [len(EpochSampler(range(5), rank=r, world_size=2)) for r in (0, 1)]  # the remainder dropped
        [2, 2]
    """

    def __init__(self, dataset: Any, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self._shard = ShardSampler(len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world_size)

    def __len__(self) -> int:
        return len(self._shard)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self._shard.set_epoch(epoch)
        seed = derive_seed(self.seed, epoch, 2)
        keys = [(i, seed) for i in self._shard.indices().tolist()]
        self.epoch = epoch + 1  # Lightning's set_epoch overrides this
        return iter(keys)


class KeyedDataset(Dataset):
    """Samples handed out with their keys, ``(key, sample)``: how a collate function learns which
    samples, of which epoch, a batch holds (:class:`~openmix.data.collate.MixingCollate`).

    Keys are :class:`EpochSampler`'s ``(index, epoch seed)``: a :class:`SeededDataset` gets the
    key (its augmentation replayed from it), any other dataset the index.

    Example:
        >>> KeyedDataset(["a", "b"])[(1, 7)]
        ((1, 7), 'b')
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> tuple[Any, Any]:
        if isinstance(self.dataset, SeededDataset) or not isinstance(key, tuple):
            return key, self.dataset[key]
        return key, self.dataset[key[0]]


class TensorImageDataset(SeededDataset):
    """Samples of a uint8 ``(N, C, H, W)`` tensor through per-sample transforms (the DataLoader path).

    Example:
        >>> images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
        >>> ds = TensorImageDataset(images, torch.arange(4), v2.ToDtype(torch.float32))
        >>> x, y = ds[1]
        >>> x.dtype, tuple(x.shape), y
        (torch.float32, (1, 8, 8), 1)
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


class TensorDataModule(ImageDataModule):
    """A small dataset held in memory as uint8 tensors; trains from the device or through a DataLoader.

    Subclasses implement ``_load_tensors`` returning train and val ``(images, labels)``, images
    uint8 ``(N, C, H, W)``, labels int64 ``(N,)``, and set ``padding``/``padding_mode`` of their
    train crop. With ``on_device`` the loaders are :class:`DeviceLoader` on the Trainer's
    ``strategy.root_device`` (the CPU without a Trainer), sharded by ``trainer.global_rank`` and
    ``world_size``; otherwise DataLoaders with the same augmentation done per sample by
    torchvision (``RandomCrop`` + ``RandomHorizontalFlip``), the train split sharded by
    :class:`EpochSampler` and the val split by Lightning. Under DDP the train shards of both
    paths drop the remainder (all ranks take the same number of steps); the device-path val
    shards keep every sample exactly once, so ranks may differ by one batch (metrics reduced as
    sums, e.g. torchmetrics or ``self.log(sync_dist=True)``, stay exact).
    """

    small = True
    padding: int = 4  # the dataset's recipe; ``crop_padding`` overrides it per instance
    padding_mode: ClassVar[str] = "reflect"

    def __init__(self, *args: Any, crop_padding: int | None = None, **kwargs: Any) -> None:
        """``crop_padding``: padding of the train random crop; ``None`` keeps the dataset's recipe,
        ``0`` turns the crop off (the flip stays). Other arguments: see :class:`ImageDataModule`."""
        super().__init__(*args, **kwargs)
        if crop_padding is not None:
            self.padding = check_int("crop_padding", crop_padding, 0)
        self._device_cache: dict[tuple[str, torch.device], tuple[Tensor, Tensor]] = {}

    def _load_tensors(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def _load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        (train_x, train_y), (val_x, val_y) = self._load_tensors()
        expected = (self.in_chans, self.image_size, self.image_size)
        for split, x, y in (("train", train_x, train_y), ("val", val_x, val_y)):
            if x.dtype != torch.uint8 or tuple(x.shape[1:]) != expected or y.shape != x.shape[:1]:
                raise ValueError(
                    f"{self.name} {split}: expected uint8 images (N, {', '.join(map(str, expected))}) and N labels, "
                    f"got {x.dtype} {tuple(x.shape)} and {tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(
                    f"{self.name} {split}: labels must lie in [0, {self.num_classes}), got "
                    f"[{int(y.min())}, {int(y.max())}]"
                )
        self._device_cache.clear()
        return (train_x, train_y.long()), (val_x, val_y.long())

    # -- where the loaders run -----------------------------------------------------------
    def _on(self, split: str, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (split, device)
        if key not in self._device_cache:  # copy once, keep for every epoch
            x, y = self.train_set if split == "train" else self.val_set
            self._device_cache[key] = (x.to(device).contiguous(), y.to(device))
        return self._device_cache[key]

    def train_transform(self) -> v2.Transform:
        """The per-sample train augmentation of the DataLoader path (uint8 tensor in, normalised float out)."""
        return v2.Compose(
            [
                v2.RandomCrop(self.image_size, padding=self.padding, padding_mode=self.padding_mode),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )

    def val_transform(self) -> v2.Transform:
        """The per-sample validation transform: to float and normalise."""
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    def train_dataloader(self) -> DeviceLoader | DataLoader:
        self._require_setup()
        if not self.on_device:
            return self._loader(TensorImageDataset(*self.train_set, self.train_transform()), self.batch_size, True)
        device, rank, world = self._placement()
        x, y = self._on("train", device)
        return DeviceLoader(
            x,
            y,
            self.batch_size,
            self.mean,
            self.std,
            shuffle=True,
            padding=self.padding,
            padding_mode=self.padding_mode,
            flip=True,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )

    def val_dataloader(self) -> DeviceLoader | DataLoader:
        self._require_setup()
        if not self.on_device:
            return self._loader(TensorImageDataset(*self.val_set, self.val_transform()), self.eval_batch_size, False)
        device, rank, world = self._placement()
        x, y = self._on("val", device)
        return DeviceLoader(x, y, self.eval_batch_size, self.mean, self.std, rank=rank, world_size=world)

    def evaluation_dataloader(self, device: torch.device | str | None = None) -> DeviceLoader | DataLoader:
        self._require_setup()
        if not self.on_device:
            return self._loader(TensorImageDataset(*self.val_set, self.val_transform()), self.eval_batch_size, False)
        x, y = self._on("val", torch.device(device if device is not None else "cpu"))
        return DeviceLoader(x, y, self.eval_batch_size, self.mean, self.std)
