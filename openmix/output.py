"""What a mixer call returns (:class:`MixOutput`) and what a training step produced (:class:`StepResult`).

A :class:`MixOutput` records what the mixer did (partners, shares, mask, where it put each
image's content), so the same draw mixes any other target of the batch: soft dense maps and
hard class maps, boxes, keypoints, regression and multi-label vectors, or a sparse label form
(its ``dense``, ``class_map``, ``boxes``, ``keypoints``, ``vector`` and ``sparse`` methods).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

__all__ = ["MixOutput", "StepResult", "Layout", "IDENTITY_LAYOUT"]


class Layout:
    """Where a mixer put the sample's and the partner's content in the mixed image: as it was (this
    class); ResizeMix (the partner shrunk into a box) and PuzzleMix (blocks transported) say otherwise.

    ``own``/``partner`` lay out a per-sample tensor ``(B, K, *spatial)`` like the sample's / the
    partner's image (``partner`` is given already gathered by ``index``); ``nearest`` asks for a
    resampling that keeps values (class ids), ``fill`` is the value where the image shows nothing
    of that source. ``move_own``/``move_partner`` move points
    ``(B, N, 2)`` as ``(x, y)`` pixel coordinates, or return ``None`` where content moved in a way
    points cannot follow.
    """

    def own(self, t: Tensor, nearest: bool = False, fill: float = 0.0) -> Tensor:
        return t

    def partner(self, t: Tensor, nearest: bool = False, fill: float = 0.0) -> Tensor:
        return t

    def move_own(self, points: Tensor) -> Tensor | None:
        return points

    def move_partner(self, points: Tensor) -> Tensor | None:
        return points


IDENTITY_LAYOUT = Layout()


@dataclass
class MixOutput:
    """Result of one mixer call.

    openmix uses **one** meaning of ``lam`` everywhere: ``lam[i]`` is the weight of the
    *original* sample ``x[i]`` in ``x_mixed[i]``; its partner ``x[index[i]]`` gets
    ``1 - lam[i]``. For cut-based mixers it is the fraction of the original actually
    kept (the mean of ``mask[i]``). This is timm's convention; kornia's ``lam`` weights
    the partner instead.

    Attributes:
        x: mixed inputs, same shape, dtype, device and memory format as the input,
            ``(B, C, *spatial)``.
        y: soft targets, ``(B, num_classes)``; every row sums to 1 unless the mixer says otherwise
            (``Mixer.normalized_targets`` is ``False``: SnapMix weighs each image by its class activation
            mass, so a row is non-negative and sums to at most the number of images mixed, and
            ``sources`` holds those weights).
        lam: weight of the original sample, float32 ``(B,)``.
        index: partner of each sample, int64 ``(B,)``.
        mask: per-position weight of the original, ``(B, 1, *spatial)``, for mixers that
            have one (cut and mask mixers), else ``None`` (also for a batch the ``prob`` coin left
            unmixed).
        sources: for mixers of more than two samples (AdAutoMix), or whose target weights are not
            ``lam`` and ``1 - lam`` (SnapMix), ``(indices, weights)``, each ``(B, K)``: every sample mixed
            into ``x_mixed[i]`` (itself first) and its weight in the targets; ``index`` is then the first
            partner. ``None`` for two samples weighted ``lam`` and ``1 - lam``.
        source_masks: with ``sources``, each source's per-position weight ``(B, K, *spatial)``.
        layout: where each image's content went (:class:`Layout`).
        binary: whether ``mask`` holds only 0 and 1 (cut mixers), so that every pixel has one owner.
        mixer: the mixer's class name, for error messages.
        remix: the mixer's own mixing of another float tensor shaped like ``x`` with this call's draw
            (its fast path, e.g. CutMix's slice paste), where mixing is a pure function of the draw;
            :meth:`dense` uses it.
        batch_size: the rows of the batch the draw mixed from, which the target methods take (their
            results have the rows of ``x``): the whole input batch ``B`` in ``half`` mode (``x`` has
            ``ceil(B/2)`` rows), every rank's batch under global pairing; ``None``: as many as ``x``.
        offset: the row of that batch where this output's own samples begin (``rank * B`` under
            global pairing, else 0): output row ``i`` is sample ``offset + i``, mixed with ``index[i]``.

    ``y`` is ``None`` when the mixer was called without labels (``mixer(x)``): the draw then mixes
    whatever targets the methods below are given.

    Example:
        >>> out = MixOutput.identity(torch.zeros(2, 3, 4, 4), torch.eye(2))
        >>> out.lam
        tensor([1., 1.])
    """

    x: Tensor
    y: Tensor | None
    lam: Tensor
    index: Tensor
    mask: Tensor | None = None
    sources: tuple[Tensor, Tensor] | None = None
    source_masks: Tensor | None = None
    layout: Layout = IDENTITY_LAYOUT
    binary: bool = False
    mixer: str = ""
    remix: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    batch_size: int | None = None
    offset: int = 0

    @classmethod
    def identity(cls, x: Tensor, y: Tensor) -> "MixOutput":
        """The unmixed batch: ``lam = 1`` and every sample is its own partner."""
        batch = x.shape[0]
        return cls(
            x=x,
            y=y,
            lam=torch.ones(batch, device=x.device, dtype=torch.float32),
            index=torch.arange(batch, device=x.device),
        )

    # ------------------------------------------------------------------ the same draw, any target
    def dense(self, target: Tensor) -> Tensor:
        """A per-position target ``(B, K, *spatial)`` (soft class maps, depth, heat maps) mixed as the
        images were: each source laid out as its image, weighted by its mask (or its share). See
        :func:`openmix.targets.mix_dense`."""
        from openmix.targets import mix_dense

        return mix_dense(self, target)

    def class_map(self, target: Tensor, ignore_index: int | None = None) -> Tensor:
        """A hard class map ``(B, *spatial)`` (int): each pixel takes the class of the image it shows,
        ``ignore_index`` pixels stay ignored. Needs a binary mask (cut mixers). See
        :func:`openmix.targets.mix_class_map`."""
        from openmix.targets import mix_class_map

        return mix_class_map(self, target, ignore_index)

    def vector(self, target: Tensor) -> Tensor:
        """A per-sample target ``(B, D)`` (regression, multi-hot multi-label) mixed by the shares:
        ``lam * t + (1 - lam) * t[index]`` (rows need not sum to 1)."""
        from openmix.targets import mix_vector

        return mix_vector(self, target)

    def sparse(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Class ids ``(B,)`` as ``(labels (B, K), weights (B, K))`` of the ``K`` mixed samples (``K = 2``:
        the sample and its partner, ``lam`` and ``1 - lam``; with ``sources``, their weights), for very many
        classes: no ``(B, C)`` targets; :func:`openmix.losses.sparse_cross_entropy` takes them."""
        from openmix.targets import sparse_labels

        return sparse_labels(self, labels)

    def boxes(self, boxes: Tensor, valid: Tensor | None = None, *, min_visible: float = 0.25
              ) -> tuple[Tensor, Tensor, Tensor]:
        """Boxes ``(B, N, 4)`` as ``(x1, y1, x2, y2)`` pixels (``valid`` ``(B, N)`` marks the real ones)
        mixed with the images: see :func:`openmix.targets.mix_boxes`."""
        from openmix.targets import mix_boxes

        return mix_boxes(self, boxes, valid, min_visible=min_visible)

    def keypoints(self, points: Tensor, visible: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Keypoints ``(B, N, 2)`` as ``(x, y)`` pixels with visibility ``(B, N)``, mixed with the images:
        see :func:`openmix.targets.mix_keypoints`."""
        from openmix.targets import mix_keypoints

        return mix_keypoints(self, points, visible)



@dataclass
class StepResult:
    """What one training step produced (:func:`openmix.training.mix_step`, a model-aware mixer's ``step``).

    Attributes:
        loss: scalar loss to backpropagate (including any auxiliary loss of the mixer).
        logits: ``(B, num_classes)`` predictions on the mixed batch.
        mix: the mixer's :class:`MixOutput` (``None`` without a mixer).
        aux: the terms of ``loss``, detached, by name, for mixers whose loss has several (the
            learned mixers: ``online_mix``, ``block_mix``, ...); empty otherwise.

    Example:
        >>> StepResult(torch.tensor(0.5), torch.zeros(2, 3), None).aux
        {}
    """

    loss: Tensor
    logits: Tensor
    mix: MixOutput | None
    aux: dict[str, Tensor] = field(default_factory=dict)
