"""``create_model``: an openmix CIFAR-stem backbone or any timm model, by name."""

from __future__ import annotations

import difflib
from typing import Any, Callable

import timm
import torch.nn as nn

from openmix.checks import check_int
from openmix.models.preact_resnet import cifar_preact_resnet18, cifar_wrn28_8
from openmix.models.resnet import cifar_resnet18, cifar_resnet34, cifar_resnet50, cifar_resnext50_32x4d
from openmix.models.small import small_convnet

__all__ = ["create_model", "available_models"]

_CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet18": cifar_resnet18,
    "cifar_resnet34": cifar_resnet34,
    "cifar_resnet50": cifar_resnet50,
    "cifar_resnext50_32x4d": cifar_resnext50_32x4d,
    "cifar_preact_resnet18": cifar_preact_resnet18,
    "cifar_wrn28_8": cifar_wrn28_8,
    "small_convnet": small_convnet,
}


def available_models() -> list[str]:
    """The sorted names of openmix's own models (any timm model name is accepted as well).

    Example:
        >>> available_models()[:2]
        ['cifar_preact_resnet18', 'cifar_resnet18']
    """
    return sorted(_CIFAR_MODELS)


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a classifier by name: ``model(x)`` maps ``(B, in_chans, H, W)`` to ``(B, num_classes)``.

    A name from :func:`available_models` builds a CIFAR-stem backbone (3x3 stride-1 stem, no
    max-pool) from random weights; any other name goes to ``timm.create_model``. Every model
    has timm's split ``forward_head(forward_features(x)) == forward(x)``, and
    :func:`~openmix.models.split_stages` cuts the CIFAR models (and timm's ResNet-like
    families) into stages for feature-level mixers.

    Weights are never downloaded unless asked for: ``pretrained`` is False by default, and
    ``pretrained=True`` is passed to timm only when given explicitly (timm then fetches the
    weights, and fails on a machine without internet). The CIFAR models have no pretrained
    weights. timm's ``checkpoint_path=...`` loads a local file instead.

    Args:
        name: an openmix CIFAR model name or a timm model name (``timm.list_models()``,
            optionally with a pretrained tag such as ``"resnet50.a1_in1k"``).
        num_classes: classifier outputs (0: the pooled features); None keeps the model's
            default (100 for the CIFAR models, timm's default otherwise).
        in_chans: input channels, e.g. 1 for Fashion-MNIST.
        pretrained: load timm's pretrained weights (timm models only).
        **kwargs: passed to the CIFAR builder (e.g. ``dropout`` for ``cifar_wrn28_8``,
            ``drop_path_rate`` for the ResNets) or to ``timm.create_model``.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: unknown name, ``pretrained=True`` for a CIFAR model, bad ``num_classes``
            or ``in_chans``.
        TypeError: ``name`` is not a string.

    Example:
        >>> import torch
        >>> model = create_model("cifar_resnet18", num_classes=100, in_chans=3)
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 100])
        >>> model = create_model("resnet18", num_classes=10, in_chans=1)
        >>> model(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 10])
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    check_int("in_chans", in_chans, minimum=1)
    if num_classes is not None:
        kwargs["num_classes"] = check_int("num_classes", num_classes, minimum=0)
    if name in _CIFAR_MODELS:
        if pretrained:
            raise ValueError(f"{name!r} has no pretrained weights: openmix's CIFAR models start from random weights")
        return _CIFAR_MODELS[name](in_chans=in_chans, **kwargs)
    if timm.is_model(name):
        return timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **kwargs)
    close = difflib.get_close_matches(name, [*_CIFAR_MODELS, *timm.list_models()], n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}: expected a CIFAR-stem model {available_models()} "
        f"or any timm model name (see timm.list_models()){hint}"
    )
