"""Pre-activation residual networks for 32x32 inputs: PreAct-ResNet-18 and Wide-ResNet-28-8.

Both are a 3x3 stride-1 stem conv followed by stages of the same pre-activation block
(BN-ReLU before each conv; He et al., "Identity Mappings in Deep Residual Networks", 2016),
so one small class builds both:

* ``cifar_preact_resnet18``: stages of 2 blocks, widths 64-128-256-512, no final BN-ReLU,
  as in the official mixup / Manifold Mixup / PuzzleMix / FMix code (kuangliu/pytorch-cifar).
* ``cifar_wrn28_8``: WRN-28-8 (Zagoruyko & Komodakis, 2016), three stages of 4 blocks,
  widths 128-256-512 after a 16-channel stem, optional dropout between the two convs of a
  block (0 by default), and a final BN-ReLU.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PreActBlock", "PreActResNet", "cifar_preact_resnet18", "cifar_wrn28_8"]


class PreActBlock(nn.Module):
    """``x + conv(relu(bn(conv(relu(bn(x))))))``, with a 1x1 conv shortcut when the shape changes.

    The strided conv is the first one; the projection shortcut reads the pre-activated input,
    as in the official PreAct-ResNet and Wide-ResNet code.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: stride of the first conv and the shortcut.
        dropout: dropout probability between the two convs (Wide-ResNet).

    Example:
        >>> block = PreActBlock(16, 32, stride=2)
        >>> block(torch.rand(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        needs_projection = stride != 1 or in_chs != out_chs
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False) if needs_projection else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """A stem conv, then stages of :class:`PreActBlock`, then global average pooling and a linear head.

    ``model.stages`` is an ``nn.ModuleList``: ``[stem, stage1, ..., stageN]`` (N = 4 for
    PreAct-ResNet-18, 3 for WRN-28-8). The final BN-ReLU, when there is one, is the tail of
    the last stage, so running the stages in order is exactly ``forward_features`` and
    ``forward_head`` is only pooling and the classifier.

    Args:
        depths: blocks per stage.
        widths: channels per stage.
        stem_width: channels of the 3x3 stride-1 stem conv.
        num_classes: classifier outputs; 0 makes ``forward`` return pooled features.
        in_chans: input channels.
        dropout: dropout between the two convs of every block.
        final_norm: end the last stage with BN-ReLU.

    Example:
        >>> model = PreActResNet((1, 1), (16, 32), stem_width=16, num_classes=10)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> feats = model.forward_features(x)
        >>> feats.shape, model.forward_head(feats).shape
        (torch.Size([2, 32, 16, 16]), torch.Size([2, 10]))
    """

    def __init__(
        self,
        depths: tuple[int, ...],
        widths: tuple[int, ...],
        stem_width: int,
        num_classes: int = 100,
        in_chans: int = 3,
        dropout: float = 0.0,
        final_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError(f"depths and widths need one entry per stage, got {len(depths)} and {len(widths)}")
        stages: list[nn.Module] = [nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False)]
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module="stages.0")]
        chs, reduction = stem_width, 1
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = [PreActBlock(chs, width, stride, dropout)]
            blocks += [PreActBlock(width, width, 1, dropout) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i + 1}"))
            chs = width
        if final_norm:
            stages[-1].append(nn.BatchNorm2d(chs))
            stages[-1].append(nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(stages)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = chs
        self.fc = nn.Linear(chs, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> last feature map ``(B, num_features, h, w)``, ``h = ceil(H / 2**(N-1))``."""
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Feature map ``(B, num_features, h, w)`` -> logits ``(B, num_classes)`` (``pre_logits``: pooled features)."""
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm's name): ``forward_head(x) == get_classifier()(forward_head(x, pre_logits=True))``."""
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))


def cifar_preact_resnet18(num_classes: int = 100, in_chans: int = 3) -> PreActResNet:
    """PreAct-ResNet-18 for 32x32 inputs (11.2M parameters for 100 classes)."""
    return PreActResNet((2, 2, 2, 2), (64, 128, 256, 512), 64, num_classes, in_chans)


def cifar_wrn28_8(num_classes: int = 100, in_chans: int = 3, dropout: float = 0.0) -> PreActResNet:
    """Wide-ResNet-28-8 for 32x32 inputs (23.4M parameters for 100 classes); ``dropout`` inside blocks."""
    return PreActResNet((4, 4, 4), (128, 256, 512), 16, num_classes, in_chans, dropout, final_norm=True)
