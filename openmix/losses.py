"""Losses for mixed batches: soft-target and mixup cross-entropy, BCE, decoupled mixup (DM).

Each loss is a function and a small ``nn.Module`` (for Hydra configs) that calls it.
Logits are ``(B, C)``; targets are class ids ``(B,)`` or soft targets ``(B, C)``.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openmix.output import MixOutput

__all__ = [
    "soft_cross_entropy",
    "mixup_cross_entropy",
    "binary_cross_entropy",
    "decoupled_mixup_loss",
    "softmax_bce",
    "clean_loss_weight",
    "sparse_cross_entropy",
    "dense_cross_entropy",
    "model_mixer_loss",
    "MODEL_MIXER_LOSSES",
    "SoftTargetCrossEntropy",
    "MixupCrossEntropy",
    "BinaryCrossEntropy",
    "DecoupledMixupLoss",
]

REDUCTIONS = ("mean", "sum", "none")
MODEL_MIXER_LOSSES = ("soft_ce", "bce")
Lam = Union[float, Tensor]
MixedTarget = Union[Tensor, MixOutput, Sequence]
Criterion = Callable[[Tensor, Tensor], Tensor]


def soft_cross_entropy(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy against soft targets: ``-(target * log_softmax(logits)).sum(-1)``.

    Args:
        logits: ``(B, C)``.
        target: soft targets ``(B, C)`` (rows sum to 1) or class ids ``(B,)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> soft_cross_entropy(torch.zeros(2, 4), torch.full((2, 4), 0.25))
        tensor(1.3863)
    """
    _check_target(logits, target)
    if target.ndim == 1:
        return F.cross_entropy(logits, target, reduction=reduction)
    loss = -(target.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(-1)
    return _reduce(loss, reduction)


def mixup_cross_entropy(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Lam, reduction: str = "mean") -> Tensor:
    """The two-label mixup loss ``lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b)``, per sample.

    Equal to :func:`soft_cross_entropy` on the mixed target ``lam * y_a + (1 - lam) * y_b``.

    Args:
        logits: ``(B, C)``.
        y_a: targets of the originals, class ids ``(B,)`` or soft ``(B, C)``.
        y_b: targets of the partners, likewise.
        lam: weight of ``y_a``: a number or a tensor ``()`` or ``(B,)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> mixup_cross_entropy(torch.zeros(2, 4), torch.tensor([0, 1]), torch.tensor([2, 3]), 0.7)
        tensor(1.3863)
    """
    _check_target(logits, y_a, "y_a")
    _check_target(logits, y_b, "y_b")
    log_p = F.log_softmax(logits, dim=-1)
    loss = torch.lerp(_nll(log_p, y_b), _nll(log_p, y_a), _lam(lam, logits))
    return _reduce(loss, reduction)


def binary_cross_entropy(
    logits: Tensor,
    target: Tensor,
    smoothing: float = 0.0,
    target_threshold: float | None = None,
    pos_weight: float | Sequence[float] | Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Per-class binary cross-entropy with logits against (soft) targets, as timm's ``BinaryCrossEntropy``.

    Class ids become one-hot targets with ``smoothing`` (``1 - s + s/C`` and ``s/C``);
    soft targets are taken as they are (smoothed upstream, e.g. by the mixer). With
    ``target_threshold``, targets above it become 1 and the rest 0 (hard multi-label).

    Args:
        logits: ``(B, C)``.
        target: class ids ``(B,)`` or soft targets ``(B, C)``.
        smoothing: label smoothing for class ids, in ``[0, 1)``.
        target_threshold: binarise targets at this value.
        pos_weight: weight of positive examples, a number or per class ``(C,)``.
        reduction: ``"mean"`` (over all ``B * C`` terms), ``"sum"`` or ``"none"`` (``(B, C)``).

    Example:
        >>> binary_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 2]))
        tensor(0.6931)
    """
    _check_target(logits, target)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if target.ndim == 1:
        off = smoothing / logits.shape[-1]
        target = torch.full_like(logits, off).scatter_(1, target.long().unsqueeze(1), 1.0 - smoothing + off)
    else:
        target = target.to(logits.dtype)
    if target_threshold is not None:
        target = target.gt(target_threshold).to(target.dtype)
    if pos_weight is not None and not isinstance(pos_weight, Tensor):
        pos_weight = logits.new_tensor(pos_weight)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    return _reduce(loss, reduction)


def decoupled_mixup_loss(
    logits: Tensor, target: MixedTarget, eta: float = 0.1, threshold: float = 1e-3, reduction: str = "mean"
) -> Tensor:
    r"""Mixup cross-entropy plus the Decoupled Mixup (DM) regulariser (Liu et al., NeurIPS 2023).

    With ``M`` the classes mixed into a sample and ``lam_c`` their shares (``lam`` and
    ``1 - lam`` for two), the decoupled softmax of class ``c`` drops the *other* mixed
    classes from the normaliser, so each class is scored as if its rival were absent:

    .. math::
        L = -\sum_c y_c \log\operatorname{softmax}(z)_c
            + \eta \sum_{c \in M} \lambda_c \,\Bigl(-\log
              \frac{e^{z_c}}{e^{z_c} + \sum_{k \notin M} e^{z_k}}\Bigr)

    The second term is 0 unless at least two classes are mixed (``lam`` of 1, or a
    sample paired with its own class, give plain cross-entropy). This is OpenMixup's
    ``soft_mix_cross_entropy`` with its published DM configs (CIFAR-100 and ImageNet:
    ``eta=0.1``, ``mode="both"``, each term weighted by its ``lam``), computed per
    sample and batched. A class counts as mixed when its target exceeds the row's
    smallest by more than ``threshold``, so label smoothing is allowed.

    Args:
        logits: ``(B, C)``.
        target: mixed soft targets ``(B, C)``, a :class:`~openmix.output.MixOutput`
            (its ``y``), or ``(y_a, y_b, lam)`` as for :func:`mixup_cross_entropy`.
        eta: weight of the DM term.
        threshold: smallest share that counts as mixed (OpenMixup: ``1e-3``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> z = torch.tensor([[1.0, 2.0, 3.0]])
        >>> decoupled_mixup_loss(z, (torch.tensor([0]), torch.tensor([2]), 1.0))  # lam 1: plain CE
        tensor(2.4076)
        >>> decoupled_mixup_loss(z, (torch.tensor([0]), torch.tensor([2]), 0.5))
        tensor(1.4889)
    """
    y = _mixed_target(logits, target)
    log_p = F.log_softmax(logits, dim=-1)
    loss = -(y * log_p).sum(-1)
    if eta:
        excess = y - y.amin(-1, keepdim=True)  # shares above the (label-smoothing) floor
        mixed = excess > threshold
        share = excess * mixed
        share = share / share.sum(-1, keepdim=True).clamp_(min=torch.finfo(share.dtype).tiny)
        rest = logits.masked_fill(mixed, torch.finfo(logits.dtype).min).logsumexp(-1, keepdim=True)
        decoupled = logits - torch.logaddexp(logits, rest)  # log of the decoupled softmax, per class
        regulariser = -(share * decoupled).sum(-1) * (mixed.sum(-1) >= 2)
        loss = loss + eta * regulariser
    return _reduce(loss, reduction)


def softmax_bce(logits: Tensor, target: Tensor) -> Tensor:
    """``nn.BCELoss()(softmax(logits), target)``: the official loss of Manifold Mixup and PuzzleMix, computed stably.

    Binary cross-entropy of every class probability ``p_c`` against the soft target, averaged over
    ``B * C`` terms, each log clamped at ``-100`` as ``nn.BCELoss`` does. ``log p_c`` is the
    log-softmax and ``log(1 - p_c)`` the log-sum-exp of the *other* logits minus that of all, so
    neither the value nor the gradient breaks where ``p_c`` rounds to 1 (``log1p(-p)`` of a
    float32 softmax gives NaN gradients from logits ``[20, 0, 0, 0]`` on). In float32, also under
    autocast.

    Example:
        >>> round(float(softmax_bce(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))), 4)  # -log(0.5)
        0.6931
        >>> logits = torch.tensor([[20.0, 0.0, 0.0, 0.0]], requires_grad=True)
        >>> softmax_bce(logits, torch.tensor([[0.5, 0.5, 0.0, 0.0]])).backward()
        >>> bool(logits.grad.isfinite().all())
        True
    """
    _check_target(logits, target)
    z = logits.float()
    log_p = F.log_softmax(z, dim=-1)
    log_not_p = _log_one_minus_softmax(z)
    target = target.to(z.dtype) if target.ndim == 2 else F.one_hot(target, z.shape[-1]).to(z.dtype)
    return -(target * log_p.clamp_min(-100.0) + (1.0 - target) * log_not_p.clamp_min(-100.0)).mean()


def _log_one_minus_softmax(z: Tensor) -> Tensor:
    """``log(1 - softmax(z))`` along the last axis, without cancellation.

    With ``e = exp(z - max)`` and ``S = sum(e) >= 1``: for a class other than the largest,
    ``1 - p = (S - e_c) / S`` where ``S - e_c >= 1`` (it holds the largest's 1); for the largest,
    ``log(1 - p)`` is the log-sum-exp of the other logits minus that of all.
    """
    if z.shape[-1] == 1:  # one class: p = 1, and BCELoss's clamp gives -100 with no gradient
        return torch.full_like(z, float("-inf"))
    top = z.argmax(-1, keepdim=True)
    is_top = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, top, True)
    peak = z.gather(-1, top)
    e = (z - peak).exp()
    total = e.sum(-1, keepdim=True)
    others_of_top = z.masked_fill(is_top, float("-inf")).logsumexp(-1, keepdim=True) - peak
    rest = torch.where(is_top, others_of_top, (total - e).masked_fill(is_top, 1.0).log())
    return rest - total.log()


def sparse_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor, reduction: str = "mean") -> Tensor:
    """``Σ_k weights[:, k] * CE(logits, labels[:, k])``: the mixup loss of :meth:`MixOutput.sparse
    <openmix.output.MixOutput.sparse>`'s form, without ``(B, C)`` targets (for very many classes).

    Args:
        logits: ``(B, C)``.
        labels: ``(B, K)`` class ids of the ``K`` images mixed into each sample.
        weights: ``(B, K)`` their shares.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> sparse_cross_entropy(torch.zeros(2, 4), torch.tensor([[0, 1], [2, 3]]), torch.full((2, 2), 0.5))
        tensor(1.3863)
    """
    if labels.shape != weights.shape or labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels and weights must both be (B, K) with B = {logits.shape[0]}, got "
                         f"{tuple(labels.shape)} and {tuple(weights.shape)}")
    log_p = F.log_softmax(logits, dim=-1)
    loss = -(log_p.gather(1, labels.long()) * weights.to(log_p.dtype)).sum(1)
    return _reduce(loss, reduction)


def dense_cross_entropy(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of per-position logits ``(B, C, *spatial)`` against soft targets of the same shape
    (:meth:`MixOutput.dense <openmix.output.MixOutput.dense>` of one-hot maps), over the class axis;
    ``"mean"`` averages over samples and positions. (Hard class maps: ``F.cross_entropy`` with
    ``ignore_index`` takes :meth:`~openmix.output.MixOutput.class_map` as it is.)

    Example:
        >>> dense_cross_entropy(torch.zeros(1, 2, 3, 3), torch.full((1, 2, 3, 3), 0.5))
        tensor(0.6931)
    """
    if logits.shape != target.shape or logits.ndim < 3:
        raise ValueError(f"logits and target must both be (B, C, *spatial), got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    loss = -(target.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(1)
    return _reduce(loss, reduction)


def model_mixer_loss(name: str, criterion: Criterion) -> Criterion:
    """The loss a model-aware mixer's ``loss`` option names: ``"soft_ce"``, the trainer's
    ``criterion`` (OpenMixup); ``"bce"``, :func:`softmax_bce` (the official Manifold Mixup and
    PuzzleMix code).

    Example:
        >>> model_mixer_loss("bce", soft_cross_entropy) is softmax_bce
        True
    """
    if name == "soft_ce":
        return criterion
    if name == "bce":
        return softmax_bce
    raise ValueError(f"loss must be one of {MODEL_MIXER_LOSSES}, got {name!r}")


def clean_loss_weight(clean_lam: float, num_classes: int | None, loss: str) -> float:
    """The weight of the clean batch's CE that a saliency pass adds to the step (PuzzleMix, Co-Mixup,
    GuidedMixup ``clean_lam``).

    The official code adds ``2 * clean_lam / num_classes * CE`` beside its main loss, the BCE of the
    softmax (``loss="bce"``), which is about ``CE / num_classes``: the clean term weighs about
    ``2 * clean_lam`` times the main loss. Beside the soft CE (``loss="soft_ce"``) the same ratio is
    ``2 * clean_lam``; the official number there would make the clean term ``num_classes`` times weaker.

    Example:
        >>> clean_loss_weight(1.0, 100, "bce"), clean_loss_weight(1.0, 100, "soft_ce"), clean_loss_weight(0.0, 100, "bce")
        (0.02, 2.0, 0.0)
    """
    if clean_lam <= 0:
        return 0.0
    if loss == "bce":
        if num_classes is None:
            raise ValueError("clean_lam > 0 with loss='bce' weighs the clean loss by 2 * clean_lam / num_classes: "
                             "pass num_classes")
        return 2.0 * clean_lam / num_classes
    return 2.0 * clean_lam


class _Loss(nn.Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class SoftTargetCrossEntropy(_Loss):
    """Module form of :func:`soft_cross_entropy`: ``loss(logits, target)``.

    Example:
        >>> SoftTargetCrossEntropy()(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor(1.3863)
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return soft_cross_entropy(logits, target, self.reduction)


class MixupCrossEntropy(_Loss):
    """Module form of :func:`mixup_cross_entropy`: ``loss(logits, y_a, y_b, lam)``.

    Example:
        >>> MixupCrossEntropy()(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([1]), 0.5)
        tensor(0.6931)
    """

    def forward(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Lam) -> Tensor:
        return mixup_cross_entropy(logits, y_a, y_b, lam, self.reduction)


class BinaryCrossEntropy(_Loss):
    """Module form of :func:`binary_cross_entropy`: ``loss(logits, target)``.

    Example:
        >>> BinaryCrossEntropy(target_threshold=0.2)(torch.zeros(1, 2), torch.tensor([[0.7, 0.3]]))
        tensor(0.6931)
    """

    def __init__(
        self,
        smoothing: float = 0.0,
        target_threshold: float | None = None,
        pos_weight: float | Sequence[float] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing
        self.target_threshold = target_threshold
        weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy(
            logits, target, self.smoothing, self.target_threshold, self.pos_weight, self.reduction
        )

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}, target_threshold={self.target_threshold}, {super().extra_repr()}"


class DecoupledMixupLoss(_Loss):
    """Module form of :func:`decoupled_mixup_loss`: ``loss(logits, target)``.

    Example:
        >>> DecoupledMixupLoss(eta=0.1)
        DecoupledMixupLoss(eta=0.1, threshold=0.001, reduction='mean')
    """

    def __init__(self, eta: float = 0.1, threshold: float = 1e-3, reduction: str = "mean") -> None:
        super().__init__(reduction)
        if not eta >= 0.0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta
        self.threshold = threshold

    def forward(self, logits: Tensor, target: MixedTarget) -> Tensor:
        return decoupled_mixup_loss(logits, target, self.eta, self.threshold, self.reduction)

    def extra_repr(self) -> str:
        return f"eta={self.eta}, threshold={self.threshold}, {super().extra_repr()}"


# ----------------------------------------------------------------------- helpers
def _check_target(logits: Tensor, target: Tensor, name: str = "target") -> None:
    """Raise a ``ValueError`` naming both shapes unless ``target`` is ``(B,)`` or ``(B, C)`` for ``(B, C)`` logits."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    batch, classes = logits.shape
    if target.shape not in ((batch,), (batch, classes)):
        raise ValueError(
            f"{name} of shape {tuple(target.shape)} does not match logits of shape {tuple(logits.shape)}: "
            f"expected class ids ({batch},) or soft targets ({batch}, {classes})"
        )


def _nll(log_p: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``-log p`` of class ids ``(B,)`` or soft targets ``(B, C)``."""
    if target.ndim == 1:
        return -log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return -(target.to(log_p.dtype) * log_p).sum(-1)


def _lam(lam: Lam, logits: Tensor) -> Tensor | float:
    if not isinstance(lam, Tensor):
        return float(lam)
    if lam.shape not in ((), (logits.shape[0],)):
        raise ValueError(f"lam must be a number or a tensor () or ({logits.shape[0]},), got shape {tuple(lam.shape)}")
    return lam.to(logits.dtype)


def _mixed_target(logits: Tensor, target: MixedTarget) -> Tensor:
    """Soft mixed targets ``(B, C)`` from a tensor, a ``MixOutput`` or ``(y_a, y_b, lam)``."""
    if isinstance(target, MixOutput):
        target = target.y
    if isinstance(target, Tensor):
        _check_target(logits, target)
        if target.ndim == 1:
            return F.one_hot(target.long(), logits.shape[-1]).to(logits.dtype)
        return target.to(logits.dtype)
    if isinstance(target, (tuple, list)) and len(target) == 3:
        y_a, y_b, lam = (_mixed_target(logits, t) if i < 2 else t for i, t in enumerate(target))
        lam = _lam(lam, logits)
        return torch.lerp(y_b, y_a, lam.unsqueeze(-1) if isinstance(lam, Tensor) and lam.ndim else lam)
    raise TypeError(f"target must be a tensor, a MixOutput or (y_a, y_b, lam), got {type(target).__name__}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    _check_reduction(reduction)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
