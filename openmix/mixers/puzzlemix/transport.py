"""PuzzleMix transport: move each image's cells towards where its mask keeps them visible.

:func:`mask_transport` is the official greedy plan (``mask_transport`` of ``snu-mllab/PuzzleMix``),
batched and reproduced exactly, tie rules included: a source cell ``i`` moved to target ``j``
costs ``t_eps * C_ij - s_i * [mask_j > 0]`` (``C``: :func:`transport_cost`); for ``grid`` rounds
every source takes its cheapest target, a target is won by the contestant of lowest
``plan * cost`` (a row not contesting it counts as 0, so a contestant of positive cost never
wins; ties go to the lowest row index), and the losers' chosen entries cost 1 more. An output
cell that no source wins is zeros, as in the official code. :func:`transport_blocks` applies a
plan to images. Memory: the cost tensor, ``B N^2`` floats for ``B`` masks of ``N`` cells
(``docs/puzzlemix.md``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["transport_cost", "mask_transport", "transport_blocks"]


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


def transport_blocks(images: Tensor, source: Tensor, grid: int, fill: float = 0.0) -> Tensor:
    """Move cells of ``images`` ``(B, C, H, W)``: target cell ``j`` gets source cell ``source[:, j]``.

    Cells are ``H/grid x W/grid``; a target with source ``-1`` becomes ``fill`` (zeros, as the
    official code; a class map's ignore index). Returns a contiguous tensor of the same shape and dtype.

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
    return moved.masked_fill_(empty, fill).view(batch, channels, height, width)
