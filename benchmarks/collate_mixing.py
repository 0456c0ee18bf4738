"""Images/s of a training loop's data and mixing: mixing on the device after a plain DataLoader,
against mixing inside the DataLoader workers (:class:`openmix.data.MixingCollate`).

For each data path openmix ships, each worker count and each mixer, one loop takes every batch
of an epoch, moves it to ``--device`` and (device mixing) mixes it there; collate mixing gets
batches already mixed by the workers. ``none`` rows are the data alone; ``x none`` is a row's
rate over the ``none`` row of its path and worker count. Each configuration keeps its own
DataLoader (persistent workers, as the datamodules make them), is warmed up by one epoch, then
timed for ``--rounds`` epochs, round-robin in a shuffled order each round; the median is shown.

A second table times the parts of one batch in this process (median of ``--repeat`` round-robin
rounds), which the loop's rates hide under the load of a shared machine: making its samples (decode
and per-sample augmentation, what the workers spend most on), stacking them (``default_collate``),
stacking and mixing them (:class:`~openmix.data.MixingCollate`: what collate mixing costs a worker)
and, on ``--device``, mixing the stacked batch (what device mixing costs the training process).

Data paths:

- ``imagefolder``: a temporary ImageFolder tree of ``--images`` JPEG files (10 classes, sides
  ``1.25 * --image-size``), decoded and augmented (RandomResizedCrop + flip + normalise) per
  sample in the workers;
- ``fashion_mnist``: Fashion-MNIST (``--fashion-root``, or Debian's dataset-fashion-mnist)
  through the DataLoader path (``on_device=False``: per-sample crop + flip + normalise), the
  first ``--images`` training images;
- ``fashion_mnist_on_device``: the same images on the device path (no workers, batched crop and
  flip there): the default for the small sets, with device mixing only.

Usage::

    python benchmarks/collate_mixing.py                       # CPU: both paths, mixup and cutmix, 0 and 2 workers
    python benchmarks/collate_mixing.py --data imagefolder --image-size 224 --images 1024
    python benchmarks/collate_mixing.py --device cuda --workers 0 4 8
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import default_collate

import openmix
from openmix.data import DeviceLoader, MixingCollate, build_datamodule

PATHS = ("imagefolder", "fashion_mnist", "fashion_mnist_on_device")
CLASSES = 10


@dataclass
class Config:
    path: str
    workers: int | None  # None: no DataLoader (the device path)
    mixer: str | None  # None: no mixing
    where: str  # "none", "device" or "workers"
    loader: Any = None
    device_mixer: Any = None
    rates: list[float] | None = None

    @property
    def group(self) -> tuple[str, int | None]:
        return self.path, self.workers


def write_tree(root: Path, images: int, side: int, seed: int = 0) -> None:
    """``images`` JPEG training images in 10 class folders (and one val image per class): smooth
    colour fields with noise, so that they compress like photographs rather than like noise."""
    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", images), ("val", CLASSES)):
        for i in range(count):
            low = torch.rand(1, 3, 4, 4, generator=g)
            field = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear", align_corners=False)[0]
            pixels = (field + 0.05 * torch.randn(field.shape, generator=g)).clamp(0, 1).mul(255).to(torch.uint8)
            folder = root / split / f"class_{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i}.jpg", quality=90)


def datamodule(path: str, args: argparse.Namespace, tree: Path, workers: int, mixer: Any) -> Any:
    """The datamodule of a data path, ready to give its training DataLoader."""
    common = {"batch_size": args.batch, "num_workers": workers, "seed": 0, "collate_mixer": mixer}
    if path == "imagefolder":
        dm = build_datamodule("imagefolder", root=tree, image_size=args.image_size, **common)
    else:
        dm = build_datamodule("fashion_mnist", root=args.fashion_root, on_device=path.endswith("on_device"), **common)
    dm.setup("fit")
    if path != "imagefolder":  # the first --images training images: an epoch of the same length as the tree's
        x, y = dm.train_set
        dm.train_set = (x[: args.images], y[: args.images])
    return dm


def configs(args: argparse.Namespace) -> list[Config]:
    out = []
    for path in args.data:
        if path == "fashion_mnist_on_device":
            out.append(Config(path, None, None, "none"))
            out += [Config(path, None, name, "device") for name in args.mixers]
            continue
        for workers in args.workers:
            out.append(Config(path, workers, None, "none"))
            for name in args.mixers:
                out += [Config(path, workers, name, "device"), Config(path, workers, name, "workers")]
    return out


def prepare(config: Config, args: argparse.Namespace, tree: Path) -> None:
    build = (lambda: openmix.build(config.mixer, num_classes=CLASSES)) if config.mixer else None
    collate = build() if config.where == "workers" else None
    dm = datamodule(config.path, args, tree, config.workers or 0, collate)
    if dm.on_device:  # the device path, on --device (as a Trainer's datamodule would be)
        x, y = dm.train_set
        config.loader = DeviceLoader(x.to(args.device), y.to(args.device), args.batch, dm.mean, dm.std, shuffle=True,
                                     padding=dm.padding, padding_mode=dm.padding_mode, flip=True)
    else:
        config.loader = dm.train_dataloader()
    config.device_mixer = build() if config.where == "device" else None
    config.rates = []


def epoch_rate(config: Config, device: torch.device) -> float:
    """Images/s of one epoch: every batch moved to ``device`` and, for device mixing, mixed there."""
    batches = iter(config.loader)  # a persistent pool resumes here; the clock starts once it has
    start, images = time.perf_counter(), 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if config.device_mixer is not None:
            out = config.device_mixer(x, y)
            x, y = out.x, out.y
        images += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def parts(args: argparse.Namespace, tree: Path, device: torch.device) -> list[dict[str, Any]]:
    """Milliseconds of the parts of one training batch of each DataLoader path (see the module doc)."""
    timers: dict[tuple[str, str], Any] = {}
    for path in (p for p in args.data if p != "fashion_mnist_on_device"):
        loader = datamodule(path, args, tree, 0, None).train_dataloader()
        keys = list(loader.sampler)[: args.batch]
        dataset = loader.dataset
        items = [(key, dataset[key]) for key in keys]
        x, y = default_collate([sample for _, sample in items])
        x, y = x.to(device), y.to(device)
        timers[path, "samples"] = lambda keys=keys, dataset=dataset: [dataset[key] for key in keys]
        timers[path, "stack"] = lambda items=items: default_collate([sample for _, sample in items])
        for name in args.mixers:
            collate, mixer = (MixingCollate(openmix.build(name, num_classes=CLASSES)),
                              openmix.build(name, num_classes=CLASSES))
            timers[path, f"stack + {name} (workers)"] = lambda items=items, collate=collate: collate(items)
            timers[path, f"{name} on {device.type} (device)"] = lambda x=x, y=y, mixer=mixer: mixer(x, y)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in timers}
    for _ in range(args.repeat + 1):  # the first round warms up
        order = list(timers)
        random.shuffle(order)
        for key in order:
            start = time.perf_counter()
            timers[key]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[key].append(1000 * (time.perf_counter() - start))
    return [{"data": path, "part": part, "ms per batch": round(statistics.median(ms[1:]), 2)}
            for (path, part), ms in times.items()]


def markdown(lines: list[dict[str, Any]], text: tuple[str, ...]) -> None:
    keys = list(lines[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "|".join("---" if k in text else "--:" for k in keys) + "|")
    for line in lines:
        print("| " + " | ".join(str(line[k]) for k in keys) + " |")


def table(rows: list[Config]) -> list[dict[str, Any]]:
    base = {c.group: statistics.median(c.rates) for c in rows if c.where == "none"}
    lines = []
    for c in rows:
        rate = statistics.median(c.rates)
        lines.append({
            "data": c.path, "workers": "-" if c.workers is None else c.workers, "mixer": c.mixer or "-",
            "mixes in": c.where, "images/s": round(rate), "x none": round(rate / base[c.group], 2),
            "spread %": round(100 * (max(c.rates) - min(c.rates)) / rate),
        })
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--mixers", nargs="+", default=["mixup", "cutmix"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=4096, help="training images per epoch")
    parser.add_argument("--image-size", type=int, default=64, help="imagefolder: the model's input side")
    parser.add_argument("--fashion-root", default="data")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20, help="rounds of the per-batch parts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--csv", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        if "imagefolder" in args.data:
            write_tree(tree, args.images, int(args.image_size * 1.25))
        rows = configs(args)
        for config in rows:
            prepare(config, args, tree)
            epoch_rate(config, device)  # warm-up: starts the workers, fills the page cache
        order = list(rows)
        for _ in range(args.rounds):
            random.shuffle(order)
            for config in order:
                config.rates.append(epoch_rate(config, device))
        lines = table(rows)
        costs = parts(args, tree, device)
    print(f"# {args.device}, {torch.get_num_threads()} torch thread(s) in the main process, batch {args.batch}, "
          f"{args.images} images per epoch, imagefolder at {args.image_size}px, median of {args.rounds} epochs; "
          f"command: python {' '.join(sys.argv)}")
    markdown(lines, ("data", "mixer", "mixes in"))
    print()
    markdown(costs, ("data", "part"))
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(lines)


if __name__ == "__main__":
    main()
