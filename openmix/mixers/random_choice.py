"""RandomChoice: one of several mixers per batch, drawn on the host (timm's mixup/CutMix switch)."""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Any, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from openmix.mixer import Mixer, Params
from openmix.model_mixer import ModelMixer
from openmix.output import MixOutput
from openmix.registry import get, register

__all__ = ["RandomChoice"]

MixerSpec = Union[Mixer, str, Mapping[str, Any]]
# Arguments a child built from a name or a dict inherits unless the dict sets them.
COMMON = ("num_classes", "mode", "prob", "pairing", "label_smoothing", "seed", "same_on_all_ranks", "spatial_axes",
          "bandwidth", "global_pairing")
# timm's Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
TIMM_DEFAULT: tuple[dict[str, Any], ...] = ({"name": "mixup", "alpha": 0.8}, {"name": "cutmix", "alpha": 1.0})


@register("random_choice")
class RandomChoice(Mixer):
    """Pick one of ``mixers`` for each batch with probabilities ``p``, and let it mix the batch.

    The pick is drawn on the host with a CPU generator (from ``seed``, or the
    ``generator`` argument when it is a CPU generator, else torch's global CPU RNG),
    so choosing never waits for the accelerator. The chosen mixer then runs as if
    called directly, with its own ``prob``, ``mode`` and targets.

    Children given by name or as a dict ``{"name": ..., **kwargs}`` (as in Hydra
    configs) inherit ``num_classes``, ``mode``, ``prob``, ``pairing`` (with ``bandwidth`` and
    ``global_pairing``), ``label_smoothing``, ``seed`` and ``spatial_axes`` unless the dict sets
    them: so ``prob`` applies per batch (``batch`` mode), per sample (``elem``) or per pair
    (``pair``) to whichever mixer is picked.
    Child ``i`` gets ``seed + 1 + i``, keeping its draws apart from the pick's.
    Mixer instances are used as they are.

    Args:
        mixers: mixer instances, registered names or dicts; default timm's pair:
            ``mixup`` (alpha 0.8) and ``cutmix`` (alpha 1.0).
        p: probability of each mixer; default uniform.
        num_classes: passed to children built here.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments (no ``alpha``:
            set it per child).

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("random_choice", num_classes=10, seed=0)
        >>> [type(m).__name__ for m in mixer.mixers], mixer.p
        (['MixUp', 'CutMix'], (0.5, 0.5))
        >>> out = mixer(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        >>> out.y.shape
        torch.Size([8, 10])
    """

    spatial_dims = None

    def __init__(
        self,
        mixers: Sequence[MixerSpec] | None = None,
        p: Sequence[float] | None = None,
        num_classes: int | None = None,
        **kwargs: Any,
    ) -> None:
        if "alpha" in kwargs:
            raise TypeError("RandomChoice takes no alpha; set it per child: mixers=[{'name': 'mixup', 'alpha': 0.2}]")
        super().__init__(1.0, num_classes, **kwargs)
        specs = list(TIMM_DEFAULT if mixers is None else mixers)
        if not specs:
            raise ValueError("mixers must name at least one mixer")
        self.mixers = nn.ModuleList(self._build(spec, i) for i, spec in enumerate(specs))
        self.p = _check_p(p, len(specs))
        self._cumulative = list(itertools.accumulate(self.p))
        dims = [set(m.spatial_dims) for m in self.mixers if m.spatial_dims is not None]
        self.spatial_dims = tuple(sorted(set.intersection(*dims))) if dims else None  # what every child accepts
        if self.spatial_dims == ():
            accepted = ", ".join(f"{type(m).__name__} {m.spatial_dims}" for m in self.mixers)
            raise ValueError(f"the mixers accept no common number of spatial axes: {accepted}")

    def forward(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None,
                pair_by: Tensor | None = None) -> MixOutput:
        """Mix a batch with one mixer, picked on the host; see :meth:`Mixer.forward`."""
        self.check_inputs(x)
        extra = {} if pair_by is None else {"pair_by": pair_by}  # children that predate pair_by take none
        return self.mixers[self._pick(x, generator)](x, y, generator=generator, **extra)

    def sample_params(self, x: Tensor, generator: torch.Generator | None = None, *,
                      pair_by: Tensor | None = None) -> Params:
        """Pick a mixer and draw its parameters; ``params["choice"]`` (a CPU tensor) records the pick."""
        choice = self._pick(x, generator)
        extra = {} if pair_by is None else {"pair_by": pair_by}
        params = self.mixers[choice].sample_params(x, generator, **extra)
        params["choice"] = torch.tensor(choice)
        return params

    def apply_params(self, x: Tensor, y: Tensor | None, params: Params) -> MixOutput:
        child, params = self._split(params)
        return child.apply_params(x, y, params)

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor | None]:
        child, params = self._split(params)
        return child.mix(x, params)

    def _pick(self, x: Tensor, generator: torch.Generator | None) -> int:
        host = self._draws(x.device, generator, host_only=True).host  # one call of this mixer's streams
        if len(self.mixers) == 1:
            return 0
        u = torch.rand((), generator=host, dtype=torch.float32).item()
        return min(bisect.bisect_right(self._cumulative, u), len(self.mixers) - 1)

    def _split(self, params: Params) -> tuple[Mixer, Params]:
        rest = dict(params)
        return self.mixers[int(rest.pop("choice"))], rest

    def _build(self, spec: MixerSpec, i: int) -> Mixer:
        if isinstance(spec, Mixer):
            if isinstance(spec, ModelMixer):
                raise ValueError(f"RandomChoice mixes input mixers only; {type(spec).__name__} is a {spec.kind} mixer")
            return spec
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping):
            got = type(spec).__name__
            raise TypeError(f"each mixer must be a Mixer, a registered name or a dict with 'name', got {got}")
        kwargs = dict(spec)
        if "name" not in kwargs:
            raise ValueError(f"a mixer given as a dict needs a 'name' key, got keys {sorted(kwargs)}")
        cls = get(kwargs.pop("name"))  # ValueError listing the registered names
        if issubclass(cls, ModelMixer):
            raise ValueError(f"RandomChoice mixes input mixers only; {cls.registered_name!r} is a {cls.kind} mixer")
        inherited = {name: getattr(self, name) for name in COMMON}
        if self.seed is not None:
            inherited["seed"] = self.seed + 1 + i
        return cls(**{**inherited, **kwargs})

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        del fields["alpha"]
        fields["p"] = self.p
        return fields


def _check_p(p: Sequence[float] | None, n: int) -> tuple[float, ...]:
    if p is None:
        return (1.0 / n,) * n
    try:
        p = tuple(float(v) for v in p)
    except (TypeError, ValueError):
        raise TypeError(f"p must be a sequence of numbers, got {p!r}") from None
    if len(p) != n:
        raise ValueError(f"p must have one probability per mixer ({n}), got {len(p)}: {p}")
    if not all(v >= 0.0 and math.isfinite(v) for v in p):
        raise ValueError(f"p must be non-negative, got {p}")
    if not math.isclose(sum(p), 1.0, abs_tol=1e-6):
        raise ValueError(f"p must sum to 1, got {p} (sum {sum(p)})")
    return p
