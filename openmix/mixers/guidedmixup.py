"""GuidedMixup (Kang & Kim, AAAI 2023): pixel-wise ratios of two saliency maps, partners paired greedily.

One step (:meth:`GuidedMixup.step`), as the official code (``3neutronstar/GuidedMixup``: root
``main.py::train`` and ``mixup.py::mixup_process``, ``FGVC/Implementor/guidedmixup.py``) does it:

1. **Saliency** ``S`` ``(B, H, W)`` of the clean batch: ``"ap"``, the RMS over channels of the input
   gradient of its cross-entropy (PuzzleMix's saliency pass,
   :func:`~openmix.mixers.puzzlemix.saliency.input_saliency`: one more forward and backward, the model in
   its own mode, i.e. train mode in training as in the official code); or ``"sr"``, the spectral residual of
   the images (:func:`~openmix.mixers.saliencymix.spectral_residual_saliency`, no model pass).
2. ``S`` blurred (Gaussian, 7x7, sigma 3) and normalised to sum 1 per image (:func:`guided_saliency`).
3. **Pairing** (:func:`greedy_pairing`): a greedy cycle through the batch over the L2 distances between the
   maps, so each sample's partner is one whose salient region lies elsewhere.
4. **Mask** ``M = S / (S + S[index])`` per pixel, ``x_mix = M * x + (1 - M) * x[index]``
   (:func:`guided_mask`); ``lam = mean(M)`` per sample, targets ``lam * y + (1 - lam) * y[index]``.
5. **Loss:** the trainer's criterion, or ``loss="bce"``: BCE of the softmax (the official root code).

**Where openmix departs, on purpose.**

- *Greedy pairing, always* (``greedy=True``). The official CIFAR/Tiny-ImageNet code is run with
  ``--condition greedy``, which ``mixup.py`` turns into ``'greedy_c'`` while ``pairing()`` tests only for
  ``'greedy'``: it silently falls back to ``np.random.permutation``. The FGVC code does pair greedily;
  OpenMixup computes the cycle and never uses it. ``greedy=False`` pairs by ``pairing`` (random), as the
  official CIFAR code in fact does.
- *The cycle on the device:* ``B - 1`` dependent steps of ``O(B)`` tensor work, no host reads (official:
  Cython on the CPU after a device-to-host copy of the distances). The cycle starts from the most distant
  pair *off the diagonal*: the official argmax over the whole matrix picks a diagonal zero when all
  distances tie, and then returns no permutation.
- *One blur.* The spectral residual comes blurred once, by its own detector (5x5; it works at most
  128 px a side, as the official); the official SR maps are blurred twice (7x7 inside the detector, 7x7 after).
- *No division by zero.* An all-zero map normalises to a uniform one, a pixel where both maps are 0
  takes 0.5 (the official code has no epsilon and gives NaN).
- *Label weights per sample*, as the official code; OpenMixup collapses them to the batch mean.
- *The trainer's loss by default* (``loss="soft_ce"``, OpenMixup's way, as every openmix model-aware
  mixer); ``loss="bce"`` is the official BCE of the softmax. ``clean_lam`` keeps the official ratio of the
  clean term to the main loss under either (:func:`~openmix.losses.clean_loss_weight`).

Example:
    >>> import torch, openmix
    >>> from openmix.training import mix_step
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 10))
    >>> mixer = openmix.build("guidedmixup", num_classes=10, prob=1.0, seed=0)
    >>> step = mix_step(model, mixer, torch.rand(8, 3, 16, 16), torch.arange(8))
    >>> torch.allclose(step.mix.lam, step.mix.mask.mean((1, 2, 3))), sorted(step.mix.index.tolist())
    (True, [0, 1, 2, 3, 4, 5, 6, 7])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from openmix.checks import check_bool, check_int, check_number
from openmix.losses import Criterion, clean_loss_weight, model_mixer_loss, soft_cross_entropy
from openmix.mixer import Draws, Params, blend, gather_partner
from openmix.mixers.puzzlemix.saliency import _saliency_pass
from openmix.mixers.saliencymix import _blur, spectral_residual_saliency
from openmix.model_mixer import ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import register
from openmix.targets import soft_targets

__all__ = ["GuidedMixup", "gaussian_taps", "guided_saliency", "spectral_residual", "greedy_cycle", "greedy_pairing",
           "guided_mask"]

SALIENCIES = ("ap", "sr")
SR_SIZE = 128  # the official spectral residual works at most 128 px a side


def gaussian_taps(size: int, sigma: float) -> tuple[float, ...]:
    """The ``size`` taps of a normalised 1-D Gaussian of ``sigma`` (torchvision's ``gaussian_blur`` kernel).

    Example:
        >>> [round(t, 4) for t in gaussian_taps(3, 1.0)]
        [0.2741, 0.4519, 0.2741]
    """
    half = (size - 1) / 2
    weights = [math.exp(-0.5 * ((i - half) / sigma) ** 2) for i in range(size)]
    return tuple(w / sum(weights) for w in weights)


def guided_saliency(saliency: Tensor, blur_size: int = 7, blur_sigma: float = 3.0) -> Tensor:
    """Saliency maps ``(B, H, W)`` blurred (``blur_size`` 0: not) and normalised to sum 1 each, float32.

    A map of zeros becomes uniform (``1 / (H * W)``) rather than NaN.

    Example:
        >>> s = guided_saliency(torch.tensor([[[0.0, 2.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]), blur_size=0)
        >>> s.tolist()
        [[[0.0, 0.5], [0.25, 0.25]], [[0.25, 0.25], [0.25, 0.25]]]
    """
    s = saliency.detach().float()
    if blur_size > 1:
        s = _blur(s.unsqueeze(1), gaussian_taps(blur_size, blur_sigma)).squeeze(1)
    total = s.sum((1, 2), keepdim=True)
    return torch.where(total > 0, s / total, 1.0 / (s.shape[1] * s.shape[2]))


def greedy_cycle(distance: Tensor) -> Tensor:
    """The partner of each sample, int64 ``(B,)``: a greedy Hamiltonian cycle through ``distance`` ``(B, B)``.

    As the official ``onecycle_cover``: the cycle starts with the most distant pair ``i -> j`` (off the
    diagonal), goes on from each sample to the most distant one it has not visited, and closes back to
    ``i``; so ``index`` is a permutation without fixed points (``B >= 2``). Ties go to the lowest index.

    Each step depends on the one before, so this is ``B - 1`` sequential steps of ``O(B)`` tensor work
    (a handful of small kernels each), all on ``distance``'s device, with no host reads.

    Example:
        >>> d = torch.tensor([[0.0, 1.0, 5.0, 2.0], [1.0, 0.0, 3.0, 4.0], [5.0, 3.0, 0.0, 1.0], [2.0, 4.0, 1.0, 0.0]])
        >>> greedy_cycle(d).tolist()  # 0 -> 2 (5), 2 -> 1 (3), 1 -> 3 (4), back to 0
        [2, 3, 1, 0]
    """
    batch, device = distance.shape[0], distance.device
    d = distance.detach().float().masked_fill(torch.eye(batch, dtype=torch.bool, device=device), -math.inf)
    flat = d.flatten().argmax()
    first, current = flat // batch, flat % batch
    if batch == 1:
        return flat.view(1)
    index = torch.empty(batch, dtype=torch.long, device=device)
    index.index_copy_(0, first.view(1), current.view(1))
    visited = torch.zeros(batch, dtype=torch.bool, device=device)
    visited.index_fill_(0, first.view(1), True)
    for _ in range(batch - 2):  # one step of the path per sample: inherently sequential
        visited.index_fill_(0, current.view(1), True)
        step = d.index_select(0, current.view(1)).squeeze(0).masked_fill_(visited, -math.inf).argmax()
        index.index_copy_(0, current.view(1), step.view(1))
        current = step
    return index.index_copy_(0, current.view(1), first.view(1))


def greedy_pairing(saliency: Tensor) -> Tensor:
    """:func:`greedy_cycle` over the L2 distances between the flattened saliency maps ``(B, H, W)``.

    Example:
        >>> maps = torch.zeros(4, 2, 2)
        >>> maps[0, 0, 0] = maps[1, 0, 0] = maps[2, 1, 1] = maps[3, 1, 1] = 1.0  # 0, 1 alike; 2, 3 alike
        >>> greedy_pairing(maps).tolist()  # each partner is salient in the other corner
        [2, 3, 1, 0]
    """
    flat = saliency.detach().float().flatten(1)
    return greedy_cycle(torch.cdist(flat, flat))


def guided_mask(saliency: Tensor, index: Tensor) -> Tensor:
    """The original's per-pixel weight ``S / (S + S[index])`` ``(B, 1, H, W)`` from saliency ``(B, H, W)``.

    A pixel where both maps are 0 takes 0.5.

    Example:
        >>> s = torch.tensor([[[3.0, 0.0]], [[1.0, 0.0]]])
        >>> guided_mask(s, torch.tensor([1, 0])).flatten(1).tolist()
        [[0.75, 0.5], [0.25, 0.5]]
    """
    own = saliency.float()
    both = own + own.index_select(0, index)
    return torch.where(both > 0, own / both, 0.5).unsqueeze(1)


@register("guidedmixup")
class GuidedMixup(ModelMixer):
    """GuidedMixup: per-pixel ratios of the two images' saliency, partners paired greedily (``"ap"`` needs the model).

    ``MixOutput.mask`` ``(B, 1, H, W)`` is the original's per-pixel weight ``S / (S + S[index])``,
    ``lam`` its mean; ``index`` is the greedy cycle (a permutation). There is no ``alpha``: the saliency
    alone sets the ratios. Defaults: the official Guided-AP CIFAR-100 run (``prob`` 0.8; Guided-SR
    runs with 0.5; Tiny-ImageNet's Guided-AP with ``clean_lam=1``).

    Use it through :func:`openmix.training.mix_step` (which calls :meth:`step`); ``mixer(x, y)`` mixes by
    the spectral residual (``saliency="sr"``) or by a saliency map you give (``saliency=...``).

    Args:
        num_classes: needed for class-id labels.
        saliency: ``"ap"`` (input gradient, one more forward and backward) or ``"sr"`` (spectral residual).
        greedy: pair by the greedy cycle (:func:`greedy_pairing`); ``False``: by ``pairing`` (the official
            CIFAR code's actual random pairing).
        blur_size, blur_sigma: Gaussian blur of the input-gradient saliency before the normalisation (7, 3;
            ``blur_size=0``: none). The spectral residual comes blurred by its own detector, once.
        clean_lam: weight of the clean loss taken from the saliency pass (``"ap"``; official Tiny-ImageNet: 1)
            (:func:`~openmix.losses.clean_loss_weight`: the official ``2 * clean_lam / num_classes * CE`` beside ``loss="bce"``,
            ``2 * clean_lam * CE`` beside the soft CE, the same ratio to the main loss), whose gradient is then kept.
        loss: ``"soft_ce"`` (the ``criterion`` of :meth:`step`) or ``"bce"`` (official: BCE of the softmax
            against the mixed targets, :func:`~openmix.losses.softmax_bce`).
        prob: probability of mixing, per batch (``batch``) or per sample (``elem``): official 0.8 (AP), 0.5 (SR).
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments (no ``alpha``); modes ``batch`` and
            ``elem``.

    Example:
        >>> import torch, openmix
        >>> mixer = openmix.build("guidedmixup", saliency="sr", num_classes=10, prob=1.0, seed=0)
        >>> out = mixer(torch.rand(6, 3, 32, 32), torch.arange(6))
        >>> out.mask.shape, bool(((out.mask > 0) & (out.mask < 1)).all())
        (torch.Size([6, 1, 32, 32]), True)
    """

    kind = "saliency"
    mixes = "pixels by ratios of the model's saliency"
    spatial_dims = (2,)
    modes = ("batch", "elem")  # the greedy cycle is no set of pairs

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        saliency: str = "ap",
        greedy: bool = True,
        blur_size: int = 7,
        blur_sigma: float = 3.0,
        clean_lam: float = 0.0,
        loss: str = "soft_ce",
        prob: float = 0.8,
        **kwargs: Any,
    ) -> None:
        if "alpha" in kwargs:
            raise TypeError("GuidedMixup takes no alpha: the two saliency maps set each pixel's mixing ratio")
        super().__init__(1.0, num_classes, prob=prob, **kwargs)
        if saliency not in SALIENCIES:
            raise ValueError(f"saliency must be one of {SALIENCIES}, got {saliency!r}")
        self.saliency = saliency
        self.greedy = check_bool("greedy", greedy)
        self.blur_size = check_int("blur_size", blur_size, 0)
        if self.blur_size and self.blur_size % 2 == 0:
            raise ValueError(f"blur_size must be odd (a centred kernel) or 0 (no blur), got {blur_size}")
        self.blur_sigma = check_number("blur_sigma", blur_sigma, low=0.0)
        if self.blur_size > 1 and self.blur_sigma == 0:
            raise ValueError("blur_sigma must be > 0 for a blur (blur_size=0 turns the blur off)")
        self.clean_lam = check_number("clean_lam", clean_lam, low=0.0)
        if self.clean_lam > 0 and (saliency != "ap" or num_classes is None):
            raise ValueError("clean_lam > 0 adds the clean loss of the saliency pass, of class-id labels: "
                             "it needs saliency='ap' and num_classes")
        model_mixer_loss(loss, soft_cross_entropy)  # checks the name
        self.loss = loss

    # ------------------------------------------------------------------ calls
    def forward(self, x: Tensor, y: Tensor, *, saliency: Tensor | None = None,
                generator: torch.Generator | None = None) -> MixOutput:
        """Mix a batch by a saliency map ``(B, H, W)``; with ``saliency="sr"`` it may be left out (computed here).

        ``saliency="ap"`` needs the model: in training, use :func:`openmix.training.mix_step` / :meth:`step`.
        """
        if saliency is None and self.saliency == "ap":
            raise TypeError(
                "GuidedMixup with saliency='ap' needs the model's input gradient: train with "
                "openmix.training.mix_step(model, mixer, x, y) (it calls mixer.step), or pass "
                "saliency=openmix.mixers.puzzlemix.input_saliency(model, x, y)"
            )
        self.check_inputs(x)
        y = soft_targets(y, self.num_classes, self.label_smoothing, batch=x.shape[0])
        if saliency is not None:
            saliency = self._check_saliency(saliency, x)
        params = self.sample_params(x, generator=generator)
        if params.get("identity", False):
            return MixOutput.identity(x, y)
        self._pair(params, spectral_residual(x) if saliency is None else guided_saliency(saliency, self.blur_size,
                                                                                           self.blur_sigma))
        return self.apply_params(x, y, params)

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """Saliency (a pass of the model for ``"ap"``), greedy pairing, the mix, and the loss on it."""
        clean = None
        if self.saliency == "ap":
            weight = clean_loss_weight(self.clean_lam, self.num_classes, self.loss)
            raw, _, clean = _saliency_pass(model, x, soft, clean_weight=weight, eval_mode=not model.training)
            self._pair(params, guided_saliency(raw, self.blur_size, self.blur_sigma))
        else:
            self._pair(params, spectral_residual(x))
        return self.train_on_mix(model, self.apply_params(x, soft, params), criterion, clean)

    def loss_for(self, criterion: Criterion) -> Criterion:
        """``criterion`` (``loss="soft_ce"``) or :func:`~openmix.losses.softmax_bce` (``loss="bce"``)."""
        return model_mixer_loss(self.loss, criterion)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """``index`` (``pairing``'s draw; the greedy cycle replaces it once the saliency is known) and, in
        ``elem`` mode with ``prob < 1``, ``skip`` ``(B,)``: the samples left unmixed. No ``lam`` is drawn:
        a placeholder of ones stands in until :meth:`mix`."""
        batch, device = x.shape[0], x.device
        params: Params = {"index": self.draw_index(x, draws), "lam": torch.ones(batch, device=device)}
        if self.mode == "elem" and self.prob < 1.0:
            params["skip"] = torch.rand(batch, device=device, generator=draws.device, dtype=torch.float32) >= self.prob
        return params

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        """``params`` needs ``index`` and ``saliency`` ``(B, H, W)`` (normalised, :func:`guided_saliency`)."""
        mask = guided_mask(params["saliency"], params["index"])
        if "skip" in params:
            mask = mask.masked_fill(params["skip"].view(-1, 1, 1, 1), 1.0)
        mixed = blend(x, gather_partner(x, params["index"]), mask)
        return mixed, mask.mean((1, 2, 3)), mask

    # ------------------------------------------------------------------ internals
    def _pair(self, params: Params, saliency: Tensor) -> None:
        """Put the normalised ``saliency`` in ``params`` and, with ``greedy``, the greedy cycle as ``index``."""
        params["saliency"] = saliency
        if self.greedy:
            params["index"] = greedy_pairing(saliency)

    def _check_saliency(self, saliency: Tensor, x: Tensor) -> Tensor:
        if not isinstance(saliency, Tensor):
            raise TypeError(f"saliency must be a torch.Tensor, got {type(saliency).__name__}")
        if saliency.ndim == 4 and saliency.shape[1] == 1:
            saliency = saliency[:, 0]
        expected = (x.shape[0],) + tuple(x.shape[2:])
        if tuple(saliency.shape) != expected:
            raise ValueError(f"saliency must be (B, H, W) = {expected}, got {tuple(saliency.shape)}")
        return saliency

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        del fields["alpha"]
        fields.update(saliency=self.saliency, greedy=self.greedy, loss=self.loss)
        if (self.blur_size, self.blur_sigma) != (7, 3.0):
            fields.update(blur_size=self.blur_size, blur_sigma=self.blur_sigma)
        if self.clean_lam:
            fields["clean_lam"] = self.clean_lam
        return fields


def spectral_residual(x: Tensor) -> Tensor:
    """GuidedMixup's SR saliency of images ``(B, C, H, W)``: the spectral residual's magnitude, blurred once by
    its detector, at most 128 px a side, normalised to sum 1 per image (:func:`guided_saliency`, no more blur).

    Example:
        >>> s = spectral_residual(torch.rand(2, 3, 16, 16))
        >>> s.shape, torch.allclose(s.sum((1, 2)), torch.ones(2))
        (torch.Size([2, 16, 16]), True)
    """
    return guided_saliency(spectral_residual_saliency(x, size=SR_SIZE).sqrt(), blur_size=0)
