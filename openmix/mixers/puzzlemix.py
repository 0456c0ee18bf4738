"""PuzzleMix (Kim, Choo & Song, ICML 2020; arXiv 2009.06962): saliency-guided block mixing
with an optimised multi-label mask and saliency-discounted transport, batched on the device.

Pipeline of one training step (:meth:`PuzzleMix.step`), as the official code
(``snu-mllab/PuzzleMix``: ``main.py::train``, ``mixup.py::mixup_graph``) does it:

1. **Saliency.** ``s = sqrt(mean_c (dL/dx)^2)`` of the batch-mean cross-entropy of the
   clean batch, the model in eval mode (BN running statistics); only the input gradient
   is taken (``torch.autograd.grad``), so no parameter gradient of this pass exists, and
   the caller's own accumulated gradients are left alone (the official code zeroes them).
2. **Mask.** On a ``G x G`` block grid (``G`` drawn per step from ``block_nums``) each block
   gets a label ``l`` in ``{0, .., L-1}``, i.e. a weight ``m = 1 - l/(L-1)`` of the sample's
   own image (``{1, 0.5, 0}`` for ``L = 3``), minimising the official energy
   (:func:`puzzle_problem`, :func:`puzzle_energy`) with a batched solver
   (:func:`solve_puzzle`).
3. **Transport.** Each image's blocks move towards where they stay visible, by the
   official greedy assignment of the cost ``t_eps * C - s_i * z_j`` (:func:`mask_transport`,
   :func:`transport_blocks`).
4. ``x_mix = m * T(x) + (1 - m) * T'(x[index])``, ``lam`` = mean of the mask, targets
   ``lam * y + (1 - lam) * y[index]``.

**Reused work.** The full-resolution saliency is pooled once, at the finest grid the step
needs (the transport grid when ``t_size`` sub-divides the blocks, else the block grid);
the block-grid saliency is the sum of that map over ``(block/t)^2`` cells. Both are
normalised to sum 1 per sample, and a normalised average pool is ``block sum / total``
at any grid, so this equals pooling the full map twice (as the official code does) up to
float rounding. The partner's maps are gathered (``s[index]``), not recomputed. The data
term pools the de-normalised images once and reads the four source combinations from
that one pooled tensor.

**Solver.** The official code runs one alpha-beta-swap graph cut per sample on the CPU.
Here the whole batch is solved at once with torch ops, no Python loop over samples and
no host-device synchronisation:

* ``L^G <= 81`` (``G <= 4`` for three labels): exact dynamic programming over the rows
  of the grid (a row's labelling is one state, ``L^G`` states per row).
* larger grids: dual decomposition of the grid into its row chains and its column
  chains. The unaries are split between the two families; each iteration computes the
  min-marginals of every chain by one forward and one backward min-sum pass (all chains
  of the batch, both families and both directions stacked into one tensor, so an
  iteration costs ``G`` steps of three small ops) and moves the split towards agreement
  (min-marginal averaging with momentum, damped per sample so that the dual bound never
  drops). The final dual is decoded a line at a time, as TRW-S decodes: the middle row
  exactly given the column chains' min-marginals, then the rows outwards, each exactly
  given the row fixed next to it and the column chains' messages from the other side;
  the same by columns; the lower energy of the two is kept and a sweep of block ICM
  (every row, then every column, re-solved exactly given its neighbours) polishes it.
  (Labelling each block by its own averaged min-marginals instead mixes two nearly tied
  labellings of a large region: on input-gradient saliency at G = 16 that left the masks
  0.016% above the official graph cut's energy on average, line decoding 0.0015%.)
  The pairwise term
  ``w (l - l')^2`` with ``w >= 0`` is submodular on the ordered labels, so the LP
  relaxation this dual bounds is tight, and the dual value certifies how close a
  labelling is to optimal (:func:`solve_puzzle` with ``return_bound``).

  Why not a batched graph cut: max-flow needs data-dependent augmenting paths or many
  push-relabel rounds, while chain dynamic programming maps onto a fixed number of dense
  steps. Why not loopy BP / TRW-S: TRW-S is sequential over nodes (a parallel
  anti-diagonal wavefront costs ~10x more small ops per sweep than the chain scan) and,
  measured on input-gradient saliency at G = 16, it needs about two thirds of the
  iterations (dual gap 0.029% after 8, where this scheme needs 12 for 0.023%); synchronous
  loopy BP does not converge reliably on grids.

Energies are floats (the official code scales by ``1000 * G^2`` and casts to int32, and
gco then multiplies by ``1e5``, which overflows once one block holds more than ~8.4% of
the saliency at ``G = 16``).

**Transport** reproduces the official ``mask_transport`` plan exactly, with its rule that a
column is won by the row of lowest ``plan * cost`` (rows not contesting the column count
as 0, so a contestant of positive cost never wins; ties go to the lowest row index) and
its ``n_iter = grid side`` rounds; an output block that no source wins is zeros, as in the
official code. Per round, the column fight and the +1 penalties are ``O(B * N)`` scatters;
the rows' minima are one dense pass on an accelerator, while on the CPU only the rows that
lost (whose costs changed) are re-scanned, a data-dependent gather that waits on nothing. Memory: ``2 B N^2`` floats for ``N`` transport
cells (52 MB for a batch of 100 at a 16 x 16 grid).

Image sizes: square images whose side every ``G`` in ``block_nums`` divides (else a
``ValueError``). The data term pools by the largest divisor of the block side not above
``neigh_size``; transport sub-divides a block into ``t_size`` cells when ``t_size``
divides the block side, else it moves whole blocks. Both rules equal the official code
wherever it runs (power-of-two sizes), for example CIFAR (``32``) with all of
``{2, 4, 8, 16}``; Fashion-MNIST (``28``) needs ``block_nums=(2, 4)`` (or 7, 14).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.checks import check_number
from openmix.losses import Criterion, model_mixer_loss, soft_cross_entropy
from openmix.mixer import DataInfo, Draws, Params, gather_partner
from openmix.model_mixer import ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import register
from openmix.sampling import host_coin
from openmix.targets import soft_targets

__all__ = [
    "PuzzleMix",
    "PuzzleProblem",
    "puzzle_problem",
    "puzzle_energy",
    "solve_puzzle",
    "puzzle_masks",
    "mask_transport",
    "transport_blocks",
    "input_saliency",
]

OFFICIAL_GRIDS = (2, 4, 8, 16)  # block_num = 2 ** randint(1, 5) in the official code
SOLVERS = ("auto", "exact", "dual")
EXACT_STATES = 81  # auto: exact row DP while a row has at most this many labellings
DUAL_ITERS = 12  # default dual iterations; 24 close the last ~0.001% at G = 16 (benchmarks/puzzlemix_solver.py)
_PRIOR_EPS = 1e-8  # inside the log of the official binomial prior


# ============================================================================ energy
class PuzzleProblem(NamedTuple):
    """One PuzzleMix labelling problem per sample, on a ``G x G`` block grid with ``L`` labels.

    ``E(l) = sum_p unary[p, l_p] + sum_(p,q) w_pq * (l_p - l_q)^2 / (L - 1)^2`` over the
    4-neighbour edges. Label ``l`` gives the sample's own image the weight ``1 - l/(L-1)``.

    Attributes:
        unary: ``(B, G, G, L)``.
        w_v: ``(B, G-1, G)``: weight of the edge between blocks ``(r, c)`` and ``(r+1, c)``.
        w_h: ``(B, G, G-1)``: weight of the edge between blocks ``(r, c)`` and ``(r, c+1)``.
    """

    unary: Tensor
    w_v: Tensor
    w_h: Tensor

    @property
    def n_labels(self) -> int:
        return self.unary.shape[-1]

    def to(self, *args: Any, **kwargs: Any) -> "PuzzleProblem":
        return PuzzleProblem(*(t.to(*args, **kwargs) for t in self))


def block_saliency(saliency: Tensor, grid: int) -> Tensor:
    """Per-sample normalised saliency on a ``grid x grid`` block grid: block sums over the total.

    ``saliency`` is ``(B, h, w)`` with ``grid`` dividing ``h`` and ``w`` (the full-resolution map,
    or one already pooled to a finer grid: pooling block sums again is exact).
    """
    batch, height, width = saliency.shape
    if height % grid or width % grid:
        raise ValueError(f"a {grid}x{grid} block grid needs a saliency map whose sides it divides, got {height}x{width}")
    sums = saliency.reshape(batch, grid, height // grid, grid, width // grid).sum((2, 4))
    return sums / sums.flatten(1).sum(1).clamp_min(torch.finfo(sums.dtype).tiny).view(batch, 1, 1)


def puzzle_problem(
    saliency: Tensor,
    images: Tensor,
    index: Tensor,
    lam: Tensor | float,
    block_num: int,
    *,
    beta: float = 1.2,
    gamma: float = 0.5,
    eta: float = 0.2,
    neigh_size: int = 4,
    n_labels: int = 3,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
) -> PuzzleProblem:
    """The official PuzzleMix energy (``mixup_graph`` + ``graphcut_multi``) for a batch, in floats.

    With ``s`` the normalised block saliency (:func:`block_saliency`), ``s' = s[index]`` and
    ``b = beta / (16 G)``:

    * unary of label ``l`` (own weight ``m = 1 - l/(L-1)``): ``m * s' + (1 - m) * s`` plus the
      data-term share below, plus ``eta / G^2 * -log(P(l) + 1e-8)``, ``P`` the binomial
      probability of ``L-1-l`` own parts out of ``L-1`` with success ``lam``;
    * data term: on the de-normalised images pooled by ``neigh_size`` (the largest divisor
      of the block side not above it), ``D[a][b]`` = ``gamma * b`` times the mean absolute
      difference across a block boundary with source ``a`` on the first side and ``b`` on the
      second (own or partner), split exactly as the official code does into
      ``(D[a][0] + D[a][1]) / 2`` on each side's unary and
      ``(D[1][0] + D[0][1] - D[1][1] - D[0][0]) / 2`` on the edge;
    * edge weight: ``b`` + that edge share, times ``(l - l')^2 / (L-1)^2``.

    Args:
        saliency: ``(B, h, w)`` non-negative saliency (full resolution or pooled finer than
            the grid; ``G`` must divide ``h`` and ``w``).
        images: ``(B, C, H, W)`` inputs (normalised with ``mean``/``std``, or in ``[0, 1]``).
        index: partners ``(B,)``.
        lam: prior weight of the own image, a number or ``(B,)``.
        block_num: ``G``.
        beta, gamma, eta, neigh_size, n_labels: the official hyper-parameters.
        mean, std: per-channel normalisation of ``images``; ``None`` = already in ``[0, 1]``.

    Returns:
        :class:`PuzzleProblem` in float32 (float64 if ``saliency`` is float64).
    """
    batch, _, height, width = images.shape
    grid = int(block_num)
    if grid < 2 or height % grid or width % grid:
        raise ValueError(f"block_num must be >= 2 and divide the image sides, got {grid} for {height}x{width} images")
    if n_labels < 2:
        raise ValueError(f"n_labels must be >= 2, got {n_labels}")
    dtype = torch.promote_types(saliency.dtype, torch.float32)
    device = images.device
    s_own = block_saliency(saliency.to(dtype), grid)
    s_partner = s_own.index_select(0, index)

    block_h, block_w = height // grid, width // grid
    pool = _largest_divisor(math.gcd(block_h, block_w), neigh_size)
    kh, kw = block_h // pool, block_w // pool
    pixels = denormalize(images.detach().to(dtype), mean, std)
    pooled = F.avg_pool2d(pixels, pool) if pool > 1 else pixels  # (B, C, G*kh, G*kw)
    scale = beta / grid / 16.0
    data = scale * gamma

    # the pooled rows/columns either side of each block boundary, own (1) and partner (0)
    last_row = pooled[:, :, kh - 1 : -1 : kh, :]  # (B, C, G-1, G*kw)
    first_row = pooled[:, :, kh::kh, :]
    last_col = pooled[:, :, :, kw - 1 : -1 : kw]  # (B, C, G*kh, G-1)
    first_col = pooled[:, :, :, kw::kw]

    def boundary(before: Tensor, after: Tensor, dim: int, k: int) -> Tensor:
        """``D[a][b]`` for sources a, b in (partner, own), stacked as (2, 2, B, ...)."""
        sides = (before.index_select(0, index), before), (after.index_select(0, index), after)
        diff = torch.stack([torch.stack([(sides[0][a] - sides[1][b]).abs().mean(1) for b in (0, 1)]) for a in (0, 1)])
        shape = diff.shape[:-1] + (diff.shape[-1] // k, k) if dim == -1 else diff.shape[:-2] + (diff.shape[-2] // k, k, diff.shape[-1])
        return diff.reshape(shape).mean(dim if dim == -1 else -2) * data

    d_v = boundary(last_row, first_row, -1, kw)  # (2, 2, B, G-1, G)
    d_h = boundary(last_col, first_col, -2, kh)  # (2, 2, B, G, G-1)

    show_own = s_partner.clone()  # cost of showing the own image on a block (m = 1)
    show_partner = s_own.clone()  # cost of showing the partner (m = 0)
    for d, first, second in ((d_v, (slice(None), slice(0, -1)), (slice(None), slice(1, None))),
                             (d_h, (slice(None), slice(None), slice(0, -1)), (slice(None), slice(None), slice(1, None)))):
        show_own[first] += (d[1, 0] + d[1, 1]) / 2
        show_partner[first] += (d[0, 1] + d[0, 0]) / 2
        show_own[second] += (d[0, 1] + d[1, 1]) / 2
        show_partner[second] += (d[1, 0] + d[0, 0]) / 2
    w_v = (d_v[1, 0] + d_v[0, 1] - d_v[1, 1] - d_v[0, 0]) / 2 + scale
    w_h = (d_h[1, 0] + d_h[0, 1] - d_h[1, 1] - d_h[0, 0]) / 2 + scale

    prior = binomial_prior(lam, n_labels, batch, device) * (eta / grid**2)  # (B, L) float64
    t = torch.linspace(0.0, 1.0, n_labels, device=device, dtype=dtype)  # partner share of label l
    unary = torch.lerp(show_own.unsqueeze(-1), show_partner.unsqueeze(-1), t) + prior.to(dtype).view(batch, 1, 1, n_labels)
    return PuzzleProblem(unary, w_v, w_h)


def binomial_prior(lam: Tensor | float, n_labels: int, batch: int, device: torch.device) -> Tensor:
    """``-log(P(l) + 1e-8)`` ``(B, L)`` in float64: ``P`` binomial, ``L-1-l`` own parts, success ``lam``."""
    lam = torch.as_tensor(lam, dtype=torch.float64, device=device).reshape(-1).expand(batch).unsqueeze(1)
    own = torch.arange(n_labels - 1, -1, -1, dtype=torch.float64, device=device)  # own parts of label l
    n = n_labels - 1
    log_comb = math.lgamma(n + 1) - torch.lgamma(own + 1) - torch.lgamma(n - own + 1)
    prob = log_comb.exp() * lam.pow(own) * (1 - lam).pow(n - own)
    return -torch.log(prob + _PRIOR_EPS)


def puzzle_energy(labels: Tensor, problem: PuzzleProblem) -> Tensor:
    """Energy ``(B,)`` of integer labellings ``(B, G, G)`` under ``problem`` (in its dtype).

    Example:
        >>> p = PuzzleProblem(torch.zeros(1, 2, 2, 3), torch.ones(1, 1, 2), torch.ones(1, 2, 1))
        >>> puzzle_energy(torch.tensor([[[0, 2], [0, 0]]]), p)  # two edges of (0-2)^2/4
        tensor([2.])
    """
    unary, w_v, w_h = problem
    scale = 1.0 / (unary.shape[-1] - 1) ** 2
    lab = labels.to(unary.dtype)
    energy = unary.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)
    energy = energy + (w_v * (lab[:, 1:] - lab[:, :-1]).square()).flatten(1).sum(1) * scale
    return energy + (w_h * (lab[:, :, 1:] - lab[:, :, :-1]).square()).flatten(1).sum(1) * scale


# ============================================================================ solvers
def solve_puzzle(
    problem: PuzzleProblem, *, method: str = "auto", iters: int | None = None, omega: float = 0.3,
    return_bound: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Minimise :func:`puzzle_energy` for every sample at once; returns labels ``(B, G, G)`` int64.

    Args:
        problem: the batch of problems.
        method: ``"exact"`` (row dynamic programming, ``L^G`` states per row; at most 729),
            ``"dual"`` (chain dual decomposition, any size) or ``"auto"`` (exact while
            ``L^G <= 81``).
        iters: dual iterations (default 12).
        omega: initial damping of the min-marginal averaging step (adapted per sample).
        return_bound: also return a lower bound ``(B,)`` on the optimal energy (the dual
            value; the optimum itself for ``"exact"``).

    Example:
        >>> unary = torch.tensor([0.1, 0.05, 0.0]).expand(1, 2, 2, 3).clone()
        >>> unary[0, 0, 0] = torch.tensor([0.0, 1.0, 2.0])  # one block insists on label 0
        >>> solve_puzzle(PuzzleProblem(unary, torch.zeros(1, 1, 2), torch.zeros(1, 2, 1)))
        tensor([[[0, 2],
                 [2, 2]]])
        >>> solve_puzzle(PuzzleProblem(unary, torch.full((1, 1, 2), 8.0), torch.full((1, 2, 1), 8.0)))
        tensor([[[0, 0],
                 [0, 0]]])
    """
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    unary = problem.unary
    if unary.ndim != 4 or unary.shape[1] != unary.shape[2]:
        raise ValueError(f"unary must be (B, G, G, L), got shape {tuple(unary.shape)}")
    grid, n_labels = unary.shape[1], unary.shape[-1]
    states = n_labels**grid
    if method == "exact" and states > 729:
        raise ValueError(f"the exact solver enumerates L^G row labellings; {n_labels}^{grid} = {states} is too many")
    if method == "exact" or (method == "auto" and states <= EXACT_STATES):
        labels = _solve_rows_exact(problem)
        return (labels, puzzle_energy(labels, problem)) if return_bound else labels
    labels, bound = _solve_dual(problem, DUAL_ITERS if iters is None else int(iters), omega)
    return (labels, bound) if return_bound else labels


def _solve_rows_exact(problem: PuzzleProblem) -> Tensor:
    """Exact minimum by dynamic programming over rows, a row's labelling being one state."""
    unary, w_v, w_h = problem
    batch, grid, _, n_labels = unary.shape
    device, dtype = unary.device, unary.dtype
    states = n_labels**grid
    digits = n_labels ** torch.arange(grid - 1, -1, -1, device=device)
    table = torch.arange(states, device=device).unsqueeze(1).div(digits, rounding_mode="floor") % n_labels  # (S, G)
    lab = table.to(dtype)
    scale = 1.0 / (n_labels - 1) ** 2
    # row costs (B, G, S): unaries plus the edges inside the row
    rows = unary.gather(-1, table.t().reshape(1, 1, grid, states).expand(batch, grid, grid, states)).sum(2)
    rows = rows + torch.einsum("brc,sc->brs", w_h, (lab[:, 1:] - lab[:, :-1]).square() * scale)
    # transitions (B, G-1, next, previous) between consecutive rows: one matrix product
    between = (lab.unsqueeze(1) - lab.unsqueeze(0)).square().mul_(scale).reshape(states * states, grid)
    trans = (w_v.reshape(-1, grid) @ between.t()).view(batch, grid - 1, states, states)
    cost, back = rows[:, 0], []
    for r in range(1, grid):
        best, arg = (cost.unsqueeze(1) + trans[:, r - 1]).min(-1)  # over the previous row's state
        back.append(arg)
        cost = best + rows[:, r]
    state = cost.argmin(1)
    picked = [state]
    for arg in reversed(back):
        state = arg.gather(1, state.unsqueeze(1)).squeeze(1)
        picked.append(state)
    return table[torch.stack(picked[::-1], 1)]  # (B, G, G)


def _chain_scans(both: Tensor, pairs: Tensor) -> Tensor:
    """Min-sum forward scans over chains and over the same chains reversed, in one pass.

    ``both`` ``(2, P, L, K)`` holds unaries (position, label, chain) and their reversal
    along the positions; ``pairs`` ``(P-1, 2, L, L, K)`` the edge costs (symmetric in the two
    labels) in both orders. Returns ``out`` with
    ``out[:, t] = both[:, t] + min_a(out[:, t-1][a] + pairs[t-1][a])``: with ``fwd = out[0]``
    and ``bwd`` the reversal of ``out[1]``, ``fwd + bwd - both[0]`` are the min-marginals.
    Each step is three tensor ops.
    """
    out = torch.empty_like(both)
    out[:, 0] = both[:, 0]
    for t in range(both.shape[1] - 1):
        torch.add(torch.amin(out[:, t].unsqueeze(2) + pairs[t], 1), both[:, t + 1], out=out[:, t + 1])
    return out


def _labelled_energy(labels: Tensor, unary: Tensor, w_v: Tensor, w_h: Tensor, scale: float) -> Tensor:
    """Energy of labels ``(B, G, G)`` with label-major unaries ``(L, B, G, G)``."""
    lab = labels.to(unary.dtype)
    energy = unary.gather(0, labels.unsqueeze(0)).squeeze(0).flatten(1).sum(1)
    pair = (w_v * (lab[:, 1:] - lab[:, :-1]).square()).flatten(1).sum(1) + (w_h * (lab[:, :, 1:] - lab[:, :, :-1]).square()).flatten(1).sum(1)
    return energy + pair * scale


def _min0(values: Tensor) -> tuple[Tensor, Tensor]:
    """``values.min(0)`` (first index on ties) by elementwise ops over a short leading axis:
    reductions over an axis of 2-4 labels are many times slower on CPU."""
    best, arg = values[0], torch.zeros(values.shape[1:], dtype=torch.long, device=values.device)
    for a in range(1, values.shape[0]):
        better = values[a] < best
        best = torch.minimum(best, values[a])
        arg = arg.masked_fill(better, a)
    return best, arg


def _solve_dual(problem: PuzzleProblem, iters: int, omega: float, sweeps: int = 1,
                momentum: float = 0.3) -> tuple[Tensor, Tensor]:
    """Row/column chain dual decomposition with min-marginal averaging, then decoding and ICM.

    The two chain families share one tensor ``(P, L, 2, G, B)`` (position, label, family,
    chain, sample): family 0 = rows (position = column), family 1 = columns (position = row);
    a second copy holds it reversed along the positions for the backward pass. The sample
    is the innermost axis, so that swapping the families' position and chain axes moves
    contiguous runs of ``B`` and the per-sample steps broadcast along it.

    The averaging step carries heavy-ball ``momentum`` and is damped per sample: a step that
    lowers the sample's dual bound is undone and its damping halved, an accepted one lets
    it grow (x1.25, at most 1), so the bound never decreases (undamped parallel averaging
    oscillates on strongly coupled grids, e.g. input-gradient saliency at G = 16; the
    momentum halves the iterations needed there). The final dual is decoded line by line,
    by rows and by columns (:func:`_decode_lines`); the lower energy labelling is polished
    by ICM.
    """
    unary, w_v, w_h = problem
    batch, grid, _, n_labels = unary.shape
    scale = 1.0 / (n_labels - 1) ** 2
    u = unary.permute(3, 0, 1, 2).contiguous()  # (L, B, R, C), for the energies and ICM
    u_cols = unary.permute(1, 3, 2, 0).contiguous()  # (R, L, C, B): the columns' layout
    weights = torch.stack([w_h.permute(2, 1, 0), w_v.permute(1, 2, 0)], 1)  # (G-1, family, chain, B): along the chains
    levels = torch.arange(n_labels, device=unary.device, dtype=unary.dtype)
    table = (levels.view(-1, 1) - levels.view(1, -1)).square() * scale
    pair = weights.reshape(grid - 1, 1, 1, -1) * table.view(1, n_labels, n_labels, 1)
    pairs = torch.stack([pair, pair.flip(0)], 1)  # forward and reversed chains
    reverse = torch.arange(grid - 1, -1, -1, device=unary.device)

    both = torch.empty(2, grid, n_labels, 2, grid, batch, dtype=unary.dtype, device=unary.device)
    theta = both[0]  # the families' shares of the unaries, half each to start
    rows = theta[:, :, 0]  # (C, L, R, B)
    torch.mul(unary.permute(2, 3, 1, 0), 0.5, out=rows)
    damping = unary.new_full((1, 1, 1, batch), omega)
    kept_rows = kept_step = kept_bound = None
    for it in range(iters + 1):
        torch.sub(u_cols, rows.permute(2, 1, 0, 3), out=theta[:, :, 1])
        torch.index_select(theta, 0, reverse, out=both[1])
        out = _chain_scans(both.view(2, grid, n_labels, -1), pairs).view_as(both)
        marg = out[0] + out[1].index_select(0, reverse) - theta
        bound = out[0, -1].amin(0).sum((0, 1))
        if it == iters:
            break
        step = marg[:, :, 1].permute(2, 1, 0, 3) - marg[:, :, 0]  # columns' minus rows' min-marginals, rows' layout (C, L, R, B)
        # a per-block constant carries no information, and left in the step it grows ~G-fold per iteration
        step = step - step[:, :1]
        if kept_bound is None:  # the last accepted rows' unaries and step direction
            kept_rows, kept_step, kept_bound = rows.clone(), step, bound
        else:  # undo the step of the samples whose bound dropped, and halve their damping
            step.add_(kept_step, alpha=momentum)  # heavy-ball momentum along the last accepted direction
            ok = bound >= kept_bound
            kept_bound = torch.where(ok, bound, kept_bound)
            ok = ok.view(1, 1, 1, batch)
            kept_rows = torch.where(ok, rows, kept_rows)
            kept_step = torch.where(ok, step, kept_step)
            damping = torch.where(ok, (damping * 1.25).clamp_(max=1.0), damping * 0.5)
        torch.addcmul(kept_rows, kept_step, damping, value=0.5, out=rows)
    if kept_bound is not None:
        bound = torch.maximum(bound, kept_bound)

    by_rows, by_cols = _decode_lines(theta, out, marg, weights, table, w_v, w_h)
    better = _labelled_energy(by_cols, u, w_v, w_h, scale) < _labelled_energy(by_rows, u, w_v, w_h, scale)
    labels = torch.where(better.view(batch, 1, 1), by_cols, by_rows)
    return _icm(labels, u, w_v, w_h, scale, sweeps=sweeps), bound


def _decode_lines(theta: Tensor, out: Tensor, marg: Tensor, weights: Tensor, table: Tensor, w_v: Tensor,
                  w_h: Tensor) -> tuple[Tensor, Tensor]:
    """Two labellings ``(B, R, C)`` of the final dual, decoded by rows and by columns.

    Line decoding (as in TRW-S, a line at a time): the middle row is solved exactly as a
    chain whose unaries are its own share plus the column chains' min-marginals; then the
    rows above and below it, outwards in pairs (one above, one below, solved together), each
    exactly given the row already fixed next to it and the column chains' messages from the
    side not yet fixed (forward messages above, backward below). The same by columns, with
    the roles of the families swapped; both run stacked, ``G/2 + 1`` rounds of one chain
    Viterbi. Each line is one exact minimisation, so a large region where two labellings
    nearly tie takes one of them whole; averaged min-marginals, which label each block
    alone, mixed the two there.

    ``theta``, ``out``, ``marg`` are :func:`_solve_dual`'s ``(P, L, 2, G, B)`` layouts;
    ``weights`` ``(G-1, 2, G, B)`` the edges along each family's chains; ``table`` ``(L, L)``.
    """
    grid, n_labels, _, _, batch = theta.shape
    middle = grid // 2
    # the other family's messages per line: forward before the middle line, min-marginals on it,
    # backward after it; in the decoded family's layout (position, line, family x B, L)
    backward = out[1].index_select(0, torch.arange(grid - 2 - middle, -1, -1, device=theta.device))
    messages = torch.cat([out[0, :middle], marg[middle : middle + 1], backward]).flip(2)
    base = (theta.permute(0, 3, 2, 4, 1) + messages.permute(3, 0, 2, 4, 1)).reshape(grid, grid, 2 * batch, n_labels)
    along = weights.transpose(1, 2).reshape(grid - 1, grid, 2 * batch, 1, 1)  # (G-1, line, 2B): edge weights along the lines
    across = torch.stack([w_v.permute(2, 1, 0), w_h.permute(1, 2, 0)], 2).reshape(grid, grid - 1, 2 * batch)
    labels = torch.empty(grid, grid, 2 * batch, dtype=torch.long, device=theta.device)  # (position, line, 2B)
    labels[:, middle] = _viterbi(base[:, middle], along[:, middle] * table)
    for k in range(1, max(middle, grid - 1 - middle) + 1):
        # this round's lines (one above the middle, one below, while they exist), the fixed line
        # next to each (towards the middle) and the edges between the two
        lines = [line for line in (middle - k, middle + k) if 0 <= line < grid]
        near = [line + 1 if line < middle else line - 1 for line in lines]
        edges = [min(line, other) for line, other in zip(lines, near)]
        unary = _lines(base, lines) + _lines(across, edges).unsqueeze(-1) * table[_lines(labels, near)]
        _lines(labels, lines).copy_(_viterbi(unary, _lines(along, lines) * table))
    by_rows = labels[:, :, :batch].permute(2, 1, 0)  # rows: position = column, line = row
    by_cols = labels[:, :, batch:].permute(2, 0, 1)
    return by_rows, by_cols


def _lines(t: Tensor, lines: Sequence[int]) -> Tensor:
    """A view of one or two entries (possibly the same one twice) of ``t``'s second axis."""
    first, last = lines[0], lines[-1]
    if first == last:
        return t[:, first : first + 1].expand(t.shape[0], len(lines), *t.shape[2:])
    return t[:, first : last + 1 : last - first]


def _viterbi(unary: Tensor, along: Tensor) -> Tensor:
    """Exact chain minimisers: ``unary`` ``(P, ..., L)`` along the first axis, ``along`` ``(P-1, ..., L, L)``
    the (symmetric) edge costs between positions ``t`` and ``t+1``, broadcast over the middle axes.
    Returns the labels ``(P, ...)``."""
    cost, back = unary[0], []
    for t in range(unary.shape[0] - 1):
        best, arg = (cost.unsqueeze(-2) + along[t]).min(-1)  # [label at t+1, label at t]: the edge costs are symmetric
        back.append(arg)
        cost = best + unary[t + 1]
    label = cost.argmin(-1)
    picked = [label]
    for arg in reversed(back):
        label = arg.gather(-1, label.unsqueeze(-1)).squeeze(-1)
        picked.append(label)
    return torch.stack(picked[::-1])


def _icm(labels: Tensor, u: Tensor, w_v: Tensor, w_h: Tensor, scale: float, sweeps: int) -> Tensor:
    """Block iterated conditional modes: every row, then every column, is re-solved exactly
    (chain min-marginals) with the neighbouring rows or columns fixed; one parity at a time,
    so the chains solved together do not touch. A chain takes the new labels only where
    they cost strictly less, so a sweep never raises the energy. This fixes what
    single-block moves cannot (say two stacked blocks that should flip together).
    """
    n_labels, batch, grid, _ = u.shape
    levels = torch.arange(n_labels, device=u.device, dtype=u.dtype)
    table = (levels.view(-1, 1) - levels.view(1, -1)).square() * scale
    lv = levels.view(1, -1, 1, 1)
    reverse = torch.arange(grid - 1, -1, -1, device=u.device)
    parities = [torch.arange(start, grid, 2, device=u.device) for start in (0, 1)]
    # per axis (0: rows, chains along the columns; 1: columns): unaries (P, L, B, chain), edges
    # along the chains (P-1, B, chain), edges across them zero-padded (P, B, chain+1)
    layout = {
        0: (u.permute(3, 0, 1, 2), w_h.permute(2, 0, 1), F.pad(w_v.permute(2, 0, 1), (1, 1))),
        1: (u.permute(2, 0, 1, 3), w_v.permute(1, 0, 2), F.pad(w_h.permute(1, 0, 2), (1, 1))),
    }
    for _ in range(sweeps):
        for axis in (0, 1):
            unary, along, across = layout[axis]
            for chains in parities:
                k = chains.numel()
                lab = labels.permute(2, 0, 1) if axis == 0 else labels.permute(1, 0, 2)  # (P, B, chain)
                padded = F.pad(lab.to(u.dtype), (1, 1))
                above, below = padded.index_select(2, chains), padded.index_select(2, chains + 2)
                theta = unary.index_select(3, chains) + scale * (
                    across.index_select(2, chains).unsqueeze(1) * (lv - above.unsqueeze(1)).square()
                    + across.index_select(2, chains + 1).unsqueeze(1) * (lv - below.unsqueeze(1)).square())
                e = along.index_select(2, chains)  # (G-1, B, k)
                pair = e.reshape(grid - 1, 1, 1, -1) * table.view(1, n_labels, n_labels, 1)
                both = torch.stack([theta, theta.index_select(0, reverse)]).reshape(2, grid, n_labels, -1)
                out = _chain_scans(both, torch.stack([pair, pair.flip(0)], 1))
                marg = (out[0] + out[1].index_select(0, reverse) - both[0]).view(grid, n_labels, batch, k)
                new = _min0(marg.transpose(0, 1))[1]  # (G, B, k)
                old = lab.index_select(2, chains)
                take = _chain_energy(theta, e, new, scale) < _chain_energy(theta, e, old, scale)
                chosen = torch.where(take.unsqueeze(0), new, old)
                labels = labels.index_copy(1 + axis, chains, chosen.permute(1, 2, 0) if axis == 0 else chosen.permute(1, 0, 2))
    return labels


def _chain_energy(theta: Tensor, edges: Tensor, labels: Tensor, scale: float) -> Tensor:
    """Energy ``(B, k)`` of chain labels ``(P, B, k)``: unaries ``theta`` ``(P, L, B, k)``, edge weights ``(P-1, B, k)``."""
    lab = labels.to(theta.dtype)
    unary = theta.gather(1, labels.unsqueeze(1)).squeeze(1).sum(0)
    return unary + (edges * (lab[1:] - lab[:-1]).square()).sum(0) * scale


def puzzle_masks(
    saliency: Tensor,
    images: Tensor,
    index: Tensor,
    lam: Tensor | float,
    block_num: int,
    *,
    beta: float = 1.2,
    gamma: float = 0.5,
    eta: float = 0.2,
    neigh_size: int = 4,
    n_labels: int = 3,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    method: str = "auto",
    iters: int | None = None,
) -> Tensor:
    """Optimal PuzzleMix masks ``(B, G, G)``: the weight of each sample's own image per block.

    Values are ``1 - l/(L-1)`` (``{1, 0.5, 0}`` for three labels); see :func:`puzzle_problem`
    for the arguments and :func:`solve_puzzle` for the solver.

    Example:
        >>> sal = torch.zeros(2, 8, 8); sal[0, :4] = 1; sal[1, 4:] = 1  # top half / bottom half
        >>> puzzle_masks(sal, torch.rand(2, 1, 8, 8), torch.tensor([1, 0]), 0.5, 2)[0]
        tensor([[1., 1.],
                [0., 0.]])
    """
    problem = puzzle_problem(saliency, images, index, lam, block_num, beta=beta, gamma=gamma, eta=eta,
                             neigh_size=neigh_size, n_labels=n_labels, mean=mean, std=std)
    labels = solve_puzzle(problem, method=method, iters=iters)
    return 1.0 - labels.to(problem.unary.dtype) / (n_labels - 1)


# ============================================================================ transport
def transport_cost(grid: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The official ``cost_matrix``: squared grid distance over ``(grid - 1)^2``, ``(N, N)``."""
    r = torch.arange(grid * grid, device=device)
    rows, cols = r.div(grid, rounding_mode="floor"), r % grid
    dist = (rows.view(-1, 1) - rows.view(1, -1)).square() + (cols.view(-1, 1) - cols.view(1, -1)).square()
    return dist.to(dtype) / (grid - 1) ** 2


def mask_transport(mask: Tensor, saliency: Tensor, t_eps: float = 0.8, n_iter: int | None = None) -> Tensor:
    """The official greedy transport plan, batched: the source cell of each target cell.

    Cost of moving source cell ``i`` to target ``j``: ``t_eps * C_ij - s_i * z_j`` with ``C`` the
    normalised squared distance (:func:`transport_cost`) and ``z_j = [mask_j > 0]`` (the
    image stays visible at ``j``). For ``n_iter`` rounds (the grid side, as official) every
    source takes its cheapest target; each target is won by the contestant of lowest
    ``plan * cost`` (see the module notes), and the losers' chosen entries cost 1 more.
    The plan of the last round is returned.

    Args:
        mask: ``(B, g, g)`` weight of the image being moved at each cell.
        saliency: ``(B, g, g)`` normalised saliency of that image.
        t_eps: weight of the distance cost.
        n_iter: rounds (default ``g``).

    Returns:
        int64 ``(B, g*g)``: the source cell of each target cell (row-major), ``-1`` where no
        source won it (that cell of the moved image is zeros).

    Example:
        >>> sal = torch.tensor([[[0.0, 0.9], [0.05, 0.05]]])
        >>> mask_transport(torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]), sal)  # cell 1 is hidden, moves to 0
        tensor([[ 1, -1,  2,  3]])
    """
    batch, grid, _ = mask.shape
    cells = grid * grid
    n_iter = grid if n_iter is None else int(n_iter)
    visible = (mask > 0).to(saliency.dtype).reshape(batch, 1, cells)
    # t_eps * C - s_i * z_j in one pass (z is 0/1, so the product is exact: the official rounding)
    cost = torch.addcmul(t_eps * transport_cost(grid, mask.device, saliency.dtype), saliency.reshape(batch, cells, 1), visible, value=-1)
    rows = torch.arange(cells, device=mask.device).expand(batch, cells)
    column = rows  # targets, the same range
    flat = cost.view(batch, cells * cells)
    src = torch.full((batch, cells), -1, dtype=torch.long, device=mask.device)
    row_cost, choice = cost.min(-1)  # first index on ties, as the official argmin
    for it in range(n_iter):
        if it > 0:
            if cost.device.type == "cpu":  # only the losers' rows changed: re-scan those (no device to wait for)
                changed = lost.flatten().nonzero().squeeze(1)
                best, pick = cost.view(batch * cells, cells).index_select(0, changed).min(-1)
                row_cost.view(-1).index_copy_(0, changed, best)
                choice.view(-1).index_copy_(0, changed, pick)
            else:  # on an accelerator every row is re-scanned, so that nothing waits on the device
                row_cost, choice = cost.min(-1)
        taken = torch.zeros(batch, cells, dtype=cost.dtype, device=cost.device).scatter_add_(1, choice, torch.ones_like(row_cost))
        low = torch.full_like(row_cost, math.inf).scatter_reduce_(1, choice, row_cost, "amin")
        # official column fight: min over the column of plan * cost, where non-contestants show 0
        low = torch.where(taken < cells, low.clamp(max=0.0), low)
        hit = row_cost == low.gather(1, choice)
        first = torch.full_like(choice, cells).scatter_reduce_(1, choice, torch.where(hit, rows, cells), "amin")
        # the first row showing 0 without contesting: 0, or after the leading run of rows sharing a choice
        run = (choice == choice[:, :1]).long().cumprod(1).sum(1, keepdim=True)
        first_free = torch.where(column == choice[:, :1], run, 0)
        winner = torch.where(((low < 0) | (first < first_free)) & (first < cells), first, -1)  # per target
        src = winner
        lost = winner.gather(1, choice) != rows
        flat.scatter_add_(1, rows * cells + choice, lost.to(cost.dtype))
    return src


def transport_blocks(images: Tensor, source: Tensor, grid: int) -> Tensor:
    """Move cells of ``images`` ``(B, C, H, W)``: target cell ``j`` gets source cell ``source[:, j]``.

    Cells are ``H/grid x W/grid``; a target with source ``-1`` becomes zeros. Returns a
    contiguous tensor of the same shape and dtype.

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> transport_blocks(x, torch.tensor([[3, -1, 0, 1]]), 2)
        tensor([[[[3., 0.],
                  [0., 1.]]]])
    """
    batch, channels, height, width = images.shape
    ch, cw = height // grid, width // grid
    dev = images.device
    y = torch.arange(height, device=dev).view(-1, 1)
    x = torch.arange(width, device=dev).view(1, -1)
    target = (y.div(ch, rounding_mode="floor") * grid + x.div(cw, rounding_mode="floor")).flatten()  # cell of each pixel
    offset = ((y % ch) * width + x % cw).flatten()  # pixel within its cell
    src = source.clamp(min=0)
    corner = src.div(grid, rounding_mode="floor") * (ch * width) + (src % grid) * cw  # (B, N): first pixel of the source cell
    pixel = corner.index_select(1, target).add_(offset)  # (B, H*W)
    moved = images.reshape(batch, channels, height * width).gather(2, pixel.unsqueeze(1).expand(batch, channels, -1))
    empty = (source < 0).index_select(1, target).unsqueeze(1)
    return moved.masked_fill_(empty, 0).view(batch, channels, height, width)


# ============================================================================ saliency
def denormalize(x: Tensor, mean: Sequence[float] | Tensor | None, std: Sequence[float] | Tensor | None) -> Tensor:
    """``x * std + mean`` per channel (``x`` unchanged when both are ``None``)."""
    if std is not None:
        x = x * _per_channel(std, x)
    if mean is not None:
        x = x + _per_channel(mean, x)
    return x


def normalize(x: Tensor, mean: Sequence[float] | Tensor | None, std: Sequence[float] | Tensor | None) -> Tensor:
    """The inverse of :func:`denormalize`."""
    if mean is not None:
        x = x - _per_channel(mean, x)
    if std is not None:
        x = x / _per_channel(std, x)
    return x


def _per_channel(values: Sequence[float] | Tensor, x: Tensor) -> Tensor:
    """``values`` (one, or one per channel) shaped to broadcast over ``x`` ``(B, C, ...)``.

    A tensor already on ``x``'s device is used as it is (no host-to-device copy)."""
    v = torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1)
    channels = x.shape[1]
    if v.numel() not in (1, channels):
        raise ValueError(f"mean/std need 1 or {channels} values (one per channel), got {v.numel()}")
    return v.expand(channels).reshape((1, channels) + (1,) * (x.ndim - 2))


@contextlib.contextmanager
def _modes(model: nn.Module, training: bool):
    """Put every submodule in train/eval mode for the block; restore each one's own mode after."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, mode in saved:
            module.training = mode


def input_saliency(model: nn.Module, x: Tensor, target: Tensor, *, eval_mode: bool = True) -> Tensor:
    """PuzzleMix saliency ``(B, H, W)``: RMS over channels of the input gradient of the mean CE.

    The model runs in eval mode (``eval_mode``), each submodule's mode is restored after,
    and only the gradient with respect to ``x`` is computed: the parameters' ``.grad`` are
    untouched.

    Args:
        model: maps ``x`` to logits ``(B, num_classes)``.
        x: ``(B, C, H, W)``.
        target: class ids ``(B,)`` or soft targets ``(B, num_classes)``.
    """
    saliency, _, _ = _saliency_pass(model, x, target, clean_weight=0.0, eval_mode=eval_mode)
    return saliency


def _saliency_pass(model: nn.Module, x: Tensor, target: Tensor, clean_weight: float, eval_mode: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Returns ``(saliency, input gradient, clean loss or None)``.

    With ``clean_weight > 0`` the clean loss ``clean_weight * CE`` keeps its graph, so the
    caller's backward adds its parameter gradients (the official ``clean_lam`` term).
    """
    from openmix.losses import soft_cross_entropy

    keep = clean_weight > 0
    x_in = x.detach().requires_grad_(True)
    # a DDP model given directly (not through PuzzleMix.step, which runs the whole step as one DDP
    # forward on the inner module): this forward must not arm the gradient all-reduce
    sync = getattr(model, "no_sync", None)
    with torch.enable_grad(), _modes(model, not eval_mode), (sync() if callable(sync) else contextlib.nullcontext()):
        logits = model(x_in)
        loss = soft_cross_entropy(logits, target)
        scaled = loss * clean_weight if keep else loss
        (grad,) = torch.autograd.grad(scaled, x_in, retain_graph=keep)
    grad = grad.detach()
    saliency = grad.float().square().mean(1).sqrt()
    return saliency, grad, (scaled if keep else None)


# ============================================================================ the mixer
@register("puzzlemix")
class PuzzleMix(ModelMixer):
    """PuzzleMix: optimised saliency-preserving block masks with transport (needs the model).

    Use it through :func:`openmix.training.mix_step` (which calls :meth:`step`),
    or call it with a saliency map: ``mixer(x, y, saliency=s)``. Defaults are the official
    CIFAR-100 run and OpenMixup's config. ``MixOutput.mask`` ``(B, 1, H, W)`` weighs the
    *transported* own image: ``x_mix = mask * T(x) + (1 - mask) * T'(x[index])`` (without
    ``transport``, ``T`` is the identity); ``lam`` is its mean.

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)`` (one per batch in ``"batch"`` mode, as official).
        num_classes: needed for class-id labels.
        block_nums: the grid sides ``G`` to draw from, uniformly, each step; ``None``: those of the
            official ``{2, 4, 8, 16}`` that divide the image side (28 px: ``(2, 4)``).
        beta, gamma, eta: smoothness, data-smoothness and prior weights of the energy.
        neigh_size: pooling of the images for the data term.
        n_labels: mask levels (3: ``{1, 0.5, 0}``).
        transport: move blocks towards where they stay visible.
        t_eps: distance weight of the transport cost.
        t_size: transport cell side (pixels); ``-1`` = the block.
        clean_lam: weight of the clean loss ``2 * clean_lam / num_classes * CE`` (official
            Tiny-ImageNet: 1); its forward runs in train mode and its gradient is kept.
        adv_p: probability of the adversarial step, drawn once per side (own, partner).
        adv_eps: its radius in pixel units of 1/255.
        loss: ``"soft_ce"`` (the ``criterion`` of :meth:`step`, OpenMixup) or ``"bce"``
            (official: BCE of the softmax against the mixed targets, :func:`~openmix.losses.softmax_bce`).
        mean, std: the per-channel normalisation of the inputs, for the data term and the
            adversarial step; ``None``: the data's (:meth:`configure_data`, which
            ``MixupClassifier`` calls), or inputs in ``[0, 1]`` where none is given.
        solver, solver_iters: see :func:`solve_puzzle`.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> from openmix.training import mix_step
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 10))
        >>> mixer = openmix.build("puzzlemix", num_classes=10, block_nums=(2, 4), seed=0)
        >>> step = mix_step(model, mixer, torch.rand(8, 3, 16, 16), torch.arange(8))
        >>> torch.allclose(step.mix.lam, step.mix.mask.mean((1, 2, 3)))
        True
    """

    kind = "saliency"
    mixes = "blocks chosen by the model's saliency"
    spatial_dims = (2,)

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        block_nums: Sequence[int] | int | None = None,
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        neigh_size: int = 4,
        n_labels: int = 3,
        transport: bool = True,
        t_eps: float = 0.8,
        t_size: int = 4,
        clean_lam: float = 0.0,
        adv_p: float = 0.0,
        adv_eps: float = 10.0,
        loss: str = "soft_ce",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        solver: str = "auto",
        solver_iters: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        nums = None if block_nums is None else (block_nums,) if isinstance(block_nums, int) else tuple(block_nums)
        if nums is not None and (not nums or any(isinstance(g, bool) or not isinstance(g, int) or g < 2 for g in nums)):
            raise ValueError(f"block_nums must be integers >= 2 (or None: the official grids that fit), got {block_nums!r}")
        for name, value in (("neigh_size", neigh_size), ("n_labels", n_labels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "n_labels" else 1):
                raise ValueError(f"{name} must be an integer >= {2 if name == 'n_labels' else 1}, got {value!r}")
        if isinstance(t_size, bool) or not isinstance(t_size, int) or not (t_size == -1 or t_size >= 1):
            raise ValueError(f"t_size must be -1 (the block) or an integer >= 1, got {t_size!r}")
        for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta), ("t_eps", t_eps), ("clean_lam", clean_lam), ("adv_eps", adv_eps)):
            check_number(name, value, low=0.0)
        check_number("adv_p", adv_p, low=0.0, high=1.0)
        model_mixer_loss(loss, soft_cross_entropy)  # checks the name
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if solver_iters is not None and (isinstance(solver_iters, bool) or not isinstance(solver_iters, int) or solver_iters < 0):
            raise ValueError(f"solver_iters must be None or an integer >= 0, got {solver_iters!r}")
        if clean_lam > 0 and num_classes is None:
            raise ValueError("clean_lam > 0 weighs the clean loss by 2 * clean_lam / num_classes: pass num_classes")
        self.block_nums = nums
        self.beta, self.gamma, self.eta = float(beta), float(gamma), float(eta)
        self.neigh_size, self.n_labels = neigh_size, n_labels
        self.transport, self.t_eps, self.t_size = bool(transport), float(t_eps), t_size
        self.clean_lam, self.adv_p, self.adv_eps = float(clean_lam), float(adv_p), float(adv_eps)
        self.loss = loss
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.solver, self.solver_iters = solver, solver_iters
        self._stats_cache: dict[Any, tuple[Tensor | None, Tensor | None]] = {}

    # ------------------------------------------------------------------ calls
    def forward(self, x: Tensor, y: Tensor, *, saliency: Tensor | None = None,
                generator: torch.Generator | None = None) -> MixOutput:
        """Mix a batch given its saliency map ``(B, H, W)`` (see :func:`input_saliency`).

        PuzzleMix computes the saliency from the model: in training, use
        :func:`openmix.training.mix_step` / :meth:`step` (the adversarial step, ``adv_p``, needs it).
        """
        if saliency is None:
            raise TypeError(
                "PuzzleMix needs the model's saliency: train with openmix.training.mix_step(model, mixer, x, y) "
                "(it calls mixer.step), or pass saliency=openmix.mixers.puzzlemix.input_saliency(model, x, y)"
            )
        self.check_inputs(x)
        y = soft_targets(y, self.num_classes, self.label_smoothing, batch=x.shape[0])
        saliency = self._check_saliency(saliency, x)
        params = self.sample_params(x, generator=generator)
        if params.get("identity", False):
            return MixOutput.identity(x, y)
        params["saliency"] = saliency
        return self.apply_params(x, y, params)

    def configure_data(self, data: DataInfo) -> None:
        """``mean``/``std`` from the data unless given; ``block_nums`` (when ``None``): the official
        grids that divide the data's image side."""
        if self.mean is None and self.std is None and data.mean is not None:
            self.mean, self.std = tuple(data.mean), None if data.std is None else tuple(data.std)
            self._stats_cache = {}
        if self.block_nums is None and data.image_size is not None:
            self.block_nums = self._grids(data.image_size)

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """Saliency pass, masks, transport, loss on the mixed batch (plus the clean loss when ``clean_lam > 0``)."""
        noise, x_sal = None, x
        if "adv" in params:  # random start, in pixel space (official main.py)
            mean, std = self._stats(x)
            pixels = denormalize(x.detach(), mean, std)
            noisy = (pixels + params["adv_start"]).clamp_(0.0, 1.0)
            noise = noisy - pixels
            x_sal = normalize(noisy, mean, std).to(x.dtype)
        weight = 2.0 * self.clean_lam / self.num_classes if self.clean_lam > 0 else 0.0
        saliency, grad, clean = _saliency_pass(model, x_sal, soft, clean_weight=weight, eval_mode=weight == 0)
        params["saliency"] = saliency
        if noise is not None:  # one FGSM step along the saliency gradient, scaled by u ~ U(0, 1)
            eps, step = self.adv_eps / 255.0, (self.adv_eps + 2.0) / 255.0
            params["noise"] = (noise + step * grad.sign().to(noise.dtype)).clamp_(-eps, eps).mul_(params["adv_coef"])
        out = self.apply_params(x, soft, params)
        logits = model(out.x)
        loss = self.loss_for(criterion)(logits, out.y)
        if clean is not None:
            loss = loss + clean
        return StepResult(loss, logits, out)

    def loss_for(self, criterion: Criterion) -> Criterion:
        """``criterion`` (``loss="soft_ce"``) or :func:`~openmix.losses.softmax_bce` (``loss="bce"``)."""
        return model_mixer_loss(self.loss, criterion)

    def check_inputs(self, x: Tensor) -> None:
        """The common checks, then square images whose side every grid divides."""
        super().check_inputs(x)
        self._check_size(x)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds ``block_num``, the grid side ``G`` of this call (a host int); with ``adv_p > 0``, the
        adversarial coins ``adv`` (own, partner), and when either is on, the random start
        ``adv_start`` (pixel units, like ``x``) and the FGSM scale ``adv_coef``, all from this call's streams."""
        params = super().draw_params(x, draws)
        params["block_num"] = self._pick_block_num(draws.host, x.shape[-1])
        if self.adv_p > 0:
            adv = (host_coin(self.adv_p, draws.host), host_coin(self.adv_p, draws.host))
            if any(adv):
                eps = self.adv_eps / 255.0
                params["adv"] = adv
                params["adv_start"] = torch.empty_like(x).uniform_(-eps, eps, generator=draws.device)
                params["adv_coef"] = float(torch.rand((), generator=draws.host))
        return params

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        """``params`` needs ``lam``, ``index``, ``block_num`` and ``saliency`` ``(B, H, W)``;
        optional ``noise`` (pixel units) with ``adv`` (own, partner) flags."""
        with torch.no_grad():
            return self._mix(x, params)

    # ------------------------------------------------------------------ internals
    def _mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        batch, _, height, width = x.shape
        grid = int(params["block_num"])  # a host int (or a CPU tensor in hand-built params)
        index, lam = params["index"], params["lam"]
        self._check_size(x, (grid,))
        block = height // grid
        t = self._transport_cell(block)
        # one pooling of the full map, at the finest grid needed (see the module notes)
        cells = height // t if self.transport else grid
        s_cells = block_saliency(params["saliency"].float(), cells)
        mean, std = self._stats(x)
        problem = puzzle_problem(s_cells, x, index, lam, grid, beta=self.beta, gamma=self.gamma, eta=self.eta,
                                 neigh_size=self.neigh_size, n_labels=self.n_labels, mean=mean, std=std)
        labels = solve_puzzle(problem, method=self.solver, iters=self.solver_iters)
        mask = 1.0 - labels.float() / (self.n_labels - 1)  # (B, G, G)
        mask = torch.where((lam >= 1.0).view(batch, 1, 1), 1.0, mask)  # lam = 1 (prob-skipped, alpha 0): unmixed

        own, partner = x, gather_partner(x, index)
        if "noise" in params:
            adv_own, adv_partner = (bool(v) for v in params.get("adv", (True, True)))
            pixels = denormalize(x, mean, std)
            if adv_own:
                own = normalize((pixels + params["noise"]).clamp_(0.0, 1.0), mean, std).to(x.dtype)
            if adv_partner:
                moved = (gather_partner(pixels, index) + params["noise"].index_select(0, index)).clamp_(0.0, 1.0)
                partner = normalize(moved, mean, std).to(x.dtype)
        if self.transport:
            cell_mask = mask.repeat_interleave(cells // grid, 1).repeat_interleave(cells // grid, 2) if cells != grid else mask
            both = mask_transport(torch.cat([cell_mask, 1.0 - cell_mask]), torch.cat([s_cells, s_cells.index_select(0, index)]), self.t_eps)
            own = transport_blocks(own, both[:batch], cells)
            partner = transport_blocks(partner, both[batch:], cells)
        weight = mask.repeat_interleave(block, 1).repeat_interleave(block, 2).unsqueeze(1)  # (B, 1, H, W)
        mixed = torch.empty_like(x)
        torch.lerp(partner, own, weight.to(x.dtype), out=mixed)
        return mixed, mask.flatten(1).mean(1), weight

    def _stats(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``mean``/``std`` as tensors on ``x``'s device, made once: a host-to-device copy waits
        for the device, so it must not happen every call."""
        key = (x.device, x.dtype)
        if key not in self._stats_cache:
            self._stats_cache[key] = tuple(None if v is None else torch.tensor(v, dtype=x.dtype, device=x.device)
                                           for v in (self.mean, self.std))
        return self._stats_cache[key]

    def _grids(self, side: int) -> tuple[int, ...]:
        """The grid sides a call on images of side ``side`` draws from: ``block_nums``, or the official ones that divide it."""
        if self.block_nums is not None:
            return self.block_nums
        return tuple(g for g in OFFICIAL_GRIDS if side % g == 0)

    def _pick_block_num(self, host: torch.Generator | None, side: int) -> int:
        grids = self._grids(side)
        if len(grids) == 1:
            return grids[0]
        return grids[int(torch.randint(len(grids), (), generator=host))]

    def _transport_cell(self, block: int) -> int:
        """Transport cell side: ``t_size`` when it sub-divides the block, else the block."""
        if self.t_size == -1 or self.t_size >= block or block % self.t_size:
            return block
        return self.t_size

    def _check_size(self, x: Tensor, nums: Sequence[int] | None = None) -> None:
        height, width = x.shape[-2:]
        if height != width:
            raise ValueError(f"PuzzleMix needs square images (a G x G block grid), got {height}x{width}")
        if nums is None and self.block_nums is None:
            if not self._grids(height):
                raise ValueError(f"none of the official grid sides {OFFICIAL_GRIDS} divides the image side {height}: "
                                 f"pass block_nums from {_divisors(height)} (or pad the images)")
            return
        bad = [g for g in (nums or self.block_nums) if height % g]
        if bad:
            raise ValueError(
                f"block_num {bad} does not divide the image side {height}: pass block_nums from {_divisors(height)} "
                f"(or pad the images)"
            )

    def _check_saliency(self, saliency: Tensor, x: Tensor) -> Tensor:
        if not isinstance(saliency, Tensor):
            raise TypeError(f"saliency must be a torch.Tensor, got {type(saliency).__name__}")
        if saliency.ndim == 4 and saliency.shape[1] == 1:
            saliency = saliency[:, 0]
        if saliency.shape != (x.shape[0],) + tuple(x.shape[2:]):
            raise ValueError(f"saliency must be (B, H, W) = {(x.shape[0],) + tuple(x.shape[2:])}, got {tuple(saliency.shape)}")
        return saliency.detach()

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields.update(block_nums=self.block_nums, beta=self.beta, gamma=self.gamma, eta=self.eta,
                      neigh_size=self.neigh_size, n_labels=self.n_labels, transport=self.transport,
                      t_eps=self.t_eps, t_size=self.t_size, loss=self.loss)
        for name in ("clean_lam", "adv_p"):
            if getattr(self, name):
                fields[name] = getattr(self, name)
        if self.mean is not None or self.std is not None:
            fields.update(mean=self.mean, std=self.std)
        if self.solver != "auto" or self.solver_iters is not None:
            fields.update(solver=self.solver, solver_iters=self.solver_iters)
        return fields


def _divisors(side: int) -> list[int]:
    """The grid sides from 2 to 32 that divide ``side``."""
    return [g for g in range(2, min(side, 32) + 1) if side % g == 0]


def _largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` not above ``cap`` (at least 1)."""
    for d in range(max(1, min(n, cap)), 0, -1):
        if n % d == 0:
            return d
    return 1
