"""CIFAR-stem ResNet and ResNeXt, built on timm's ``ResNet``.

The CIFAR recipe (kuangliu/pytorch-cifar, OpenMixup's ``ResNet_CIFAR``, PuzzleMix, AlignMix)
keeps the ImageNet residual stages but replaces the 7x7 stride-2 conv and 3x3 stride-2
max-pool stem by one 3x3 stride-1 conv + BN + ReLU, so a 32x32 image enters ``layer1`` at
32x32 and leaves ``layer4`` at 4x4.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "CifarResNet",
    "cifar_resnet18",
    "cifar_resnet34",
    "cifar_resnet50",
    "cifar_resnext50_32x4d",
    "resnet_stages",
]

# ResNet options that build a different stem; the CIFAR stem is fixed.
_STEM_OPTIONS = frozenset({"stem_type", "replace_stem_pool", "output_stride"})  # stem_width is allowed


class CifarResNet(ResNet):
    """timm ``ResNet`` with the CIFAR stem: 3x3 stride-1 conv + BN + ReLU, no max-pool.

    Everything else is timm's ``ResNet`` (blocks, init with ``zero_init_last``,
    ``forward_features``/``forward_head``, ``forward_intermediates``, ``feature_info``),
    and parameter names match timm's, so timm utilities keep working.

    Args:
        block: timm's ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: classifier outputs; 0 makes ``forward`` return pooled features.
        in_chans: input channels (3 for CIFAR, 1 for Fashion-MNIST).
        **kwargs: passed to timm's ``ResNet`` (``cardinality``, ``base_width``, ``drop_rate``,
            ``drop_path_rate``, ``zero_init_last``, ...). Stem options raise ``TypeError``.

    Example:
        >>> import torch
        >>> model = cifar_resnet18(num_classes=10)
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> model.stages[0](torch.rand(2, 3, 32, 32)).shape  # stride-1 stem
        torch.Size([2, 64, 32, 32])
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        num_classes: int = 100,
        in_chans: int = 3,
        **kwargs: Any,
    ) -> None:
        stem_options = sorted(_STEM_OPTIONS & kwargs.keys())
        if stem_options:
            raise TypeError(f"CifarResNet has a fixed 3x3 stride-1 stem, so it takes no {stem_options}")
        super().__init__(block, layers, num_classes=num_classes, in_chans=in_chans, **kwargs)
        ref = self.bn1.weight
        self.conv1 = nn.Conv2d(in_chans, ref.numel(), 3, padding=1, bias=False, device=ref.device, dtype=ref.dtype)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        for info, reduction in zip(self.feature_info, (1, 1, 2, 4, 8)):  # act1, layer1..layer4
            info["reduction"] = reduction

    @property
    def stages(self) -> list[nn.Module]:
        """``[stem, layer1, layer2, layer3, layer4]`` as a plain list (see :func:`resnet_stages`)."""
        return resnet_stages(self)


def resnet_stages(model: ResNet) -> list[nn.Module]:
    """The body of a timm ``ResNet`` as ``[stem, layer1, layer2, layer3, layer4]``.

    The stem is a new ``nn.Sequential`` over the model's own ``conv1, bn1, act1, maxpool``
    (parameters shared, nothing copied); running the list in order is ``forward_features``.
    Use it to run the body piecewise; hooks belong on the model's own modules.

    Example:
        >>> model = cifar_resnet18(num_classes=10)
        >>> stages = resnet_stages(model)
        >>> len(stages), stages[0][0] is model.conv1, stages[4] is model.layer4
        (5, True, True)
    """
    stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]


def cifar_resnet18(num_classes: int = 100, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-18 with the CIFAR stem (11.2M parameters for 100 classes)."""
    return CifarResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, **kwargs)


def cifar_resnet34(num_classes: int = 100, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-34 with the CIFAR stem (21.3M parameters for 100 classes)."""
    return CifarResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_chans, **kwargs)


def cifar_resnet50(num_classes: int = 100, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNet-50 with the CIFAR stem (23.7M parameters for 100 classes)."""
    return CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, **kwargs)


def cifar_resnext50_32x4d(num_classes: int = 100, in_chans: int = 3, **kwargs: Any) -> CifarResNet:
    """ResNeXt-50 (32x4d) with the CIFAR stem (23.2M parameters for 100 classes)."""
    return CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, cardinality=32, base_width=4, **kwargs)
