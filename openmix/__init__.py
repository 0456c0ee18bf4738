"""openmix: mixup data augmentation for PyTorch, every mixer behind one tensor interface.

Example:
    >>> import torch, openmix
    >>> mixer = openmix.build("cutmix", alpha=1.0, num_classes=10)
    >>> out = mixer(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    >>> loss = openmix.losses.soft_cross_entropy(torch.randn(8, 10), out.y)
"""

from openmix import losses, mixers, sampling, targets
from openmix.mixer import DataInfo, Mixer
from openmix.model_mixer import LearnedMixer, ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import available, build, register

__all__ = [
    "Mixer",
    "ModelMixer",
    "LearnedMixer",
    "MixOutput",
    "StepResult",
    "DataInfo",
    "build",
    "available",
    "register",
    "losses",
    "mixers",
    "sampling",
    "targets",
]
__version__ = "0.1.0"
