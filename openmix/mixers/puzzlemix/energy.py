"""The PuzzleMix labelling energy: one multi-label problem per sample on a ``G x G`` block grid.

Each block gets a label ``l`` in ``{0, .., L-1}``, i.e. the weight ``1 - l/(L-1)`` of the
sample's own image (``{1, 0.5, 0}`` for ``L = 3``). :func:`puzzle_problem` builds the
official energy (``mixup_graph`` and ``graphcut_multi`` of ``snu-mllab/PuzzleMix``: saliency
kept, colour smoothness across block boundaries, a binomial prior around ``lam``) as a
:class:`PuzzleProblem` of float unaries ``(B, G, G, L)`` and edge weights; :func:`puzzle_energy`
evaluates labellings. The terms equal the official ones before its integer scaling, which
this module does not copy: the official ``1000 G^2`` int32 scaling overflows inside gco on
peaked saliency (``docs/puzzlemix.md``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from openmix.pixels import denormalize

__all__ = ["PuzzleProblem", "block_saliency", "puzzle_problem", "binomial_prior", "puzzle_energy"]

_PRIOR_EPS = 1e-8  # inside the log of the official binomial prior


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


def _largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` not above ``cap`` (at least 1)."""
    for d in range(max(1, min(n, cap)), 0, -1):
        if n % d == 0:
            return d
    return 1
