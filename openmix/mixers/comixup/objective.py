"""The Co-Mixup objective: one whole-partition labelling problem, in floats.

A batch is cut into partitions of ``m`` samples. In each partition, every one of the ``m`` outputs
labels each block of a ``G x G`` grid with the input (of the same partition) whose block it shows. With
``c_j`` the block counts of output ``j`` (``c_ji`` blocks from input ``i``), the official
``snu-mllab/Co-Mixup`` (``match.py``: ``obj_fn``, ``obj_fn_thres``, ``get_onehot_matrix``) minimises

``F(z) = sum_j sum_p cost[z_jp, p] + beta' sum_j #{neighbouring blocks of j with different inputs}
+ gamma' sum_j c_j . g(A (T - c_j))``,

where ``cost[i, p] = -s_i(p) - eta' log(w_i + 1e-8)`` (``s_i`` the saliency of input ``i`` pooled to blocks
and normalised to sum 1, ``w ~ Dirichlet(alpha)`` the prior drawn per partition), ``T = sum_j c_j`` the
total use of every input, ``A`` the compatibility matrix, and ``g(v) = v * [v > tau']`` the hard
threshold. The coefficients are the official ones scaled by the grid: ``beta' = beta / N``,
``gamma' = gamma / N``, ``eta' = eta / N`` and ``tau' = tau * N`` for ``N = G^2`` blocks.

With ``A = I`` this is the official ``obj_fn_thres`` exactly, and with ``tau = 0`` too, the official
``obj_fn`` (``gamma' (sum_i T_i^2 - sum_ji c_ji^2)``: the supermodular diversity term). The official
solver's modular penalty ``2 gamma' g(A p)`` (``p`` the others' use) is this term's derivative for one
output; its own objective evaluations drop ``A`` (``omega = 0.001`` makes it nearly ``I``).

:func:`comixup_problem` builds a :class:`CoMixupProblem` from saliency maps; :func:`comixup_objective`
evaluates hard labellings ``(P, m, G, G)`` or soft masks ``(P, m, G, G, m)`` (the official solver's
50/50 blocks) under it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.mixers.puzzlemix.energy import block_saliency

__all__ = ["CoMixupProblem", "comixup_problem", "comixup_objective", "compatibility", "block_counts",
           "diversity", "ABSENT_COST"]

ABSENT_COST = 1e4
"""The cost per block of a slot that holds no sample (a short last partition): no output takes it."""
_PRIOR_EPS = 1e-8  # inside the official prior's log
_ARGMAX_POOL = 8  # the official compatibility pools the saliency 8 x 8 (stride 1) before its argmax


class CoMixupProblem(NamedTuple):
    """``P`` independent Co-Mixup problems (partitions) of ``m`` slots on a ``G x G`` grid.

    Attributes:
        cost: ``(P, m, G, G)``: the unary of showing input ``i``'s block ``p`` (saliency and prior;
            :data:`ABSENT_COST` for a slot without a sample).
        compat: ``(P, m, m)``: the compatibility matrix ``A``.
        present: ``(P, m)`` bool: the slots that hold a sample (all but the end of a short last partition).
        beta: the smoothness weight per cut edge (``beta / N``).
        gamma: the diversity weight (``gamma / N``).
        tau: the threshold in blocks (``tau * N``).
    """

    cost: Tensor
    compat: Tensor
    present: Tensor
    beta: float
    gamma: float
    tau: float

    @property
    def grid(self) -> int:
        return self.cost.shape[-1]

    def to(self, *args: Any, **kwargs: Any) -> "CoMixupProblem":
        """The problem with its tensors moved/cast (``present`` stays bool)."""
        cost = self.cost.to(*args, **kwargs)
        return self._replace(cost=cost, compat=self.compat.to(*args, **kwargs), present=self.present.to(cost.device))


def compatibility(saliency: Tensor, slots: Tensor, present: Tensor, omega: float) -> Tensor:
    """The official compatibility matrices ``A = (1 - omega) I + omega A_d`` ``(P, m, m)``.

    ``A_d`` holds the L1 distances between the most salient locations of the inputs of each partition
    (the argmax of the saliency average-pooled 8 x 8 with stride 1, or over the whole image when it is
    smaller), divided by their sum over the partition and multiplied by its number of samples (official
    ``main.py`` / ``mixup.py``). A partition whose locations all coincide (or of one sample) gets
    ``A_d = 0``; the official code divides by zero there.

    Args:
        saliency: ``(B, H, W)``.
        slots: ``(P, m)`` int64: the sample in each slot (any valid row where ``present`` is false).
        present: ``(P, m)`` bool.
        omega: the official ``m_omega``.
    """
    height, width = saliency.shape[-2:]
    k = min(_ARGMAX_POOL, height, width)
    pooled = F.avg_pool2d(saliency.detach().float().unsqueeze(1), k, stride=1)[:, 0]
    flat = pooled.flatten(1).argmax(1)
    loc = torch.stack([flat.div(pooled.shape[-1], rounding_mode="floor"), flat % pooled.shape[-1]], 1).float()
    loc = loc[slots]  # (P, m, 2)
    both = (present.unsqueeze(2) & present.unsqueeze(1)).float()
    dist = (loc.unsqueeze(2) - loc.unsqueeze(1)).abs().sum(-1) * both
    total = dist.sum((1, 2), keepdim=True)
    count = present.sum(1).view(-1, 1, 1).float()
    dist = torch.where(total > 0, dist / total.clamp_min(1e-12) * count, torch.zeros_like(dist))
    eye = torch.eye(slots.shape[1], device=saliency.device, dtype=dist.dtype)
    return (1.0 - omega) * eye + omega * dist


def comixup_problem(
    saliency: Tensor,
    block_num: int,
    partition: int,
    *,
    order: Tensor | None = None,
    prior: Tensor | None = None,
    beta: float = 0.32,
    gamma: float = 1.0,
    eta: float = 0.05,
    thres: float = 0.83,
    omega: float = 1e-3,
) -> CoMixupProblem:
    """The official Co-Mixup problem of a batch's saliency maps, one per partition of ``partition`` samples.

    The samples ``order[0..]`` (default the batch order) fill the partitions in turn: ``P = ceil(B /
    partition)``, each of ``m = min(partition, B)`` slots. A short last partition keeps its ``r < m``
    samples in its first ``r`` slots; the rest are absent (``present`` false, :data:`ABSENT_COST`), so its
    outputs mix only its own ``r`` inputs and it is the official ``r``-input problem (one sample: unmixed).
    The official code handles a short last partition in ``mixup_process`` but breaks before it, reshaping
    the saliency argmax to the full batch size.

    Args:
        saliency: ``(B, H, W)`` non-negative saliency (the input-gradient RMS).
        block_num: ``G``; it must divide ``H`` and ``W``.
        partition: ``m``, the official ``m_part``.
        order: ``(B,)`` a permutation of the batch: which samples share a partition.
        prior: ``(P, m)`` Dirichlet weights ``w`` per slot (absent slots: any value), or ``None`` for no
            prior term.
        beta, gamma, eta, thres, omega: the official ``m_beta``, ``m_gamma``, ``m_eta``, ``m_thres`` (hard)
            and ``m_omega``, before their scaling by the grid.

    Returns:
        :class:`CoMixupProblem` in float32 (float64 if ``saliency`` is float64).

    Example:
        >>> problem = comixup_problem(torch.rand(5, 8, 8), 2, 4)
        >>> problem.cost.shape, problem.present.tolist()
        (torch.Size([2, 4, 2, 2]), [[True, True, True, True], [True, False, False, False]])
    """
    batch, height, width = saliency.shape
    grid = int(block_num)
    if grid < 1 or height % grid or width % grid:
        raise ValueError(f"block_num must divide the image sides, got {grid} for {height}x{width} saliency maps")
    slots_per, n_parts = min(partition, batch), -(-batch // partition)
    device = saliency.device
    dtype = torch.promote_types(saliency.dtype, torch.float32)
    order = torch.arange(batch, device=device) if order is None else order
    padded = n_parts * slots_per
    position = torch.arange(padded, device=device)
    present = (position < batch).view(n_parts, slots_per)
    slots = order[position.clamp(max=batch - 1)].view(n_parts, slots_per)
    blocks = grid * grid
    s = block_saliency(saliency.detach().to(dtype), grid)[slots]  # (P, m, G, G), each map summing to 1
    cost = -s
    if prior is not None:
        cost = cost - (eta / blocks) * torch.log(prior.to(dtype) + _PRIOR_EPS).view(n_parts, slots_per, 1, 1)
    cost = torch.where(present.view(n_parts, slots_per, 1, 1), cost, ABSENT_COST)
    compat = compatibility(saliency, slots, present, omega).to(dtype)
    return CoMixupProblem(cost, compat, present, beta / blocks, gamma / blocks, thres * blocks)


def block_counts(labels: Tensor, n_inputs: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``c`` ``(..., n_inputs)``: how many blocks of each labelling ``(..., G, G)`` show each input."""
    flat = labels.flatten(-2)
    counts = torch.zeros(*flat.shape[:-1], n_inputs, dtype=dtype, device=labels.device)
    return counts.scatter_add_(-1, flat, torch.ones(flat.shape, dtype=dtype, device=labels.device))


def diversity(counts: Tensor, problem: CoMixupProblem) -> Tensor:
    """The thresholded diversity term ``gamma' sum_j c_j . g(A (T - c_j))`` ``(P,)`` of counts ``(P, m, m)``
    (output, input); absent outputs must have zero counts."""
    others = counts.sum(1, keepdim=True) - counts
    pressure = others @ problem.compat.transpose(1, 2)
    return problem.gamma * (counts * torch.where(pressure > problem.tau, pressure, 0.0)).sum((1, 2))


def comixup_objective(labels: Tensor, problem: CoMixupProblem) -> Tensor:
    """The objective ``F`` ``(P,)`` of labellings under ``problem`` (in its dtype).

    Args:
        labels: int ``(P, m, G, G)``: the input each output block shows; or float masks
            ``(P, m, G, G, m)`` of per-block input weights (one-hot, or the official 50/50 blocks): then
            the smoothness is ``beta'/2`` times the squared difference of neighbouring blocks' weights,
            as the official ``obj_fn`` computes it. Outputs in absent slots are left out.

    Example:
        >>> p = CoMixupProblem(-torch.eye(2).view(1, 2, 1, 2).expand(1, 2, 2, 2), torch.eye(2).unsqueeze(0),
        ...                    torch.ones(1, 2, dtype=torch.bool), beta=0.1, gamma=0.1, tau=0.0)
        >>> # unary -4 - 2, 2 cuts, input 1 shared: 2 x (6 - 2) + 4 x (6 - 4) block pairs
        >>> comixup_objective(torch.tensor([[[[0, 1], [0, 1]], [[1, 1], [1, 1]]]]), p)
        tensor([-4.2000])
    """
    cost, present = problem.cost, problem.present
    n_parts, slots = present.shape
    keep = present.to(cost.dtype).view(n_parts, slots, 1, 1)
    if labels.is_floating_point():
        masks = labels.to(cost.dtype) * keep.unsqueeze(-1)
        unary = torch.einsum("pjghi,pigh->p", masks, cost)
        smooth = 0.5 * ((masks[:, :, 1:] - masks[:, :, :-1]).square().sum((1, 2, 3, 4))
                        + (masks[:, :, :, 1:] - masks[:, :, :, :-1]).square().sum((1, 2, 3, 4)))
        counts = masks.sum((2, 3))
    else:
        labels = labels.long()
        shown = cost.unsqueeze(1).expand(n_parts, slots, *cost.shape[1:]).gather(2, labels.unsqueeze(2)).squeeze(2)
        unary = (shown * keep).sum((1, 2, 3))
        smooth = ((labels[:, :, 1:] != labels[:, :, :-1]).to(cost.dtype) * keep).sum((1, 2, 3)) + (
            (labels[:, :, :, 1:] != labels[:, :, :, :-1]).to(cost.dtype) * keep).sum((1, 2, 3))
        counts = block_counts(labels, slots, cost.dtype) * keep.view(n_parts, slots, 1)
    return unary + problem.beta * smooth + diversity(counts, problem)
