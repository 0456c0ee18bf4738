"""What the three examples share: the images as float tensors, seeded batches, the arguments, a training loop.

Not an example itself: ``segmentation.py``, ``video.py`` and ``regression.py`` import it (Python puts a
script's own folder on ``sys.path``, so they run from any folder).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Iterator, TypeVar

import torch
from torch import Tensor, nn

from openmix import Mixer
from openmix.data import build_datamodule

__all__ = ["parser", "load_images", "batches", "train", "compare"]

Metric = TypeVar("Metric")


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every example takes; each adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, or synthetic for a smoke test")
    p.add_argument("--root", default="data", help="where build_datamodule looks for the dataset")
    p.add_argument("--steps", type=int, default=300, help="training steps per run (the same for every run)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-size", type=int, default=None, help="the first N training images (default all)")
    p.add_argument("--test-size", type=int, default=10_000, help="the first N test images")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    return p


def load_images(args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train images, train labels, test images, test labels; images float ``(N, 1, 28, 28)`` in [0, 1]."""
    extra = {}
    if args.dataset == "synthetic":  # random class patterns, grey 28x28 like Fashion-MNIST
        extra = dict(num_samples=args.train_size or 256, num_val_samples=args.test_size, image_size=28, in_chans=1)
    datamodule = build_datamodule(args.dataset, root=args.root, batch_size=args.batch_size, **extra)
    datamodule.setup("fit")
    (train_x, train_y), (test_x, test_y) = datamodule.train_set, datamodule.val_set
    train_x, train_y = train_x[: args.train_size], train_y[: args.train_size]
    test_x, test_y = test_x[: args.test_size], test_y[: args.test_size]
    return train_x.float() / 255, train_y, test_x.float() / 255, test_y


def batches(num_samples: int, batch_size: int, steps: int, seed: int) -> Iterator[Tensor]:
    """``steps`` index batches from seeded shuffles of ``range(num_samples)``: the same for every run."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(num_samples, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def train(model: nn.Module, step_loss: Callable[[Tensor], Tensor], num_samples: int,
          args: argparse.Namespace) -> float:
    """Train ``model`` for ``args.steps`` steps of AdamW, one-cycle learning rate (10% warm-up, then
    cosine); ``step_loss(index)`` makes a batch of those samples, mixes it and returns its loss.
    Returns the seconds it took."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    model.train()
    start = time.perf_counter()
    for index in batches(num_samples, args.batch_size, args.steps, args.seed):
        loss = step_loss(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return time.perf_counter() - start


def compare(runs: dict[str, Mixer | None], make_model: Callable[[], nn.Module],
            step_loss: Callable[[nn.Module, Mixer | None, Tensor], Tensor],
            evaluate: Callable[[nn.Module], tuple[Metric, str]], num_samples: int,
            args: argparse.Namespace) -> dict[str, Metric]:
    """Train one model per run (``None``: no mixing) from the same initial weights on the same batches,
    with ``step_loss(model, mixer, index)``; print a line per run with what ``evaluate(model)`` says of it
    and return its metrics by run."""
    results = {}
    for name, mixer in runs.items():
        torch.manual_seed(args.seed)  # the same initial weights for every run
        model = make_model()
        seconds = train(model, lambda index: step_loss(model, mixer, index), num_samples, args)
        results[name], line = evaluate(model)
        print(f"{name:8s} {line}  ({args.steps} steps, {seconds:.0f} s)", flush=True)
    return results
