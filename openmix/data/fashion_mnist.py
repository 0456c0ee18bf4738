"""Fashion-MNIST from its IDX files, found in ``root``, torchvision's layout or Debian's package."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import Tensor

from openmix.data.base import TensorDataModule, register_datamodule
from openmix.data.formats import read_idx

__all__ = ["FashionMNISTDataModule"]

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@register_datamodule("fashion_mnist")
class FashionMNISTDataModule(TensorDataModule):
    """Fashion-MNIST: 28x28 grey images, 10 classes, 60,000 train and the 10,000 test images as val.

    The four IDX files (each raw or ``.gz``) are looked for in ``root`` itself, then in
    torchvision's ``<root>/FashionMNIST/raw/``, then in ``/usr/share/datasets/fashion-mnist/``
    (Debian's ``dataset-fashion-mnist`` package); with ``download=True`` torchvision fetches
    them into ``<root>/FashionMNIST/raw/``. Train augmentation, as in the FMix paper:
    RandomCrop 28 with 4 pixels of zero padding and a horizontal flip.

    Example:
        >>> dm = FashionMNISTDataModule(root="data", batch_size=128)
        >>> dm.num_classes, dm.in_chans, dm.image_size, dm.mean, dm.std
        (10, 1, 28, (0.286,), (0.353,))
    """

    num_classes = 10
    in_chans = 1
    image_size = 28
    mean = (0.2860,)
    std = (0.3530,)
    padding = 4
    padding_mode = "constant"
    system_dir: ClassVar[Path] = Path("/usr/share/datasets/fashion-mnist")

    def search_dirs(self) -> list[Path]:
        """Where the IDX files are looked for, in order."""
        return [self.root, self.root / "FashionMNIST" / "raw", self.system_dir]

    def find(self) -> dict[str, Path] | None:
        """The four files from the first folder that holds all of them (raw preferred to ``.gz``)."""
        for folder in self.search_dirs():
            found = {}
            for name in FILES:
                for candidate in (folder / name, folder / f"{name}.gz"):
                    if candidate.is_file():
                        found[name] = candidate
                        break
            if len(found) == len(FILES):
                return found
        return None

    def _download(self) -> None:
        if self.find() is None:
            import torchvision.datasets

            torchvision.datasets.FashionMNIST(str(self.root), download=True)

    def _load_tensors(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        files = self.find()
        if files is None:
            raise FileNotFoundError(
                f"Fashion-MNIST not found: looked for {', '.join(FILES)} (each raw or .gz) in "
                f"{', '.join(str(d) for d in self.search_dirs())}. Install it with "
                f"`apt-get install dataset-fashion-mnist`, or pass download=True (data.download=true)."
            )

        def read(prefix: str) -> tuple[Tensor, Tensor]:
            image_file, label_file = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
            images, labels = read_idx(image_file), read_idx(label_file)
            if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"Fashion-MNIST {prefix}: expected images (N, 28, 28) and N labels, got {tuple(images.shape)} "
                    f"in {image_file} and {tuple(labels.shape)} in {label_file}"
                )
            return images.unsqueeze(1), labels.long()

        return read("train"), read("t10k")
