"""Lightning integration: a ready classifier module, a callback for your own module, and mixing schedules."""

from openmix.lightning.callback import MixupCallback
from openmix.lightning.module import MixupClassifier
from openmix.lightning.schedules import MixSchedule

__all__ = ["MixupClassifier", "MixupCallback", "MixSchedule"]
