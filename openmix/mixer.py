"""The ``Mixer`` base class: the one interface every mixer implements.

A call ``mixer(x, y)`` validates its inputs, turns labels into soft targets, draws its
random parameters on ``x.device`` (:meth:`Mixer.sample_params`) and applies them
(:meth:`Mixer.apply_params`). Subclasses implement :meth:`Mixer.mix` and, where they
draw more than ``lam`` and ``index``, extend :meth:`Mixer.sample_params`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from openmix.checks import check_number
from openmix.output import MixOutput
from openmix.sampling import PAIRINGS, beta, host_coin, partner_index
from openmix.targets import mix_targets, soft_targets

__all__ = ["Mixer", "blend", "gather_partner", "MODES"]

Params = dict[str, Tensor]
MODES = ("batch", "elem")


class Mixer(nn.Module):
    """Base class of all mixers.

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)``; ``0`` disables mixing.
        num_classes: number of classes, needed for integer class-id labels.
        mode: ``"batch"`` (one ``lam`` and one box/mask for the batch, one coin for
            ``prob``) or ``"elem"`` (per sample: own ``lam``, own box/mask, own coin).
        prob: probability of mixing, per batch or per sample (see ``mode``).
        pairing: ``"random"`` permutation, ``"flip"`` (timm) or ``"roll"`` (torchvision).
        label_smoothing: applied to the targets before mixing.
        seed: makes every draw repeatable; offset by the rank under
            ``torch.distributed`` unless ``same_on_all_ranks``.
        same_on_all_ranks: draw identically on every distributed rank.

    Subclasses set ``kind`` (``"input"``, ``"saliency"``, ``"feature"``, ``"learned"``) and
    ``spatial_dims`` (which numbers of spatial axes they accept; ``None`` for any).
    """

    kind: ClassVar[str] = "input"
    spatial_dims: ClassVar[tuple[int, ...] | None] = (1, 2, 3)
    registered_name: ClassVar[str] = ""

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        mode: str = "batch",
        prob: float = 1.0,
        pairing: str = "random",
        label_smoothing: float = 0.0,
        seed: int | None = None,
        same_on_all_ranks: bool = False,
    ) -> None:
        super().__init__()
        check_number("alpha", alpha, low=0.0)
        check_number("prob", prob, low=0.0, high=1.0)
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        self.alpha = float(alpha)
        self.num_classes = num_classes
        self.mode = mode
        self.prob = float(prob)
        self.pairing = pairing
        self.label_smoothing = float(label_smoothing)
        self.seed = seed
        self.same_on_all_ranks = same_on_all_ranks
        self._generators: dict[Any, torch.Generator] = {}

    # ----------------------------------------------------------------- public API
    def forward(self, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None) -> MixOutput:
        """Mix a batch.

        Args:
            x: float inputs ``(B, C, *spatial)`` on any device, any memory format.
            y: int class ids ``(B,)`` or soft targets ``(B, num_classes)``.
            generator: a ``torch.Generator`` on ``x.device``; overrides ``seed``.

        Returns:
            :class:`~openmix.output.MixOutput` with mixed ``x``, soft ``y`` ``(B, C)``,
            ``lam`` ``(B,)``, ``index`` ``(B,)`` and ``mask`` where the mixer has one.
        """
        self.check_inputs(x)
        y = soft_targets(y, self.num_classes, self.label_smoothing, batch=x.shape[0])
        device_gen = generator if generator is not None else self._generator(x.device)
        if self.mode == "batch" and not host_coin(self.prob, self._host_generator(generator)):
            return MixOutput.identity(x, y)
        return self.apply_params(x, y, self.sample_params(x, generator=device_gen))

    def sample_params(self, x: Tensor, generator: torch.Generator | None = None) -> Params:
        """Draw the random parameters for ``x``: at least ``lam`` (float32 ``(B,)``) and ``index``.

        In ``batch`` mode ``lam`` holds one draw repeated; in ``elem`` mode each sample
        draws its own and, with ``prob < 1``, skipped samples get ``lam = 1``. Mixers add
        their own keys (CutMix ``lo``/``hi`` boxes, FMix masks, ...); a params dict can be
        built by hand and passed to :meth:`apply_params` to force a draw (the parity tests
        do this to compare with timm and torchvision).
        """
        batch, device = x.shape[0], x.device
        index = partner_index(batch, self.pairing, device=device, generator=generator)
        if self.mode == "batch":
            lam = beta(self.alpha, 1, device=device, generator=generator).expand(batch)
        else:
            lam = beta(self.alpha, batch, device=device, generator=generator)
            if self.prob < 1.0:
                keep = torch.rand(batch, device=device, generator=generator) >= self.prob
                lam = lam.masked_fill(keep, 1.0)
        return {"lam": lam, "index": index}

    def apply_params(self, x: Tensor, y: Tensor, params: Params) -> MixOutput:
        """Deterministic part of a call: mix ``x`` and soft targets ``y`` ``(B, C)`` with ``params``."""
        mixed, lam, mask = self.mix(x, params)
        return MixOutput(x=mixed, y=mix_targets(y, params["index"], lam), lam=lam, index=params["index"], mask=mask)

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor | None]:
        """Return ``(mixed x, lam actually used (B,), mask or None)``. Implemented by each mixer."""
        raise NotImplementedError

    def check_inputs(self, x: Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``x`` is a non-empty float batch this mixer accepts."""
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"inputs must be floating point (convert images with x.float() / 255), got {x.dtype}"
            )
        if self.spatial_dims is None:
            if x.ndim < 2:
                raise ValueError(f"inputs must be (B, C, ...), got shape {tuple(x.shape)}")
        elif x.ndim - 2 not in self.spatial_dims:
            allowed = " or ".join(f"{d + 2}-D (B, C{', *spatial' if d else ''})" for d in self.spatial_dims)
            raise ValueError(f"{type(self).__name__} expects {allowed} inputs, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("cannot mix an empty batch (batch size 0)")

    # ------------------------------------------------------------- checkpointing
    def get_extra_state(self) -> dict[str, Any]:
        """Generator states, so a resumed run draws what an uninterrupted one would."""
        return {"generators": {repr(k): g.get_state() for k, g in self._generators.items()}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._generators = {}
        self._pending_states = dict(state.get("generators", {}))

    # ------------------------------------------------------------------ internals
    def _new_generator(self, key: Any, device: torch.device, seed: int) -> torch.Generator:
        generator = torch.Generator(device=device).manual_seed(seed)
        pending = getattr(self, "_pending_states", {})
        if repr(key) in pending:
            generator.set_state(pending.pop(repr(key)))
        self._generators[key] = generator
        return generator

    def _rank_seed(self) -> int:
        rank = dist.get_rank() if (not self.same_on_all_ranks and dist.is_available() and dist.is_initialized()) else 0
        return int(self.seed) + 1_000_003 * rank

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = (device.type, device.index)
        if key in self._generators:
            return self._generators[key]
        return self._new_generator(key, device, self._rank_seed())

    def _host_generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        if generator is not None and generator.device.type == "cpu":
            return generator
        if self.seed is None:
            return None
        if "host" in self._generators:
            return self._generators["host"]
        return self._new_generator("host", torch.device("cpu"), self._rank_seed() ^ 0x5EED)

    def _repr_fields(self) -> dict[str, Any]:
        """Constructor arguments shown by ``repr``; subclasses add their own."""
        fields: dict[str, Any] = {
            "alpha": self.alpha,
            "num_classes": self.num_classes,
            "mode": self.mode,
            "prob": self.prob,
            "pairing": self.pairing,
        }
        if self.label_smoothing:
            fields["label_smoothing"] = self.label_smoothing
        if self.seed is not None:
            fields["seed"] = self.seed
        return fields

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())


def blend(x: Tensor, partner: Tensor, weight: Tensor) -> Tensor:
    """``weight * x + (1 - weight) * partner``, written into ``partner`` (a fresh gather).

    ``weight`` is the original's weight, broadcastable as ``(B, 1, *spatial)`` (a mask)
    or ``(B, 1, 1, ...)``. Writing in place keeps one large allocation per call, and
    ``partner``'s memory format (that of ``x``, see :func:`gather_partner`).

    Example:
        >>> blend(torch.ones(1, 1, 2), torch.zeros(1, 1, 2), torch.tensor([[[1.0, 0.25]]]))
        tensor([[[1.0000, 0.2500]]])
    """
    return partner.lerp_(x, weight.to(x.dtype))


def gather_partner(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along the batch axis, keeping the memory format of ``x``.

    ``index_select`` into a buffer laid out like ``x`` is the fast path; ``out=`` has no
    autograd, so inputs that need gradients take plain indexing (also layout-preserving).
    """
    if x.requires_grad and torch.is_grad_enabled():
        return x[index]
    return torch.index_select(x, 0, index, out=torch.empty_like(x))
