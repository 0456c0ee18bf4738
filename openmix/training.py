"""One training step for every kind of mixer, shared by plain PyTorch loops and Lightning.

Example (a plain PyTorch loop):
    >>> import torch, openmix
    >>> from openmix.training import mix_step
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    >>> mixer = openmix.build("mixup", alpha=1.0, num_classes=10, seed=0)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    >>> step = mix_step(model, mixer, x, y)
    >>> step.loss.backward(); opt.step(); opt.zero_grad()
    >>> step.logits.shape
    torch.Size([4, 10])
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from openmix.losses import Criterion, soft_cross_entropy
from openmix.mixer import Mixer
from openmix.model_mixer import ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import build

__all__ = ["StepResult", "mix_step", "mixed_accuracy", "build_mixer"]


def mix_step(
    model: nn.Module,
    mixer: Mixer | None,
    x: Tensor,
    y: Tensor,
    criterion: Criterion = soft_cross_entropy,
) -> StepResult:
    """Mix the device batch ``(x, y)``, run ``model`` on it and compute the loss.

    An input mixer mixes ``x`` before the model sees it. A :class:`~openmix.model_mixer.ModelMixer`
    (saliency, feature and learned kinds) needs the model itself: its
    :meth:`~openmix.model_mixer.ModelMixer.step` is the step. ``model`` may be wrapped in
    ``DistributedDataParallel`` for every kind: the gradients of the next ``backward()`` are
    all-reduced (a learned mixer's own ones too).

    Args:
        model: maps ``(B, C, *spatial)`` to logits ``(B, num_classes)``.
        mixer: any registered mixer, or ``None`` for a plain (vanilla) step.
        x: inputs on the training device.
        y: class ids ``(B,)`` or soft targets ``(B, C)``.
        criterion: loss of ``(logits, soft targets)``.
    """
    if mixer is None:
        logits = model(x)
        return StepResult(criterion(logits, y), logits, None)
    if isinstance(mixer, ModelMixer):
        return mixer.step(model, x, y, criterion)
    out = mixer(x, y)
    logits = model(out.x)
    return StepResult(criterion(logits, out.y), logits, out)


@torch.no_grad()
def mixed_accuracy(logits: Tensor, y: Tensor, mix: MixOutput | None) -> Tensor:
    """Top-1 accuracy on a mixed batch, each sample's hit weighted by ``lam`` and ``1 - lam``.

    ``y`` holds the original class ids ``(B,)``; soft targets are scored by their argmax. With
    ``mix.sources`` the hits are weighted by their weights over the weights' sum (SnapMix's need not sum to 1).

    Example:
        >>> mixed_accuracy(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), None)
        tensor(0.5000)
    """
    labels = y if y.ndim == 1 else y.argmax(1)
    pred = logits.argmax(1)
    hit = (pred == labels).float()
    if mix is None:
        return hit.mean()
    if mix.sources is not None:  # weights of their own: more than two samples (AdAutoMix), or SnapMix's
        indices, weights = mix.sources
        hits = ((pred[:, None] == labels[indices]).float() * weights).sum(1)
        return (hits / weights.sum(1).clamp_min(torch.finfo(weights.dtype).tiny)).mean()
    hit_partner = (pred == labels[mix.index]).float()
    return (mix.lam * hit + (1.0 - mix.lam) * hit_partner).mean()


def build_mixer(spec: Mixer | str | Mapping[str, Any] | None, **defaults: Any) -> Mixer | None:
    """A mixer from a name, a config mapping ``{"name": ..., **kwargs}`` or an instance.

    ``None``, ``"vanilla"`` and ``"none"`` mean no mixing. ``defaults`` (such as
    ``num_classes`` or ``seed``) fill arguments the spec does not set.

    Example:
        >>> build_mixer({"name": "cutmix", "alpha": 0.2}, num_classes=100)
        CutMix(alpha=0.2, num_classes=100, mode='batch', prob=1.0, pairing='random')
        >>> build_mixer("vanilla") is None
        True
    """
    if spec is None or isinstance(spec, Mixer):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    kwargs = {k: v for k, v in dict(spec).items() if v is not None}  # null in a config = use the default
    name = kwargs.pop("name", None)
    if name is None:
        raise ValueError(f"a mixer config needs a 'name', got {dict(spec)}")
    if name in ("vanilla", "none"):
        return None
    for key, value in defaults.items():
        kwargs.setdefault(key, value)
    return build(name, **kwargs)
