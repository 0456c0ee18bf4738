"""Co-Mixup's batched solver against the official per-partition solver: objective quality and speed.

The official ``snu-mllab/Co-Mixup`` (``match.py::get_onehot_matrix``) solves one partition at a time:
block-coordinate sweeps over the outputs, each re-labelled by one gco alpha-beta swap of its unary plus
the modular penalty of the others' use, 50/50 "soft" labels from the second sweep, ``resolve_label``
and an early stop. This module restates it in numpy + gco (``official_solve``; ``gco-wrapper``) and
measures openmix's :func:`~openmix.mixers.comixup.solve_comixup` against it, on saliency maps of two
kinds (``cnn``: input gradients of a small random CNN on smooth images, the kind of maps Co-Mixup sees;
``smooth``: smoothed noise squared), with the official defaults and a Dirichlet(2) prior per partition:

a. **small problems** (``--small``, ``m`` samples on a ``G x G`` grid; ``--parts`` partitions each): the
   mean relative gap of the objective to the exhaustive optimum (``exhaustive_optimum``), for openmix
   (its defaults, and ``--more-restarts``) and for the official solver (the mean of ``--runs`` random
   starts; soft labels as coded, and hard masks), and the share of partitions where openmix reaches it;
b. **beyond the exhaustive optimum** (``--beyond``; ``--beyond-parts`` partitions): the mean objective of
   the identity labelling (no mixing), of openmix (defaults, ``--more-restarts``, ``--more-sweeps``) and
   of the official solver, their relative difference (negative: openmix lower, better), the partitions
   where openmix is no worse, the diversity term's part, and (``G <= 4``) the share of the per-output
   Potts problems with at most ``K`` eligible labels, where the row DP is exact: of those a default
   solve meets, and of those at its final labelling;
c. **speed** at the official default size (a batch of ``--batch`` = 100, partitions of ``--partition`` =
   20, ``G`` in ``--grids``): the median ms of one ``solve_comixup`` call on the whole batch (float32,
   as the mixer calls it) against the official loop (``official_solve`` of every partition, in turn),
   on the CPU with ``--threads`` torch threads, and on CUDA when present (synchronised around the
   timed calls; the official loop is timed on the CPU only: gco runs there).

Objectives are evaluated in float64 by :func:`~openmix.mixers.comixup.comixup_objective` (the thresholded
diversity with the compatibility matrix: what both solvers aim at). The tables are markdown; the
reference code here is also what ``tests/test_comixup.py`` checks the solver against.

    python benchmarks/comixup_solver.py                               # CPU (and CUDA when present)
    python benchmarks/comixup_solver.py --threads 1 --device cpu --markdown benchmarks/results/comixup_solver_cpu.md
    python benchmarks/comixup_solver.py --small 4x2 --beyond 20x4 --grids 4 --runs 1 --official-repeats 1
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from openmix.mixers.comixup import CoMixupProblem, comixup_objective, comixup_problem, solve_comixup
from openmix.mixers.comixup.objective import block_counts, diversity
from openmix.mixers.comixup import solver
from openmix.mixers.comixup.solver import EXACT_GRIDS, STATE_BUDGET
from openmix.mixers.puzzlemix import input_saliency

KINDS = ("cnn", "smooth")
SMALL = ("4x2", "3x3")
BEYOND = ("5x2", "6x3", "20x2", "20x4", "20x8")
GRIDS = (2, 4, 8)


# ------------------------------------------------------------------------ problems
def smooth_saliency(batch: int, size: int, seed: int, power: float = 1.0) -> torch.Tensor:
    """Smoothed noise squared (``power`` > 1: a few peaked regions), float64 ``(B, size, size)``."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 1, size + 6, size + 6, generator=gen, dtype=torch.float64)
    return F.avg_pool2d(noise, 7, 1)[:, 0].square().pow(power)


def cnn_saliency(batch: int, size: int, seed: int) -> torch.Tensor:
    """Input-gradient saliency of a small random CNN on smooth images: the maps Co-Mixup sees."""
    torch.manual_seed(seed)
    layers = [m for i in range(3) for m in (torch.nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1), torch.nn.ReLU())]
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    gen = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(batch, 3, size // 4, size // 4, generator=gen), size=size, mode="bilinear")
    return input_saliency(model, x, torch.randint(0, 10, (batch,), generator=gen)).double()


def problems(kind: str, parts: int, m: int, grid: int, seed: int) -> CoMixupProblem:
    """``parts`` partitions of ``m`` saliency maps with the official defaults and a Dirichlet(2) prior, float64."""
    size = grid * math.ceil(32 / grid)
    sal = cnn_saliency(parts * m, size, seed) if kind == "cnn" else smooth_saliency(parts * m, size, seed)
    gammas = torch._standard_gamma(torch.full((parts, m), 2.0, dtype=torch.float64), generator=torch.Generator().manual_seed(seed))
    return comixup_problem(sal, grid, m, prior=gammas / gammas.sum(1, keepdim=True))


# ---------------------------------------------------------------- the official code, restated for reference
def official_objective(masks: np.ndarray, cost: np.ndarray, beta: float, gamma: float, thres: float | None) -> float:
    """``obj_fn`` (``thres=None``) or ``obj_fn_thres`` of ``match.py`` for one partition: masks ``(m, G, G, m)``,
    cost ``(m, G, G)``, coefficients already scaled by the grid."""
    counts = masks.reshape(masks.shape[0], -1, masks.shape[-1]).sum(1)
    value = float((masks * cost.transpose(1, 2, 0)[None]).sum())
    value += beta / 2 * float(((masks[:, :-1] - masks[:, 1:]) ** 2).sum() + ((masks[:, :, :-1] - masks[:, :, 1:]) ** 2).sum())
    if thres is None:
        return value + gamma * float((counts.sum(0) ** 2).sum() - (counts**2).sum())
    others = counts.sum(0, keepdims=True) - counts
    return value + gamma * float(((others > thres) * others * counts).sum())


def gco_labels(unary: np.ndarray, pairwise: np.ndarray, beta: float) -> np.ndarray:
    """One alpha-beta swap of gco on a ``G x G`` grid with ``beta`` on every edge (``graphcut_multi``)."""
    import gco

    grid = unary.shape[0]
    edges_v, edges_h = np.full((grid - 1, grid), beta, np.float32), np.full((grid, grid - 1), beta, np.float32)
    return gco.cut_grid_graph(np.ascontiguousarray(unary, dtype=np.float32), pairwise.astype(np.float32), edges_v, edges_h,
                              algorithm="swap").reshape(grid, grid)


def official_output(unary: np.ndarray, used: np.ndarray, beta: float, soft: bool) -> np.ndarray:
    """``graphcut_wrapper``: one output's mask ``(G, G, m)``; with ``soft`` (the official from its second sweep),
    a 50/50 label of the two inputs it uses (cost: their mean - 5e-4; 0.25 to each parent), or three such
    labels of its three most used inputs."""
    m = unary.shape[-1]
    assigned = used > 0
    extra = int(assigned.sum()) if soft else 0
    if extra == 2:
        parents, blend = np.flatnonzero(assigned), np.array([[0.5, 0.5]])
    elif extra >= 3:
        parents, blend = np.sort(np.argsort(-used, kind="stable")[:3]), np.array([[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    else:
        return np.eye(m)[gco_labels(unary, 1 - np.eye(m), beta)]
    k = blend.shape[0]
    full = np.concatenate([unary, unary[..., parents] @ blend.T - 5e-4], -1)
    pairwise = 1 - np.eye(m + k)
    pairwise[m:, parents] = np.where(blend > 0, 0.25, 1.0)  # a 50/50 label next to one of its parents: 0.25
    pairwise[parents, m:] = pairwise[m:, parents].T
    weights = np.zeros((k, m))
    weights[:, parents] = blend
    onehot = np.eye(m + k)[gco_labels(full, pairwise, beta)]
    return onehot[..., :m] + onehot[..., m:] @ weights


def official_solve(cost: np.ndarray, compat: np.ndarray, beta: float, gamma: float, tau: float, rng: np.random.Generator,
                   soft: bool = True, sweeps: int = 4, resolve: bool = True) -> np.ndarray:
    """``get_onehot_matrix`` for one partition (``n_output = n_input = m``), restated: a random labelling, then
    ``sweeps`` passes re-labelling each output by gco with the modular penalty ``2 gamma 1[A p > tau] A p`` of
    the others' use ``p``; ``resolve_label`` after the second last pass; stop when ``obj_fn`` changes by less
    than 1e-6 relatively. Returns the masks ``(m, G, G, m)`` of the last labelling."""
    m, grid, _ = cost.shape
    masks = np.eye(m)[rng.integers(0, m, (m, grid, grid))]
    before = official_objective(masks, cost, beta, gamma, None)
    use = masks.reshape(-1, m).sum(0)
    extra = None
    for sweep in range(sweeps):
        for j in range(m):
            own = masks[j].reshape(-1, m).sum(0)
            use = use - own
            pressure = compat @ use
            penalty = 2 * gamma * (pressure > tau) * pressure
            unary = cost + penalty[:, None, None] + (0 if extra is None else gamma * extra[j][:, None, None])
            masks[j] = official_output(unary.transpose(1, 2, 0), own, beta, soft and sweep > 0)
            use = use + masks[j].reshape(-1, m).sum(0)
        if resolve and sweep == sweeps - 2:
            shown = (masks.reshape(m, -1, m).sum(1) > 0).astype(np.float64)
            same = np.triu(1.0 - np.minimum(np.abs(shown[:, None] - shown[None]).sum(-1), 1.0), 1)
            extra = np.zeros_like(shown)
            for a, b in zip(*np.nonzero(same)):
                inputs = np.flatnonzero(shown[a])
                if len(inputs) > 1:
                    extra[a, inputs[0]] = extra[b, inputs[1]] = 1.0
        after = official_objective(masks, cost, beta, gamma, None)
        if abs(before - after) / abs(after) < 1e-6:
            break
        before = after
    return masks


def official_masks(problem: CoMixupProblem, runs: int, soft: bool, seed: int = 0) -> torch.Tensor:
    """The masks ``(runs, P, m, G, G, m)`` float64 of ``runs`` official solves (random starts) of every partition."""
    rng = np.random.default_rng(seed)
    cost, compat = problem.cost.double().numpy(), problem.compat.double().numpy()
    solve = lambda c, a: official_solve(c, a, problem.beta, problem.gamma, problem.tau, rng, soft)  # noqa: E731
    return torch.from_numpy(np.stack([np.stack([solve(c, a) for c, a in zip(cost, compat)]) for _ in range(runs)]))


def official_values(problem: CoMixupProblem, runs: int, soft: bool, seed: int = 0) -> torch.Tensor:
    """The mean objective ``(P,)`` of ``runs`` official solves (random starts) of every partition."""
    problem = problem.to(torch.float64)
    masks = official_masks(problem, runs, soft, seed)
    return torch.stack([comixup_objective(run, problem) for run in masks]).mean(0)


def exhaustive_optimum(problem: CoMixupProblem) -> torch.Tensor:
    """The exact optimum ``(P,)``. The outputs share one unary, so the objective depends on the multiset of their
    block counts: every output's best Potts energy for each count vector (over all ``m^N`` labellings), then
    every multiset of ``m`` count vectors."""
    cost, compat = problem.cost.double(), problem.compat.double()
    parts, m, grid, _ = cost.shape
    blocks = grid * grid
    every = torch.tensor(list(itertools.product(range(m), repeat=blocks)))  # (S, N)
    shape = every.view(-1, grid, grid)
    cuts = (shape[:, 1:] != shape[:, :-1]).flatten(1).sum(1) + (shape[:, :, 1:] != shape[:, :, :-1]).flatten(1).sum(1)
    energy = cost.flatten(2)[:, every, torch.arange(blocks)].sum(-1) + problem.beta * cuts  # (P, S)
    keys, which = torch.unique(F.one_hot(every, m).sum(1), dim=0, return_inverse=True)
    best = torch.full((parts, keys.shape[0]), math.inf, dtype=torch.float64).scatter_reduce(
        1, which.expand(parts, -1), energy, reduce="amin")
    combos = torch.tensor(list(itertools.combinations_with_replacement(range(keys.shape[0]), m)))
    optimum = []
    for p in range(parts):  # reference only: a plain loop is clearest
        counts = keys[combos].double()  # (C, m, m)
        pressure = (counts.sum(1, keepdim=True) - counts) @ compat[p].t()
        penalty = problem.gamma * (counts * torch.where(pressure > problem.tau, pressure, 0.0)).sum((1, 2))
        optimum.append((best[p][combos].sum(1) + penalty).min())
    return torch.stack(optimum)


# ------------------------------------------------------------------------ measurements
def have_gco() -> bool:
    try:
        import gco  # noqa: F401
    except ImportError:
        return False
    return True


def ours(problem: CoMixupProblem, dtype: torch.dtype = torch.float64, **options) -> tuple[torch.Tensor, ...]:
    """openmix's labellings of ``problem`` solved in ``dtype`` (the defaults, or ``options`` of
    :func:`solve_comixup`; seed 0), and their float64 objective ``(P,)``."""
    labels = solve_comixup(problem.to(dtype), generator=torch.Generator().manual_seed(0), **options)
    return labels, comixup_objective(labels, problem.to(torch.float64))


def diversity_term(labels: torch.Tensor, problem: CoMixupProblem) -> torch.Tensor:
    """The diversity part ``(P,)`` of the objective of labellings ``(P, m, G, G)`` or masks ``(P, m, G, G, m)``."""
    problem = problem.to(torch.float64)
    m = problem.cost.shape[1]
    counts = labels.sum((2, 3)) if labels.is_floating_point() else block_counts(labels, m, torch.float64)
    return diversity(counts * problem.present.unsqueeze(-1), problem)


def eligible_share(problem: CoMixupProblem, labels: torch.Tensor) -> float:
    """The share of the per-output Potts problems at ``labels`` (each output's unary plus the solver's hard
    modular penalty of the others' use) with at most ``K`` eligible labels, ``K`` the row DP's candidates
    (``K^G <= STATE_BUDGET``): there the row DP is exact. A label is eligible at a block when its unary is
    within ``deg * beta'`` of the block's best."""
    cost, present = problem.cost.double(), problem.present
    parts, m, grid, _ = cost.shape
    k = max(c for c in range(1, m + 1) if c**grid <= STATE_BUDGET)
    counts = F.one_hot(labels.flatten(2), m).sum(2).double() * present.unsqueeze(-1)  # (P, output, input)
    others = counts.sum(1, keepdim=True) - counts
    pressure = others @ problem.compat.double().transpose(1, 2)
    penalty = 2 * problem.gamma * torch.where(pressure > problem.tau, pressure, 0.0)  # (P, output, input)
    unary = cost.unsqueeze(1) + penalty.view(parts, m, m, 1, 1)  # (P, output, input, G, G)
    side = torch.full((grid,), 2.0, dtype=torch.float64)
    side[0] = side[-1] = 1.0
    degree = side.view(-1, 1) + side.view(1, -1)
    eligible = (unary <= unary.amin(2, keepdim=True) + problem.beta * degree).flatten(3).any(-1).sum(-1)  # (P, output)
    return float((eligible[present] <= k).double().mean())


def eligible_share_in_solve(problem: CoMixupProblem, dtype: torch.dtype) -> float:
    """The same share over every per-output Potts problem the row DP meets in one default solve (all sweeps and
    restarts), by wrapping the solver's private ``_row_dp`` for the call."""
    shares = []
    row_dp = solver._row_dp

    def counting(unary: torch.Tensor, beta: float, k: int):
        grid = unary.shape[1]
        side = torch.full((grid,), 2.0, dtype=unary.dtype)
        side[0] = side[-1] = 1.0
        degree = (side.view(-1, 1) + side.view(1, -1)).view(1, grid, grid, 1)
        eligible = (unary <= unary.amin(-1, keepdim=True) + beta * degree).flatten(1, 2).any(1).sum(-1)
        shares.append((eligible <= k).double())
        return row_dp(unary, beta, k)

    solver._row_dp = counting
    try:
        ours(problem, dtype)
    finally:
        solver._row_dp = row_dp
    return float(torch.cat(shares).mean())


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float]:
    """Median wall and process CPU ms of ``fn()`` over ``repeats`` calls after one warm-up call."""
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


def size(text: str) -> tuple[int, int]:
    """``"mxG"`` as ``(m, G)``."""
    m, grid = text.lower().split("x")
    return int(m), int(grid)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def pct(value: float) -> str:
    return f"{100 * value:.3f}%" if abs(value) >= 5e-6 else "0.000%"  # no "-0.000%" from rounding


def small_quality(args: argparse.Namespace, gco: bool) -> tuple[list[str], list[dict]]:
    """Table a: gaps to the exhaustive optimum."""
    rows, found = [], []
    for kind in args.kinds:
        for m, grid in map(size, args.small):
            problem = problems(kind, args.parts, m, grid, seed=10 * m + grid)  # the seeds of tests/test_comixup.py
            optimum = exhaustive_optimum(problem)
            _, value = ours(problem)
            _, more = ours(problem, restarts=args.more_restarts)
            entry = {"kind": kind, "m": m, "grid": grid, "ours": float(((value - optimum) / optimum.abs()).mean()),
                     "optimal": float((value - optimum <= 1e-9 * optimum.abs()).double().mean()),
                     "more": float(((more - optimum) / optimum.abs()).mean())}
            cells = [kind, str(m), str(grid), str(args.parts)] + [pct(entry[name]) for name in ("ours", "optimal", "more")]
            for soft in (True, False):
                if gco:
                    official = official_values(problem, runs=args.runs, soft=soft)
                    entry["soft" if soft else "hard"] = float(((official - optimum) / optimum.abs()).mean())
                    cells.append(pct(entry["soft" if soft else "hard"]))
                else:
                    cells.append("-")
            rows.append(cells)
            found.append(entry)
    head = ["maps", "m", "G", "partitions", "openmix gap", "openmix optimal", f"openmix gap ({args.more_restarts} restarts)",
            f"official gap (soft, {args.runs} runs)", f"official gap (hard, {args.runs} runs)"]
    lines = ["### a. Gap to the exhaustive optimum (mean of (F - F*) / |F*| over the partitions)", "",
             *table(head, rows), "",
             "openmix: the defaults (4 sweeps, 4 restarts); optimal: the partitions where its objective is the "
             "optimum (to 1e-9 relatively); beside it with more restarts. "
             "official: the mean over its random starts; soft: with its 50/50 labels from the second sweep "
             "(as coded), hard: one-hot masks only. All in float64."]
    return lines, found


def beyond_quality(args: argparse.Namespace, gco: bool) -> tuple[list[str], list[dict]]:
    """Table b: mean objectives where the optimum is out of reach."""
    rows, found = [], []
    for kind in args.kinds:
        for m, grid in map(size, args.beyond):
            problem = problems(kind, args.beyond_parts, m, grid, seed=m + grid)  # (5, 2), (6, 3): the tests' seeds
            dtype = torch.float32 if m >= 20 else torch.float64
            labels, value = ours(problem, dtype)
            _, more = ours(problem, dtype, restarts=args.more_restarts)
            _, longer = ours(problem, dtype, sweeps=args.more_sweeps)
            identity = torch.arange(m).view(1, m, 1, 1).expand(args.beyond_parts, m, grid, grid)
            entry = {"kind": kind, "m": m, "grid": grid, "ours": float(value.mean()), "more": float(more.mean()),
                     "longer": float(longer.mean()),
                     "identity": float(comixup_objective(identity, problem).mean()),
                     "ours_diversity": float(diversity_term(labels, problem).mean())}
            exact = grid <= EXACT_GRIDS
            entry["exact"] = eligible_share(problem, labels) if exact else None
            entry["exact_in_solve"] = eligible_share_in_solve(problem, dtype) if exact else None
            cells = [kind, str(m), str(grid), str(args.beyond_parts)]
            cells += [f"{entry[name]:.3f}" for name in ("identity", "ours", "more", "longer")]
            compared, no_worse, terms = [], [], [f"{entry['ours_diversity']:.2f}"]
            for soft in (True, False):
                name = "soft" if soft else "hard"
                if not gco:
                    cells.append("-")
                    continue
                masks = official_masks(problem, runs=args.runs, soft=soft)  # (runs, P, m, G, G, m)
                official = torch.stack([comixup_objective(run, problem) for run in masks]).mean(0)
                entry[name] = float(official.mean())
                entry[name + "_diversity"] = float(torch.stack([diversity_term(run, problem) for run in masks]).mean())
                entry[name + "_no_worse"] = int((value <= official + 1e-9 * official.abs()).sum())  # ties: rounding
                cells.append(f"{entry[name]:.3f}")
                compared.append(f"{100 * (entry['ours'] - entry[name]) / abs(entry[name]):+.1f}%")
                no_worse.append(str(entry[name + "_no_worse"]))
                terms.append(f"{entry[name + '_diversity']:.2f}")
            cells += [" / ".join(compared) or "-", " / ".join(no_worse) or "-", " / ".join(terms),
                      f"{pct(entry['exact_in_solve'])} / {pct(entry['exact'])}" if exact else "line ICM"]
            rows.append(cells)
            found.append(entry)
    head = ["maps", "m", "G", "partitions", "identity F", "openmix F", f"openmix F ({args.more_restarts} restarts)",
            f"openmix F ({args.more_sweeps} sweeps)",
            f"official F (soft, {args.runs} runs)", f"official F (hard, {args.runs} runs)", "openmix vs soft / hard",
            "partitions openmix <= soft / hard", "diversity term: openmix / soft / hard",
            "row DP exact: in the solve / at the end"]
    lines = ["### b. Mean objective where the optimum is out of reach", "", *table(head, rows), "",
             "F: the mean objective over the partitions (lower is better). identity: every output its own input "
             "whole (no mixing; no diversity cost). openmix: the defaults (4 sweeps, 4 restarts), in float64, in "
             "float32 for m = 20 (as the mixer); beside it with more restarts, and with more sweeps. official: the "
             "mean over its random starts, soft labels as coded or hard masks only. openmix vs official: (F openmix - F official) / "
             "|F official| (negative: openmix lower); partitions openmix <= official: where openmix's objective is "
             "no higher than the official's mean over its starts (to 1e-9 relatively). diversity term: its part of F, "
             "gamma' sum_j c_j . g(A (T - c_j)), mean over the partitions. row DP exact: the share of the "
             "per-output Potts problems with at most K eligible labels (K^G <= 625: 25, 8, 5 on 2x2, 3x3, 4x4), "
             "where the row DP is exact: of all those the default solve passes to it (every sweep and restart), "
             "and of those at openmix's final labelling (each output's unary plus the hard modular penalty of the "
             "others' use); G >= 5 uses line ICM."]
    return lines, found


def speed(args: argparse.Namespace, gco: bool, devices: Sequence[torch.device]) -> tuple[list[str], list[dict]]:
    """Table c: one batch's labelling, openmix (all partitions at once) vs the official loop."""
    lines, found, official_ms = [], [], {}
    parts = -(-args.batch // args.partition)
    for device in devices:
        rows = []
        for grid in args.grids:
            problem = problems("cnn", parts, args.partition, grid, seed=grid)
            if gco and grid not in official_ms:
                rng, pairs = np.random.default_rng(0), list(zip(problem.cost.numpy(), problem.compat.numpy()))
                coefficients = (problem.beta, problem.gamma, problem.tau, rng)
                loop = lambda: [official_solve(cost, compat, *coefficients) for cost, compat in pairs]  # noqa: E731
                official_ms[grid] = timed(loop, args.official_repeats, torch.device("cpu"))
            p32 = problem.to(device=device, dtype=torch.float32)
            gen = torch.Generator(device).manual_seed(0)
            wall, cpu = timed(lambda: solve_comixup(p32, generator=gen), args.repeats, device)
            cells = [str(grid), f"{wall:.1f}"] + ([f"{cpu:.1f}"] if device.type == "cpu" else [])
            entry = {"device": device.type, "grid": grid, "ms": wall, "cpu_ms": cpu}
            if grid in official_ms:
                entry["official_ms"], entry["official_cpu_ms"] = official_ms[grid]
                theirs, theirs_cpu = official_ms[grid]
                cells += [f"{theirs:.1f}", f"{theirs_cpu:.1f}", f"{theirs / wall:.1f}x"]
            else:
                cells += ["-", "-", "-"]
            rows.append(cells)
            found.append(entry)
        where = f"torch threads: {torch.get_num_threads()}" if device.type == "cpu" else torch.cuda.get_device_name(device)
        head = ["G", "openmix ms"] + (["openmix CPU-time ms"] if device.type == "cpu" else []) + [
            "official loop ms (CPU)", "official CPU-time ms", "official / openmix"]
        lines += [f"### c. Speed, {device.type.upper()}: batch {args.batch} = {parts} partitions of {args.partition} "
                  f"({where})", "", *table(head, rows), "",
                  f"Median of {args.repeats} calls of solve_comixup on the whole batch (float32, {args.partition} "
                  f"outputs, 4 sweeps, 4 restarts) and of {args.official_repeats} runs of the official loop "
                  "(official_solve per partition, in turn: numpy + gco, soft labels as coded, early stop; "
                  "without the official's tensor round trips to the GPU per output); one warm-up call each. "
                  "ms: wall time; CPU-time ms: the process's CPU time (the work itself, without waiting for a core); "
                  "official / openmix: of the wall times.", ""]
    return lines, found


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="saliency maps (tables a and b)")
    parser.add_argument("--small", nargs="+", default=list(SMALL), help="m x G of table a (exhaustive optimum)")
    parser.add_argument("--parts", type=int, default=12, help="partitions per row of table a")
    parser.add_argument("--beyond", nargs="+", default=list(BEYOND), help="m x G of table b")
    parser.add_argument("--beyond-parts", type=int, default=8, help="partitions per row of table b")
    parser.add_argument("--more-restarts", type=int, default=16, help="openmix's restarts in the extra columns of a and b")
    parser.add_argument("--more-sweeps", type=int, default=8, help="openmix's sweeps in an extra column of b")
    parser.add_argument("--runs", type=int, default=3, help="official random starts per partition (tables a and b)")
    parser.add_argument("--batch", type=int, default=100, help="batch of table c")
    parser.add_argument("--partition", type=int, default=20, help="partition size of table c (official m_part)")
    parser.add_argument("--grids", nargs="+", type=int, default=list(GRIDS), help="G of table c")
    parser.add_argument("--repeats", type=int, default=7, help="timed openmix calls (median)")
    parser.add_argument("--official-repeats", type=int, default=5, help="timed official loops (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all", help="devices of table c")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gco = have_gco()
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    start = time.perf_counter()
    out = ["## Co-Mixup solver: openmix vs the official solver", ""]
    if not gco:
        out += ["gco-wrapper is not installed: the official solver is not run (pip install gco-wrapper).", ""]
        print(out[-2] + "\n")
    results = {}
    for name, measure in (("small", small_quality), ("beyond", beyond_quality)):
        lines, results[name] = measure(args, gco)
        out += lines + [""]
        print("\n".join(lines) + "\n", flush=True)
    lines, results["speed"] = speed(args, gco, devices)
    out += lines
    print("\n".join(lines), flush=True)
    command = "python benchmarks/comixup_solver.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out += [f"`{command.strip()}`: {time.perf_counter() - start:.0f} s in all, torch {torch.__version__}.", ""]
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(out))
    return results


if __name__ == "__main__":
    main()
