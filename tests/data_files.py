"""Write tiny datasets in the real on-disk formats (CIFAR pickles, IDX, Tiny-ImageNet, ImageFolder)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def random_images(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """uint8 ``(n, channels, size, size)`` noise, different for every seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def _pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> dict[str, torch.Tensor]:
    """``<root>/cifar-10-batches-py/data_batch_1..5, test_batch`` with bytes keys, as Python 2 wrote them."""
    out = {}
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    for split, names, n, seed in (("train", batches, per_batch, 0), ("test", ["test_batch"], n_test, 100)):
        xs, ys = [], []
        for k, name in enumerate(names):
            x = random_images(n, 3, 32, seed=seed + k)
            y = [(3 * i + k) % 10 for i in range(n)]
            entry = {
                b"batch_label": name.encode(),
                b"labels": y,
                b"data": x.reshape(n, -1).numpy(),
                b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
            }
            _pickle(root / "cifar-10-batches-py" / name, entry)
            xs.append(x)
            ys.append(torch.tensor(y))
        out[f"{split}_x"], out[f"{split}_y"] = torch.cat(xs), torch.cat(ys)
    return out


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 8) -> dict[str, torch.Tensor]:
    """``<root>/cifar-100-python/train, test`` with str keys, fine and coarse labels."""
    out = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        x = random_images(n, 3, 32, seed)
        fine = [(7 * i + seed) % 100 for i in range(n)]
        _pickle(
            root / "cifar-100-python" / split,
            {"data": x.reshape(n, -1).numpy(), "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]},
        )
        out[f"{split}_x"], out[f"{split}_y"] = x, torch.tensor(fine)
    return out


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """An uint8 IDX file: zero, zero, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_fashion(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> dict[str, torch.Tensor]:
    """The four Fashion-MNIST IDX files in ``folder``."""
    out = {}
    for prefix, n, seed in (("train", n_train, 3), ("t10k", n_test, 4)):
        x = random_images(n, 1, 28, seed)[:, 0]
        y = torch.arange(n) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x.numpy(), gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y.to(torch.uint8).numpy(), gz)
        out[f"{prefix}_x"], out[f"{prefix}_y"] = x.unsqueeze(1), y
    return out


def _save(path: Path, chw: torch.Tensor, **kwargs) -> None:
    """``chw`` uint8 ``(C, H, W)`` as an image file: RGB for 3 channels, grey ("L") for 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(chw.permute(1, 2, 0).squeeze(-1).numpy()).save(path, **kwargs)


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """uint8 ``(n, 3, size, size)`` smooth colour fields (JPEG keeps them nearly intact)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 2, 2, generator=g)
    return (torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear") * 255).round().to(torch.uint8)


def write_tiny_imagenet(root: Path, classes_with_images: int = 3, per_class: int = 2, n_val: int = 4) -> dict:
    """``<root>/tiny-imagenet-200``: 200 wnids, JPEG train images for the first few, val with annotations."""
    folder = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(200)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # the file's order is not label order
    for c in range(classes_with_images):
        for i, img in enumerate(smooth_images(per_class, 64, seed=c)):
            _save(folder / "train" / wnids[c] / "images" / f"{wnids[c]}_{i}.JPEG", img, quality=95)
    val_labels, lines = [], []
    for i, img in enumerate(smooth_images(n_val, 64, seed=99)):
        label = (i * 2) % classes_with_images
        _save(folder / "val" / "images" / f"val_{i}.JPEG", img, quality=95)
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
        val_labels.append(label)
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {"folder": folder, "val_y": torch.tensor(val_labels), "n_train": classes_with_images * per_class}


def write_imagefolder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "eel"),
    per_class: int = 2,
    size: int = 36,
    ext: str = "png",
    channels: int = 3,
) -> dict:
    """``<root>/train/<class>/*.{ext}`` and ``<root>/val/<class>/*.{ext}`` (RGB, or grey with
    ``channels=1``); val images returned by class."""
    val = {}
    for split, seed in (("train", 10), ("val", 20)):
        for c, name in enumerate(classes):
            images = random_images(per_class, channels, size, seed + c)
            for i, img in enumerate(images):
                _save(root / split / name / f"{i}.{ext}", img)
            if split == "val":
                val[name] = images
    return val
