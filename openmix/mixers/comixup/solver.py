"""Batched minimisation of the Co-Mixup objective: every partition, and several restarts, at once on the device.

The official ``get_onehot_matrix`` solves one partition at a time on the CPU: from a random labelling,
``m_niter`` sweeps over the outputs, each output re-labelled by one alpha-beta-swap graph cut (gco) of
its unary plus the modular penalty ``2 gamma' g(A p)`` of the others' use ``p``, and it returns the
labelling of its last sweep. :func:`solve_comixup` keeps that block-coordinate descent and runs it for
all partitions and ``restarts`` random starts together, with torch ops, no Python loop over samples and
no host-device synchronisation:

* **Each output exactly (small grids).** An output's labelling is a Potts problem (``m`` labels on the
  ``G x G`` grid, ``beta'`` per cut edge). It is solved by dynamic programming over the grid's rows, a
  row's labelling being one state, over the ``K`` labels that can appear in an optimum: a label can
  show at a block only if its unary there is within ``deg * beta'`` of the block's best (else moving
  that block to its best label is cheaper), so labels with no such block are left out exactly, and the
  ``K`` with most slack are kept (:data:`STATE_BUDGET` row labellings: every label of a partition of 20
  on 2 x 2, 8 on 3 x 3, 5 on 4 x 4). The transition between rows is the Hamming distance, taken one
  column at a time, so a row costs ``G`` small min-reductions; the DP is exact whenever at most ``K``
  labels are eligible (at the official defaults on 4 x 4, 70-84% of the problems a solve meets:
  ``docs/comixup.md``).
  Larger grids (``G >= 5``): rows and columns re-solved exactly, as chains over every label, given
  their neighbours (line ICM, from the unaries' argmin; below gco's swap energies on random 6 x 6 and
  8 x 8 Potts problems).
* **The objective decides.** Every proposal's true objective (the thresholded diversity, not its
  modular estimate) is computed from the block counts; the best labelling met in the sweeps is kept,
  and the last sweep starts from it and takes an output's proposal only where the objective drops.
  The official code returns its last labelling, which is often worse than ones it passed through
  (the modular penalty ignores that a new use can push another output's use over the threshold).
* **Restarts.** ``restarts`` random starts per partition and one from the identity (every output its
  own input, so the result is never worse than not mixing) run side by side in the batch; the best
  objective wins. Every second start proposes with the official *soft* threshold
  (``2 gamma' (A p - tau')_+``) in its free sweeps: the hard one deadlocks where two outputs must give
  up an input together (each alone would push the other over the threshold), which the soft one walks
  through; its labellings are still judged by the hard objective.

Deliberate differences from the official solver: masks stay hard (no 50/50 "soft" labels for outputs
of two or three inputs, which the official adds from its second sweep: every pixel here comes from one
input), no ``resolve_label`` step (an extra cost the official adds to one of two outputs using the same
inputs, outside its objective), no early stop (a fixed number of sweeps keeps the device busy without a
host read). ``docs/comixup.md`` has the measurements.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixers.comixup.objective import CoMixupProblem, block_counts, comixup_objective, diversity

__all__ = ["solve_comixup", "potts_labels", "STATE_BUDGET", "SWEEPS", "RESTARTS"]

STATE_BUDGET = 625  # row labellings of the exact row DP: 5 candidate labels on a 4 x 4 grid
EXACT_GRIDS = 4  # the row DP up to this grid side; line ICM (over every label) above it
LINE_SWEEPS = 2
SWEEPS = 4  # the official m_niter
RESTARTS = 4

PottsSolver = Callable[[Tensor, float], tuple[Tensor, Tensor]]


def solve_comixup(
    problem: CoMixupProblem,
    *,
    sweeps: int = SWEEPS,
    restarts: int = RESTARTS,
    candidates: int | None = None,
    generator: torch.Generator | None = None,
    starts: Tensor | None = None,
    return_objective: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Labellings ``(P, m, G, G)`` int64 minimising :func:`comixup_objective`, every partition at once.

    Args:
        problem: the partitions' problems.
        sweeps: passes over the outputs (official ``m_niter``); with 2 or more, the last one starts from
            the best labelling met and keeps only proposals that lower the objective.
        restarts: random starts per partition, solved side by side with one from the identity labelling;
            the lowest objective is returned.
        candidates: labels per output the exact row DP considers (``None``: as many as
            :data:`STATE_BUDGET` allows on the grid; the line ICM of larger grids: every label).
        generator: for the random starts (on the problem's device).
        starts: the random starts' uniform draws ``(P * restarts, m, G, G)`` in ``[0, 1)`` (a restart's
            output takes the present input ``floor(draw * r)`` of its partition's ``r``); default drawn
            with ``generator``.
        return_objective: also return the objective ``(P,)`` of the labellings.

    Returns:
        The input each block of each output shows (slots of the partition; an absent output keeps its
        own slot), and with ``return_objective`` its objective.

    Example:
        >>> from openmix.mixers.comixup import comixup_problem
        >>> sal = torch.zeros(4, 8, 8); sal[0, :4, :4] = sal[1, :4, 4:] = sal[2, 4:, :4] = sal[3, 4:, 4:] = 1.0
        >>> problem = comixup_problem(sal, 2, 4)  # each input salient in its own quarter
        >>> labels = solve_comixup(problem, generator=torch.Generator().manual_seed(0))
        >>> labels[0, 0].tolist()  # an output made of every input's salient quarter
        [[0, 1], [2, 3]]
    """
    if sweeps < 1 or restarts < 1:
        raise ValueError(f"sweeps and restarts must be >= 1, got {sweeps} and {restarts}")
    cost = problem.cost
    n_parts, slots, grid, _ = cost.shape
    device, dtype = cost.device, cost.dtype
    runs = restarts + 1  # the random starts and, first, the identity
    batch = n_parts * runs
    many = problem._replace(cost=cost.repeat_interleave(runs, 0), compat=problem.compat.repeat_interleave(runs, 0),
                            present=problem.present.repeat_interleave(runs, 0))
    unary = many.cost.permute(0, 2, 3, 1).contiguous()  # (b, G, G, m): the unary of one output
    present = many.present
    keep = present.to(dtype)
    beta, gamma, tau = problem.beta, problem.gamma, problem.tau
    solve_output = _output_solver(grid, slots, candidates)

    # random starts: each present output takes a present input per block, uniformly; absent ones their own slot
    draw = starts if starts is not None else torch.rand((n_parts * restarts, slots, grid, grid), generator=generator,
                                                         device=device, dtype=torch.float32)
    size = problem.present.sum(1).repeat_interleave(restarts).view(-1, 1, 1, 1)
    drawn = torch.minimum((draw * size).long(), size - 1).view(n_parts, restarts, slots, grid, grid)
    # first, the identity (every output its own input whole): descent from it never ends worse than not mixing
    own = torch.arange(slots, device=device).view(1, 1, slots, 1, 1)
    labels = torch.cat([own.expand(n_parts, 1, slots, grid, grid), drawn], 1).flatten(0, 1)
    labels = torch.where(present.view(batch, slots, 1, 1), labels, own.view(1, slots, 1, 1))
    counts = block_counts(labels, slots, dtype) * keep.unsqueeze(-1)  # (b, output, input)
    energy = _output_energies(labels, unary, beta) * keep  # (b, m): unary + smoothness of each output
    total = energy.sum(1)
    value = total + diversity(counts, many)
    best, best_labels = value.clone(), labels.clone()
    compat_t = many.compat.transpose(1, 2)
    softened = (torch.arange(batch, device=device) % runs % 2 == 1).view(batch, 1)

    for sweep in range(sweeps):
        polish = sweeps > 1 and sweep == sweeps - 1
        if polish:  # from the best labelling met, proposals taken only where the objective drops
            labels = best_labels.clone()
            counts = block_counts(labels, slots, dtype) * keep.unsqueeze(-1)
            energy = _output_energies(labels, unary, beta) * keep
            total = energy.sum(1)
            value = total + diversity(counts, many)
        for j in range(slots):  # outputs in turn (block-coordinate descent); every partition and restart at once
            others = counts.sum(1) - counts[:, j]
            pressure = (others.unsqueeze(1) @ compat_t).squeeze(1)  # (A p)_i
            over = torch.where(pressure > tau, pressure, 0.0)
            if not polish:  # odd starts: the soft threshold (the official's other option), which lets outputs
                over = torch.where(softened, (pressure - tau).clamp_min(0.0), over)  # step over the threshold together
            penalty = (2.0 * gamma) * over
            proposal, penalised = solve_output(unary + penalty.view(batch, 1, 1, slots), beta)
            new_counts = block_counts(proposal, slots, dtype) * keep[:, j : j + 1]
            new_energy = (penalised - (penalty * new_counts).sum(1)) * keep[:, j]
            trial = counts.clone()
            trial[:, j] = new_counts
            new_value = total - energy[:, j] + new_energy + diversity(trial, many)
            take = present[:, j] & (new_value < value) if polish else present[:, j]
            labels[:, j] = torch.where(take.view(batch, 1, 1), proposal, labels[:, j])
            counts = torch.where(take.view(batch, 1, 1), trial, counts)
            total = total + torch.where(take, new_energy - energy[:, j], 0.0)
            energy[:, j] = torch.where(take, new_energy, energy[:, j])
            value = torch.where(take, new_value, value)
            if not polish:
                better = value < best
                best = torch.where(better, value, best)
                best_labels = torch.where(better.view(batch, 1, 1, 1), labels, best_labels)
    final = labels if sweeps > 1 else best_labels
    objective = comixup_objective(final, many).view(n_parts, runs)
    pick = objective.argmin(1)
    rows = torch.arange(n_parts, device=device)
    chosen = final.view(n_parts, runs, slots, grid, grid)[rows, pick]
    return (chosen, objective[rows, pick]) if return_objective else chosen


def potts_labels(unary: Tensor, beta: float, candidates: int | None = None) -> tuple[Tensor, Tensor]:
    """Minimise ``sum_p unary[p, l_p] + beta * #cut edges`` on ``G x G`` grids, a batch at once.

    The exact row DP over the ``candidates`` most eligible labels (see the module notes) up to
    ``G = 4``, line ICM above.

    Args:
        unary: ``(b, G, G, L)``.
        beta: the cost of an edge between blocks of different labels.
        candidates: labels kept (``None``: as many as :data:`STATE_BUDGET` allows).

    Returns:
        Labels ``(b, G, G)`` int64 and their energies ``(b,)``.

    Example:
        >>> unary = torch.tensor([0.0, 0.3]).repeat(1, 2, 2, 1)
        >>> unary[0, 0, 0] = torch.tensor([0.2, 0.0])  # one block prefers label 1, by less than its two edges
        >>> potts_labels(unary, 0.15)[0].tolist(), potts_labels(unary, 0.0)[0].tolist()
        ([[[0, 0], [0, 0]]], [[[1, 0], [0, 0]]])
    """
    return _output_solver(unary.shape[1], unary.shape[-1], candidates)(unary, beta)


def _output_solver(grid: int, n_labels: int, candidates: int | None) -> PottsSolver:
    """The per-output Potts solver for this grid and number of labels."""
    if grid <= EXACT_GRIDS:
        k = _fitting_labels(grid) if candidates is None else candidates
        k = max(1, min(n_labels, k))
        return lambda unary, beta: _row_dp(unary, beta, k)
    k = n_labels if candidates is None else max(1, min(n_labels, candidates))
    return lambda unary, beta: _line_icm(unary, beta, k)


def _fitting_labels(grid: int) -> int:
    """The most labels ``K`` with ``K^grid <= STATE_BUDGET``."""
    k = max(1, int(math.floor(STATE_BUDGET ** (1.0 / grid) + 1e-9)))
    while (k + 1) ** grid <= STATE_BUDGET:
        k += 1
    return k


@functools.lru_cache(maxsize=64)
def _degrees(grid: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Neighbours of each block of a ``grid x grid`` 4-connected grid, ``(G, G)``."""
    side = torch.full((grid,), 2.0, device=device, dtype=dtype)
    side[0] = side[-1] = 1.0
    if grid == 1:
        side.zero_()
    return side.view(-1, 1) + side.view(1, -1)


def _candidates(unary: Tensor, beta: float, k: int) -> Tensor:
    """The ``k`` labels ``(b, k)`` most likely in an optimum: a label can show at a block only where its
    unary is within ``deg * beta`` of the block's best; ranked by that slack summed over the blocks (ties:
    by the blocks where the label is eligible at all)."""
    grid = unary.shape[1]
    slack = unary.amin(-1, keepdim=True) + beta * _degrees(grid, unary.device, unary.dtype).view(1, grid, grid, 1) - unary
    score = slack.clamp_min(0.0).sum((1, 2)) + 1e-6 * (slack >= 0).sum((1, 2))
    return score.topk(k, dim=-1).indices


@functools.lru_cache(maxsize=64)
def _row_tables(k: int, grid: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """For the ``S = k^grid`` labellings of a row: the label of each column ``(S, G)``, its one-hot
    ``(S, G * k)`` and its cut edges ``(S,)``. Built on ``device`` (no host-to-device copy), once."""
    states = k**grid
    place = k ** torch.arange(grid - 1, -1, -1, device=device)
    table = torch.arange(states, device=device).unsqueeze(1).div(place, rounding_mode="floor") % k
    onehot = (table.unsqueeze(-1) == torch.arange(k, device=device)).to(dtype).view(states, grid * k)
    cuts = (table[:, 1:] != table[:, :-1]).to(dtype).sum(1)
    return table, onehot, cuts


def _row_dp(unary: Tensor, beta: float, k: int) -> tuple[Tensor, Tensor]:
    """Exact Potts minimum over the ``k`` candidate labels: DP over rows, a row's labelling one state.

    Moving from row labelling ``s'`` to ``s`` costs ``beta`` per column where they differ; that minimum
    over ``s'`` is taken a column at a time (``v = min(v, min_axis v + beta)`` along each column's axis
    of the ``(k, ..., k, b)`` state tensor, the batch innermost so that every reduction runs along
    contiguous memory). Backtracking re-derives each row's state from its DP values and the row below it
    (``argmin_s' V(s') - beta * #equal columns``), one matrix product a row.
    """
    batch, grid, _, n_labels = unary.shape
    pick = _candidates(unary, beta, k) if k < n_labels else None
    u = unary if pick is None else unary.gather(-1, pick.view(batch, 1, 1, k).expand(batch, grid, grid, k))
    table, onehot, cuts = _row_tables(k, grid, unary.device, unary.dtype)
    states = table.shape[0]
    # each row's own cost (G, S, b): its unaries and the cut edges inside it
    rows = onehot @ u.reshape(batch, grid, grid * k).permute(1, 2, 0) + (beta * cuts).view(1, states, 1)
    values = [rows[0]]
    shape = (k,) * grid + (batch,)
    for r in range(1, grid):
        v = values[-1].view(shape)
        for axis in range(grid):
            v = torch.minimum(v, v.amin(axis, keepdim=True) + beta)
        values.append(v.reshape(states, batch) + rows[r])
    energy, state = values[-1].min(0)
    picked = [state]
    for r in range(grid - 2, -1, -1):
        same = onehot @ onehot[state].t()  # (S, b): columns equal to the row below
        state = (values[r] - beta * same).argmin(0)
        picked.append(state)
    labels = table[torch.stack(picked[::-1], 1)]  # (b, G, G) candidate positions
    if pick is not None:
        labels = pick.gather(1, labels.flatten(1)).view(batch, grid, grid)
    return labels, energy


def _chain(theta: Tensor, beta: float) -> Tensor:
    """Exact Potts chain minimisers: ``theta`` ``(..., P, K)`` unaries along ``P``; labels ``(..., P)``."""
    message = theta[..., 0, :]
    back = []
    for t in range(1, theta.shape[-2]):
        low, arg = message.min(-1, keepdim=True)
        back.append((message <= low + beta, arg))  # keep the label, or come from the best one
        message = theta[..., t, :] + torch.minimum(message, low + beta)
    label = message.argmin(-1)
    picked = [label]
    for stay, arg in reversed(back):
        label = torch.where(stay.gather(-1, label.unsqueeze(-1)).squeeze(-1), label, arg.squeeze(-1))
        picked.append(label)
    return torch.stack(picked[::-1], -1)


def _line_icm(unary: Tensor, beta: float, k: int, sweeps: int = LINE_SWEEPS) -> tuple[Tensor, Tensor]:
    """Potts labels on a large grid: from the unaries' argmin over the ``k`` candidates, ``sweeps`` of every
    row, then every column, re-solved exactly given the lines next to it (one parity at a time, so the
    lines solved together do not touch). A line's exact minimum never costs more than its current labels."""
    batch, grid, _, n_labels = unary.shape
    pick = _candidates(unary, beta, k) if k < n_labels else None
    u = unary if pick is None else unary.gather(-1, pick.view(batch, 1, 1, k).expand(batch, grid, grid, k))
    levels = torch.arange(k, device=unary.device)
    labels = u.argmin(-1)
    parities = [torch.arange(start, grid, 2, device=unary.device) for start in (0, 1)]
    for _ in range(sweeps):
        for transposed in (False, True):
            lines = labels.transpose(1, 2) if transposed else labels
            costs = u.transpose(1, 2) if transposed else u
            for chosen in parities:
                padded = F.pad(lines, (0, 0, 1, 1), value=-1)  # no neighbour beyond the border
                theta = costs.index_select(1, chosen)
                for side in (padded.index_select(1, chosen), padded.index_select(1, chosen + 2)):
                    theta = theta + beta * ((side.unsqueeze(-1) != levels) & (side.unsqueeze(-1) >= 0)).to(u.dtype)
                lines = lines.index_copy(1, chosen, _chain(theta, beta))
            labels = lines.transpose(1, 2) if transposed else lines
    energy = u.gather(-1, labels.unsqueeze(-1)).squeeze(-1).flatten(1).sum(1) + beta * _cuts(labels)
    if pick is not None:
        labels = pick.gather(1, labels.flatten(1)).view(batch, grid, grid)
    return labels, energy


def _cuts(labels: Tensor) -> Tensor:
    """Cut edges of labellings ``(..., G, G)``: neighbouring blocks with different labels, ``(...)`` float."""
    vertical = (labels[..., 1:, :] != labels[..., :-1, :]).flatten(-2).sum(-1)
    horizontal = (labels[..., :, 1:] != labels[..., :, :-1]).flatten(-2).sum(-1)
    return (vertical + horizontal).float()


def _output_energies(labels: Tensor, unary: Tensor, beta: float) -> Tensor:
    """Unary plus smoothness ``(b, m)`` of every output's labelling ``(b, m, G, G)`` under ``unary`` ``(b, G, G, m)``."""
    batch, slots = labels.shape[:2]
    shown = unary.unsqueeze(1).expand(batch, slots, *unary.shape[1:]).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return shown.flatten(2).sum(2) + beta * _cuts(labels).to(unary.dtype)
