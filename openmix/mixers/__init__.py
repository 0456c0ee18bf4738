"""Built-in mixers, one module each (a method with several algorithms is a sub-package).

Each module registers its mixers on import (``@register``); this package imports every one of
them explicitly, so ``openmix.mixers.CutMix`` and the registry name ``"cutmix"`` are the same class.
"""

from openmix.mixers.adautomix import AdAutoMix
from openmix.mixers.alignmix import AlignMix
from openmix.mixers.attentivemix import AttentiveMix
from openmix.mixers.automix import AutoMix
from openmix.mixers.comixup import CoMixup
from openmix.mixers.cutmix import CutMix
from openmix.mixers.fmix import FMix
from openmix.mixers.gridmix import GridMix
from openmix.mixers.guidedmixup import GuidedMixup
from openmix.mixers.manifoldmix import ManifoldMix
from openmix.mixers.mixup import MixUp
from openmix.mixers.puzzlemix import PuzzleMix
from openmix.mixers.random_choice import RandomChoice
from openmix.mixers.resizemix import ResizeMix
from openmix.mixers.saliencymix import SaliencyMix
from openmix.mixers.samix import SAMix
from openmix.mixers.smmix import SMMix
from openmix.mixers.smoothmix import SmoothMix
from openmix.mixers.snapmix import SnapMix
from openmix.mixers.sumix import SUMix
from openmix.mixers.tokenmix import TokenMix
from openmix.mixers.transmix import TransMix

__all__ = [
    "AdAutoMix",
    "AlignMix",
    "AttentiveMix",
    "AutoMix",
    "CoMixup",
    "CutMix",
    "FMix",
    "GridMix",
    "GuidedMixup",
    "ManifoldMix",
    "MixUp",
    "PuzzleMix",
    "RandomChoice",
    "ResizeMix",
    "SAMix",
    "SMMix",
    "SUMix",
    "SaliencyMix",
    "SmoothMix",
    "SnapMix",
    "TokenMix",
    "TransMix",
]
