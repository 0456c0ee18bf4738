"""``openmix-eval``: evaluate the trained models of run folders beyond top-1; ``eval.json`` beside each result.

Usage::

    openmix-eval RUNS... [--subset 1000] [--seed 0] [--eps 0.0314] [--pgd-steps 10]
                 [--corruptions NAME,...] [--no-calibration] [--no-corruption] [--no-adversarial]
                 [--no-occlusion] [--ood digits|DIR] [--device cuda] [--data-root DIR] [--force]

RUNS are run or sweep folders (searched for ``result.json``). A run already evaluated with the same
settings is skipped (``--force`` redoes it), and so is one that ``openmix-train`` is still training
(it holds the run's lock, :mod:`openmix.run_lock`; it evaluates the run when training ends).
``--ood`` adds ``ood_auroc``, the max-softmax AUROC against scikit-learn's handwritten digits or a
folder of images. ``openmix-report RUNS --metric ece``
(or ``corruption_top1``, ``fgsm_top1``, ``ood_auroc``, ...) then tabulates the metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openmix.evaluation.evaluate import EvalSettings

DEFAULT = EvalSettings()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openmix-eval", description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("runs", nargs="+", metavar="RUNS", help="run or sweep folders")
    parser.add_argument("--subset", type=int, default=DEFAULT.subset,
                        help="test images for corruptions, attacks and occlusion (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT.seed, help="seed of the subset and of every draw")
    parser.add_argument("--eps", type=float, default=DEFAULT.eps, help="FGSM/PGD L-inf radius in pixels (8/255)")
    parser.add_argument("--pgd-steps", type=int, default=DEFAULT.pgd_steps)
    parser.add_argument("--corruptions", help="comma-separated corruptions (default: all)")
    parser.add_argument("--ood", help="out-of-distribution images for ood_auroc: 'digits' (scikit-learn's) or a folder")
    for part in ("calibration", "corruption", "adversarial", "occlusion"):
        parser.add_argument(f"--no-{part}", action="store_true", help=f"skip the {part} metrics")
    parser.add_argument("--device", help="where to evaluate (default: cuda when present, else cpu)")
    parser.add_argument("--data-root", help="where the data lives now, if not where the run read it")
    parser.add_argument("--force", action="store_true", help="evaluate again runs evaluated with these settings")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``openmix-eval``; 0 when every run was evaluated, 2 on a usage error or a run that could not be."""
    from openmix.evaluation.runs import evaluate_run
    from openmix.results import RESULT_FILE
    from openmix.run_lock import describe_holder, lock_holder

    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        settings = EvalSettings(
            calibration=not args.no_calibration, corruption=not args.no_corruption,
            adversarial=not args.no_adversarial, occlusion=not args.no_occlusion, subset=args.subset,
            seed=args.seed, eps=args.eps, pgd_steps=args.pgd_steps,
            corruptions=None if not args.corruptions else tuple(args.corruptions.split(",")), ood=args.ood)
    except (TypeError, ValueError) as err:
        print(f"openmix-eval: {err}", file=sys.stderr)
        return 2
    folders = []
    for path in map(Path, args.runs):
        if not path.exists():
            print(f"openmix-eval: no such folder: {path}", file=sys.stderr)
            return 2
        folders += sorted(p.parent for p in path.rglob(RESULT_FILE)) if path.is_dir() else [path.parent]
    if not folders:
        print(f"openmix-eval: no runs (result.json) under {', '.join(args.runs)}", file=sys.stderr)
        return 2
    data = {"root": args.data_root} if args.data_root else {}
    failed = 0
    for folder in folders:
        holder = lock_holder(folder)
        if holder is not None:  # its trainer evaluates it when training ends; two writers would race
            print(f"[openmix-eval] {folder}: {describe_holder(holder)} is training it, "
                  "skipped (it is evaluated when its training ends)")
            continue
        try:
            metrics, fresh = evaluate_run(folder, settings, device=args.device, force=args.force, **data)
        except (FileNotFoundError, ValueError, KeyError) as err:
            print(f"openmix-eval: {folder}: {err}", file=sys.stderr)
            failed += 1
            continue
        parts = [f"{key} {metrics[key]:.2f}" for key in ("top1", "ece", "corruption_top1", "fgsm_top1", "pgd_top1",
                                                          "occlusion_top1", "ood_auroc") if metrics.get(key) is not None]
        print(f"[openmix-eval] {folder}: {'  '.join(parts)}" + ("" if fresh else " (done before, skipped)"))
    return 2 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
