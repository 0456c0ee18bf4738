"""Tiny-ImageNet (200 classes, 64x64) from the layout of the official zip."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from openmix.data.base import register_datamodule
from openmix.data.imagefolder import FileImageDataset, _FileDataModule

__all__ = ["TinyImageNetDataModule"]

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


@register_datamodule("tiny_imagenet")
class TinyImageNetDataModule(_FileDataModule):
    """Tiny-ImageNet: ``<root>/tiny-imagenet-200/`` as unzipped from the official archive.

    Layout: ``wnids.txt`` (the 200 class ids), ``train/<wnid>/images/*.JPEG`` (500 per class) and
    ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (file, wnid, box; tab
    separated); the 10,000 val images are the validation split. Labels index the sorted wnids
    (the order an ImageFolder on ``train/`` gives). Train: RandomResizedCrop 64 (bicubic) + flip,
    OpenMixup's recipe; val: the 64x64 images as they are. ImageNet statistics.

    Example:
        >>> dm = TinyImageNetDataModule(root="data", batch_size=100)
        >>> dm.num_classes, dm.in_chans, dm.image_size
        (200, 3, 64)
    """

    num_classes = 200
    image_size = 64

    @property
    def folder(self) -> Path:
        return self.root / "tiny-imagenet-200"

    def _download(self) -> None:
        if not (self.folder / "wnids.txt").is_file():
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(URL, str(self.root), md5=MD5)

    def val_transform(self) -> v2.Transform:
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    def _load(self) -> tuple[FileImageDataset, FileImageDataset]:
        wnids_file, annotations = self.folder / "wnids.txt", self.folder / "val" / "val_annotations.txt"
        if not (wnids_file.is_file() and annotations.is_file() and (self.folder / "train").is_dir()):
            raise FileNotFoundError(
                f"Tiny-ImageNet not found: expected {wnids_file}, {self.folder / 'train'}/<wnid>/images/*.JPEG, "
                f"{self.folder / 'val' / 'images'}/*.JPEG and {annotations}. Pass download=True "
                f"(data.download=true) to fetch {URL} (about 240 MB), or unzip it into {self.root}."
            )
        wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
        if len(wnids) != self.num_classes:
            raise ValueError(f"{wnids_file}: expected {self.num_classes} class ids, found {len(wnids)}")
        index = {wnid: i for i, wnid in enumerate(wnids)}
        train = [
            (str(path), label)
            for wnid, label in index.items()
            if (self.folder / "train" / wnid / "images").is_dir()
            for path in sorted((self.folder / "train" / wnid / "images").iterdir())
            if path.suffix.lower() in IMG_EXTENSIONS
        ]
        val = []
        for n, line in enumerate(annotations.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise ValueError(
                    f"{annotations}:{n}: expected '<file>\\t<wnid>\\t...' with a wnid from wnids.txt, got {line!r}"
                )
            path = self.folder / "val" / "images" / fields[0]
            if not path.is_file():
                raise FileNotFoundError(f"{annotations}:{n} names {path}, which does not exist")
            val.append((str(path), index[fields[1]]))
        if not train or not val:
            raise FileNotFoundError(
                f"Tiny-ImageNet under {self.folder} has {len(train)} train and {len(val)} val images; expected both"
            )
        return FileImageDataset(train, self.train_transform()), FileImageDataset(val, self.val_transform())
