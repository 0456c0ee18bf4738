"""Images per second of one training epoch: the device-resident path against the DataLoader path.

Both iterate the same synthetic CIFAR-sized set (uint8 3x32x32) with the same augmentation
(random crop, 4 pixels of reflect padding, horizontal flip) to normalised float32 batches.
Each row is the best of ``--repeats`` epochs (the machine may be shared)::

    python -m openmix.data.bench --num-samples 50000 --batch-size 100 --workers 0 2
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from openmix.data.synthetic import SyntheticDataModule


def epoch_rate(dm: SyntheticDataModule, repeats: int) -> float:
    """Best images/s over ``repeats`` full passes of ``dm.train_dataloader()``."""
    loader, best = dm.train_dataloader(), float("inf")
    for _ in range(repeats):
        start, seen = time.perf_counter(), 0
        for x, _ in loader:
            seen += x.shape[0]
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return seen / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=50000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="DataLoader worker counts to try")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="device of the device-resident path")
    args = parser.parse_args(argv)

    common = dict(num_samples=args.num_samples, num_val_samples=1, batch_size=args.batch_size, image_size=32)
    rows = []
    dm = SyntheticDataModule(on_device=True, **common)
    dm.setup("fit")
    if args.device != "cpu":  # what a Trainer on that device would tell the datamodule
        strategy = SimpleNamespace(root_device=torch.device(args.device))
        dm.trainer = SimpleNamespace(strategy=strategy, global_rank=0, world_size=1)
    rows.append((f"device-resident ({args.device})", epoch_rate(dm, args.repeats)))
    for workers in args.workers:
        dm = SyntheticDataModule(on_device=False, num_workers=workers, **common)
        dm.setup("fit")
        rows.append((f"DataLoader, {workers} workers", epoch_rate(dm, args.repeats)))
    print(
        f"{args.num_samples} images 3x32x32, batch {args.batch_size}, crop+flip+normalise, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for name, rate in rows:
        print(f"{name:28s} {rate:>10,.0f} images/s  ({rate / rows[0][1]:.2f}x device path)")


if __name__ == "__main__":
    main()
