"""Regression with mixup on real Fashion-MNIST: the same draw mixes the images and their target values.

The target is each garment's foreground area: the fraction of its pixels brighter than 0.15 (the
silhouettes of ``openmix.cli.show.silhouettes``). The image determines it; the class only partly
(predicting each class's mean area leaves an RMSE of about 0.09, the overall mean about 0.15). A
small conv net learns it with an MSE loss, once without mixing, once with mixup (``out = mixer(x)``,
targets ``out.vector(area)``), and once with C-Mixup (``pairing="label_kernel"``: partners drawn
by how close their areas are, ``mixer(x, pair_by=area)``). Same seed, same initial weights, same
batches and steps for every run. It prints one line per run: RMSE on the test set; then, for each
mixer, how far its mixed targets are from the foreground area the mixed test images really have
(a blend's thresholded area is not the shares' mean of the two areas).

Run (50 s on one CPU thread of a shared 2-core machine)::

    OMP_NUM_THREADS=1 python benchmarks/examples/regression.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import openmix
from _common import compare, load_images, parser
from openmix.targets import silhouettes


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_regressor(width: int = 16) -> nn.Sequential:
    """One value per image ``(B, 1)``: three conv blocks, a global average, a linear layer."""
    return nn.Sequential(block(1, width), block(width, 2 * width, 2), block(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 1))


def foreground_area(images: Tensor, labels: Tensor) -> Tensor:
    """The fraction of each image's pixels that are foreground, ``(N, 1)``."""
    seg, _ = silhouettes(images, labels)
    return (seg > 0).float().mean((1, 2)).unsqueeze(1)


@torch.inference_mode()
def predict(model: nn.Module, images: Tensor) -> Tensor:
    return torch.cat([model(images[start : start + 1000]) for start in range(0, images.shape[0], 1000)])


def rmse(predicted: Tensor, target: Tensor) -> float:
    return float(F.mse_loss(predicted, target).sqrt())


def mix(mixer: openmix.Mixer, x: Tensor, area: Tensor) -> tuple[Tensor, Tensor]:
    """The mixed images and their targets: the draw mixes the images, ``out.vector`` the areas by its shares."""
    out = mixer(x, pair_by=area) if mixer.pairing == "label_kernel" else mixer(x)  # C-Mixup pairs by the areas
    return out.x, out.vector(area)  # lam * area + (1 - lam) * area[index]


def target_gap(mixer: openmix.Mixer, images: Tensor, labels: Tensor, batch_size: int) -> float:
    """RMS of how far the mixed targets are from the foreground area the mixed images really have."""
    gaps = []
    for start in range(0, images.shape[0], batch_size):
        x, labels_now = images[start : start + batch_size], labels[start : start + batch_size]
        mixed, target = mix(mixer, x, foreground_area(x, labels_now))
        gaps.append(foreground_area(mixed, labels_now) - target)
    return float(torch.cat(gaps).square().mean().sqrt())


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--bandwidth", type=float, default=0.05, help="C-Mixup's kernel width, in area units")
    args = p.parse_args(argv)
    train_x, train_y, test_x, test_y = load_images(args)
    train_area, test_area = foreground_area(train_x, train_y), foreground_area(test_x, test_y)
    counts = torch.bincount(train_y, minlength=10).clamp(min=1).unsqueeze(1)
    class_mean = torch.zeros(10, 1).index_add_(0, train_y, train_area) / counts
    print(f"reference test RMSE {rmse(train_area.mean().expand_as(test_area), test_area):.4f} predicting the train "
          f"mean, {rmse(class_mean[test_y], test_area):.4f} predicting each class's train mean")

    def step_loss(model: nn.Module, mixer: openmix.Mixer | None, index: Tensor) -> Tensor:
        x, area = train_x[index], train_area[index]
        if mixer is not None:
            x, area = mix(mixer, x, area)
        return F.mse_loss(model(x), area)

    def report(model: nn.Module) -> tuple[float, str]:
        error = rmse(predict(model, test_x), test_area)
        return error, f"test RMSE {error:.4f}"

    runs = {"none": None,
            "mixup": openmix.build("mixup", alpha=1.0, seed=args.seed),
            "c-mixup": openmix.build("mixup", alpha=1.0, pairing="label_kernel", bandwidth=args.bandwidth,
                                     seed=args.seed)}
    results = compare(runs, small_regressor, step_loss, report, train_x.shape[0], args)
    for name, mixer in runs.items():  # after training: these draws do not change what the runs trained on
        if mixer is not None:
            print(f"{name:8s} mixed test images: targets off their own foreground area by "
                  f"{target_gap(mixer, test_x, test_y, args.batch_size):.4f} RMS")
    return results


if __name__ == "__main__":
    main()
