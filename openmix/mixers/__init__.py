"""Built-in mixers, one file each; importing this package registers them."""

from openmix.mixers.cutmix import CutMix
from openmix.mixers.mixup import MixUp

__all__ = ["MixUp", "CutMix"]
