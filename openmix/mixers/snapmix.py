"""SnapMix (Huang et al., AAAI 2021; arXiv 2012.04846): a box of the partner, resized into a box of another
size in the sample, each image's label weighed by the class activation mass it shows.

One training step (:meth:`SnapMix.step`), as the official code (``Shaoli-Huang/SnapMix``:
``utils/mixmethod.py::get_spm`` and ``snapmix``, ``trainer/comm_train.py``) does it:

1. **Class activation maps** of the clean batch, from one extra forward without gradients
   (:func:`class_activation_maps`): the last feature map ``F`` ``(B, K, h, w)`` (``forward_features``),
   ReLU'd, weighted by the row of the linear classifier for each sample's class plus its bias (the
   official 1x1 convolution with the classifier's weight and bias), upsampled bilinearly to the image,
   minus its minimum and divided by its sum;
2. two independent draws ``lam, lam' ~ Beta(alpha, alpha)`` and the partners: a **target box** in the
   sample from ``lam`` and a **source box** in the partner from ``lam'`` (CutMix boxes: sides
   ``sqrt(1 - lam)`` of the image's, centre uniform, clipped); the partner's source box is resized
   bilinearly (``align_corners=True``, the official ``F.interpolate`` of the crop) onto the target box
   (:func:`crop_paste`); when either box has no area nothing is pasted;
3. **label weights** (:func:`snapmix_weights`): the sample's is ``1 -`` its CAM mass inside the target box,
   the partner's the mass of its own CAM inside the source box, so the two need not sum to 1; a constant
   CAM (no mass) falls back to the area (the official NaN fallback);
4. the loss against ``w_a * y + w_b * y[index]``: with the soft cross-entropy, the official
   ``mean(w_a * CE(y_a) + w_b * CE(y_b))``.

**The CAM forward** runs in the model's own mode, as the official one does (in training BatchNorm
normalises with the clean batch's statistics), and only ``forward_features`` runs (the head is the
classifier's weights). The official forward also moves BatchNorm's running statistics, so they move twice
per step; openmix puts them back after it, so they move once, as in any other step.

**Where openmix departs.** Same-class pairs: the official sets both weights to ``w_a + w_b`` and both loss
terms carry the same cross-entropy, so that class gets ``2 (w_a + w_b)``; openmix's target
``w_a y + w_b y[index] = (w_a + w_b) y`` gives it ``w_a + w_b``. The boxes are openmix's CutMix boxes
(timm's: ``int(side * sqrt(1 - lam))`` long, from ``c - cut // 2``); the official ones are
``2 * (cut // 2)`` long. Batch mode draws one pair of boxes for the batch, as the official; elem mode one
pair per sample; the boxes are drawn on the device in both (batch mode's ``lam`` and ``lam'`` on the
host). Soft targets take the CAM of their largest class. OpenMixup's SnapMix collapses the per-sample
weights to their batch mean (and fails at its HEAD); openmix keeps them per sample. The Inception auxiliary
loss and the ``midlevel`` head of the official trainer are not the mixer's.

:class:`~openmix.output.MixOutput`: ``mask`` is the target box (0 inside, binary), ``lam`` the area kept
(the mask's mean), ``layout`` a :class:`CropPasteLayout` (targets and points of the partner follow its
source box into the target box), ``sources`` ``((i, index), (w_a, w_b))``: ``y``'s rows sum to
``w_a + w_b``, in ``[0, 2]`` (``SnapMix.normalized_targets`` is ``False``), and ``out.sparse`` and
``out.vector`` carry these weights.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.losses import Criterion
from openmix.mixer import Draws, Params, blend, gather_partner, no_autocast
from openmix.model_mixer import ModelMixer
from openmix.output import Layout, MixOutput, StepResult
from openmix.registry import register
from openmix.sampling import beta, box_mask, host_beta, random_boxes

__all__ = ["SnapMix", "class_activation_maps", "snapmix_weights", "crop_paste", "linear_classifier",
           "CropPasteLayout"]


@register("snapmix")
class SnapMix(ModelMixer):
    """SnapMix: the partner's box resized into the sample's box, labels by class activation mass (needs the model).

    Use it through :func:`openmix.training.mix_step` (which calls :meth:`step`) or
    :class:`~openmix.lightning.MixupClassifier`. The model needs ``forward_features`` giving a 4-D map
    ``(B, K, h, w)`` and a linear classifier on its pooled channels: timm's ``get_classifier()``, or an
    ``nn.Linear`` named ``fc``, ``classifier`` or ``head`` (openmix's models, timm's CNNs). The CAM is exact
    for heads that average-pool and apply that layer (ResNets, ``small_convnet``); a head with a norm or a
    hidden layer before it (ConvNeXt's) gets the CAM of the layer on the unnormalised map, an approximation.
    See the module notes for the step and where openmix departs from the official code.

    Args:
        alpha: ``lam, lam' ~ Beta(alpha, alpha)`` for the target and the source box (official: 5 "in most
            experiments", fine-tuning pretrained networks).
        num_classes: needed for class-id labels.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments; modes ``batch`` (one pair of boxes,
            the official) and ``elem`` (one per sample). The official ``prob`` is 1, 0.5 from scratch.

    Example:
        >>> import torch, openmix
        >>> from openmix.models import create_model
        >>> from openmix.training import mix_step
        >>> model = create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))
        >>> mixer = openmix.build("snapmix", num_classes=10, mode="elem", seed=0)
        >>> step = mix_step(model, mixer, torch.rand(4, 1, 16, 16), torch.arange(4))
        >>> weights = step.mix.sources[1]  # (B, 2): the sample's and the partner's label weights
        >>> torch.allclose(step.mix.y.sum(1), weights.sum(1)), bool(((weights >= 0) & (weights <= 1)).all())
        (True, True)
    """

    kind = "saliency"
    mixes = "boxes labelled by class activation maps"
    spatial_dims = (2,)
    modes = ("batch", "elem")  # no pair mode: a pair's two label weights come from two different CAMs
    normalized_targets = False

    def __init__(self, alpha: float = 5.0, num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(alpha, num_classes, **kwargs)

    # ------------------------------------------------------------------ the step
    def check_model(self, model: nn.Module) -> nn.Module:
        """``model`` unwrapped, once it has ``forward_features``/``forward_head`` and a linear classifier."""
        model = self.feature_model(model)
        linear_classifier(model, type(self).__name__)
        return model

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """The CAMs of the clean batch, the paste, the CAM-mass targets and the loss of the mixed batch."""
        index = params["index"]
        cam = self.activation_maps(model, x, soft.argmax(1))
        mixed, lam, mask = self.mix(x, params)
        weights = snapmix_weights(cam, index, params["lo"], params["hi"], params["source_lo"], params["source_hi"])
        target = weights[:, :1] * soft + weights[:, 1:] * soft.index_select(0, index)
        logits = model(mixed)
        own = torch.arange(x.shape[0], device=x.device)
        out = MixOutput(x=mixed, y=target, lam=lam, index=index, mask=mask, sources=(torch.stack([own, index], 1), weights),
                        source_masks=torch.cat([mask, 1.0 - mask], 1), layout=self.layout(params, x), binary=True,
                        mixer=type(self).__name__)
        return StepResult(self.loss_for(criterion)(logits, target), logits, out)

    def activation_maps(self, model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
        """:func:`class_activation_maps` ``(B, H, W)`` of ``labels`` ``(B,)`` on the clean batch ``x``: one
        forward of ``model.forward_features`` without gradients, in the model's mode, BatchNorm's running
        statistics put back after it.

        Raises:
            TypeError: the features are not a 4-D map, or not as wide as the classifier's input.
        """
        name = type(self).__name__
        head = linear_classifier(model, name)
        with torch.no_grad(), _running_statistics_kept(model):
            features = model.forward_features(x)
        if not isinstance(features, Tensor) or features.ndim != 4:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise TypeError(f"{name} weighs the last feature map (B, K, h, w) by the classifier, so it needs a model "
                            f"whose forward_features gives a 4-D map (a CNN); {type(model).__name__}'s gives {shape}")
        if features.shape[1] != head.in_features:
            raise TypeError(f"{name} weighs the last feature map by the linear classifier on its pooled channels; "
                            f"{type(model).__name__}'s map has {features.shape[1]} channels and its classifier takes "
                            f"{head.in_features} (the head has layers between them)")
        return class_activation_maps(features, head.weight, head.bias, labels, x.shape[2:])

    # ------------------------------------------------------------------ the draw and the paste
    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds the target box ``lo``/``hi`` (from ``lam``) and the source box ``source_lo``/``source_hi``
        (from ``lam' ~ Beta(alpha, alpha)``): int64 ``(1, 2)`` on ``x.device`` in batch mode, ``(B, 2)`` in
        elem mode, as ``(row, column)``. A target box is made empty where either box has no area."""
        params = super().draw_params(x, draws)
        batch, device, spatial = x.shape[0], x.device, x.shape[2:]
        if self.mode == "batch":
            lam = torch.full((1,), params["batch_lam"], device=device, dtype=torch.float32)
            source_lam = torch.full((1,), host_beta(self.alpha, draws.host), device=device, dtype=torch.float32)
        else:  # elem: lam is 1 where the prob coin skips the sample, which gives it no box
            lam = params["lam"]
            source_lam = beta(self.alpha, batch, device=device, generator=draws.device)
        lo, hi = random_boxes(lam, spatial, generator=draws.device)
        source_lo, source_hi = random_boxes(source_lam, spatial, generator=draws.device)
        empty = ((hi - lo).prod(1) == 0) | ((source_hi - source_lo).prod(1) == 0)
        params.update(lo=lo, hi=torch.where(empty.unsqueeze(1), lo, hi), source_lo=source_lo, source_hi=source_hi)
        return params

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        """Paste each partner's source box, resized, onto the sample's target box: ``(mixed, kept area (B,),
        mask (B, 1, H, W))``; works on any float tensor ``(B, K, H, W)`` of the batch."""
        lo, hi = params["lo"], params["hi"]
        batch, spatial = x.shape[0], x.shape[2:]
        patch = crop_paste(gather_partner(x, params["index"]), params["source_lo"], params["source_hi"], lo, hi)
        mask = box_mask(lo, hi, spatial).expand(batch, 1, *spatial)
        mixed = blend(x, torch.empty_like(x).copy_(patch), mask)  # in the memory format of x
        kept = (1.0 - (hi - lo).prod(1).float() / spatial.numel()).expand(batch)
        return mixed, kept, mask

    def layout(self, params: Params, x: Tensor) -> Layout:
        """The partner's source box resized onto the target box: its targets and points follow it there."""
        return CropPasteLayout(params["lo"], params["hi"], params["source_lo"], params["source_hi"])

    def binary_mask(self, params: Params) -> bool:
        """The box is pasted: every pixel shows one image."""
        return True


def class_activation_maps(features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                          size: Sequence[int]) -> Tensor:
    """SnapMix's class activation maps ``(B, H, W)``, float32, each summing to 1 (a constant map: zeros).

    ``relu(features)`` ``(B, K, h, w)`` weighted by the classifier row of each sample's class,
    ``weight[labels]`` ``(B, K)``, plus ``bias[labels]``; upsampled bilinearly (``align_corners=False``) to
    ``size`` ``(H, W)``; minus its minimum, divided by its sum (the official ``get_spm``), in float32
    without autocast. Inputs are detached.

    Args:
        features: the last feature map ``(B, K, h, w)``.
        weight: the linear classifier's weight ``(num_classes, K)``.
        bias: its bias ``(num_classes,)`` or ``None``.
        labels: class ids ``(B,)``.
        size: the image size ``(H, W)``.

    Example:
        >>> features = torch.tensor([[[[1.0, 3.0]], [[2.0, -1.0]]]])  # (1, 2, 1, 2); the ReLU zeroes the -1
        >>> class_activation_maps(features, torch.tensor([[1.0, 2.0]]), torch.tensor([5.0]), torch.tensor([0]), (1, 2))
        tensor([[[1., 0.]]])
    """
    with no_autocast(features.device):
        rows = weight.detach().float().index_select(0, labels)
        cam = torch.einsum("bk,bkhw->bhw", rows, features.detach().float().relu())
        if bias is not None:
            cam = cam + bias.detach().float().index_select(0, labels).view(-1, 1, 1)
        cam = F.interpolate(cam.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
        cam = cam - cam.amin((1, 2), keepdim=True)
        total = cam.sum((1, 2), keepdim=True)
        return torch.where(total > 0, cam / total.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


def snapmix_weights(cam: Tensor, index: Tensor, lo: Tensor, hi: Tensor, source_lo: Tensor,
                    source_hi: Tensor) -> Tensor:
    """SnapMix's label weights ``(B, 2)``: the sample's and its partner's, each in ``[0, 1]``.

    The sample keeps ``1 - (mass of cam[i] in its target box [lo, hi))``; the partner brings the mass of
    its own map ``cam[index[i]]`` in its source box ``[source_lo, source_hi)``, and nothing where the target
    box is empty. A map without mass (all zeros: the image's CAM was constant) falls back to the area: the
    kept share for the sample, the pasted share for the partner (the official NaN fallback).

    Args:
        cam: :func:`class_activation_maps` ``(B, H, W)`` (each sums to 1, or is all zeros).
        index: partners ``(B,)``.
        lo, hi, source_lo, source_hi: int64 boxes ``(1 or B, 2)`` as ``(row, column)``, ``hi`` exclusive.

    Example:
        >>> cam = torch.tensor([[[0.5, 0.5], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])  # (2, 2, 2)
        >>> box = torch.tensor([[0, 0]]), torch.tensor([[1, 1]])  # the top-left pixel, in both images
        >>> snapmix_weights(cam, torch.tensor([1, 0]), *box, *box)
        tensor([[0.5000, 0.0000],
                [1.0000, 0.5000]])
    """
    spatial = cam.shape[1:]
    inside = 1.0 - box_mask(lo, hi, spatial)[:, 0]  # (1 or B, H, W): 1 in the target box
    source = 1.0 - box_mask(source_lo, source_hi, spatial)[:, 0]
    area = (hi - lo).prod(1).float() / spatial.numel()
    theirs = cam.index_select(0, index)
    own = torch.where(cam.sum((1, 2)) > 0, 1.0 - (cam * inside).sum((1, 2)), 1.0 - area)
    partner = torch.where(theirs.sum((1, 2)) > 0, (theirs * source).sum((1, 2)), area) * (area > 0)
    return torch.stack([own, partner], 1)


def crop_paste(t: Tensor, source_lo: Tensor, source_hi: Tensor, lo: Tensor, hi: Tensor, *,
               nearest: bool = False) -> Tensor:
    """Each image's box ``[source_lo, source_hi)`` resized onto the box ``[lo, hi)``: ``(B, K, H, W)``.

    Along each axis the target pixel ``t0 + i`` shows the source position ``s0 + i (S - 1) / (T - 1)``
    (sides ``S``, ``T``; ``s0`` when ``T = 1``): bilinear resampling with ``align_corners=True``, the official
    ``F.interpolate`` of the crop, in float32 and cast back; ``nearest`` takes the closest source pixel
    instead (class ids, any dtype). Outside the target box the result repeats the box's edge; callers mask
    it out.

    Args:
        t: ``(B, K, H, W)``, already gathered by the partners.
        source_lo, source_hi, lo, hi: int64 boxes ``(1 or B, 2)`` as ``(row, column)`` on ``t``'s device.
        nearest: nearest instead of bilinear resampling.

    Example:
        >>> t = torch.tensor([[[[0.0, 3.0, 6.0, 9.0]]]])  # (1, 1, 1, 4)
        >>> crop_paste(t, torch.tensor([[0, 0]]), torch.tensor([[1, 2]]), torch.tensor([[0, 1]]), torch.tensor([[1, 4]]))
        tensor([[[[0.0000, 0.0000, 1.5000, 3.0000]]]])
    """
    batch, channels, height, width = t.shape
    rows = _source_positions(source_lo[:, 0], source_hi[:, 0], lo[:, 0], hi[:, 0], height)  # (n, H)
    cols = _source_positions(source_lo[:, 1], source_hi[:, 1], lo[:, 1], hi[:, 1], width)  # (n, W)
    n = rows.shape[0]
    if nearest:
        flat = rows.round().long().unsqueeze(2) * width + cols.round().long().unsqueeze(1)  # (n, H, W)
        index = flat.view(n, 1, -1).expand(batch, channels, -1)
        return t.reshape(batch, channels, -1).gather(2, index).view(t.shape)
    # grid_sample wants (x, y) in [-1, 1], -1 and 1 the centres of the first and last pixels (align_corners)
    x = cols.mul(2.0 / max(width - 1, 1)).sub_(1.0).unsqueeze(1)
    y = rows.mul(2.0 / max(height - 1, 1)).sub_(1.0).unsqueeze(2)
    grid = torch.stack(torch.broadcast_tensors(x, y), -1).expand(batch, height, width, 2)
    source = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(t.dtype)


def _source_positions(source_lo: Tensor, source_hi: Tensor, lo: Tensor, hi: Tensor, size: int) -> Tensor:
    """``(n, size)``: the source position each pixel of one axis shows (``n`` boxes), in ``[0, size - 1]``."""
    side = hi - lo
    step = (source_hi - source_lo - 1).float() / (side - 1).clamp(min=1).float()
    offset = torch.arange(size, device=lo.device) - lo.unsqueeze(1)
    offset = torch.minimum(offset.clamp(min=0), (side - 1).clamp(min=0).unsqueeze(1))  # the box's edge outside it
    return (source_lo.unsqueeze(1) + offset * step.unsqueeze(1)).clamp(0, size - 1)


def linear_classifier(model: nn.Module, mixer: str = "SnapMix") -> nn.Linear:
    """The linear classifier of ``model``: timm's ``get_classifier()``, else its ``fc``, ``classifier`` or ``head``.

    Raises:
        TypeError: naming ``mixer``, when that is not an ``nn.Linear`` (no classifier, ``num_classes=0``, an
            MLP or convolutional head).

    Example:
        >>> from openmix.models import create_model
        >>> linear_classifier(create_model("small_convnet", num_classes=10)).out_features
        10
    """
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
    else:
        head = next((getattr(model, name) for name in ("fc", "classifier", "head")
                     if isinstance(getattr(model, name, None), nn.Module)), None)
    if not isinstance(head, nn.Linear):
        found = "none" if head is None else type(head).__name__
        raise TypeError(f"{mixer} weighs the last feature map by the linear classifier's weights (class activation "
                        f"maps), so it needs a model whose get_classifier() (timm) or fc / classifier / head is an "
                        f"nn.Linear; {type(model).__name__}'s is {found}")
    return head


@contextlib.contextmanager
def _running_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Run the block with the norms as they are, then put every running statistic back as it was."""
    saved = [(buffer, buffer.clone()) for module in model.modules() if isinstance(module, nn.modules.batchnorm._NormBase)
             for buffer in (module.running_mean, module.running_var, module.num_batches_tracked) if buffer is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


class CropPasteLayout(Layout):
    """SnapMix's layout: the sample in place, the partner's box ``[source_lo, source_hi)`` resized onto the box
    ``[lo, hi)`` (int64 ``(1 or B, 2)`` as ``(row, column)``)."""

    def __init__(self, lo: Tensor, hi: Tensor, source_lo: Tensor, source_hi: Tensor) -> None:
        self.lo, self.hi, self.source_lo, self.source_hi = lo, hi, source_lo, source_hi

    def partner(self, t: Tensor, nearest: bool = False, fill: float = 0.0) -> Tensor:
        boxes = (b.to(t.device) for b in (self.source_lo, self.source_hi, self.lo, self.hi))
        return crop_paste(t, *boxes, nearest=nearest or not t.is_floating_point())

    def move_partner(self, points: Tensor) -> Tensor:
        """Points ``(B, N, 2)`` as ``(x, y)`` in the partner, where they land: the source box's edges onto the
        target box's (within a pixel of the ``align_corners`` resampling, which maps pixel centres)."""
        lo, hi, source_lo, source_hi = (b.to(points.device, torch.float32) for b in
                                        (self.lo, self.hi, self.source_lo, self.source_hi))
        scale = (hi - lo) / (source_hi - source_lo).clamp(min=1.0)
        x = (points[..., 0] - source_lo[:, 1:]) * scale[:, 1:] + lo[:, 1:]
        y = (points[..., 1] - source_lo[:, :1]) * scale[:, :1] + lo[:, :1]
        return torch.stack([x, y], -1)
