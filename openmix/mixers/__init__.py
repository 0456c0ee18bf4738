"""Built-in mixers, one module each. Importing this package imports every module in it,
which registers its mixers; each mixer class is then also available here by class name
(``openmix.mixers.CutMix``)."""

import importlib
import pkgutil

from openmix.registry import _REGISTRY

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

for _cls in list(_REGISTRY.values()):
    if _cls.__module__.startswith(__name__ + "."):
        globals()[_cls.__name__] = _cls

__all__ = sorted(c.__name__ for c in _REGISTRY.values() if c.__module__.startswith(__name__ + "."))
