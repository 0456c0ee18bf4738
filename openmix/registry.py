"""Name -> mixer class. ``build``, ``available`` and the ``register`` decorator."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

__all__ = ["register", "build", "available", "get"]

_REGISTRY: dict[str, type] = {}
KINDS = ("input", "saliency", "feature", "learned")

T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator that makes a mixer buildable by ``name``.

    The class declares its kind (``input``, ``saliency``, ``feature`` or ``learned``)
    in a ``kind`` class attribute.

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
        kind = getattr(cls, "kind", None)
        if kind not in KINDS:
            raise ValueError(f"{cls.__name__}.kind must be one of {KINDS}, got {kind!r}")
        cls.registered_name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get(name: str) -> type:
    """The mixer class registered as ``name``; a ``ValueError`` lists the known names."""
    _load_builtin()
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
    _load_builtin()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {n: c.kind for n, c in sorted(_REGISTRY.items()) if kind is None or c.kind == kind}


def _load_builtin() -> None:
    import openmix.mixers  # noqa: F401  (registers the built-in mixers on import)
