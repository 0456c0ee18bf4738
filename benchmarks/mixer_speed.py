"""Speed of every registered input mixer, against the memory-traffic floor and the peers.

The floor is what any mixer must at least pay: read two images and write one, timed as a
preallocated ``torch.lerp(a, b, 0.3, out=c)`` of the same shape in the same run. Each row
gives the median milliseconds per call and that time divided by the floor. timm ``Mixup``,
torchvision ``v2.MixUp``/``v2.CutMix`` and kornia ``RandomMixUpV2``/``RandomCutMixV2`` are
timed in the same run, as rows of their own.

Usage::

    python benchmarks/mixer_speed.py                          # CPU, and CUDA when present
    python benchmarks/mixer_speed.py --device cpu --sizes 128x3x32x32 --repeat 50
    python benchmarks/mixer_speed.py --mixers mixup cutmix --no-peers --csv speed.csv
    python benchmarks/mixer_speed.py --profile --sizes 128x3x32x32   # where openmix's time goes
    python benchmarks/mixer_speed.py --targets --no-peers --sizes 64x3x224x224   # mixing other targets too

``--targets`` adds, per mixer and mode, rows of the same draw applied to other targets (library
``targets``): the images alone (``mixer(x)``), a soft dense target as large as the images
(``out.dense``, 3 channels), a class map (``out.class_map``, cut mixers) and 16 boxes per image
(``out.boxes``); each target row is timed without the image mixing, and the findings hold the dense
row to at most ``DENSE_TARGET``x the image row.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

import openmix

TARGETS = {"batch": 2.5, "elem": 3.0}  # x floor, openmix at 128x3x32x32 on CPU
TARGET_SHAPE = (128, 3, 32, 32)
FLOOR_TARGETS = {("resizemix", (64, 3, 224, 224)): 3.0}  # x floor, every mode, per device
ELEM_SPEEDUP = 10.0  # openmix elem mode at least this much faster than timm's elem mode
BATCH_PEERS = ("timm", "torchvision")  # batch mode: no slower than the fastest of these
LARGE = 5_000_000  # elements; above this a size gets fewer repeats
DENSE_TARGET = 1.2  # a dense target as large as the images: at most this much the images' mixing


@dataclass
class Row:
    library: str
    method: str
    mode: str
    shape: tuple[int, ...]
    device: str
    ms: float
    floor: float = math.nan  # ms / floor ms
    note: str = ""


# --------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(call: Callable[[object], object], setup: Callable[[], object] | None, device: torch.device) -> float:
    """Seconds of one ``call(setup())``; ``setup`` runs outside the timed region."""
    arg = setup() if setup is not None else None
    sync(device)
    start = time.perf_counter()
    call(arg)
    sync(device)
    return time.perf_counter() - start


def median_ms_interleaved(
    calls: list[tuple[Callable[[object], object], Callable[[], object] | None]],
    device: torch.device,
    repeat: int,
    *,
    budget_s: float = 2.0,
) -> list[float]:
    """Median ms per call of each warmed-up ``(call, setup)``, timed round-robin.

    Each round times every call once, so load from other processes on a shared machine
    hits all rows alike and the ratios of one run stay comparable. The order is shuffled
    every round (with a fixed seed): a row that always followed a sibling (timm's cutmix
    after timm's mixup) would find its code and data warm in the caches, one that always
    followed an unrelated row would not. Stops early (after at least 3 rounds) once the
    timed calls exceed ``budget_s`` per row on average.
    """
    times: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    shuffle = random.Random(0).shuffle
    for round_ in range(repeat):
        shuffle(order)
        for i in order:
            call, setup = calls[i]
            times[i].append(time_once(call, setup, device))
        if round_ >= 2 and sum(map(sum, times)) > budget_s * len(calls):
            break
    return [1000.0 * statistics.median(t) for t in times]


# ---------------------------------------------------------------------- cases
Case = tuple[str, str, str, Callable[[], tuple[Callable[[object], object], Callable[[], object] | None]]]


def openmix_cases(names: list[str], x: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[Case]:
    """One case per openmix mixer and mode. On CUDA every call runs under
    ``torch.cuda.set_sync_debug_mode("error")``: a call that makes the host wait on the GPU
    raises, and the row reports the error instead of a time."""
    cases: list[Case] = []
    for name in names:
        for mode in ("batch", "elem"):

            def make(name=name, mode=mode):
                mixer = openmix.build(name, num_classes=num_classes, mode=mode)
                if x.device.type != "cuda":
                    return (lambda _: mixer(x, y)), None
                mixer(x, y)  # lazy initialisation (cached tensors, cuFFT plans) may sync once
                torch.cuda.synchronize(x.device)
                return (lambda _: sync_free(mixer, x, y)), None

            cases.append(("openmix", name, mode, make))
    return cases


def target_cases(names: list[str], x: torch.Tensor) -> list[Case]:
    """Per mixer and mode: the images alone, then one draw applied to a dense target, a class map and boxes
    (each timed alone, from one precomputed draw). On CUDA under ``set_sync_debug_mode("error")``."""
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    gen = torch.Generator().manual_seed(1)
    dense = torch.softmax(torch.randn(x.shape, generator=gen), 1).to(x.device)
    seg = torch.randint(0, 21, (batch, height, width), generator=gen).to(x.device)
    corners = torch.rand(batch, 16, 2, generator=gen) * torch.tensor([width / 2, height / 2])
    boxes = torch.cat([corners, corners + torch.tensor([width / 2, height / 2])], -1).to(x.device)
    cases: list[Case] = []
    for name in names:
        for mode in ("batch", "elem"):
            mixer = openmix.build(name, mode=mode, seed=0)
            out = mixer(x)
            parts = [("image", lambda m=mixer: m(x)), ("+dense", lambda o=out: o.dense(dense)),
                     ("+boxes", lambda o=out: o.boxes(boxes))]
            if out.binary:
                parts.insert(2, ("+classmap", lambda o=out: o.class_map(seg)))
            for part, fn in parts:
                def make(fn=fn):
                    if x.device.type != "cuda":
                        return (lambda _: fn()), None
                    fn()
                    torch.cuda.synchronize(x.device)
                    return (lambda _: _sync_free_call(fn)), None

                cases.append(("targets", f"{name} {part}", mode, make))
    return cases


def _sync_free_call(fn: Callable[[], object]) -> object:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def sync_free(mixer: openmix.Mixer, x: torch.Tensor, y: torch.Tensor) -> object:
    """``mixer(x, y)`` with CUDA's sync debug mode at ``"error"``, the previous mode restored after."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return mixer(x, y)
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def peer_cases(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[Case]:
    cases: list[Case] = []

    try:
        from timm.data import Mixup
    except ImportError:  # pragma: no cover - optional peer
        Mixup = None
    if Mixup is not None:
        for method, alphas in (("mixup", (1.0, 0.0)), ("cutmix", (0.0, 1.0))):
            for mode in ("batch", "elem"):

                def make(alphas=alphas, mode=mode):
                    if x.shape[0] % 2:
                        raise ValueError("timm needs an even batch")
                    mixer = Mixup(*alphas, mode=mode, label_smoothing=0.0, num_classes=num_classes)
                    return (lambda xc: mixer(xc, y)), x.clone  # timm mixes in place: clone untimed

                cases.append(("timm", method, mode, make))

    try:
        from torchvision.transforms import v2
    except ImportError:  # pragma: no cover
        v2 = None
    if v2 is not None:
        for method, cls in (("mixup", v2.MixUp), ("cutmix", v2.CutMix)):

            def make(cls=cls):
                mixer = cls(alpha=1.0, num_classes=num_classes)
                return (lambda _: mixer(x, y)), None

            cases.append(("torchvision", method, "batch", make))

    try:
        import kornia.augmentation as K
    except ImportError:  # pragma: no cover
        K = None
    if K is not None:
        builders = {
            "mixup": lambda same: K.RandomMixUpV2(same_on_batch=same, data_keys=["input", "class"]),
            "cutmix": lambda same: K.RandomCutMixV2(
                same_on_batch=same, use_correct_lambda=True, data_keys=["input", "class"]
            ),
        }
        for method, build in builders.items():
            for mode in ("batch", "elem"):

                def make(build=build, mode=mode):
                    mixer = build(mode == "batch").to(x.device)
                    return (lambda _: mixer(x, y)), None  # returns [images, labels (B, 3) or (1, B, 3)]

                cases.append(("kornia", method, mode, make))
    return cases


def floor_case(x: torch.Tensor) -> Case:
    def make():
        a, b, c = x, torch.rand_like(x), torch.empty_like(x)
        return (lambda _: torch.lerp(a, b, 0.3, out=c)), None

    return ("floor", "lerp(a, b, 0.3, out=c)", "-", make)


def allocating_floor_case(x: torch.Tensor) -> Case:
    """The floor plus allocating the output, as every out-of-place mixer must."""

    def make():
        a, b = x, torch.rand_like(x)
        return (lambda _: torch.lerp(a, b, 0.3)), None

    return ("floor", "lerp(a, b, 0.3) new output", "-", make)


# ------------------------------------------------------------------ running
def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for device in args.device:
        for shape in args.sizes:
            numel = math.prod(shape)
            repeat = args.repeat if numel <= LARGE else max(3, args.repeat // 6)
            warmup = 2 if numel <= LARGE else 1
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(shape, generator=gen).to(device)
            y = torch.randint(0, args.num_classes, (shape[0],), generator=gen).to(device)
            cases = [floor_case(x), allocating_floor_case(x), *openmix_cases(args.mixers, x, y, args.num_classes)]
            if args.peers:
                cases += peer_cases(x, y, args.num_classes)
            if args.targets:
                cases += target_cases(args.mixers, x)
            group, ready = [], []
            for library, method, mode, make in cases:
                row = Row(library, method, mode, shape, str(device), math.nan)
                group.append(row)
                try:
                    call, setup = make()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        for _ in range(warmup):  # a broken case fails here, not mid-table
                            time_once(call, setup, device)
                    ready.append((row, (call, setup)))
                except Exception as error:  # report and go on: one broken case must not stop the table
                    row.note = f"{type(error).__name__}: {error}"[:80]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                medians = median_ms_interleaved(
                    [c for _, c in ready], device, repeat, budget_s=args.row_budget
                )
            for (row, _), ms in zip(ready, medians):
                row.ms = ms
            floor_ms = group[0].ms
            for row in group:
                row.floor = row.ms / floor_ms
                print(f"  {row.library:11s} {row.method:24s} {row.mode:5s} {'x'.join(map(str, shape)):14s} "
                      f"{device}: {row.ms:9.3f} ms {row.note}", file=sys.stderr, flush=True)
            rows += group
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| library | method | mode | shape | device | ms | x floor |",
        "|---|---|---|---|---|--:|--:|",
    ]
    for r in rows:
        ms = f"{r.ms:.3g}" if not math.isnan(r.ms) else f"n/a ({r.note})"
        ratio = f"{r.floor:.2f}" if not math.isnan(r.floor) else "n/a"
        shape = "x".join(map(str, r.shape))
        lines.append(f"| {r.library} | {r.method} | {r.mode} | {shape} | {r.device} | {ms} | {ratio} |")
    return "\n".join(lines)


def findings(rows: list[Row]) -> list[str]:
    """openmix rows that miss a speed target.

    - at ``128x3x32x32`` on CPU: over 2.5x floor (batch) or 3x floor (elem);
    - ``FLOOR_TARGETS``: over their floor multiple (ResizeMix at 224x224: 3x);
    - batch mode: slower than the fastest timm / torchvision row of the same method, or,
      for a method no peer has, of the same shape's fastest peer cutmix;
    - elem mode: less than 10x faster than timm's elem row of the same method (or timm's
      elem cutmix, for methods timm lacks);
    - any mode: slower than any peer doing the same method and mode.
    """
    notes = []
    images = {(r.method.split()[0], r.mode, r.shape, r.device): r.ms for r in rows
              if r.library == "targets" and r.method.endswith(" image")}
    for r in rows:
        base = images.get((r.method.split()[0], r.mode, r.shape, r.device)) if r.library == "targets" else None
        if r.method.endswith(" +dense") and base and r.ms > DENSE_TARGET * base:
            notes.append(f"targets {r.method} {r.mode} {r.device} {'x'.join(map(str, r.shape))}: {r.ms / base:.2f}x "
                         f"the images' mixing > {DENSE_TARGET}x")
    peers = [p for p in rows if p.library not in ("openmix", "floor", "targets") and not math.isnan(p.ms)]

    def fastest(library: tuple[str, ...], method: str, mode: str, r: Row) -> Row | None:
        same = [p for p in peers if p.library in library and (p.method, p.mode, p.shape, p.device) == (method, mode, r.shape, r.device)]
        return min(same, key=lambda p: p.ms, default=None)

    for r in rows:
        if r.library != "openmix" or math.isnan(r.ms):
            continue
        where = f"openmix {r.method} {r.mode} {r.device} {'x'.join(map(str, r.shape))}"
        if r.shape == TARGET_SHAPE and r.device == "cpu" and r.floor > TARGETS[r.mode]:
            notes.append(f"{where}: {r.floor:.2f}x floor > target {TARGETS[r.mode]}x")
        limit = FLOOR_TARGETS.get((r.method, r.shape))
        if limit is not None and r.floor > limit:
            notes.append(f"{where}: {r.floor:.2f}x floor > target {limit}x")
        if r.mode == "batch":
            best = fastest(BATCH_PEERS, r.method, "batch", r) or fastest(BATCH_PEERS, "cutmix", "batch", r)
            if best is not None and best.ms < r.ms:
                notes.append(f"{where}: {r.ms:.3g} ms, slower than the fastest peer ({best.library} {best.method}, {best.ms:.3g} ms)")
        else:
            timm = fastest(("timm",), r.method, "elem", r) or fastest(("timm",), "cutmix", "elem", r)
            if timm is not None and timm.ms < ELEM_SPEEDUP * r.ms:
                notes.append(f"{where}: {timm.ms / r.ms:.1f}x faster than timm {timm.method} elem ({timm.ms:.3g} ms), "
                             f"target {ELEM_SPEEDUP:g}x")
        for p in peers:
            same = (p.method, p.mode, p.shape, p.device) == (r.method, r.mode, r.shape, r.device)
            if same and p.ms < r.ms:
                notes.append(f"{where}: {r.ms:.3g} ms, slower than {p.library} ({p.ms:.3g} ms)")
    return list(dict.fromkeys(notes))


def sync_free_check(names: list[str], num_classes: int) -> list[str]:
    """Mixers (and modes) whose call makes the host wait on the GPU, under ``set_sync_debug_mode("error")``."""
    x = torch.rand(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, num_classes, (8,), device="cuda")
    syncing = []
    for name in names:
        for mode in ("batch", "elem"):
            mixer = openmix.build(name, num_classes=num_classes, mode=mode)
            mixer(x, y)  # warm-up: lazy initialisation may sync once
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                mixer(x, y)
            except Exception as error:  # the sync error is a RuntimeError; report any other failure too
                syncing.append(f"{name} ({mode}): {str(error).splitlines()[0]}")
            finally:
                torch.cuda.set_sync_debug_mode(0)
    return syncing


def profile(names: list[str], shape: tuple[int, ...], device: torch.device, num_classes: int, calls: int) -> None:
    """Print ``torch.profiler`` key_averages of each openmix mixer and mode over ``calls`` calls."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    x = torch.rand(shape, device=device)
    y = torch.randint(0, num_classes, (shape[0],), device=device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name in names:
        for mode in ("batch", "elem"):
            mixer = openmix.build(name, num_classes=num_classes, mode=mode)
            for _ in range(3):
                mixer(x, y)
            with torch_profile(activities=activities) as prof:
                for _ in range(calls):
                    mixer(x, y)
                sync(device)
            print(f"\n### profile: openmix {name} {mode} {'x'.join(map(str, shape))} {device} ({calls} calls)\n")
            print(prof.key_averages().table(sort_by=sort, row_limit=12))


# ------------------------------------------------------------------------ cli
def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes look like 128x3x32x32, got {text!r}") from None
    if len(shape) < 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"sizes look like 128x3x32x32 (B x C x spatial...), got {text!r}")
    return shape


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", type=parse_shape, default=[(128, 3, 32, 32), (64, 3, 224, 224)],
                        help="input shapes, B x C x spatial (default: 128x3x32x32 64x3x224x224)")
    parser.add_argument("--device", nargs="+", default=None, help="devices (default: cpu, and cuda when present)")
    parser.add_argument("--repeat", type=int, default=30,
                        help="timed rounds, one call per row each (default 30; sizes over 5M elements get 1/6)")
    parser.add_argument("--row-budget", type=float, default=2.0,
                        help="stop after 3+ rounds once timed calls pass this many seconds per row (default 2)")
    parser.add_argument("--mixers", nargs="+", default=None,
                        help="openmix mixers (default: every registered input mixer)")
    parser.add_argument("--num-classes", type=int, default=100, help="classes of the integer labels (default 100)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is steadier on a loaded shared machine")
    parser.add_argument("--no-peers", dest="peers", action="store_false", help="time openmix and the floor only")
    parser.add_argument("--targets", action="store_true",
                        help="also time the same draw applied to a dense target, a class map and boxes")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table to PATH")
    parser.add_argument("--csv", metavar="PATH", help="also write the rows to PATH as CSV")
    parser.add_argument("--profile", action="store_true",
                        help="instead, print a torch.profiler table per openmix mixer (--repeat calls, first size)")
    args = parser.parse_args(argv)

    available = list(openmix.available("input"))
    args.mixers = args.mixers or available
    unknown = sorted(set(args.mixers) - set(available))
    if unknown:
        parser.error(f"unknown input mixers {unknown}; available: {available}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    args.device = [torch.device(d) for d in args.device]
    if any(d.type == "cuda" for d in args.device) and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")

    if args.profile:
        for device in args.device:
            profile(args.mixers, args.sizes[0], device, args.num_classes, args.repeat)
        return []

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
          + f"; fp32, {args.num_classes} classes, integer labels; median of up to {args.repeat} calls per row "
          f"({max(3, args.repeat // 6)} above {LARGE // 1_000_000}M elements), rows timed round-robin. "
          "timm mixes in place: its input is cloned outside the timed region.\n", flush=True)
    rows = run(args)
    table = markdown(rows)
    print(table)
    notes = findings(rows)
    if notes:
        print("\nopenmix rows that miss a speed target (see findings()):\n" + "\n".join(f"- {n}" for n in notes))
    failed = [r for r in rows if r.library == "openmix" and math.isnan(r.ms)]
    if failed:
        print("\nopenmix rows that failed (on CUDA: a host-device sync under set_sync_debug_mode('error')):\n"
              + "\n".join(f"- {r.method} {r.mode} {r.device} {'x'.join(map(str, r.shape))}: {r.note}" for r in failed))
    if torch.cuda.is_available():
        syncing = sync_free_check(args.mixers, args.num_classes)
        print("\nsync-free check (set_sync_debug_mode('error')): "
              + ("every mixer is sync-free" if not syncing else "\n" + "\n".join(f"- {s}" for s in syncing)))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["library", "method", "mode", "shape", "device", "ms", "x_floor", "note"])
            for r in rows:
                writer.writerow([r.library, r.method, r.mode, "x".join(map(str, r.shape)), r.device,
                                 f"{r.ms:.4f}", f"{r.floor:.3f}", r.note])
    return rows


if __name__ == "__main__":
    table_rows = main()
    sys.exit(1 if any(r.library == "openmix" and math.isnan(r.ms) for r in table_rows) else 0)
