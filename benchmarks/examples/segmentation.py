"""Segmentation with CutMix on real Fashion-MNIST: one draw mixes the images and their class maps.

Each image's class map is its silhouette (``openmix.cli.show.silhouettes``): pixels brighter than
0.15 take the garment's class + 1, the rest are background 0, so 11 classes. A tiny fully
convolutional net learns to label every pixel, once without mixing and once with CutMix, where
``out = mixer(x)`` mixes the images and ``out.class_map(seg)`` gives each pixel the class of the image
it shows. Same seed, same initial weights, same batches and steps for both runs. It prints one line
per run: pixel accuracy and mean IoU (over the 11 classes) on the test set.

Run (75 s on one CPU thread of a shared 2-core machine)::

    OMP_NUM_THREADS=1 python benchmarks/examples/segmentation.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import openmix
from _common import compare, load_images, parser
from openmix.targets import silhouettes

CLASSES = 11  # background + the 10 garments


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyFCN(nn.Module):
    """Per-pixel logits ``(B, 11, H, W)``: an encoder at 1, 1/2 and 1/4 of the size with a global context
    term at the bottom (what garment it is), and a decoder that adds each level back."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.enc1, self.enc2 = block(1, width), block(width, 2 * width, 2)
        self.enc3 = nn.Sequential(block(2 * width, 4 * width, 2), block(4 * width, 4 * width))
        self.context = nn.Conv2d(4 * width, 4 * width, 1)
        self.up3, self.up2 = nn.Conv2d(4 * width, 2 * width, 1), nn.Conv2d(2 * width, width, 1)
        self.head = nn.Conv2d(width, CLASSES, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e3 = e3 + self.context(e3.mean((2, 3), keepdim=True))
        d2 = e2 + F.interpolate(self.up3(e3), size=e2.shape[-2:], mode="bilinear")
        d1 = e1 + F.interpolate(self.up2(F.relu(d2)), size=e1.shape[-2:], mode="bilinear")
        return self.head(F.relu(d1))


@torch.inference_mode()
def evaluate(model: nn.Module, images: Tensor, seg: Tensor) -> dict[str, float]:
    """Pixel accuracy and mean IoU over the classes present, from one confusion matrix."""
    confusion = torch.zeros(CLASSES * CLASSES, dtype=torch.long)
    for start in range(0, images.shape[0], 1000):
        predicted = model(images[start : start + 1000]).argmax(1)
        pairs = seg[start : start + 1000] * CLASSES + predicted
        confusion += torch.bincount(pairs.flatten(), minlength=CLASSES * CLASSES)
    confusion = confusion.view(CLASSES, CLASSES).double()  # rows: truth, columns: prediction
    hits, truth, predicted = confusion.diag(), confusion.sum(1), confusion.sum(0)
    iou = hits / (truth + predicted - hits)
    return {"pixel_accuracy": float(hits.sum() / confusion.sum()), "mean_iou": float(iou[truth > 0].mean())}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    train_x, train_y, test_x, test_y = load_images(args)
    train_seg, _ = silhouettes(train_x, train_y)
    test_seg, _ = silhouettes(test_x, test_y)

    def step_loss(model: nn.Module, mixer: openmix.Mixer | None, index: Tensor) -> Tensor:
        x, seg = train_x[index], train_seg[index]
        if mixer is not None:
            out = mixer(x)  # the draw: the images only
            x, seg = out.x, out.class_map(seg)  # each pixel takes the class of the image it shows
        return F.cross_entropy(model(x), seg)

    def report(model: nn.Module) -> tuple[dict[str, float], str]:
        metrics = evaluate(model, test_x, test_seg)
        return metrics, f"pixel accuracy {metrics['pixel_accuracy']:.2%}  mean IoU {metrics['mean_iou']:.2%}"

    runs = {"none": None, "cutmix": openmix.build("cutmix", alpha=1.0, seed=args.seed)}
    return compare(runs, TinyFCN, step_loss, report, train_x.shape[0], args)


if __name__ == "__main__":
    main()
