"""Video classification with CutMix on "moving Fashion-MNIST": one cut for every frame of a clip.

Each clip ``(1, T, H, W)`` is a real Fashion-MNIST garment moving across a 36x36 canvas for 4 frames
at its own velocity (up to 2 pixels a frame in x and y, drawn once per clip from a seeded
generator). A tiny 3-D conv net classifies the clips, once without mixing and once with CutMix at
``spatial_axes=2``: the mixer cuts in space only, so a box of the partner's clip is pasted into the
same place in every frame (the script asserts it on every batch). Same seed, same initial weights,
same batches and steps for both runs. It prints one line per run: clip top-1 on the test clips.

Run (95 s on one CPU thread of a shared 2-core machine)::

    OMP_NUM_THREADS=1 python benchmarks/examples/video.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import openmix
from _common import compare, load_images, parser

FRAMES, PAD, MAX_SPEED = 4, 4, 2  # 4 frames on a canvas of 28 + 2 * 4 pixels


def velocities(count: int, seed: int) -> Tensor:
    """Each clip's ``(vx, vy)`` in whole pixels per frame, in ``[-2, 2]``."""
    return torch.randint(-MAX_SPEED, MAX_SPEED + 1, (count, 2), generator=torch.Generator().manual_seed(seed))


def make_clips(images: Tensor, velocity: Tensor) -> Tensor:
    """Images ``(B, 1, S, S)`` moving at ``velocity`` ``(B, 2)``: clips ``(B, 1, T, S + 2 PAD, S + 2 PAD)``.
    The garment's corner starts where its path stays on the canvas."""
    size = images.shape[-1]
    grid = torch.arange(size + 2 * PAD)
    start = PAD - velocity * (FRAMES - 1) // 2  # the corner moves by at most 3 * 2 = 2 * PAD pixels
    frames = []
    for t in range(FRAMES):
        corner = start + velocity * t
        rows, cols = grid - corner[:, 1:], grid - corner[:, :1]  # (B, canvas): the image row/column shown there
        inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
        picked = images[:, 0].gather(1, rows.clamp(0, size - 1)[:, :, None].expand(-1, -1, size))
        picked = picked.gather(2, cols.clamp(0, size - 1)[:, None, :].expand(-1, grid.numel(), -1))
        frames.append(picked * inside)
    return torch.stack(frames, 1).unsqueeze(1)


def block(cin: int, cout: int, stride: tuple[int, int, int] = (1, 1, 1)) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


def tiny_3d_net(width: int = 8, classes: int = 10) -> nn.Sequential:
    """Clip logits: three 3x3x3 conv blocks (the first strided in space, then a pooling of time and space),
    then a global average."""
    return nn.Sequential(block(1, width, (1, 2, 2)), block(width, 2 * width), nn.MaxPool3d(2),
                         block(2 * width, 4 * width), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                         nn.Linear(4 * width, classes))


@torch.inference_mode()
def top1(model: nn.Module, images: Tensor, labels: Tensor, velocity: Tensor) -> float:
    correct = 0
    for start in range(0, images.shape[0], 500):
        clips = make_clips(images[start : start + 500], velocity[start : start + 500])
        correct += int((model(clips).argmax(1) == labels[start : start + 500]).sum())
    return correct / images.shape[0]


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    train_x, train_y, test_x, test_y = load_images(args)
    train_v, test_v = velocities(train_x.shape[0], args.seed), velocities(test_x.shape[0], args.seed + 1)

    def step_loss(model: nn.Module, mixer: openmix.Mixer | None, index: Tensor) -> Tensor:
        clips, labels = make_clips(train_x[index], train_v[index]), train_y[index]
        if mixer is None:
            return F.cross_entropy(model(clips), labels)
        out = mixer(clips, labels)
        batch, _, _, height, width = clips.shape
        assert out.mask.shape == (batch, 1, 1, height, width)  # one cut per clip, broadcast over time
        assert torch.equal(out.x, torch.where(out.mask > 0.5, clips, clips[out.index]))  # in every frame
        return openmix.losses.soft_cross_entropy(model(out.x), out.y)

    def report(model: nn.Module) -> tuple[float, str]:
        accuracy = top1(model, test_x, test_y, test_v)
        return accuracy, f"clip top-1 {accuracy:.2%} on {test_x.shape[0]} test clips"

    runs = {"none": None,
            "cutmix": openmix.build("cutmix", alpha=1.0, num_classes=10, spatial_axes=2, seed=args.seed)}
    return compare(runs, tiny_3d_net, step_loss, report, train_x.shape[0], args)


if __name__ == "__main__":
    main()
