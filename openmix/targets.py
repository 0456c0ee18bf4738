"""Targets: soft targets (one-hot with label smoothing, validation, mixing), and the same draw applied
to any other target of the batch (dense maps, class maps, boxes, keypoints, vectors, sparse labels:
what :class:`~openmix.output.MixOutput`'s methods call)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from openmix.output import MixOutput

__all__ = ["soft_targets", "mix_targets", "silhouettes", "mix_dense", "mix_class_map", "mix_vector", "sparse_labels", "mix_boxes",
           "mix_keypoints", "sources_of", "Source"]


def soft_targets(
    y: Tensor, num_classes: int | None = None, label_smoothing: float = 0.0, *, batch: int | None = None
) -> Tensor:
    """Turn labels into soft targets ``(B, C)`` whose rows sum to 1.

    Args:
        y: int class ids ``(B,)`` (needs ``num_classes``) or soft targets ``(B, C)``.
        num_classes: ``C``; checked against soft targets when given.
        label_smoothing: ``s`` in ``[0, 1)``: targets become ``(1 - s) * y + s / C``.
        batch: expected ``B`` (the image batch), checked when given.

    Raises:
        TypeError: ``y`` is not a tensor, float class ids, or integer soft targets.
        ValueError: wrong ndim, batch mismatch, missing ``num_classes``, wrong width,
            class ids out of ``[0, C)`` (checked on the host for CPU labels; on an
            accelerator with ``torch._assert_async``, so the check never waits on it).

    Example:
        >>> soft_targets(torch.tensor([0, 2]), 3)
        tensor([[1., 0., 0.],
                [0., 0., 1.]])
        >>> soft_targets(torch.tensor([1]), 4, label_smoothing=0.4)
        tensor([[0.1000, 0.7000, 0.1000, 0.1000]])
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(y).__name__}")
    if batch is not None and (y.ndim == 0 or y.shape[0] != batch):
        raise ValueError(f"labels must have batch size {batch} like the inputs, got labels of shape {tuple(y.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if y.ndim == 1:
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"class-id labels (B,) must be an integer tensor, got {y.dtype}; soft targets must be (B, C)")
        if num_classes is None:
            raise ValueError("integer class-id labels need num_classes (or pass soft targets of shape (B, C))")
        _check_range(y, num_classes)
        off = label_smoothing / num_classes
        out = torch.full((y.shape[0], num_classes), off, device=y.device, dtype=torch.float32)
        return out.scatter_(1, y.long().unsqueeze(1), 1.0 - label_smoothing + off)
    if y.ndim == 2:
        if not y.is_floating_point():
            raise TypeError(f"soft targets (B, C) must be floating point, got {y.dtype}")
        if num_classes is not None and y.shape[1] != num_classes:
            raise ValueError(f"soft targets must have num_classes={num_classes} columns, got shape {tuple(y.shape)}")
        if label_smoothing:
            y = y * (1.0 - label_smoothing) + label_smoothing / y.shape[1]
        return y
    raise ValueError(f"labels must be class ids (B,) or soft targets (B, C), got shape {tuple(y.shape)}")


def mix_targets(y: Tensor, index: Tensor, lam: Tensor | float) -> Tensor:
    """``lam * y + (1 - lam) * y[index]`` row-wise; ``y`` is ``(B, C)``, ``index`` ``(B,)``.

    ``lam`` is ``(B,)``, or one Python float for the whole batch (a scalar ``lerp``).

    Example:
        >>> mix_targets(torch.eye(2), torch.tensor([1, 0]), torch.tensor([0.75, 0.5]))
        tensor([[0.7500, 0.2500],
                [0.5000, 0.5000]])
        >>> mix_targets(torch.eye(2), torch.tensor([1, 0]), 0.75)
        tensor([[0.7500, 0.2500],
                [0.2500, 0.7500]])
    """
    weight = lam.to(y.dtype).unsqueeze(1) if isinstance(lam, Tensor) else lam
    return torch.lerp(y.index_select(0, index), y, weight)  # partner + lam * (y - partner)


def _check_range(y: Tensor, num_classes: int) -> None:
    if y.numel() == 0:
        return
    if y.device.type == "cpu":
        low, high = (int(v) for v in torch.aminmax(y))
        if low < 0 or high >= num_classes:
            raise ValueError(f"class ids must be in [0, {num_classes}), got values in [{low}, {high}]")
    else:
        torch._assert_async(((y >= 0) & (y < num_classes)).all(), f"class ids must be in [0, {num_classes})")


def silhouettes(images: Tensor, labels: Tensor, threshold: float = 0.15) -> tuple[Tensor, Tensor]:
    """Targets from the images themselves: ``(class map (N, H, W), boxes (N, 1, 4))``. A pixel brighter
    than ``threshold`` (mean over channels, pixels in ``[0, 1]``) is foreground, labelled ``label + 1``
    (0 is background); the box is the foreground's bounding box ``(x1, y1, x2, y2)``.

    Example:
        >>> image = torch.zeros(1, 1, 4, 4); image[0, 0, 1:3, 2:4] = 1.0
        >>> seg, boxes = silhouettes(image, torch.tensor([4]))
        >>> int(seg.max()), boxes.tolist()
        (5, [[[2.0, 1.0, 4.0, 3.0]]])
    """
    foreground = images.float().mean(1) > threshold
    seg = torch.where(foreground, labels.view(-1, 1, 1) + 1, 0)
    rows, cols = foreground.any(2), foreground.any(1)

    def span(present: Tensor) -> tuple[Tensor, Tensor]:
        position = torch.arange(present.shape[1]).float()
        first = torch.where(present, position, float(present.shape[1])).amin(1)
        last = torch.where(present, position, -1.0).amax(1)
        return first, last + 1

    (y1, y2), (x1, x2) = span(rows), span(cols)
    return seg, torch.stack([x1, y1, x2, y2], 1).unsqueeze(1)


# ====================================================================== one draw, any target
# What a MixOutput records (partners, shares, masks, layout) applied to other targets of the batch.
@dataclass(frozen=True)
class Source:
    """One image mixed into every sample: whose (``index`` ``(B,)``), with what share (``(B,)``),
    with what per-position weight (``plane`` ``(B, 1, *spatial)``; ``None``: the whole image at its
    share), and where its content went (``lay`` for tensors, ``move`` for points)."""

    index: Tensor
    share: Tensor
    plane: Tensor | None
    lay: Callable[..., Tensor]
    move: Callable[[Tensor], Tensor | None]


def target_rows(out: "MixOutput") -> int:
    """The rows of the targets ``out``'s methods take: the batch the draw mixed from (``B`` in ``half``
    mode, where ``out`` has ``ceil(B/2)`` rows; every rank's under global pairing)."""
    return out.lam.shape[0] if out.batch_size is None else out.batch_size


def sources_of(out: "MixOutput") -> list[Source]:
    """The images mixed into each sample of ``out``: the sample and its partner, or AdAutoMix's ``K``.
    Each ``index`` counts rows of the targets (:func:`target_rows`). With ``out.sources`` the first is laid
    out as the sample's image, the others as the partner's (SnapMix's resized one; AdAutoMix's as they were)."""
    if out.sources is not None:
        indices, weights = out.sources
        masks, layout = out.source_masks, out.layout
        return [Source(indices[:, k], weights[:, k], None if masks is None else masks[:, k : k + 1],
                       layout.partner if k else layout.own, layout.move_partner if k else layout.move_own)
                for k in range(indices.shape[1])]
    rows = out.lam.shape[0]
    own_rows = torch.arange(out.offset, out.offset + rows, device=out.index.device)
    own = Source(own_rows, out.lam, out.mask, out.layout.own, out.layout.move_own)
    partner_plane = None if out.mask is None else 1.0 - out.mask
    partner = Source(out.index, 1.0 - out.lam, partner_plane, out.layout.partner, out.layout.move_partner)
    return [own, partner]


def mix_dense(out: "MixOutput", target: Tensor) -> Tensor:
    """``target`` ``(B, K, *spatial)``, spatially aligned with the images, mixed as they were.

    Each source's target is laid out as its image was (ResizeMix shrinks the partner's into the
    box, PuzzleMix transports the blocks) and weighted by its mask, or by its share where the
    mixer has none (mixup): ``mask * own + (1 - mask) * partner``. Soft class maps keep summing to
    1 per pixel. Float targets only (hard class maps: :func:`mix_class_map`).

    Example:
        >>> import openmix
        >>> out = openmix.build("cutmix", seed=0)(torch.rand(2, 3, 8, 8))
        >>> maps = torch.softmax(torch.randn(2, 4, 8, 8), 1)
        >>> torch.allclose(out.dense(maps).sum(1), torch.ones(2, 8, 8))
        True
    """
    _check_spatial(out, target, "dense target", float_only=True)
    if out.remix is not None:  # the mixer's own (fast) mixing of this draw
        return out.remix(target)
    mixed = None
    for source in sources_of(out):
        laid = source.lay(target.index_select(0, source.index), False)
        weight = _broadcast(source.plane if source.plane is not None else source.share, laid).to(laid.dtype)
        mixed = laid * weight if mixed is None else mixed.addcmul_(laid, weight)
    return mixed


def mix_class_map(out: "MixOutput", target: Tensor, ignore_index: int | None = None) -> Tensor:
    """A hard class map ``(B, *spatial)`` (int): each pixel gets the class of the image it shows.

    The mixer's mask must be binary (CutMix, SaliencyMix, GridMix, ResizeMix, FMix without
    ``max_soft``, PuzzleMix with two labels): mixup, soft masks and learned masks blend pixels,
    so no pixel has one owner (mix one-hot maps with :func:`mix_dense` instead). Pixels of
    ``ignore_index`` stay ignored; where no image shows (PuzzleMix's empty transported blocks)
    the pixel is ``ignore_index`` (0 without one).

    Example:
        >>> import openmix
        >>> out = openmix.build("cutmix", pairing="flip", seed=0)(torch.rand(2, 3, 8, 8))
        >>> seg = torch.tensor([1, 2]).view(2, 1, 1).expand(2, 8, 8)
        >>> mixed = out.class_map(seg)
        >>> torch.equal(mixed[0] == 1, out.mask[0, 0] == 1)
        True
    """
    if target.is_floating_point():
        raise TypeError(f"a class map must hold integer class ids (B, *spatial), got {target.dtype}; mix soft maps "
                        "with out.dense()")
    _check_spatial(out, target.unsqueeze(1), "class map")
    if not out.binary or (out.sources is not None and out.sources[0].shape[1] != 2):
        raise ValueError(
            f"{out.mixer or 'this mixer'} blends pixels (its mask is not binary), so a pixel has no single owner and a "
            "hard class map cannot follow it; mix one-hot maps with out.dense(), or use a cut mixer"
        )
    fill = 0 if ignore_index is None else ignore_index
    own, partner = sources_of(out)
    if own.plane is None:  # a batch the mixer left as it was
        return target.index_select(0, own.index)
    mine = own.lay(target.index_select(0, own.index).unsqueeze(1), True, fill).squeeze(1)
    theirs = partner.lay(target.index_select(0, partner.index).unsqueeze(1), True, fill).squeeze(1)
    owner = _broadcast(own.plane, target.unsqueeze(1)).squeeze(1) >= 0.5
    return torch.where(owner, mine, theirs)


def mix_vector(out: "MixOutput", target: Tensor) -> Tensor:
    """A per-sample target ``(B, D)`` (regression values, multi-hot labels) mixed by the shares (with
    ``out.sources``, by their weights, as the labels are: SnapMix's need not sum to 1).

    Example:
        >>> import openmix
        >>> out = openmix.build("mixup", pairing="flip", seed=0)(torch.rand(2, 3, 4, 4))
        >>> values = torch.tensor([[0.0], [10.0]])
        >>> torch.allclose(out.vector(values), out.lam[:, None] * values + (1 - out.lam[:, None]) * values.flip(0))
        True
    """
    if not isinstance(target, Tensor) or target.ndim < 1 or target.shape[0] != target_rows(out):
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"a per-sample target must be (B, ...) with B = {target_rows(out)}, got {shape}")
    if not target.is_floating_point():
        raise TypeError(f"a per-sample target to mix must be floating point, got {target.dtype}")
    mixed = None
    for source in sources_of(out):
        part = target.index_select(0, source.index) * _broadcast(source.share, target).to(target.dtype)
        mixed = part if mixed is None else mixed + part
    return mixed


def sparse_labels(out: "MixOutput", labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(labels (B, K), weights (B, K))``: the class ids of the ``K`` images mixed into each sample and
    their weights in the targets (they sum to 1 per row unless the mixer's ``normalized_targets`` is
    ``False``: SnapMix's are each image's class activation mass).

    Example:
        >>> import openmix
        >>> out = openmix.build("mixup", seed=0)(torch.rand(3, 1, 2, 2))
        >>> ids, weights = out.sparse(torch.tensor([5, 6, 7]))
        >>> ids.shape, torch.allclose(weights.sum(1), torch.ones(3))
        (torch.Size([3, 2]), True)
    """
    if labels.ndim != 1 or labels.shape[0] != target_rows(out) or labels.is_floating_point():
        raise ValueError(f"labels must be class ids (B,) with B = {target_rows(out)}, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    sources = sources_of(out)
    return (torch.stack([labels.index_select(0, s.index) for s in sources], 1),
            torch.stack([s.share for s in sources], 1))


def mix_boxes(out: "MixOutput", boxes: Tensor, valid: Tensor | None = None, *, min_visible: float = 0.25
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes ``(B, N, 4)`` as ``(x1, y1, x2, y2)`` pixels, mixed with the images.

    Every image mixed into a sample brings its boxes, moved where its content went (ResizeMix
    scales the partner's into the pasted patch) and cut to what stays visible: each box becomes
    the bounding box of its pixels the image still shows (mask at least 0.5), and is dropped
    (``valid`` false) when less than ``min_visible`` of its area stays. Without a mask (mixup)
    every box stays, whole. Works on 2-D images (the last two axes are ``(H, W)``).

    Args:
        boxes: ``(B, N, 4)``, padded to ``N`` per sample.
        valid: ``(B, N)`` bool, the real boxes (default all).
        min_visible: the visible fraction below which a box is dropped.

    Returns:
        ``(boxes (B, K * N, 4), valid (B, K * N), visible (B, K * N))``: the sample's boxes first,
        then each partner's; ``visible`` is each box's visible fraction (for loss weights).

    Raises:
        ValueError: wrong shapes, or a mixer whose content moves in a way boxes cannot follow
            (PuzzleMix's transport).

    Example:
        >>> import openmix
        >>> out = openmix.build("cutmix", seed=1)(torch.rand(2, 3, 10, 10))
        >>> boxes, valid, visible = out.boxes(torch.tensor([[[0.0, 0.0, 10.0, 10.0]]] * 2))
        >>> boxes.shape, valid.shape
        (torch.Size([2, 2, 4]), torch.Size([2, 2]))
    """
    batch = out.lam.shape[0]
    if boxes.ndim != 3 or boxes.shape[0] != target_rows(out) or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be (B, N, 4) with B = {target_rows(out)}, got {tuple(boxes.shape)}")
    valid = torch.ones(boxes.shape[:2], dtype=torch.bool, device=boxes.device) if valid is None else valid.bool()
    if valid.shape != boxes.shape[:2]:
        raise ValueError(f"valid must be (B, N) = {tuple(boxes.shape[:2])} like the boxes, got {tuple(valid.shape)}")
    height, width = out.x.shape[-2:]
    _check_boxes(boxes, valid, width, height)
    limit = boxes.new_tensor([width, height, width, height], dtype=torch.float32)
    kept, flags, fractions = [], [], []
    for source in sources_of(out):
        corners = boxes.index_select(0, source.index).float().reshape(batch, -1, 2)
        moved = source.move(corners)
        if moved is None:
            raise ValueError(f"{out.mixer} moves image blocks around, so boxes cannot follow it; turn its transport off")
        placed = torch.minimum(moved.reshape(batch, -1, 4).clamp(min=0.0), limit)
        flag = valid.index_select(0, source.index)
        if source.plane is None:
            fraction = torch.ones(placed.shape[:2], device=placed.device)
        else:
            shown = source.plane.reshape(batch, -1, height, width)[:, 0] >= 0.5
            fraction, placed = _visible_part(shown, placed)
        area = (placed[..., 2] - placed[..., 0]) * (placed[..., 3] - placed[..., 1])
        kept.append(placed)
        flags.append(flag & (fraction >= min_visible) & (area > 0))
        fractions.append(fraction)
    return torch.cat(kept, 1), torch.cat(flags, 1), torch.cat(fractions, 1)


def mix_keypoints(out: "MixOutput", points: Tensor, visible: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Keypoints ``(B, N, 2)`` as ``(x, y)`` pixels, mixed with the images: every image brings its
    points, moved where its content went, visible where the mixed image still shows that image there
    (mask at least 0.5; everywhere without a mask). Returns ``(points (B, K * N, 2), visible (B, K * N))``.

    Example:
        >>> import openmix
        >>> out = openmix.build("cutmix", seed=1)(torch.rand(2, 3, 10, 10))
        >>> points, shown = out.keypoints(torch.tensor([[[5.0, 5.0]]] * 2))
        >>> points.shape, bool((shown.sum(1) == 1).all())  # the centre shows one of the two images
        (torch.Size([2, 2, 2]), True)
    """
    batch = out.lam.shape[0]
    if points.ndim != 3 or points.shape[0] != target_rows(out) or points.shape[2] != 2:
        raise ValueError(f"keypoints must be (B, N, 2) with B = {target_rows(out)}, got {tuple(points.shape)}")
    visible = torch.ones(points.shape[:2], dtype=torch.bool, device=points.device) if visible is None else visible.bool()
    height, width = out.x.shape[-2:]
    moved_all, shown_all = [], []
    for source in sources_of(out):
        moved = source.move(points.index_select(0, source.index).float())
        if moved is None:
            raise ValueError(f"{out.mixer} moves image blocks around, so keypoints cannot follow it; turn its transport off")
        x, y = moved.unbind(-1)
        shown = visible.index_select(0, source.index) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
        if source.plane is not None:
            plane = source.plane.reshape(batch, -1, height, width)[:, 0]
            col, row = x.floor().long().clamp(0, width - 1), y.floor().long().clamp(0, height - 1)
            shown &= plane.flatten(1).gather(1, row * width + col) >= 0.5
        moved_all.append(moved)
        shown_all.append(shown)
    return torch.cat(moved_all, 1), torch.cat(shown_all, 1)


def _check_boxes(boxes: Tensor, valid: Tensor, width: int, height: int) -> None:
    """Every valid box must be ``0 <= x1 <= x2 <= W``, ``0 <= y1 <= y2 <= H``: checked on the host for CPU
    boxes (a ``ValueError`` naming the first bad one), on an accelerator with ``torch._assert_async``."""
    x1, y1, x2, y2 = boxes.float().unbind(-1)
    good = (x1 >= 0) & (y1 >= 0) & (x1 <= x2) & (y1 <= y2) & (x2 <= width) & (y2 <= height)
    bad = valid & ~good
    if boxes.device.type != "cpu":
        torch._assert_async(~bad.any(), f"boxes must lie in the {width}x{height} image with x1 <= x2 and y1 <= y2")
    elif bool(bad.any()):
        sample, box = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"box {box} of sample {sample}, {boxes[sample, box].tolist()}, is not (x1, y1, x2, y2) with "
                         f"0 <= x1 <= x2 <= {width} and 0 <= y1 <= y2 <= {height} (the images are {width}x{height})")


def _visible_part(shown: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """The fraction of each box's pixels that ``shown`` ``(B, H, W)`` marks, and the bounding box of those
    pixels within it (``boxes`` ``(B, N, 4)``): from one integral image, gathered at the boxes' columns
    (row counts) and rows (column counts); no loop."""
    batch, height, width = shown.shape
    n = boxes.shape[1]
    x1, x2 = boxes[..., 0].floor().long().clamp(0, width), boxes[..., 2].ceil().long().clamp(0, width)
    y1, y2 = boxes[..., 1].floor().long().clamp(0, height), boxes[..., 3].ceil().long().clamp(0, height)
    integral = F.pad(shown.int().cumsum(1).cumsum(2), (1, 0, 1, 0))  # (B, H+1, W+1)
    # shown pixels of columns [x1, x2) above each row, and of rows [y1, y2) left of each column
    above = integral.gather(2, x2.unsqueeze(1).expand(batch, height + 1, n)) - integral.gather(
        2, x1.unsqueeze(1).expand(batch, height + 1, n))  # (B, H+1, N)
    left = integral.gather(1, y2.unsqueeze(2).expand(batch, n, width + 1)) - integral.gather(
        1, y1.unsqueeze(2).expand(batch, n, width + 1))  # (B, N, W+1)
    inside = above.gather(1, y2.unsqueeze(1)) - above.gather(1, y1.unsqueeze(1))  # (B, 1, N)
    inside = inside.squeeze(1)
    fraction = inside.float() / ((x2 - x1) * (y2 - y1)).clamp(min=1).float()
    rows = (above.diff(dim=1) > 0).transpose(1, 2)  # (B, N, H): rows with a shown pixel in the box's columns
    rows &= _within(height, y1, y2)
    cols = (left.diff(dim=2) > 0) & _within(width, x1, x2)  # (B, N, W)
    first_row, last_row = _first_last(rows)
    first_col, last_col = _first_last(cols)
    clipped = torch.stack([torch.maximum(boxes[..., 0], first_col), torch.maximum(boxes[..., 1], first_row),
                           torch.minimum(boxes[..., 2], last_col + 1), torch.minimum(boxes[..., 3], last_row + 1)], -1)
    return fraction, torch.where((inside == 0).unsqueeze(-1), torch.zeros_like(clipped), clipped)


def _within(size: int, low: Tensor, high: Tensor) -> Tensor:
    """``(B, N, size)``: whether each position lies in ``[low, high)`` of its box."""
    position = torch.arange(size, device=low.device)
    return (position >= low.unsqueeze(-1)) & (position < high.unsqueeze(-1))


def _first_last(present: Tensor) -> tuple[Tensor, Tensor]:
    """First and last index along the last axis where ``present`` is true (float; 0 and -1 where none)."""
    position = torch.arange(present.shape[-1], device=present.device)
    first = torch.where(present, position, present.shape[-1]).amin(-1)
    last = torch.where(present, position, -1).amax(-1)
    return first.float(), last.float()


def _broadcast(weight: Tensor, like: Tensor) -> Tensor:
    """``weight`` ``(B,)`` or ``(B, 1, *spatial')`` viewed to broadcast against ``like`` ``(B, K, *spatial)``
    (a video's mask ``(B, 1, H, W)`` over ``(B, K, T, H, W)``)."""
    if weight.ndim == 1:
        return weight.view((-1,) + (1,) * (like.ndim - 1))
    extra = like.ndim - weight.ndim
    return weight.view(weight.shape[:2] + (1,) * extra + weight.shape[2:]) if extra > 0 else weight


def _check_spatial(out: "MixOutput", target: Tensor, what: str, *, float_only: bool = False) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"a {what} must be a torch.Tensor, got {type(target).__name__}")
    expected = (target_rows(out), "K", *out.x.shape[2:])
    if target.ndim != out.x.ndim or target.shape[0] != target_rows(out) or target.shape[2:] != out.x.shape[2:]:
        raise ValueError(f"a {what} must be (B, K, *spatial) = {expected} like the mixed images, got "
                         f"{tuple(target.shape)}")
    if float_only and not target.is_floating_point():
        raise TypeError(f"a {what} to blend must be floating point, got {target.dtype} (class ids: out.class_map())")
