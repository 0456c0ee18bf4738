"""``small_convnet``: a compact VGG-style network for 28x28 / 32x32 images that trains fast on a CPU.

It is the model of the default ``openmix-train`` run (Fashion-MNIST on a laptop CPU): a
3x3 conv stem and three stages of 3x3 conv-BN-ReLU blocks with 2x2 max-pooling between
them, global average pooling and one linear layer. It has timm's
``forward_features``/``forward_head`` split and ``stages`` like the other openmix models, so
feature-level mixers can run it piecewise.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from openmix.checks import check_int

__all__ = ["SmallConvNet", "small_convnet"]


def _conv_bn_relu(in_chans: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), nn.BatchNorm2d(out_chans), nn.ReLU(inplace=True)
    )


class SmallConvNet(nn.Module):
    """stem -> stage1 (conv, pool) -> stage2 (2 convs, pool) -> stage3 (conv) -> pool -> linear.

    Args:
        num_classes: classifier outputs; 0 makes ``forward`` return the pooled features.
        in_chans: input channels (1 for Fashion-MNIST, 3 for CIFAR).
        widths: channels of the stem/stage1, stage2 and stage3.
        drop_rate: dropout before the classifier.

    Shapes: ``(B, in_chans, H, W)`` -> features ``(B, widths[2], H/4, W/4)`` -> logits
    ``(B, num_classes)``.

    Example:
        >>> model = small_convnet(num_classes=10, in_chans=1)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> model.forward_features(x).shape, model(x).shape
        (torch.Size([2, 96, 7, 7]), torch.Size([2, 10]))
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (16, 32, 96), drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != 3:
            raise ValueError(f"widths must hold 3 channel counts (stem/stage1, stage2, stage3), got {widths}")
        w1, w2, w3 = (check_int("widths", w, 1) for w in widths)
        self.num_classes = check_int("num_classes", num_classes, 0)
        self.num_features = w3
        self.stages = nn.ModuleList([
            _conv_bn_relu(in_chans, w1),
            nn.Sequential(_conv_bn_relu(w1, w1), nn.MaxPool2d(2)),
            nn.Sequential(_conv_bn_relu(w1, w2), _conv_bn_relu(w2, w2), nn.MaxPool2d(2)),
            _conv_bn_relu(w2, w3),
        ])
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(w3, num_classes) if num_classes else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm's name): ``forward_head(x) == get_classifier()(forward_head(x, pre_logits=True))``."""
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def small_convnet(num_classes: int = 10, in_chans: int = 1, **kwargs) -> SmallConvNet:
    """:class:`SmallConvNet` with the default widths (16, 32, 96): 45k parameters for 10 classes and 1 input channel."""
    return SmallConvNet(num_classes, in_chans, **kwargs)
