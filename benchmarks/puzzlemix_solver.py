"""PuzzleMix speed and mask quality: openmix's batched solver and transport vs the official code.

For a batch of 100 3x32x32 images and each grid side G in {2, 4, 8, 16}, times (median
of ``--repeats`` calls):

* mask optimisation: ``puzzle_masks`` (the energy terms and the batched solve);
* transport: ``mask_transport`` for both images of every pair plus ``transport_blocks``,
  on the G x G grid (as the anchors were measured), and with CIFAR's ``t_size=4`` cells;
* with ``gco-wrapper`` installed, the official per-sample loop: the int32 scaling of
  ``graphcut_multi`` and ``gco.cut_grid_graph(..., algorithm="swap")`` for every sample.

and prints them beside the anchors measured for the official code (2 CPU cores, one
process). Mask quality: the mean energy of openmix's masks relative to gco's on the same
problems, with the official scaling (``1000 G^2`` then int32, which gco multiplies by 1e5)
and with a precise integer scaling (gco's swap without quantisation or overflow), and the
mean gap to openmix's own dual lower bound (a certificate of optimality).

    python benchmarks/puzzlemix_solver.py                # CPU (and CUDA when present)
    python benchmarks/puzzlemix_solver.py --threads 1 --maps sharp
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openmix.mixers.puzzlemix import (
    PuzzleProblem,
    input_saliency,
    mask_transport,
    puzzle_energy,
    puzzle_masks,
    puzzle_problem,
    solve_puzzle,
    transport_blocks,
)
from openmix.mixers.puzzlemix.energy import block_saliency

GRIDS = (2, 4, 8, 16)
# the official code on 2 CPU cores, one process, batch 100 of 3x32x32 (ms per batch)
ANCHOR_GRAPHCUT = {2: 10, 4: 10, 8: 15, 16: 33}
ANCHOR_TRANSPORT = {2: 6, 4: 10, 8: 97, 16: 1205}


def inputs(batch: int, size: int, seed: int, maps: str, device: torch.device):
    """Images, saliency, partners and a batch lam. ``maps``: ``"cnn"`` (input gradients of a small
    random CNN on smooth images: what PuzzleMix sees), ``"smooth"`` (smoothed noise squared) or
    ``"sharp"`` (its cube: a few very salient blocks, where the official int32 scaling overflows)."""
    gen = torch.Generator().manual_seed(seed)
    if maps == "cnn":
        images = F.interpolate(torch.rand(batch, 3, size // 4, size // 4, generator=gen), size=size, mode="bilinear")
        torch.manual_seed(seed)
        layers = [m for i in range(4) for m in (nn.Conv2d(3 if i == 0 else 16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())]
        model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
        sal = input_saliency(model, images, torch.randint(0, 10, (batch,), generator=gen))
    else:
        sal = F.avg_pool2d(torch.randn(batch, 1, size + 6, size + 6, generator=gen), 7, 1)[:, 0].square()
        if maps == "sharp":
            sal = sal.pow(3)
        images = F.avg_pool2d(torch.rand(batch, 3, size + 4, size + 4, generator=gen), 5, 1)
    index = torch.randperm(batch, generator=gen)
    lam = torch.full((batch,), float(torch.rand((), generator=gen)))
    return sal.to(device), images.to(device), index.to(device), lam.to(device)


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median wall time and median process CPU time of ``fn()`` in ms (one warm-up call).

    On a shared machine the wall time includes waiting for a core; the CPU time does not
    (with one torch thread it is the work itself)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def ms(pair: tuple[float, float]) -> str:
    return f"{pair[0]:7.1f}/{pair[1]:<7.1f}"


def transport_both(images: torch.Tensor, partners: torch.Tensor, mask: torch.Tensor, sal_cells: torch.Tensor,
                   index: torch.Tensor, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images of every pair transported (the plans and the moves), as one PuzzleMix step does."""
    batch, grid = mask.shape[0], mask.shape[-1]
    cell_mask = mask.repeat_interleave(cells // grid, 1).repeat_interleave(cells // grid, 2)
    src = mask_transport(torch.cat([cell_mask, 1 - cell_mask]), torch.cat([sal_cells, sal_cells[index]]), 0.8)
    return transport_blocks(images, src[:batch], cells), transport_blocks(partners, src[batch:], cells)


def gco_labels(problem: PuzzleProblem, precise: bool) -> torch.Tensor:
    """The official per-sample swap loop (``precise``: integer scaling without quantisation)."""
    import gco

    unary, w_v, w_h = (t.double().cpu().numpy() for t in problem)
    batch, grid, _, n_labels = unary.shape
    steps = np.arange(n_labels)
    out = np.empty((batch, grid * grid), dtype=np.int64)
    if precise:  # int energies (no float path in gco): the label costs (l - l')^2, weights / (L-1)^2
        scale = 1e7
        pairwise = ((steps[:, None] - steps[None]) ** 2).astype(np.int32)
        for i in range(batch):
            out[i] = gco.cut_grid_graph(np.rint(scale * unary[i]).astype(np.int32), pairwise,
                                        np.rint(scale * w_v[i] / (n_labels - 1) ** 2).astype(np.int32),
                                        np.rint(scale * w_h[i] / (n_labels - 1) ** 2).astype(np.int32), algorithm="swap")
    else:  # graphcut_multi: int32(1000 G^2 x), float32 label costs (so gco takes its float path)
        scale = 1000 * grid**2
        pairwise = ((steps[:, None] - steps[None]) ** 2 / (n_labels - 1) ** 2).astype(np.float32)
        for i in range(batch):
            out[i] = gco.cut_grid_graph((scale * unary[i]).astype(np.int32), pairwise, (scale * w_v[i]).astype(np.int32),
                                        (scale * w_h[i]).astype(np.int32), algorithm="swap")
    return torch.from_numpy(out).view(batch, grid, grid)


def run(device: torch.device, args: argparse.Namespace, have_gco: bool) -> None:
    print(f"\n{device.type.upper()}  batch {args.batch} x 3x{args.size}x{args.size}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}, {args.maps} saliency maps; times in ms as wall/cpu")
    cpu = device.type == "cpu"
    head = (f"{'G':>3} | {'masks':^15} {'gco loop':^15} {'official':>8} | {'transport':^15} {'official':>8} "
            f"{'t_size=4':^15}")
    if have_gco and cpu:
        head += f" | {'E/E_gco':>8} {'E/E_gco*':>8} {'E/bound':>8}"
    print(head + "\n" + "-" * len(head))
    for grid in GRIDS:
        sal, images, index, lam = inputs(args.batch, args.size, grid, args.maps, device)
        masks = timed(lambda: puzzle_masks(sal, images, index, lam, grid), args.repeats, device)
        mask = puzzle_masks(sal, images, index, lam, grid)
        partners = images[index]  # gathered before transport in a step, as in the official mixup_graph
        s_grid = block_saliency(sal, grid)
        trans = timed(lambda: transport_both(images, partners, mask, s_grid, index, grid), args.repeats, device)
        cells = args.size // 4 if args.size // grid > 4 else grid  # CIFAR's t_size = 4
        s_cells = block_saliency(sal, cells)
        trans4 = timed(lambda: transport_both(images, partners, mask, s_cells, index, cells), args.repeats, device)
        problem = puzzle_problem(sal, images, index, lam, grid)
        loop = ms(timed(lambda: gco_labels(problem, False), args.repeats, device)) if have_gco and cpu else f"{'-':^15}"
        row = (f"{grid:>3} | {ms(masks)} {loop} {ANCHOR_GRAPHCUT[grid]:>8d} | {ms(trans)} {ANCHOR_TRANSPORT[grid]:>8d} "
               f"{ms(trans4)}")
        if have_gco and cpu:
            p64 = problem.to(torch.float64)
            labels, bound = solve_puzzle(problem, return_bound=True)
            ours = puzzle_energy(labels, p64)
            official = puzzle_energy(gco_labels(problem, False), p64)
            precise = puzzle_energy(gco_labels(problem, True), p64)
            row += (f" | {float((ours / official).mean()):>8.5f} {float((ours / precise).mean()):>8.5f}"
                    f" {float((ours / bound.double()).mean()):>8.5f}")
        print(row)
    print("official: the anchors measured for the official code (2 CPU cores, one process), wall ms.")
    if have_gco and cpu:
        print("E/E_gco: mean energy ratio vs the official per-sample gco swap (official int32 scaling); "
              "E/E_gco*: vs gco swap with a precise integer scaling; E/bound: vs openmix's dual lower bound "
              "(1 = certified optimal). Below 1: openmix's masks have lower energy.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--maps", choices=("cnn", "smooth", "sharp"), default="cnn",
                        help="saliency maps: a small CNN's input gradients, smoothed noise, or peaked (overflows the official scaling)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import gco  # noqa: F401

        have_gco = True
    except ImportError:
        have_gco = False
        print("gco-wrapper not installed: the official per-sample loop is not timed (pip install gco-wrapper)")
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        run(device, args, have_gco)


if __name__ == "__main__":
    main()
