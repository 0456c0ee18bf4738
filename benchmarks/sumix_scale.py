"""How far SUMix's correction moves the label shares, on trained Fashion-MNIST bench models.

SUMix (``openmix.mixers.sumix``) replaces the base mixer's share ``lam`` of each mixed image by
``lam_a = sigmoid(logit(lam) - a[y_a] + a'[y_b])``, where the semantic distances ``a`` are
``semantic_scale`` times an L2-normalised C-vector. The official scale (the batch size; openmix's
default 100) was set on CIFAR-100's 100 classes. This script takes the trained models of bench runs,
one CutMix-mixed training batch (the bench's batch of 128), and prints for each scale the mean
``|lam_a - lam|`` and the two loss terms SUMix would train on, then each model's mean top softmax
probability and accuracy on the first test batch. Evidence for the bench's SUMix row, not a timing.

    python benchmarks/sumix_scale.py                                   # the bench's seed-0 runs
    python benchmarks/sumix_scale.py --runs benchmarks/results/fashion_mnist/fashion_mnist_bench/mixup/*
"""

from __future__ import annotations

import argparse
import glob

import torch

import openmix
from openmix.evaluation import load_run
from openmix.training import mix_step

BENCH = "benchmarks/results/fashion_mnist/fashion_mnist_bench"
DEFAULT_RUNS = [f"{BENCH}/{name}/e10_s0_*" for name in ("vanilla", "cutmix", "sumix")]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="run folders (globs allowed)")
    parser.add_argument("--scales", nargs="+", type=float, default=[100.0, 10.0, 1.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print("| run | semantic_scale | mean abs(lam_a - lam) | mix CE | uncertainty term |")
    print("|---|--:|--:|--:|--:|")
    confidence = []
    for folder in sorted({f for pattern in args.runs for f in glob.glob(pattern)}):
        model, data, config = load_run(folder)
        data.setup("fit")
        label = f"{config['mixer']['name']} seed {config['seed']}"
        model.eval()  # first: the train-mode passes below move BatchNorm's running statistics
        with torch.no_grad():
            xs, ys = next(iter(data.evaluation_dataloader("cpu")))
            p = model(xs).softmax(1)
        confidence.append((label, float(p.amax(1).mean()), float((p.argmax(1) == ys).float().mean())))
        torch.manual_seed(0)
        x, y = next(iter(data.train_dataloader()))
        model.train()
        for scale in args.scales:
            torch.manual_seed(0)  # the same uncertainty head, and (seed 0) the same CutMix draw, at every scale
            mixer = openmix.build("sumix", num_classes=data.num_classes, base="cutmix", semantic_scale=scale,
                                  seed=0).attach(model)
            with torch.no_grad():
                step = mix_step(model, mixer, x, y)
            row = {"run": label, "scale": scale, **{k: float(v) for k, v in step.aux.items()}}
            rows.append(row)
            print(f"| {label} | {scale:g} | {row['lam_shift']:.3f} | {row['mix']:.3f} | {row['uncertainty']:.3f} |")
    print("\n| run | mean top probability | accuracy |\n|---|--:|--:|")
    for label, conf, acc in confidence:
        print(f"| {label} | {conf:.3f} | {acc:.3f} |")
    return rows


if __name__ == "__main__":
    main()
