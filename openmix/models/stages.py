"""Model introspection for the model-aware mixers: a backbone's body as an ordered list of stages.

:func:`split_stages` cuts a model into ``[stem, stage1, ..., stageN]``; :func:`feature_stages`
and :func:`check_head` are what a mixer calls, with errors that say what it needs from the model;
:func:`unwrap_model` finds the model inside a DDP or ``torch.compile`` wrapper.
"""

from __future__ import annotations

import torch.nn as nn
from timm.models.byobnet import ByobNet
from timm.models.convnext import ConvNeXt
from timm.models.cspnet import CspNet
from timm.models.nfnet import NormFreeNet
from timm.models.regnet import RegNet
from timm.models.resnet import ResNet
from timm.models.resnetv2 import ResNetV2

from openmix.models.preact_resnet import PreActResNet
from openmix.models.resnet import resnet_stages
from openmix.models.small import SmallConvNet

__all__ = ["split_stages", "feature_stages", "check_head", "unwrap_model"]

# timm families whose forward_features is stem -> stages -> tail: (class, tail attributes).
_STEM_STAGES_TAIL: tuple[tuple[type[nn.Module], tuple[str, ...]], ...] = (
    (ResNetV2, ("norm",)),
    (ConvNeXt, ("norm_pre",)),
    (CspNet, ()),
    (ByobNet, ("final_conv",)),
    (NormFreeNet, ("final_conv", "final_act")),
)
_SUPPORTED = "openmix models (CIFAR-stem ResNets, small_convnet) and timm's ResNet/ResNeXt, ResNetV2, ConvNeXt, RegNet, CspNet, ByobNet, NormFreeNet"


def split_stages(model: nn.Module) -> list[nn.Module]:
    """The body of ``model`` as ``[stem, stage1, ..., stageN]``.

    Applying the modules in order to ``x`` gives ``model.forward_features(x)``, so
    ``model.forward_head(h)`` of the result equals ``model(x)``; a feature mixer can run the
    first ``k`` stages, mix the hidden ``h``, and run the rest. The modules share the model's
    parameters. A final norm/conv that timm runs after the last stage (ConvNeXt's
    ``norm_pre``, ResNetV2's ``norm``, ...) is folded into the last stage; timm ResNets get a
    stem ``nn.Sequential(conv1, bn1, act1, maxpool)``.

    Args:
        model: an openmix CIFAR model or a timm model of a supported family.

    Returns:
        Stem and stages: 5 modules for ResNets, 4 for WRN-28-8, 1 + number of stages otherwise.

    Raises:
        TypeError: for a model family whose layout is not known here.

    Example:
        >>> import torch
        >>> from openmix.models import create_model
        >>> model = create_model("convnext_atto", num_classes=10).eval()  # a timm model
        >>> x = torch.rand(2, 3, 64, 64)
        >>> h = x
        >>> for stage in split_stages(model):
        ...     h = stage(h)
        >>> torch.allclose(model.forward_head(h), model(x))
        True
    """
    if isinstance(model, (PreActResNet, SmallConvNet)):
        return list(model.stages)
    if isinstance(model, ResNet):
        return resnet_stages(model)
    if isinstance(model, RegNet):
        stages = [model.s1, model.s2, model.s3, model.s4]
        tail = [model.final_conv]
    else:
        for cls, tail_names in _STEM_STAGES_TAIL:
            if isinstance(model, cls):
                stages, tail = list(model.stages), [getattr(model, name) for name in tail_names]
                break
        else:
            raise TypeError(f"split_stages supports {_SUPPORTED}; got {type(model).__name__}")
    tail = [module for module in tail if not isinstance(module, nn.Identity)]
    if tail:
        stages[-1] = nn.Sequential(stages[-1], *tail)
    return [model.stem, *stages]



def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, any number deep; ``model`` itself when unwrapped. They share parameters.

    Example:
        >>> inner = nn.Linear(2, 2)
        >>> unwrap_model(nn.DataParallel(inner)) is inner
        True
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def check_head(model: nn.Module, mixer: str, what: str = "hidden features") -> nn.Module:
    """``model`` unwrapped (:func:`unwrap_model`), if it has ``forward_features`` and ``forward_head``.

    Raises:
        TypeError: naming the mixer, what it mixes, and the missing methods.
    """
    inner = unwrap_model(model)
    missing = [name for name in ("forward_features", "forward_head") if not callable(getattr(inner, name, None))]
    if missing:
        raise TypeError(
            f"{mixer} mixes {what}, so it needs a model with forward_features and forward_head (openmix's models "
            f"and timm's have both); got {type(inner).__name__}, which has no {' / '.join(missing)}"
        )
    return inner


def feature_stages(model: nn.Module, mixer: str = "a feature mixer") -> list[nn.Module]:
    """:func:`split_stages` of ``model`` unwrapped, with an error that says what a feature mixer needs.

    Raises:
        TypeError: ``model`` lacks ``forward_features``/``forward_head``, or :func:`split_stages`
            does not know its layout.

    Example:
        >>> feature_stages(nn.Linear(2, 2), "ManifoldMix")
        Traceback (most recent call last):
        ...
        TypeError: ManifoldMix mixes hidden features, so it needs a model with forward_features and forward_head (openmix's models and timm's have both); got Linear, which has no forward_features / forward_head
    """
    inner = check_head(model, mixer)
    try:
        return split_stages(inner)
    except TypeError as err:
        raise TypeError(f"{mixer} mixes hidden features, so it runs the model stage by stage and needs a layout "
                        f"split_stages knows; got {type(inner).__name__}: {err}") from None
