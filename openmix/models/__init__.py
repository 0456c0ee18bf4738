"""Backbones: CIFAR-stem ResNets by name, any timm model by name, and the stage split for feature mixers.

* :func:`create_model` builds ``cifar_resnet18/34/50``, ``cifar_resnext50_32x4d``,
  ``cifar_preact_resnet18``, ``cifar_wrn28_8`` (3x3 stride-1 stem, no max-pool),
  ``small_convnet`` (a compact VGG-style net that trains Fashion-MNIST fast on a CPU), or any timm
  model. Every model has ``forward_features`` and ``forward_head`` with
  ``forward_head(forward_features(x)) == forward(x)``.
* ``model.stages`` on the CIFAR models, and :func:`split_stages` on them, on timm's
  ResNet-like families and on timm's ViTs (DeiT included) and Swins, give
  ``[stem, stage1, ..., stageN]``: the stages applied in order are ``forward_features``.
  ``model.stages`` is an ``nn.ModuleList`` on ``PreActResNet`` (PreAct-ResNet-18, WRN-28-8,
  whose 3 stages end with the final BN-ReLU) and a plain list on ``CifarResNet`` (whose
  parameters keep timm's names ``conv1``, ``layer1``, ...).
* :func:`token_map` turns a stage's output (a ViT's tokens, a Swin's NHWC map) into a
  ``(B, C, h, w)`` map; :func:`tokens_from_map` turns it back (with a ViT's :func:`prefix_tokens`).

Example:
    >>> import torch
    >>> from openmix.models import create_model, split_stages
    >>> model = create_model("cifar_resnet18", num_classes=100).eval()
    >>> x = torch.rand(2, 3, 32, 32)
    >>> h = x
    >>> for stage in model.stages:
    ...     h = stage(h)
    >>> h.shape, torch.allclose(model.forward_head(h), model(x))
    (torch.Size([2, 512, 4, 4]), True)
"""

from openmix.models.factory import available_models, create_model
from openmix.models.preact_resnet import PreActBlock, PreActResNet, cifar_preact_resnet18, cifar_wrn28_8
from openmix.models.resnet import (
    CifarResNet,
    cifar_resnet18,
    cifar_resnet34,
    cifar_resnet50,
    cifar_resnext50_32x4d,
    resnet_stages,
)
from openmix.models.small import SmallConvNet, small_convnet
from openmix.models.stages import prefix_tokens, split_stages, token_map, tokens_from_map

__all__ = [
    "create_model",
    "available_models",
    "split_stages",
    "token_map",
    "tokens_from_map",
    "prefix_tokens",
    "resnet_stages",
    "CifarResNet",
    "PreActResNet",
    "PreActBlock",
    "cifar_resnet18",
    "cifar_resnet34",
    "cifar_resnet50",
    "cifar_resnext50_32x4d",
    "cifar_preact_resnet18",
    "cifar_wrn28_8",
    "SmallConvNet",
    "small_convnet",
]
