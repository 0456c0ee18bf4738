"""Peak host memory of a training step on CPU, per method, each in a fresh process.

On CUDA, ``step_cost.py`` reads ``torch.cuda.max_memory_allocated``; on CPU there is no
allocator counter, so this script runs every method in its own Python process and reports
how far two training steps (``mix_step``, backward) raise the process's peak resident set
(``ru_maxrss``) above what it held after building the model, the mixer and the batch: the
step's activations, saved tensors and temporaries, plus allocator slack. ``--plain`` also runs
the learned mixers with the Mix Block's gradients left to the caller's backward (their graph
kept alive through the model's passes), to show what taking them early saves.

    python benchmarks/step_memory.py                       # cifar_resnet18, batch 128 of 3x32x32
    python benchmarks/step_memory.py --methods vanilla automix --plain
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

METHODS = ("vanilla", "mixup", "automix", "samix", "adautomix")


def measure(method: str, plain: bool, batch: int, model: str) -> dict:
    """Run in this process: two steps of ``method``; peak RSS growth in MB."""
    import resource

    import torch

    import openmix
    from openmix.model_mixer import LearnedMixer
    from openmix.models import create_model
    from openmix.training import mix_step

    torch.manual_seed(0)
    net = create_model(model, num_classes=100)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 100, (batch,))
    mixer = None if method == "vanilla" else openmix.build(method, num_classes=100, seed=0)
    if isinstance(mixer, LearnedMixer):
        mixer.attach(net)
        if plain:
            mixer._backward_early = lambda loss: loss
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        step = mix_step(net, mixer, x, y)
        step.loss.backward()
        net.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method + (" (plain backward)" if plain else ""), "step_mb": (peak - before) / 1024}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", default="cifar_resnet18")
    parser.add_argument("--plain", action="store_true", help="also the learned mixers without the early Mix Block backward")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "PLAIN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1] == "1", args.batch, args.model)))
        return []
    runs = [(m, False) for m in args.methods]
    if args.plain:
        runs += [(m, True) for m in args.methods if m in ("automix", "samix", "adautomix")]
    rows = []
    for method, plain in runs:
        out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--model", args.model,
                              "--child", method, "1" if plain else "0"], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    vanilla = next((r["step_mb"] for r in rows if r["method"] == "vanilla"), None)
    print(f"CPU peak RSS growth of two training steps, {args.model}, batch {args.batch}x3x32x32, 100 classes")
    print("| method | step MB | x vanilla |\n|---|---|---|")
    for r in rows:
        ratio = f"{r['step_mb'] / vanilla:.2f}" if vanilla else ""
        print(f"| {r['method']} | {r['step_mb']:.0f} | {ratio} |")
    return rows


if __name__ == "__main__":
    main()
