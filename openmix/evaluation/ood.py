"""Out-of-distribution detection by the maximum softmax probability (Hendrycks & Gimpel 2017).

A classifier's top softmax probability is its score for "this image is one of my classes": the
AUROC of that score, in-distribution test images against images of another real set, says how
well it tells them apart (50%: not at all, 100%: perfectly). Thulasidasan et al. (NeurIPS 2019)
report that mixup-trained networks are better calibrated and better at this.

The out-of-distribution images (:func:`ood_images`):

* ``"digits"``: the 1,797 handwritten digits that scikit-learn ships (UCI's optical digits test
  set, 8x8 pixels of 0-16, white on black as in MNIST and Fashion-MNIST), read from its package
  files (no download; ``pip install scikit-learn``), scaled to [0, 1] and resized (bilinear,
  antialiased) to the in-distribution size, their one channel repeated for RGB models;
* a folder: every image file under it (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.ppm``, any
  depth, sorted by path), converted to the channels and resized to the size of the data.

Example:
    >>> import torch
    >>> round(auroc(torch.tensor([0.9, 0.8, 0.4]), torch.tensor([0.5, 0.3])), 2)  # 5 of the 6 pairs ordered
    83.33
    >>> max_softmax(torch.tensor([[0.0, 0.0], [10.0, 0.0]])).tolist()
    [0.5, 0.9999545812606812]
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["auroc", "max_softmax", "ood_images", "check_source", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def max_softmax(logits: Tensor) -> Tensor:
    """``(N, K)`` logits -> ``(N,)`` highest class probability, in float32 or wider."""
    return logits.float().softmax(dim=1).amax(dim=1)


def auroc(positive: Tensor, negative: Tensor) -> float:
    """Area under the ROC curve (%) of scores ``positive`` ``(P,)`` against ``negative`` ``(N,)``:
    the chance that a random positive scores above a random negative, ties counting half
    (the Mann-Whitney statistic, from average ranks)."""
    if positive.numel() == 0 or negative.numel() == 0:
        raise ValueError(f"auroc needs scores of both kinds, got {positive.numel()} and {negative.numel()}")
    scores = torch.cat([positive.flatten(), negative.flatten()]).double()
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).double()  # ranks are 1-based; a tied group shares its mean rank
    ranks = (last_rank - (counts.double() - 1) / 2)[inverse]
    p, n = positive.numel(), negative.numel()
    return float((ranks[:p].sum() - p * (p + 1) / 2) / (p * n) * 100)


def check_source(source: object) -> None:
    """Raise ``ValueError`` unless ``source`` can give images: ``"digits"`` with scikit-learn installed,
    or an existing folder (checked before any work; :func:`ood_images` checks what it reads too)."""
    import importlib.util

    if not isinstance(source, str) or not source:
        raise ValueError(f"ood must be 'digits' or a folder of images, got {source!r}")
    if source == "digits" and importlib.util.find_spec("sklearn") is None:
        raise ValueError("ood='digits' reads the handwritten digits scikit-learn ships: pip install scikit-learn")
    if source != "digits" and not Path(source).is_dir():
        raise ValueError(f"ood must be 'digits' or a folder of images; {source!r} is neither")


def ood_images(source: str, *, size: tuple[int, int], in_chans: int) -> Tensor:
    """The out-of-distribution images of ``source`` (``"digits"`` or a folder, see the module's
    docstring) as pixels in [0, 1], ``(M, in_chans, *size)`` float32."""
    if source == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError("eval.ood=digits reads the digits scikit-learn ships: pip install scikit-learn") from None
        images = _resized(torch.from_numpy(load_digits().images).float().div(16.0).unsqueeze(1), size)
        return images.expand(-1, in_chans, -1, -1).contiguous()
    return _folder_images(Path(source), size, in_chans)


def _resized(images: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0.0, 1.0)


def _folder_images(folder: Path, size: tuple[int, int], in_chans: int) -> Tensor:
    import numpy as np
    from PIL import Image

    if not folder.is_dir():
        raise FileNotFoundError(f"eval.ood: {folder} is neither 'digits' nor a folder of images")
    if in_chans not in (1, 3):
        raise ValueError(f"eval.ood: a folder of images gives 1 or 3 channels, the data has {in_chans}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"eval.ood: no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    images = []
    for path in files:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L" if in_chans == 1 else "RGB"), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1)
        images.append(_resized(pixels.unsqueeze(0), size))
    return torch.cat(images)
