"""Lightning integration: a ready classifier module and a callback for your own module."""

from openmix.lightning.callback import MixupCallback
from openmix.lightning.module import MixupClassifier

__all__ = ["MixupClassifier", "MixupCallback"]
