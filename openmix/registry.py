"""Name -> mixer class. ``build``, ``available`` and the ``register`` decorator.

This module imports no mixer: ``openmix.mixers`` imports each built-in one explicitly, and its
``@register`` adds it here (as timm's model registry does), so there is no import circle and
static tools see every class.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from openmix.mixer import Mixer
from openmix.model_mixer import LearnedMixer, ModelMixer

__all__ = ["register", "build", "available", "get"]

_REGISTRY: dict[str, type] = {}
KINDS = ("input", "saliency", "feature", "learned")

T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator that makes a mixer buildable by ``name``.

    The class declares its kind (``input``, ``saliency``, ``feature`` or ``learned``) in a
    ``kind`` class attribute, and its type says the same: an input mixer is a
    :class:`~openmix.mixer.Mixer`, a saliency or feature mixer a
    :class:`~openmix.model_mixer.ModelMixer`, a learned one a :class:`~openmix.model_mixer.LearnedMixer`.

    Example:
        >>> from openmix.mixer import Mixer
        >>> @register("my_identity")
        ... class MyIdentity(Mixer):
        ...     def mix(self, x, params):
        ...         return x, params["lam"] * 0 + 1, None
        >>> "my_identity" in available()
        True
        >>> _ = _REGISTRY.pop("my_identity")
    """

    def decorate(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a mixer named {name!r} is already registered ({_REGISTRY[name].__name__})")
        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"@register({name!r}) takes a subclass of openmix.Mixer, got {cls!r}")
        kind = cls.kind
        if kind not in KINDS:
            raise ValueError(f"{cls.__name__}.kind must be one of {KINDS}, got {kind!r}")
        base = {"input": Mixer, "learned": LearnedMixer}.get(kind, ModelMixer)
        other = {"input": ModelMixer, "learned": None}.get(kind, LearnedMixer)  # a subclass of base of another kind
        if not issubclass(cls, base) or (other is not None and issubclass(cls, other)):
            raise TypeError(f"{cls.__name__} declares kind {kind!r}, so it must subclass {base.__name__}"
                            + (f" but not {other.__name__}" if other is not None else ""))
        cls.registered_name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get(name: str) -> type:
    """The mixer class registered as ``name``; a ``ValueError`` lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def build(name: str, **kwargs: Any) -> Any:
    """Build the mixer registered as ``name`` with its constructor's keyword arguments.

    Example:
        >>> import openmix
        >>> openmix.build("mixup", alpha=0.2, num_classes=10)
        MixUp(alpha=0.2, num_classes=10, mode='batch', prob=1.0, pairing='random')
    """
    return get(name)(**kwargs)


def available(kind: str | None = None) -> dict[str, str]:
    """Registered mixer names mapped to their kind, sorted by name; optionally one kind only.

    Example:
        >>> import openmix
        >>> openmix.available()["cutmix"]
        'input'
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {n: c.kind for n, c in sorted(_REGISTRY.items()) if kind is None or c.kind == kind}
