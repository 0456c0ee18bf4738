"""Whole training-step cost of the model-aware mixers against the vanilla step, on one model.

A step is what a training loop pays per batch: ``optimizer.zero_grad()``, ``mix_step`` (the
mixer's draws, any extra pass, the mixing, the forward and the loss), ``loss.backward()`` and
``optimizer.step()`` (SGD, momentum 0.9, weight decay 5e-4). Methods: vanilla, mixup, every
model-aware mixer (puzzlemix, alignmix, manifoldmix, attentivemix, guidedmixup, snapmix, comixup,
transmix, smmix; the learned automix, samix, adautomix and sumix) and tokenmix (any other registered
mixer when ``--methods`` names it), with their default (official) settings, on ``cifar_resnet18`` with a batch of 100 3x32x32 images in [0, 1] and 100
classes by default. A method that cannot train the model (TransMix and SMMix on a CNN) is left
out with a note; ``--model vit_tiny_patch16_224 --model-kwargs '{"img_size": 32, "patch_size": 4}'``
times them on a ViT (TokenMix then takes the model's patch size). A learned mixer is attached to
the model (its EMA teacher and Mix Block, SUMix's uncertainty head) and its step's optimizer also
updates those.

The dynamic methods take a different path at each step (PuzzleMix draws its grid side G,
AlignMix input mixup or alignment, Manifold Mixup its layer), so each path is timed as a
**variant** with the draw fixed (``block_nums=(G,)``, ``align_prob`` 0 or 1, ``layers=(k,)``),
and the method's row is the mean of its variants: the expected step under the uniform draw.
AttentiveMix's two variants are two set-ups, not draws (its mean row means nothing): the trained
model's own cells, and OpenMixup's AttentiveMix+ (a frozen ResNet-18 on the batch resized to 224).
GuidedMixup mixes a batch with probability 0.8 by default; a median over steps would mostly show
skipped ones, so it is timed with ``prob=1`` (the expected step is ``1 + 0.8 (r - 1)`` times vanilla's).

Timing: every row is warmed up (``--warmup`` steps), then timed **round-robin**, one step per
row per round, in an order shuffled every round (fixed seed), so load from other processes
hits all rows alike; the table gives the median over ``--repeat`` rounds. All rows train one
shared model and optimizer (the cost of a step does not depend on the weights). On CUDA,
``torch.cuda.synchronize()`` is called before and after each timed step, and the peak memory
of one untimed step is read with ``torch.cuda.max_memory_allocated`` (the column gives the
peak above what was allocated before the step: activations, saved tensors, temporaries). The
``state MB`` column adds what a run holds between steps: the weights, their gradients and SGD
momentum, and for a learned mixer its teacher's weights and buffers and the Mix Block's
weights, gradients and momentum; ``mem x vanilla`` compares peak + state.

Where the time goes (last column), from separate instrumented steps after the timing (``--parts``
steps per variant, median): the public functions of each part are wrapped with timers (with
a ``torch.cuda.synchronize()`` on entry and exit on CUDA, which the timed steps do not have):

* PuzzleMix ``masks+transport``: the whole ``PuzzleMix.mix`` (energy ``puzzle_problem``, solver
  ``solve_puzzle``, ``mask_transport`` + ``transport_blocks``, the blend), with the solver and the
  transport also given alone; ``saliency``: the extra forward/backward for the input gradient;
* AlignMix ``sinkhorn``: the Sinkhorn plan (``feature_cost`` + ``sinkhorn``) on aligned steps;
* Co-Mixup ``solver``: the batched labelling solve (``solve_comixup``); ``saliency``: its input-gradient pass;
* AutoMix, SAMix, AdAutoMix: ``mix block`` (its two mask passes) and ``teacher features`` (the
  teacher's pass on the clean batch: stages 1-3; the whole teacher on AdAutoMix's adversarial
  steps). The rest of their step is the teacher on the mixed batch with its input gradient,
  and the model's passes.

Shares are of the instrumented step's time; a method row gives its variants' summed part
times over their summed step times.

    python benchmarks/step_cost.py                          # CPU, and CUDA when present
    python benchmarks/step_cost.py --device cpu --batch 32 --repeat 5 --threads 1
    python benchmarks/step_cost.py --device cuda --markdown step_cost.md
    python benchmarks/step_cost.py --device cpu --batch 32 --repeat 5 --threads 1 --model vit_tiny_patch16_224 \
        --model-kwargs '{"img_size": 32, "patch_size": 4}' --methods vanilla mixup tokenmix transmix smmix
    python benchmarks/step_cost.py --device cpu --threads 1 --model small_convnet --in-chans 1 --size 28 \
        --num-classes 10 --batch 128 --channels-last --methods vanilla cutmix fmix ...   # the Fashion-MNIST bench's
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

import openmix
import openmix.layers.mix_block as mix_block_module
import openmix.mixers.alignmix as alignmix_module
import openmix.mixers.automix as automix_module
import openmix.mixers.comixup.mixer as comixup_module
import openmix.mixers.puzzlemix.mixer as puzzlemix_module  # where PuzzleMix's step looks up its parts
from openmix.model_mixer import LearnedMixer, trains_with
from openmix.models import create_model
from openmix.training import mix_step

METHODS = ("vanilla", "mixup", "puzzlemix", "alignmix", "manifoldmix", "automix", "samix", "adautomix",
           "attentivemix", "guidedmixup", "snapmix", "sumix", "comixup", "tokenmix", "transmix", "smmix")
LEARNED = ("automix", "samix", "adautomix")  # the Mix Block's parts are timed
CHOICES = (*METHODS, *sorted(set(openmix.available()) - set(METHODS)))  # the input mixers too, when asked for


@dataclass
class Row:
    """One timed configuration: a method with (for dynamic methods) its per-step draw fixed."""

    method: str
    variant: str
    mixer: Any
    order: int = 0  # position in the table
    times: list[float] = field(default_factory=list)  # seconds per timed step
    peak_mb: float | None = None
    state_mb: float | None = None
    parts: dict[str, float] = field(default_factory=dict)  # seconds per instrumented step, median
    part_step: float | None = None  # the instrumented step's seconds, median

    @property
    def ms(self) -> float:
        return statistics.median(self.times) * 1e3


def variants(method: str, num_classes: int, image_size: int, seed: int,
             model: torch.nn.Module | None = None, in_chans: int = 3) -> list[tuple[str, Any]]:
    """``(variant label, mixer)`` for ``method``: one per value of its per-step draw."""
    common = {"num_classes": num_classes, "seed": seed}
    if method == "vanilla":
        return [("", None)]
    if method == "mixup":
        return [("", openmix.build("mixup", alpha=1.0, **common))]
    if method == "puzzlemix":
        grids = [g for g in (2, 4, 8, 16) if image_size % g == 0]
        return [(f"G={g}", openmix.build("puzzlemix", alpha=1.0, block_nums=(g,), **common)) for g in grids]
    if method == "alignmix":
        return [(label, openmix.build("alignmix", align_prob=p, **common))
                for label, p in (("aligned", 1.0), ("input mixup", 0.0))]
    if method == "manifoldmix":
        return [(f"layer {k}", openmix.build("manifoldmix", layers=(k,), **common)) for k in (0, 1, 2)]
    if method == "attentivemix":  # the trained model's cells, or OpenMixup's: a ResNet-18's at 224 px (random weights)
        import timm

        resnet = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=in_chans)
        return [("own model", openmix.build("attentivemix", **common)),
                ("ResNet-18, 224 px", openmix.build("attentivemix", use_alpha=True, alpha=2.0, attention_model=resnet,
                                                    attention_size=224, **common))]
    if method == "guidedmixup":  # its default prob is 0.8: time a mixing step (a skipped one is vanilla's)
        return [("prob 1", openmix.build("guidedmixup", prob=1.0, **common))]
    if method == "tokenmix":  # the model's patches where it has them
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", 16)
        return [("", openmix.build("tokenmix", patch_size=tuple(patch) if not isinstance(patch, int) else patch,
                                   **common))]
    if method in CHOICES:
        return [("", openmix.build(method, **common))]
    raise ValueError(f"unknown method {method!r}; choose from {CHOICES}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Step:
    """One training step of ``model`` with a mixer on a fixed batch."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.opt = self.optimizer([])
        self.learned_opts: dict[int, torch.optim.Optimizer] = {}

    def optimizer(self, extra_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return torch.optim.SGD([{"params": list(self.model.parameters())}, *extra_groups], lr=0.01, momentum=0.9,
                               weight_decay=5e-4)

    def add_learned(self, mixer: Any) -> None:
        """Attach a learned mixer to the model; its steps use an optimizer that also holds its Mix Block."""
        mixer.attach(self.model)
        self.learned_opts[id(mixer)] = self.optimizer(mixer.param_groups())

    def __call__(self, mixer: Any) -> None:
        opt = self.learned_opts.get(id(mixer), self.opt)
        opt.zero_grad(set_to_none=True)
        step = mix_step(self.model, mixer, self.x, self.y)
        step.loss.backward()
        opt.step()


def state_mb(model: torch.nn.Module, mixer: Any) -> float:
    """MB a run holds between steps: weights + gradients + SGD momentum (3x) and buffers, and the mixer's
    own: its trainable parameters (a Mix Block, SUMix's head) 3x, its frozen ones (an EMA teacher) and buffers."""
    def size(tensors: Any) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    total = 3 * size(model.parameters()) + size(model.buffers())
    if isinstance(mixer, torch.nn.Module):
        params = list(mixer.parameters())
        total += 3 * size(p for p in params if p.requires_grad) + size(p for p in params if not p.requires_grad)
        total += size(mixer.buffers())
    return total / 2**20


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def part_timers(device: torch.device) -> Iterator[dict[str, float]]:
    """Wrap the public functions of the parts with timers; yields the running totals (seconds)."""
    totals: dict[str, float] = {}
    patches = [
        (puzzlemix_module.PuzzleMix, "mix", "masks+transport"),
        (puzzlemix_module, "solve_puzzle", "solver"),
        (puzzlemix_module, "mask_transport", "transport"),
        (puzzlemix_module, "transport_blocks", "transport"),
        (puzzlemix_module, "_saliency_pass", "saliency"),
        (alignmix_module, "feature_cost", "sinkhorn"),
        (alignmix_module, "sinkhorn", "sinkhorn"),
        (mix_block_module.MixBlock, "forward", "mix block"),
        (automix_module.AutoMix, "_teacher_features", "teacher features"),  # SAMix's and AdAutoMix's too
        (comixup_module, "solve_comixup", "solver"),
        (comixup_module, "_saliency_pass", "saliency"),
    ]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]

    def wrap(fn: Callable, label: str) -> Callable:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            sync(device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(device)
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

        return timed_call

    try:
        for (owner, name, label), (_, _, original) in zip(patches, saved):
            setattr(owner, name, wrap(original, label))
        yield totals
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def peak_memory_mb(step: Step, mixer: Any, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(mixer)
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def run(device: torch.device, args: argparse.Namespace) -> list[Row]:
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans,
                         **args.model_kwargs).to(device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, args.in_chans, args.size, args.size, generator=gen).to(device)
    if args.channels_last:  # as openmix-train's channels_last=true trains
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=gen).to(device)
    step = Step(model, x, y)
    methods = [m for m in args.methods
               if m == "vanilla" or trains_with(openmix.build(m, num_classes=args.num_classes), model)]
    for method in sorted(set(args.methods) - set(methods), key=args.methods.index):
        print(f"{method}: left out, it cannot train {args.model} (its check refuses the model)", flush=True)
    rows = [Row(method, variant, mixer) for method in methods
            for variant, mixer in variants(method, args.num_classes, args.size, seed=0, model=model,
                                                  in_chans=args.in_chans)]
    for i, row in enumerate(rows):
        row.order = i
        if isinstance(row.mixer, LearnedMixer):
            step.add_learned(row.mixer)
        row.state_mb = state_mb(model, row.mixer)
    for row in rows:
        for _ in range(args.warmup):
            step(row.mixer)
        row.peak_mb = peak_memory_mb(step, row.mixer, device)
    order = random.Random(0)
    for _ in range(args.repeat):
        order.shuffle(rows)
        for row in rows:
            row.times.append(timed(lambda: step(row.mixer), device))
    rows.sort(key=lambda r: r.order)
    for row in rows:
        if row.method not in SHOWN_PARTS or args.parts < 1:
            continue
        steps, parts = [], []
        for _ in range(args.parts):
            with part_timers(device) as totals:
                steps.append(timed(lambda: step(row.mixer), device))
            parts.append(dict(totals))
        row.part_step = statistics.median(steps)
        for label in sorted({k for p in parts for k in p}):
            row.parts[label] = statistics.median(p.get(label, 0.0) for p in parts)
    return rows


SHOWN_PARTS = {
    "puzzlemix": ("masks+transport", "solver", "transport", "saliency"),
    "alignmix": ("sinkhorn",),
    "comixup": ("solver", "saliency"),
    **{method: ("mix block", "teacher features") for method in LEARNED},
}


def where(method: str, parts: dict[str, float], step: float | None) -> str:
    if not parts or not step:
        return ""
    return ", ".join(f"{label} {100 * parts[label] / step:.0f}%" for label in SHOWN_PARTS.get(method, ())
                     if label in parts)


def table(rows: list[Row], device: torch.device, args: argparse.Namespace) -> str:
    vanilla = statistics.mean(r.ms for r in rows if r.method == "vanilla") if any(r.method == "vanilla" for r in rows) else None
    memory = device.type == "cuda"
    base = [r for r in rows if r.method == "vanilla" and r.peak_mb is not None]
    vanilla_mem = base[0].peak_mb + base[0].state_mb if base else None
    head = ("| method | variant | ms/step | x vanilla |" + (" peak MB | state MB | mem x vanilla |" if memory else "")
            + " where the time goes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for method in args.methods:
        group = [r for r in rows if r.method == method]
        if not group:
            continue
        ms = statistics.mean(r.ms for r in group)
        timed_parts = [r for r in group if r.part_step]
        summed = {k: sum(r.parts.get(k, 0.0) for r in timed_parts) for k in SHOWN_PARTS.get(method, ())}
        summed = {k: v for k, v in summed.items() if any(k in r.parts for r in timed_parts)}
        share = where(method, summed, sum(r.part_step for r in timed_parts))
        peak = max((r.peak_mb for r in group if r.peak_mb is not None), default=None)
        held = group[0].state_mb
        lines.append(_line(method, "mean" if len(group) > 1 else "", ms, vanilla, (peak, held, vanilla_mem), memory, share))
        if len(group) > 1:
            for r in group:
                lines.append(_line("", r.variant, r.ms, vanilla, (r.peak_mb, r.state_mb, vanilla_mem), memory,
                                   where(method, r.parts, r.part_step)))
    return "\n".join(lines)


def _line(method: str, variant: str, ms: float, vanilla: float | None, mem: tuple, memory: bool, share: str) -> str:
    ratio = f"{ms / vanilla:.2f}" if vanilla else ""
    cells = [f"**{method}**" if method else "", variant, f"{ms:.1f}", ratio]
    if memory:
        peak, held, vanilla_mem = mem
        cells.append("" if peak is None else f"{peak:.0f}")
        cells.append("" if held is None else f"{held:.0f}")
        cells.append(f"{(peak + held) / vanilla_mem:.2f}" if peak is not None and held is not None and vanilla_mem else "")
    cells.append(share)
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> dict[str, list[Row]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="cifar_resnet18", help="model name (default cifar_resnet18)")
    parser.add_argument("--model-kwargs", type=json.loads, default={}, metavar="JSON",
                        help="keyword arguments of the model, e.g. '{\"img_size\": 32, \"patch_size\": 4}' for a ViT")
    parser.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--num-classes", type=int, default=100, help="classes (default 100)")
    parser.add_argument("--in-chans", type=int, default=3, help="image channels (default 3)")
    parser.add_argument("--channels-last", action="store_true", help="model and batch in channels-last")
    parser.add_argument("--device", nargs="+", default=None, help="devices (default: cpu, and cuda when present)")
    parser.add_argument("--repeat", type=int, default=20, help="timed rounds, one step per row each (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row first (default 2)")
    parser.add_argument("--parts", type=int, default=3,
                        help="instrumented steps per PuzzleMix/AlignMix/Co-Mixup/learned variant for the time shares (default 3; 0: none)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=CHOICES,
                        help="methods (default: vanilla, mixup and every model-aware mixer; any registered mixer may be named)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is steadier on a loaded shared machine")
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables to PATH")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [torch.device(d) for d in args.device]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    out, texts = {}, []
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
        title = (f"### {device.type.upper()} ({name}): {args.model}, batch {args.batch}x{args.in_chans}x{args.size}x{args.size}, "
                 f"{args.num_classes} classes, fp32, median of {args.repeat} rounds, torch {torch.__version__}")
        print(title, flush=True)
        rows = run(device, args)
        text = table(rows, device, args)
        print(text + "\n", flush=True)
        texts.append(f"{title}\n\n{text}\n")
        out[device.type] = rows
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(texts))
    return out


if __name__ == "__main__":
    main()
