"""The ``Mixer`` base class: the one interface every mixer implements.

A call ``mixer(x, y)`` validates its inputs, turns labels into soft targets, draws its
random parameters (:meth:`Mixer.sample_params`) and applies them
(:meth:`Mixer.apply_params`). Subclasses implement :meth:`Mixer.mix` and, where they
draw more than ``lam`` and ``index``, extend :meth:`Mixer.draw_params`.

Modes: ``batch`` (one draw for the batch), ``elem`` (one per sample), ``pair`` (one per pair of samples
that mix with each other, symmetrically: timm's ``pair``) and ``half`` (timm's ``half``: the first
``ceil(B/2)`` samples, each mixed with one of the rest, are the output). Pairings: a ``random``
permutation, ``flip``, ``roll``, or C-Mixup's ``label_kernel`` (partners drawn by label distance); with
``global_pairing`` the partners come from every distributed rank's batch.

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

from openmix.checks import check_bool, check_number
from openmix.output import IDENTITY_LAYOUT, Layout, MixOutput
from openmix.sampling import (PAIRINGS, beta, half_partners, host_beta, host_coin, label_kernel_index, pair_partners,
                              partner_index, stream_seed)
from openmix.targets import mix_targets, soft_targets

__all__ = ["Mixer", "Draws", "DataInfo", "blend", "mix_hidden", "gather_partner", "gather_batch", "MODES"]

Params = dict[str, Any]  # tensors, and host numbers for per-batch draws
MODES = ("batch", "elem", "pair", "half")
PAIRED_MODES = ("pair", "half")  # modes whose pairing is fixed before the draws: 'flip' or 'random' only
DEVICE_STREAM, HOST_STREAM = 0, 1
_CPU = torch.device("cpu")


class Draws(NamedTuple):
    """The generators of one mixer call (``None``: torch's default generator of that device)."""

    device: torch.Generator | None
    """Per-sample draws, on the input's device."""
    host: torch.Generator | None
    """Per-batch draws (the ``prob`` coin, batch-mode ``lam``, one shared box): a CPU generator."""
    index: Tensor | None = None
    """The partners, when drawn before the mixer's own draws (``pair``/``half`` modes, the label kernel,
    global pairing); ``None``: :meth:`Mixer.draw_index` draws them from ``pairing``."""


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
            ``prob``), ``"elem"`` (per sample: own ``lam``, own box/mask, own coin), ``"pair"``
            (timm's: the batch in pairs that mix with each other, each pair one ``lam``, one box/mask
            and one coin: ``x_i <- lam x_i + (1 - lam) x_j`` and ``x_j <- lam x_j + (1 - lam) x_i``, a
            box's contents swapped) or ``"half"`` (timm's ``FastCollateMixup``: the output is the first
            ``ceil(B/2)`` samples, each elem-mixed with one of the others; labels and every target
            method's result have those rows). In an odd batch the middle sample of ``pair`` (and of
            ``half`` with ``flip``) is its own partner, so it stays as it was.
        prob: probability of mixing, per batch, per sample or per pair (see ``mode``).
        pairing: ``"random"`` permutation, ``"flip"`` (timm: ``i -> B-1-i``), ``"roll"`` (torchvision:
            ``i -> i-1``) or ``"label_kernel"`` (C-Mixup: partner ``j`` of ``i`` drawn with probability
            ``~ exp(-|y_i - y_j|^2 / (2 bandwidth^2))`` over the batch, never ``i`` itself; input mixers).
            ``pair`` and ``half`` take ``"flip"`` (timm's pairs) or ``"random"`` (random pairs).
        bandwidth: the label kernel's ``sigma``, in the labels' units (``pairing="label_kernel"``).
        global_pairing: in a call (:meth:`forward`) under ``torch.distributed``, draw partners from the
            batches of every rank (all gathered; each rank mixes its own samples): input mixers,
            ``batch``/``elem`` modes. The gathered partners carry no gradient, and ``out.index`` then
            counts the global batch (see :meth:`forward`); :meth:`sample_params` draws within the rank.
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
    modes: ClassVar[tuple[str, ...]] = MODES
    """The modes this mixer mixes in (``half`` for input mixers only: the others run a model on the batch)."""
    registered_name: ClassVar[str] = ""
    pure_mix: ClassVar[bool] = True
    """Whether :meth:`mix` is a pure function of the draw (so it mixes any other tensor of the batch's
    shape the same way); PuzzleMix's is not (it solves its masks from the saliency inside)."""
    normalized_targets: ClassVar[bool] = True
    """Whether every row of ``out.y`` sums to 1 (for targets whose rows do): the images' weights in the
    targets are shares that add up to 1. ``False`` (SnapMix): each image's weight is a measure of its own
    (the class activation mass it shows), in ``[0, 1]``, so a row is non-negative and sums to at most the
    number of images mixed; ``out.sources`` then holds the weights."""

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
        bandwidth: float = 1.0,
        global_pairing: bool = False,
    ) -> None:
        super().__init__()
        check_number("alpha", alpha, low=0.0)
        check_number("prob", prob, low=0.0, high=1.0)
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        bandwidth, global_pairing = check_number("bandwidth", bandwidth, low=0.0), check_bool("global_pairing", global_pairing)
        self._check_pairing(mode, pairing, bandwidth, global_pairing)
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
        self.bandwidth = float(bandwidth)
        self.global_pairing = global_pairing
        self._calls = 0  # calls drawn so far: the state of the seeded streams
        # per (stream, device): a generator and the (call, seed) it was last seeded for; reseeded every call
        self._generators: dict[Any, tuple[torch.Generator, tuple[int, int]]] = {}

    # ----------------------------------------------------------------- public API
    def forward(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        pair_by: Tensor | None = None,
    ) -> MixOutput:
        """Mix a batch.

        Args:
            x: float inputs ``(B, C, *spatial)`` on any device, any memory format.
            y: int class ids ``(B,)`` or soft targets ``(B, num_classes)``; with ``num_classes=None``
                any float ``(B, D)`` targets (regression values: ``out.y`` mixes them by the shares, as
                ``out.vector(y)`` would; rows need not sum to 1); ``None``: mix the inputs only, and mix
                any target with the output's methods (``out.sparse(ids)``, ``out.class_map(seg)``,
                ``out.boxes(b)``, ``out.vector(values)``, ...).
            generator: a ``torch.Generator`` on ``x.device``; overrides ``seed``.
            pair_by: float labels ``(B,)`` or ``(B, D)`` whose distances ``pairing="label_kernel"``
                draws the partners by; default ``y`` (its soft targets).

        Returns:
            :class:`~openmix.output.MixOutput` with mixed ``x``, soft ``y`` ``(B, C)`` (``None``
            without labels), ``lam`` ``(B,)``, ``index`` ``(B,)`` and ``mask`` where the mixer has one;
            in ``half`` mode each of them has ``ceil(B/2)`` rows.

        With ``global_pairing`` under ``torch.distributed`` (more than one rank), ``x``, ``y`` (and
        ``pair_by``) are all-gathered from every rank, in rank order, and each rank mixes its own ``B``
        samples with partners drawn from all of them; every rank must make the same calls with the
        same batch size (the collectives pair up). ``out.index`` then counts rows of the global batch
        (rank ``r``'s sample ``i`` is row ``r * B + i``), and the target methods (``out.dense``,
        ``out.vector``, ...) take targets of the global batch: :func:`gather_batch` makes them.

        Example:
            >>> import torch, openmix
            >>> values = torch.tensor([[0.0], [0.1], [5.0], [5.2]])  # regression targets
            >>> mixer = openmix.build("mixup", pairing="label_kernel", bandwidth=0.5, seed=0)
            >>> out = mixer(torch.rand(4, 3, 8, 8), values)
            >>> out.index.tolist(), torch.allclose(out.y, out.vector(values))
            ([1, 0, 3, 2], True)
        """
        self.check_inputs(self.fold(x))
        if y is not None:
            y = soft_targets(y, self.num_classes, self.label_smoothing, batch=x.shape[0])
        if pair_by is None and self.pairing == "label_kernel":
            pair_by = y
        self._check_pair_by(pair_by)
        if self.global_pairing and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return self._mix_global(x, y, generator, pair_by)
        return self.apply_params(x, y, self.sample_params(x, generator=generator, pair_by=pair_by))

    def fold(self, x: Tensor) -> Tensor:
        """``x`` as the mixer mixes it: with ``spatial_axes``, the axes before the last ``spatial_axes``
        folded into the channels (a video ``(B, C, T, H, W)`` as ``(B, C*T, H, W)``); else ``x``."""
        if self.spatial_axes is None or not isinstance(x, Tensor) or x.ndim - 2 <= self.spatial_axes:
            return x
        return x.flatten(1, x.ndim - 1 - self.spatial_axes)

    def sample_params(self, x: Tensor, generator: torch.Generator | None = None, *,
                      pair_by: Tensor | None = None) -> Params:
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

        ``pair`` mode draws the pairs first (:func:`~openmix.sampling.pair_partners`), then
        :meth:`draw_params` as in ``elem`` mode, and gives each sample its pair leader's draws: every
        tensor of the params whose first axis is the batch (``lam``, boxes, masks' fields, the
        coin's skips) is gathered by the leader, so any mixer with an elem mode has a pair mode.
        ``half`` mode draws elem-mode params for the whole batch with the partners of
        :func:`~openmix.sampling.half_partners`; :meth:`apply_params` keeps the first ``ceil(B/2)``
        rows. ``pairing="label_kernel"`` needs ``pair_by``, the labels ``(B,)`` or ``(B, D)``.
        """
        self._check_pair_by(pair_by)
        x = self.fold(x)
        draws = self._draws(x.device, generator)
        if self.mode == "batch" and not host_coin(self.prob, draws.host):
            return identity_params(x)
        batch, device = x.shape[0], x.device
        if self.mode == "pair":
            index, leader = pair_partners(batch, self.pairing, device=device, generator=draws.device)
            return mirror_params(self.draw_params(x, draws._replace(index=index)), leader)
        if self.mode == "half":
            index = half_partners(batch, self.pairing, device=device, generator=draws.device)
        elif self.pairing == "label_kernel":
            values = self._pair_values(pair_by, batch)
            index = label_kernel_index(values, self.bandwidth, generator=draws.device)
        else:
            return self.draw_params(x, draws)
        return self.draw_params(x, draws._replace(index=index))

    def draw_index(self, x: Tensor, draws: Draws) -> Tensor:
        """The partners of this call, int64 ``(B,)`` on ``x.device``: ``draws.index`` when they were drawn
        first (``pair``/``half`` modes, the label kernel, global pairing), else a draw of ``pairing``.
        Mixers that draw ``index`` themselves call this."""
        if draws.index is not None:
            return draws.index
        return partner_index(x.shape[0], self.pairing, device=x.device, generator=draws.device)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """The draws of a call that mixes, from the generators in ``draws``; subclasses extend it.

        The base class draws ``index`` (on ``x.device``) and ``lam``: in ``batch`` mode one
        host draw ``batch_lam``, filled into ``lam``; in ``elem`` mode one per sample on
        ``x.device``, ``1`` where the per-sample ``prob`` coin skips the sample.
        """
        batch, device = x.shape[0], x.device
        index = self.draw_index(x, draws)
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
        """Deterministic part of a call: mix ``x`` and soft targets ``y`` ``(B, C)`` (or none) with ``params``.

        In ``half`` mode the params are the whole batch's and the output keeps its first ``ceil(B/2)``
        rows; ``out.batch_size`` is then ``B``, the rows the target methods take.
        """
        rows = (x.shape[0] + 1) // 2 if self.mode == "half" else x.shape[0]
        return self._mix_rows(x, y, params, rows)

    def _mix_rows(self, x: Tensor, y: Tensor | None, params: Params, rows: int) -> MixOutput:
        """:meth:`apply_params` keeping the first ``rows`` rows of the mix."""
        if params.get("identity", False):
            out = MixOutput.identity(x, y)
            out.binary, out.mixer = True, type(self).__name__
            return out
        folded = self.fold(x)
        mixed, lam, mask = self.mix(folded, params)
        if folded is not x:  # back to the input's axes; the mask broadcasts over the folded ones
            mixed = mixed.view(x.shape)
            mask = None if mask is None else mask.view(mask.shape[:2] + (1,) * (x.ndim - folded.ndim) + mask.shape[2:])
        index, batch = params["index"], x.shape[0]
        target = None if y is None else mix_targets(y, index, lam)
        remix = self._remix(params, rows) if self.pure_mix else None
        if rows < batch:  # half mode (and global pairing's partner rows): the first rows are the output
            mixed, lam, index = mixed[:rows], lam[:rows], index[:rows]
            mask = None if mask is None else mask[:rows]
            target = None if target is None else target[:rows]
            params = take_rows(params, batch, rows)
        return MixOutput(x=mixed, y=target, lam=lam, index=index, mask=mask, layout=self.layout(params, folded),
                         binary=mask is not None and self.binary_mask(params), mixer=type(self).__name__,
                         remix=remix, batch_size=None if rows == batch else batch)

    def _remix(self, params: Params, rows: int) -> Callable[[Tensor], Tensor]:
        """This call's mixing applied to another tensor shaped like the inputs (see ``MixOutput.remix``),
        keeping its first ``rows`` rows."""

        def remix(t: Tensor) -> Tensor:
            folded = self.fold(t)
            return self.mix(folded, params)[0].view(t.shape)[:rows]

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
    def _check_pairing(self, mode: str, pairing: str, bandwidth: float, global_pairing: bool) -> None:
        """Raise ``ValueError`` unless the mode, pairing and scope go together, and with this mixer."""
        name = type(self).__name__
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode not in self.modes or (mode == "half" and self.kind != "input"):
            modes = tuple(m for m in self.modes if m != "half" or self.kind == "input")
            why = (" (half mode returns ceil(B/2) rows: only an input mixer's output can; a model-aware mixer's "
                   "step runs the model on the whole batch)") if mode == "half" else ""
            raise ValueError(f"{name} mixes in mode {' or '.join(map(repr, modes))}, not mode={mode!r}{why}")
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        if mode in PAIRED_MODES and pairing not in ("flip", "random"):
            raise ValueError(f"mode={mode!r} mixes fixed pairs of samples: pairing must be 'flip' (timm's pairs "
                             f"i, B-1-i) or 'random' (random pairs), got {pairing!r}")
        if pairing == "label_kernel":
            if self.kind != "input":
                raise ValueError(f"pairing='label_kernel' is for input mixers ({name} is a {self.kind} mixer: its "
                                 "step draws without the labels)")
            if bandwidth <= 0:
                raise ValueError(f"bandwidth must be > 0 (the label kernel's sigma), got {bandwidth}")
        if global_pairing and self.kind != "input":
            raise ValueError(f"global_pairing is for input mixers ({name} is a {self.kind} mixer: partners gathered "
                             "from other ranks carry no gradient)")
        if global_pairing and mode in PAIRED_MODES:
            raise ValueError(f"global_pairing mixes each rank's samples with partners anywhere: mode must be 'batch' "
                             f"or 'elem', got {mode!r}")

    def _check_pair_by(self, pair_by: Tensor | None) -> None:
        if pair_by is not None and self.pairing != "label_kernel":
            raise ValueError(f"pair_by is read by pairing='label_kernel' only; this mixer pairs {self.pairing!r}")

    def _pair_values(self, pair_by: Tensor | None, batch: int) -> Tensor:
        """The labels the label kernel reads, checked: float ``(B,)`` or ``(B, D)``."""
        if pair_by is None:
            raise ValueError("pairing='label_kernel' draws each partner by label distance: give the labels, "
                             "mixer(x, y) or mixer(x, pair_by=values) (sample_params(x, pair_by=values))")
        if not isinstance(pair_by, Tensor) or pair_by.ndim not in (1, 2) or pair_by.shape[0] != batch:
            shape = tuple(pair_by.shape) if isinstance(pair_by, Tensor) else type(pair_by).__name__
            raise ValueError(f"pair_by must be labels (B,) or (B, D) with B = {batch}, got {shape}")
        if not pair_by.is_floating_point():
            raise TypeError(f"pair_by must be floating point labels (regression targets), got {pair_by.dtype}")
        return pair_by

    def _mix_global(self, x: Tensor, y: Tensor | None, generator: torch.Generator | None,
                    pair_by: Tensor | None) -> MixOutput:
        """:meth:`forward` with partners from every rank's batch (``global_pairing``).

        The batches (and labels) are all-gathered; for ``random`` pairing each rank also gathers one
        random key per sample, and the argsort of all keys is the one global permutation every rank
        computes alike (no shared seed needed). The mixer then mixes an extended batch, its own ``B``
        samples followed by their ``B`` partners, and keeps the first ``B`` rows.
        """
        world, rank, batch = dist.get_world_size(), dist.get_rank(), x.shape[0]
        total, offset = world * batch, rank * batch
        draws = self._draws(x.device, generator)
        keys = None
        if self.pairing == "random":
            keys = torch.randint(2**62, (batch,), device=x.device, generator=draws.device)
        elif self.pairing == "label_kernel":
            pair_by = self._pair_values(pair_by, batch)
        everyone = gather_batch(x)
        labels = None if y is None else gather_batch(y)
        if keys is not None:
            keys = gather_batch(keys)
        values = None
        if self.pairing == "label_kernel":
            values = labels if pair_by is y else gather_batch(pair_by)
        own = torch.arange(offset, offset + batch, device=x.device)
        if self.mode == "batch" and not host_coin(self.prob, draws.host):
            out = MixOutput.identity(x, y)
            out.index, out.batch_size, out.offset, out.binary, out.mixer = own, total, offset, True, type(self).__name__
            return out
        if keys is not None:
            index = keys.argsort(stable=True)[offset : offset + batch]
        elif self.pairing == "flip":
            index = total - 1 - own
        elif self.pairing == "roll":
            index = (own - 1).remainder_(total)
        else:
            index = label_kernel_index(pair_by, self.bandwidth, candidates=values, offset=offset,
                                       generator=draws.device)
        extended = torch.cat([x, gather_partner(everyone, index, like=x)])
        targets = None if y is None else torch.cat([y, labels.index_select(0, index)])
        local = torch.cat([torch.arange(batch, 2 * batch, device=x.device), torch.arange(batch, device=x.device)])
        params = self.draw_params(self.fold(extended), draws._replace(index=local))
        out = self._mix_rows(extended, targets, params, batch)
        out.index, out.batch_size, out.offset, out.remix = index, total, offset, None
        return out

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
        if self.pairing == "label_kernel":
            fields["bandwidth"] = self.bandwidth
        if self.global_pairing:
            fields["global_pairing"] = True
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


def mirror_params(params: Params, leader: Tensor) -> Params:
    """``pair`` mode: every per-sample tensor of ``params`` (first axis the batch, on ``leader``'s device)
    but ``index`` gathered by ``leader`` ``(B,)``, so that each sample uses its pair leader's draws."""
    batch = leader.shape[0]
    return {key: value.index_select(0, leader) if key != "index" and _per_sample(value, batch, leader.device) else value
            for key, value in params.items()}


def take_rows(params: Params, batch: int, rows: int) -> Params:
    """The first ``rows`` rows of every per-sample tensor of ``params`` (first axis ``batch``)."""
    return {key: value[:rows] if _per_sample(value, batch) else value for key, value in params.items()}


def _per_sample(value: Any, batch: int, device: torch.device | None = None) -> bool:
    return (isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch
            and (device is None or value.device == device))


def gather_batch(t: Tensor, group: Any = None) -> Tensor:
    """``t`` ``(B, ...)`` of every rank of ``torch.distributed``, concatenated along the batch in rank order:
    ``(world * B, ...)``, detached (an all-gather: every rank calls it, with the same ``B``).

    Under ``global_pairing`` the targets a :class:`~openmix.output.MixOutput` method takes are the global
    batch's: ``out.vector(gather_batch(values))``.
    """
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.detach().contiguous(), group=group)
    return torch.cat(parts)


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


def gather_partner(x: Tensor, index: Tensor, like: Tensor | None = None) -> Tensor:
    """``x[index]`` along the batch axis, keeping the memory format of ``x`` (or of ``like``, a tensor
    shaped like the result).

    ``index_select`` into a buffer laid out like ``x`` is the fast path; ``out=`` has no
    autograd, so inputs that need gradients take plain indexing (also layout-preserving).
    """
    if x.requires_grad and torch.is_grad_enabled():
        return x[index]
    return torch.index_select(x, 0, index, out=torch.empty_like(x if like is None else like))


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device`` (a no-op context where autocast does not exist, e.g. ``meta``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
