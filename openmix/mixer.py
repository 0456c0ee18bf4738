"""The ``Mixer`` base class: the one interface every mixer implements.

A call ``mixer(x, y)`` validates its inputs, turns labels into soft targets, draws its
random parameters (:meth:`Mixer.sample_params`) and applies them
(:meth:`Mixer.apply_params`). Subclasses implement :meth:`Mixer.mix` and, where they
draw more than ``lam`` and ``index``, extend :meth:`Mixer.draw_params`.

Random streams: with ``seed`` set, call number ``n`` of a mixer on distributed rank
``r`` draws from generators seeded with :func:`~openmix.sampling.stream_seed` of
``(seed, r, stream, n)``: one stream for per-sample draws on the input's device, one
for per-batch draws on the host. The only state is the call counter ``n``, saved in the
module's ``state_dict`` (extra state), equal on every rank; so a checkpoint written by
rank 0 resumes every rank on its own stream, exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from openmix.checks import check_number
from openmix.output import IDENTITY_LAYOUT, Layout, MixOutput
from openmix.sampling import PAIRINGS, beta, host_beta, host_coin, partner_index, stream_seed
from openmix.targets import mix_targets, soft_targets

__all__ = ["Mixer", "Draws", "DataInfo", "blend", "mix_hidden", "gather_partner", "MODES"]

Params = dict[str, Any]  # tensors, and host numbers for per-batch draws
MODES = ("batch", "elem")
DEVICE_STREAM, HOST_STREAM = 0, 1
_CPU = torch.device("cpu")


class Draws(NamedTuple):
    """The generators of one mixer call (``None``: torch's default generator of that device)."""

    device: torch.Generator | None
    """Per-sample draws, on the input's device."""
    host: torch.Generator | None
    """Per-batch draws (the ``prob`` coin, batch-mode ``lam``, one shared box): a CPU generator."""


@dataclass(frozen=True)
class DataInfo:
    """What the data tells a mixer before training (see :meth:`Mixer.configure_data`).

    Attributes:
        mean, std: the per-channel normalisation of the inputs (``None``: inputs in ``[0, 1]``).
        image_size: the side of the (square) training images, or ``None`` when not known.
        in_chans: input channels.
        num_classes: number of classes.

    Example:
        >>> DataInfo(mean=(0.5,), std=(0.25,), image_size=28, in_chans=1, num_classes=10).image_size
        28
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_size: int | None = None
    in_chans: int | None = None
    num_classes: int | None = None

    @classmethod
    def of(cls, datamodule: Any) -> "DataInfo":
        """The facts an openmix datamodule (or any object with these attributes) knows before ``setup()``."""

        def read(name: str) -> Any:
            value = getattr(datamodule, name, None)
            return tuple(float(v) for v in value) if name in ("mean", "std") and value is not None else value

        return cls(**{name: read(name) for name in ("mean", "std", "image_size", "in_chans", "num_classes")})


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
        seed: makes every draw repeatable: call ``n`` draws from streams seeded by
            ``(seed, rank, n)``, the rank under ``torch.distributed`` (0 otherwise, or
            with ``same_on_all_ranks``).
        same_on_all_ranks: draw identically on every distributed rank.
        spatial_axes: mix over only the last ``spatial_axes`` axes and apply the same mix to every
            position of the axes before them: ``2`` for a video ``(B, C, T, H, W)`` cuts in space
            only, the same cut in every frame (those axes are folded into the channels). ``None``:
            every axis after the channels.

    Subclasses set ``kind`` (``"input"``, ``"saliency"``, ``"feature"``, ``"learned"``) and
    ``spatial_dims`` (which numbers of spatial axes they accept; ``None`` for any).
    """

    kind: ClassVar[str] = "input"
    spatial_dims: ClassVar[tuple[int, ...] | None] = (1, 2, 3)
    registered_name: ClassVar[str] = ""
    pure_mix: ClassVar[bool] = True
    """Whether :meth:`mix` is a pure function of the draw (so it mixes any other tensor of the batch's
    shape the same way); PuzzleMix's is not (it solves its masks from the saliency inside)."""

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
        spatial_axes: int | None = None,
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
        if spatial_axes is not None and (isinstance(spatial_axes, bool) or not isinstance(spatial_axes, int)
                                         or spatial_axes < 1):
            raise ValueError(f"spatial_axes must be a positive int or None, got {spatial_axes!r}")
        self.spatial_axes = spatial_axes
        self._calls = 0  # calls drawn so far: the state of the seeded streams
        # per (stream, device): a generator and the (call, seed) it was last seeded for; reseeded every call
        self._generators: dict[Any, tuple[torch.Generator, tuple[int, int]]] = {}

    # ----------------------------------------------------------------- public API
    def forward(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> MixOutput:
        """Mix a batch.

        Args:
            x: float inputs ``(B, C, *spatial)`` on any device, any memory format.
            y: int class ids ``(B,)`` or soft targets ``(B, num_classes)``; ``None``: mix the inputs
                only, and mix any target with the output's methods (``out.sparse(ids)``,
                ``out.class_map(seg)``, ``out.boxes(b)``, ``out.vector(values)``, ...).
            generator: a ``torch.Generator`` on ``x.device``; overrides ``seed``.

        Returns:
            :class:`~openmix.output.MixOutput` with mixed ``x``, soft ``y`` ``(B, C)`` (``None``
            without labels), ``lam`` ``(B,)``, ``index`` ``(B,)`` and ``mask`` where the mixer has one.
        """
        self.check_inputs(self.fold(x))
        if y is not None:
            y = soft_targets(y, self.num_classes, self.label_smoothing, batch=x.shape[0])
        return self.apply_params(x, y, self.sample_params(x, generator=generator))

    def fold(self, x: Tensor) -> Tensor:
        """``x`` as the mixer mixes it: with ``spatial_axes``, the axes before the last ``spatial_axes``
        folded into the channels (a video ``(B, C, T, H, W)`` as ``(B, C*T, H, W)``); else ``x``."""
        if self.spatial_axes is None or not isinstance(x, Tensor) or x.ndim - 2 <= self.spatial_axes:
            return x
        return x.flatten(1, x.ndim - 1 - self.spatial_axes)

    def sample_params(self, x: Tensor, generator: torch.Generator | None = None) -> Params:
        """Draw the random parameters of one call for ``x``: at least ``lam`` (float32 ``(B,)``) and ``index``.

        Without ``generator`` the draws come from the mixer's own streams when ``seed`` is
        set (each call advances them, as a call of the mixer does), else from torch's
        default generators. A ``generator`` on ``x.device`` is used for the per-sample
        draws, and for the per-batch ones too when it is a CPU generator (otherwise those
        come from the mixer's host stream, or torch's default CPU generator).

        ``batch`` mode flips one ``prob`` coin for the batch: a skipped batch gives identity
        params (``lam`` ones, ``index = arange(B)``, ``identity=True``), which
        :meth:`apply_params` returns unmixed. Otherwise ``lam`` holds one draw repeated,
        also given as the Python float ``batch_lam``: per-batch values are drawn on the
        host, so that batch-mode mixing can use scalar and slice operations (mixers read
        ``batch_lam`` and host-side boxes when present; hand-built params without them take
        the general per-sample path). In ``elem`` mode each sample draws its own ``lam``
        and, with ``prob < 1``, skipped samples get ``lam = 1``. Mixers add their own keys
        (CutMix ``lo``/``hi`` boxes, FMix fields, ...); a params dict can be built by hand
        and passed to :meth:`apply_params` to force a draw (the parity tests do this to
        compare with timm and torchvision).
        """
        x = self.fold(x)
        draws = self._draws(x.device, generator)
        if self.mode == "batch" and not host_coin(self.prob, draws.host):
            return identity_params(x)
        return self.draw_params(x, draws)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """The draws of a call that mixes, from the generators in ``draws``; subclasses extend it.

        The base class draws ``index`` (on ``x.device``) and ``lam``: in ``batch`` mode one
        host draw ``batch_lam``, filled into ``lam``; in ``elem`` mode one per sample on
        ``x.device``, ``1`` where the per-sample ``prob`` coin skips the sample.
        """
        batch, device = x.shape[0], x.device
        index = partner_index(batch, self.pairing, device=device, generator=draws.device)
        if self.mode == "batch":
            lam = host_beta(self.alpha, draws.host)
            lam_all = torch.full((batch,), lam, device=device, dtype=torch.float32)
            return {"lam": lam_all, "index": index, "batch_lam": lam}
        lam = beta(self.alpha, batch, device=device, generator=draws.device)
        if self.prob < 1.0:
            keep = torch.rand(batch, device=device, generator=draws.device, dtype=torch.float32) >= self.prob
            lam = lam.masked_fill_(keep, 1.0)
        return {"lam": lam, "index": index}

    def apply_params(self, x: Tensor, y: Tensor | None, params: Params) -> MixOutput:
        """Deterministic part of a call: mix ``x`` and soft targets ``y`` ``(B, C)`` (or none) with ``params``."""
        if params.get("identity", False):
            out = MixOutput.identity(x, y)
            out.binary, out.mixer = True, type(self).__name__
            return out
        folded = self.fold(x)
        mixed, lam, mask = self.mix(folded, params)
        if folded is not x:  # back to the input's axes; the mask broadcasts over the folded ones
            mixed = mixed.view(x.shape)
            mask = None if mask is None else mask.view(mask.shape[:2] + (1,) * (x.ndim - folded.ndim) + mask.shape[2:])
        index = params["index"]
        return MixOutput(x=mixed, y=None if y is None else mix_targets(y, index, lam), lam=lam, index=index, mask=mask,
                         layout=self.layout(params, folded), binary=mask is not None and self.binary_mask(params),
                         mixer=type(self).__name__, remix=self._remix(params) if self.pure_mix else None)

    def _remix(self, params: Params) -> Callable[[Tensor], Tensor]:
        """This call's mixing applied to another tensor shaped like the inputs (see ``MixOutput.remix``)."""

        def remix(t: Tensor) -> Tensor:
            folded = self.fold(t)
            return self.mix(folded, params)[0].view(t.shape)

        return remix

    def layout(self, params: Params, x: Tensor) -> Layout:
        """Where this call put each image's content (:class:`~openmix.output.Layout`): as it was, here;
        mixers that move content (ResizeMix, PuzzleMix) say where, so targets can follow."""
        return IDENTITY_LAYOUT

    def binary_mask(self, params: Params) -> bool:
        """Whether this call's mask holds only 0 and 1 (every pixel shows one image); ``False`` here."""
        return False

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor | None]:
        """Return ``(mixed x, lam actually used (B,), mask or None)``. Implemented by each mixer.

        ``mask`` may be an expanded ``(B, 1, *spatial)`` view of one ``(1, 1, *spatial)`` mask.
        """
        raise NotImplementedError

    def configure_data(self, data: DataInfo) -> None:
        """Take from the data what this mixer left unset (normalisation, image size); a no-op here.

        :class:`~openmix.lightning.MixupClassifier` calls it with its datamodule's facts before
        training (so ``openmix-train`` does too); in a plain loop, call it yourself. A setting
        given to the constructor always wins over the data's.
        """

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
        """The call counter: the whole state of the seeded streams (the same on every rank)."""
        return {"calls": self._calls}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._generators = {}
        if "calls" in state:
            self._calls = int(state["calls"])
        else:  # checkpoints before the call counter stored generator states
            warnings.warn(
                f"{type(self).__name__}: the checkpoint holds no call counter (an older openmix); "
                "its random streams restart from the first call",
                stacklevel=2,
            )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_generators"] = {}  # a cache: generators are re-made and reseeded on the next call
        return state

    # ------------------------------------------------------------------ internals
    def _draws(self, device: torch.device, generator: torch.Generator | None = None, *, host_only: bool = False) -> Draws:
        """The generators of one call, and one step of the call counter.

        Seeded streams are reseeded from ``(seed, rank, stream, call)`` at every call
        (``manual_seed`` is host-side on every device), so they need no saved state.
        ``host_only`` leaves the device stream out (``Draws.device`` is then ``None``).
        """
        call = self._calls
        self.__dict__["_calls"] = call + 1  # a plain int: skip nn.Module.__setattr__'s registry checks
        seeded = self.seed is not None
        if generator is not None:
            if generator.device.type == "cpu":
                return Draws(generator, generator)
            return Draws(generator, self._seeded(_CPU, HOST_STREAM, call) if seeded else None)
        if not seeded:
            return Draws(None, None)
        host = self._seeded(_CPU, HOST_STREAM, call)
        return Draws(None if host_only else self._seeded(device, DEVICE_STREAM, call), host)

    def _seeded(self, device: torch.device, stream: int, call: int) -> torch.Generator:
        """The generator of ``stream`` on ``device``, seeded for ``call`` (once: a second request
        within the same call continues it)."""
        key = (stream, device.type, device.index)
        seed = stream_seed(int(self.seed), self._rank(), stream, call)
        cached = self._generators.get(key)
        if cached is not None and cached[1] == (call, seed):
            return cached[0]
        generator = cached[0] if cached is not None else torch.Generator(device=device)
        self._generators[key] = (generator.manual_seed(seed), (call, seed))
        return generator

    def _generator(self, device: torch.device) -> torch.Generator | None:
        """The seeded device stream of the coming call (``None`` without ``seed``).

        For subclasses that draw outside :meth:`draw_params`; the next :meth:`sample_params`
        continues this generator rather than reseeding it.
        """
        return None if self.seed is None else self._seeded(device, DEVICE_STREAM, self._calls)

    def _host_generator(self, generator: torch.Generator | None = None) -> torch.Generator | None:
        """The host stream of the coming call: ``generator`` itself when it is a CPU generator,
        else the seeded host stream (``None`` without ``seed``: torch's default CPU generator)."""
        if generator is not None and generator.device.type == "cpu":
            return generator
        return None if self.seed is None else self._seeded(_CPU, HOST_STREAM, self._calls)

    def _rank(self) -> int:
        """This process's rank under ``torch.distributed``, or 0 (also with ``same_on_all_ranks``)."""
        if self.same_on_all_ranks or not (dist.is_available() and dist.is_initialized()):
            return 0
        return dist.get_rank()

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
        if self.spatial_axes is not None:
            fields["spatial_axes"] = self.spatial_axes
        return fields

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())


def identity_params(x: Tensor) -> Params:
    """Params of a call that does not mix: ``lam`` ones, every sample its own partner."""
    batch = x.shape[0]
    return {
        "lam": torch.ones(batch, device=x.device, dtype=torch.float32),
        "index": torch.arange(batch, device=x.device),
        "identity": True,
    }


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


def mix_hidden(h: Tensor, index: Tensor, lam: Tensor | float) -> Tensor:
    """``lam * h + (1 - lam) * h[index]`` along the batch; ``lam`` is one number or ``(B,)``.

    For inputs and hidden states alike; gradients reach ``h`` through both terms, and the result
    is a new tensor (``h`` is untouched).

    Example:
        >>> mix_hidden(torch.tensor([[1.0], [3.0]]), torch.tensor([1, 0]), 0.25)
        tensor([[2.5000],
                [1.5000]])
    """
    if isinstance(lam, Tensor):
        lam = lam.to(h.dtype).view((-1,) + (1,) * (h.ndim - 1))
    return torch.lerp(gather_partner(h, index), h, lam)


def gather_partner(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along the batch axis, keeping the memory format of ``x``.

    ``index_select`` into a buffer laid out like ``x`` is the fast path; ``out=`` has no
    autograd, so inputs that need gradients take plain indexing (also layout-preserving).
    """
    if x.requires_grad and torch.is_grad_enabled():
        return x[index]
    return torch.index_select(x, 0, index, out=torch.empty_like(x))


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device`` (a no-op context where autocast does not exist, e.g. ``meta``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
