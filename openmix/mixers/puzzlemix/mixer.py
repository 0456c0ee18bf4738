"""The PuzzleMix mixer: one training step of saliency, optimal block masks, transport and loss.

One step (:meth:`PuzzleMix.step`), as the official code (``snu-mllab/PuzzleMix``:
``main.py::train``, ``mixup.py::mixup_graph``) does it:

1. **Saliency** ``(B, H, W)`` of the clean batch (:func:`~openmix.mixers.puzzlemix.saliency.input_saliency`).
2. **Mask** ``(B, G, G)`` on a ``G x G`` block grid, ``G`` drawn per step from ``block_nums``,
   minimising the official energy (:mod:`~openmix.mixers.puzzlemix.energy`) with the batched
   solver (:mod:`~openmix.mixers.puzzlemix.solver`).
3. **Transport** of both images' cells towards where they stay visible
   (:mod:`~openmix.mixers.puzzlemix.transport`), on the block grid or, when ``t_size``
   divides the block side, on a finer grid of ``t_size``-pixel cells.
4. ``x_mix = m * T(x) + (1 - m) * T'(x[index])``, ``lam`` = the mean of the mask, targets
   ``lam * y + (1 - lam) * y[index]``.

Image sizes: square images whose side every ``G`` divides (else a ``ValueError``); with
``block_nums=None`` the grids are those of the official ``{2, 4, 8, 16}`` that divide the side
(CIFAR's 32 px: all four; Fashion-MNIST's 28 px: ``(2, 4)``). Per-dataset settings (ImageNet:
``t_size=-1``, ``block_nums=(2, 4, 8)``), the transport's memory and the work the saliency,
energy and transport share: ``docs/puzzlemix.md``.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from openmix.checks import check_number
from openmix.losses import Criterion, clean_loss_weight, model_mixer_loss, soft_cross_entropy
from openmix.mixer import DataInfo, Draws, Params, gather_partner
from openmix.mixers.puzzlemix.energy import block_saliency, puzzle_problem
from openmix.pixels import denormalize, normalize
from openmix.mixers.puzzlemix.saliency import _saliency_pass
from openmix.mixers.puzzlemix.solver import SOLVERS, solve_puzzle
from openmix.mixers.puzzlemix.transport import mask_transport, transport_blocks
from openmix.model_mixer import ModelMixer
from openmix.output import IDENTITY_LAYOUT, Layout, MixOutput, StepResult
from openmix.registry import register
from openmix.sampling import host_coin
from openmix.targets import soft_targets

__all__ = ["PuzzleMix"]

OFFICIAL_GRIDS = (2, 4, 8, 16)  # block_num = 2 ** randint(1, 5) in the official code
TRANSPORT_WARN_BYTES = 2 * 2**30  # warn (once per mixer) when the transport's cost tensor is larger


@register("puzzlemix")
class PuzzleMix(ModelMixer):
    """PuzzleMix: optimised saliency-preserving block masks with transport (needs the model).

    Use it through :func:`openmix.training.mix_step` (which calls :meth:`step`),
    or call it with a saliency map: ``mixer(x, y, saliency=s)``. Defaults are the official
    CIFAR-100 run and OpenMixup's CIFAR config (its ImageNet config:
    ``t_size=-1``, ``block_nums=(2, 4, 8)``). ``MixOutput.mask`` ``(B, 1, H, W)`` weighs the
    *transported* own image: ``x_mix = mask * T(x) + (1 - mask) * T'(x[index])`` (without
    ``transport``, ``T`` is the identity); ``lam`` is its mean.

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)`` (one per batch in ``"batch"`` mode, as official). Modes
            ``batch`` and ``elem`` only: a pair cannot share one mask, since each sample's is solved
            from its own and its partner's saliency.
        num_classes: needed for class-id labels.
        block_nums: the grid sides ``G`` to draw from, uniformly, each step; ``None``: those of the
            official ``{2, 4, 8, 16}`` that divide the image side (28 px: ``(2, 4)``).
        beta, gamma, eta: smoothness, data-smoothness and prior weights of the energy.
        neigh_size: pooling of the images for the data term.
        n_labels: mask levels (3: ``{1, 0.5, 0}``).
        transport: move blocks towards where they stay visible.
        t_eps: distance weight of the transport cost.
        t_size: transport cell side (pixels); ``-1`` = the block. The transport holds ``2 B N^2``
            floats for ``N`` cells, so small cells on large images warn once above 2 GiB.
        clean_lam: weight of the clean loss of the saliency pass (official Tiny-ImageNet: 1)
            (:func:`~openmix.losses.clean_loss_weight`: the official ``2 * clean_lam / num_classes * CE`` beside ``loss="bce"``,
            ``2 * clean_lam * CE`` beside the soft CE, the same ratio to the main loss); its forward runs in train mode and its gradient is kept.
        adv_p: probability of the adversarial step, drawn once per side (own, partner).
        adv_eps: its radius in pixel units of 1/255.
        loss: ``"soft_ce"`` (the ``criterion`` of :meth:`step`, OpenMixup) or ``"bce"``
            (official: BCE of the softmax against the mixed targets, :func:`~openmix.losses.softmax_bce`).
        mean, std: the per-channel normalisation of the inputs, for the data term and the
            adversarial step; ``None``: the data's (:meth:`configure_data`, which
            ``MixupClassifier`` calls), or inputs in ``[0, 1]`` where none is given.
        solver, solver_iters: see :func:`solve_puzzle`.
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments.

    Example:
        >>> import torch, openmix
        >>> from openmix.training import mix_step
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 10))
        >>> mixer = openmix.build("puzzlemix", num_classes=10, block_nums=(2, 4), seed=0)
        >>> step = mix_step(model, mixer, torch.rand(8, 3, 16, 16), torch.arange(8))
        >>> torch.allclose(step.mix.lam, step.mix.mask.mean((1, 2, 3)))
        True
    """

    kind = "saliency"
    mixes = "blocks chosen by the model's saliency"
    pure_mix = False  # mix() solves the masks from the saliency: targets follow the recorded layout instead
    spatial_dims = (2,)
    modes = ("batch", "elem")  # no pair mode: each mask is solved from both saliency maps, one per sample

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        block_nums: Sequence[int] | int | None = None,
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        neigh_size: int = 4,
        n_labels: int = 3,
        transport: bool = True,
        t_eps: float = 0.8,
        t_size: int = 4,
        clean_lam: float = 0.0,
        adv_p: float = 0.0,
        adv_eps: float = 10.0,
        loss: str = "soft_ce",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        solver: str = "auto",
        solver_iters: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        nums = None if block_nums is None else (block_nums,) if isinstance(block_nums, int) else tuple(block_nums)
        if nums is not None and (not nums or any(isinstance(g, bool) or not isinstance(g, int) or g < 2 for g in nums)):
            raise ValueError(f"block_nums must be integers >= 2 (or None: the official grids that fit), got {block_nums!r}")
        for name, value in (("neigh_size", neigh_size), ("n_labels", n_labels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "n_labels" else 1):
                raise ValueError(f"{name} must be an integer >= {2 if name == 'n_labels' else 1}, got {value!r}")
        if isinstance(t_size, bool) or not isinstance(t_size, int) or not (t_size == -1 or t_size >= 1):
            raise ValueError(f"t_size must be -1 (the block) or an integer >= 1, got {t_size!r}")
        for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta), ("t_eps", t_eps), ("clean_lam", clean_lam), ("adv_eps", adv_eps)):
            check_number(name, value, low=0.0)
        check_number("adv_p", adv_p, low=0.0, high=1.0)
        model_mixer_loss(loss, soft_cross_entropy)  # checks the name
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if solver_iters is not None and (isinstance(solver_iters, bool) or not isinstance(solver_iters, int) or solver_iters < 0):
            raise ValueError(f"solver_iters must be None or an integer >= 0, got {solver_iters!r}")
        if clean_lam > 0 and num_classes is None:
            raise ValueError("clean_lam > 0 adds the clean loss of class-id labels: pass num_classes")
        self.block_nums = nums
        self.beta, self.gamma, self.eta = float(beta), float(gamma), float(eta)
        self.neigh_size, self.n_labels = neigh_size, n_labels
        self.transport, self.t_eps, self.t_size = bool(transport), float(t_eps), t_size
        self.clean_lam, self.adv_p, self.adv_eps = float(clean_lam), float(adv_p), float(adv_eps)
        self.loss = loss
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.solver, self.solver_iters = solver, solver_iters
        self._stats_cache: dict[Any, tuple[Tensor | None, Tensor | None]] = {}
        self._warned_transport = False

    # ------------------------------------------------------------------ calls
    def forward(self, x: Tensor, y: Tensor, *, saliency: Tensor | None = None,
                generator: torch.Generator | None = None) -> MixOutput:
        """Mix a batch given its saliency map ``(B, H, W)`` (see :func:`input_saliency`).

        PuzzleMix computes the saliency from the model: in training, use
        :func:`openmix.training.mix_step` / :meth:`step` (the adversarial step, ``adv_p``, needs it).
        """
        if saliency is None:
            raise TypeError(
                "PuzzleMix needs the model's saliency: train with openmix.training.mix_step(model, mixer, x, y) "
                "(it calls mixer.step), or pass saliency=openmix.mixers.puzzlemix.input_saliency(model, x, y)"
            )
        self.check_inputs(x)
        y = soft_targets(y, self.num_classes, self.label_smoothing, batch=x.shape[0])
        saliency = self._check_saliency(saliency, x)
        params = self.sample_params(x, generator=generator)
        if params.get("identity", False):
            return MixOutput.identity(x, y)
        params["saliency"] = saliency
        return self.apply_params(x, y, params)

    def configure_data(self, data: DataInfo) -> None:
        """``mean``/``std`` from the data unless given; ``block_nums`` (when ``None``): the official
        grids that divide the data's image side."""
        if self.mean is None and self.std is None and data.mean is not None:
            self.mean, self.std = tuple(data.mean), None if data.std is None else tuple(data.std)
            self._stats_cache = {}
        if self.block_nums is None and data.image_size is not None:
            self.block_nums = self._grids(data.image_size)

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """Saliency pass, masks, transport, loss on the mixed batch (plus the clean loss when ``clean_lam > 0``)."""
        noise, x_sal = None, x
        if "adv" in params:  # random start, in pixel space (official main.py)
            mean, std = self._stats(x)
            pixels = denormalize(x.detach(), mean, std)
            noisy = (pixels + params["adv_start"]).clamp_(0.0, 1.0)
            noise = noisy - pixels
            x_sal = normalize(noisy, mean, std).to(x.dtype)
        weight = clean_loss_weight(self.clean_lam, self.num_classes, self.loss)
        saliency, grad, clean = _saliency_pass(model, x_sal, soft, clean_weight=weight, eval_mode=weight == 0)
        params["saliency"] = saliency
        if noise is not None:  # one FGSM step along the saliency gradient, scaled by u ~ U(0, 1)
            eps, step = self.adv_eps / 255.0, (self.adv_eps + 2.0) / 255.0
            params["noise"] = (noise + step * grad.sign().to(noise.dtype)).clamp_(-eps, eps).mul_(params["adv_coef"])
        return self.train_on_mix(model, self.apply_params(x, soft, params), criterion, clean)

    def loss_for(self, criterion: Criterion) -> Criterion:
        """``criterion`` (``loss="soft_ce"``) or :func:`~openmix.losses.softmax_bce` (``loss="bce"``)."""
        return model_mixer_loss(self.loss, criterion)

    def check_inputs(self, x: Tensor) -> None:
        """The common checks, then square images whose side every grid divides."""
        super().check_inputs(x)
        self._check_size(x)

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """Adds ``block_num``, the grid side ``G`` of this call (a host int); with ``adv_p > 0``, the
        adversarial coins ``adv`` (own, partner), and when either is on, the random start
        ``adv_start`` (pixel units, like ``x``) and the FGSM scale ``adv_coef``, all from this call's streams."""
        params = super().draw_params(x, draws)
        params["block_num"] = self._pick_block_num(draws.host, x.shape[-1])
        if self.adv_p > 0:
            adv = (host_coin(self.adv_p, draws.host), host_coin(self.adv_p, draws.host))
            if any(adv):
                eps = self.adv_eps / 255.0
                params["adv"] = adv
                params["adv_start"] = torch.empty_like(x).uniform_(-eps, eps, generator=draws.device)
                params["adv_coef"] = float(torch.rand((), generator=draws.host, dtype=torch.float32))
        return params

    def mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        """``params`` needs ``lam``, ``index``, ``block_num`` and ``saliency`` ``(B, H, W)``;
        optional ``noise`` (pixel units) with ``adv`` (own, partner) flags."""
        with torch.no_grad():
            return self._mix(x, params)

    # ------------------------------------------------------------------ internals
    def _mix(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor, Tensor]:
        batch, _, height, width = x.shape
        grid = int(params["block_num"])  # a host int (or a CPU tensor in hand-built params)
        index, lam = params["index"], params["lam"]
        self._check_size(x, (grid,))
        block = height // grid
        t = self._transport_cell(block)
        # one pooling of the full map, at the finest grid needed; the energy sums it into blocks
        cells = height // t if self.transport else grid
        if self.transport:
            self._check_transport_memory(batch, cells, height)
        s_cells = block_saliency(params["saliency"].float(), cells)
        mean, std = self._stats(x)
        problem = puzzle_problem(s_cells, x, index, lam, grid, beta=self.beta, gamma=self.gamma, eta=self.eta,
                                 neigh_size=self.neigh_size, n_labels=self.n_labels, mean=mean, std=std)
        labels = solve_puzzle(problem, method=self.solver, iters=self.solver_iters)
        mask = 1.0 - labels.float() / (self.n_labels - 1)  # (B, G, G)
        mask = torch.where((lam >= 1.0).view(batch, 1, 1), 1.0, mask)  # lam = 1 (prob-skipped, alpha 0): unmixed

        own, partner = x, gather_partner(x, index)
        if "noise" in params:
            adv_own, adv_partner = (bool(v) for v in params.get("adv", (True, True)))
            pixels = denormalize(x, mean, std)
            if adv_own:
                own = normalize((pixels + params["noise"]).clamp_(0.0, 1.0), mean, std).to(x.dtype)
            if adv_partner:
                moved = (gather_partner(pixels, index) + params["noise"].index_select(0, index)).clamp_(0.0, 1.0)
                partner = normalize(moved, mean, std).to(x.dtype)
        if self.transport:
            cell_mask = mask.repeat_interleave(cells // grid, 1).repeat_interleave(cells // grid, 2) if cells != grid else mask
            both = mask_transport(torch.cat([cell_mask, 1.0 - cell_mask]), torch.cat([s_cells, s_cells.index_select(0, index)]), self.t_eps)
            own = transport_blocks(own, both[:batch], cells)
            partner = transport_blocks(partner, both[batch:], cells)
            params["transport_plan"] = (both[:batch], both[batch:], cells)  # for layout(): targets follow the blocks
        weight = mask.repeat_interleave(block, 1).repeat_interleave(block, 2).unsqueeze(1)  # (B, 1, H, W)
        mixed = torch.empty_like(x)
        torch.lerp(partner, own, weight.to(x.dtype), out=mixed)
        return mixed, mask.flatten(1).mean(1), weight

    def binary_mask(self, params: Params) -> bool:
        """With two labels every block shows one image; with three (the default) a block may be a 50/50 blend."""
        return self.n_labels == 2

    def layout(self, params: Params, x: Tensor) -> Layout:
        """With transport, both images' blocks moved (:class:`TransportLayout`); without, as they were."""
        plan = params.get("transport_plan")
        return IDENTITY_LAYOUT if plan is None else TransportLayout(*plan)

    def _stats(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``mean``/``std`` as tensors on ``x``'s device, made once: a host-to-device copy waits
        for the device, so it must not happen every call."""
        key = (x.device, x.dtype)
        if key not in self._stats_cache:
            self._stats_cache[key] = tuple(None if v is None else torch.tensor(v, dtype=x.dtype, device=x.device)
                                           for v in (self.mean, self.std))
        return self._stats_cache[key]

    def _check_transport_memory(self, batch: int, cells: int, side: int) -> None:
        """Warn once when the transport's cost tensor, ``2 B N^2`` float32 for ``N = cells^2`` (both
        images of every pair), exceeds ``TRANSPORT_WARN_BYTES``: 4.7 GiB for 64 images of 224 px
        in 4-pixel cells."""
        size = 2 * batch * cells**4 * 4
        if size <= TRANSPORT_WARN_BYTES or self._warned_transport:
            return
        self._warned_transport = True
        warnings.warn(
            f"PuzzleMix transports {side}x{side} images in {side // cells}-pixel cells (t_size={self.t_size}), a "
            f"{cells}x{cells} grid whose cost tensor holds {size / 2**30:.1f} GiB for this batch of {batch}; "
            "t_size=-1 transports whole blocks (OpenMixup's ImageNet setting)",
            stacklevel=2,
        )

    def _grids(self, side: int) -> tuple[int, ...]:
        """The grid sides a call on images of side ``side`` draws from: ``block_nums``, or the official ones that divide it."""
        if self.block_nums is not None:
            return self.block_nums
        return tuple(g for g in OFFICIAL_GRIDS if side % g == 0)

    def _pick_block_num(self, host: torch.Generator | None, side: int) -> int:
        grids = self._grids(side)
        if len(grids) == 1:
            return grids[0]
        return grids[int(torch.randint(len(grids), (), generator=host))]

    def _transport_cell(self, block: int) -> int:
        """Transport cell side: ``t_size`` when it sub-divides the block, else the block."""
        if self.t_size == -1 or self.t_size >= block or block % self.t_size:
            return block
        return self.t_size

    def _check_size(self, x: Tensor, nums: Sequence[int] | None = None) -> None:
        height, width = x.shape[-2:]
        if height != width:
            raise ValueError(f"PuzzleMix needs square images (a G x G block grid), got {height}x{width}")
        if nums is None and self.block_nums is None:
            if not self._grids(height):
                raise ValueError(f"none of the official grid sides {OFFICIAL_GRIDS} divides the image side {height}: "
                                 f"pass block_nums from {_divisors(height)} (or pad the images)")
            return
        bad = [g for g in (nums or self.block_nums) if height % g]
        if bad:
            raise ValueError(
                f"block_num {bad} does not divide the image side {height}: pass block_nums from {_divisors(height)} "
                f"(or pad the images)"
            )

    def _check_saliency(self, saliency: Tensor, x: Tensor) -> Tensor:
        if not isinstance(saliency, Tensor):
            raise TypeError(f"saliency must be a torch.Tensor, got {type(saliency).__name__}")
        if saliency.ndim == 4 and saliency.shape[1] == 1:
            saliency = saliency[:, 0]
        if saliency.shape != (x.shape[0],) + tuple(x.shape[2:]):
            raise ValueError(f"saliency must be (B, H, W) = {(x.shape[0],) + tuple(x.shape[2:])}, got {tuple(saliency.shape)}")
        return saliency.detach()

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields.update(block_nums=self.block_nums, beta=self.beta, gamma=self.gamma, eta=self.eta,
                      neigh_size=self.neigh_size, n_labels=self.n_labels, transport=self.transport,
                      t_eps=self.t_eps, t_size=self.t_size, loss=self.loss)
        for name in ("clean_lam", "adv_p"):
            if getattr(self, name):
                fields[name] = getattr(self, name)
        if self.mean is not None or self.std is not None:
            fields.update(mean=self.mean, std=self.std)
        if self.solver != "auto" or self.solver_iters is not None:
            fields.update(solver=self.solver, solver_iters=self.solver_iters)
        return fields


class TransportLayout(Layout):
    """PuzzleMix's layout with transport: each image's cells moved by its plan (``(B, N)`` source cell of
    every target cell on a ``cells x cells`` grid, :func:`~openmix.mixers.puzzlemix.transport.mask_transport`).
    Tensors follow the cells; points cannot (a cell permutation has no point map worth the name)."""

    def __init__(self, own_plan: Tensor, partner_plan: Tensor, cells: int) -> None:
        self.own_plan, self.partner_plan, self.cells = own_plan, partner_plan, cells

    def own(self, t: Tensor, nearest: bool = False, fill: float = 0.0) -> Tensor:
        return _transported(t, self.own_plan, self.cells, fill)

    def partner(self, t: Tensor, nearest: bool = False, fill: float = 0.0) -> Tensor:
        return _transported(t, self.partner_plan, self.cells, fill)

    def move_own(self, points: Tensor) -> None:
        return None

    def move_partner(self, points: Tensor) -> None:
        return None


def _transported(t: Tensor, plan: Tensor, cells: int, fill: float) -> Tensor:
    """``t`` ``(B, K, ..., H, W)`` with its cells moved by ``plan`` (leading axes folded into ``K``)."""
    return transport_blocks(t.flatten(1, -3), plan, cells, fill).view(t.shape)


def _divisors(side: int) -> list[int]:
    """The grid sides from 2 to 32 that divide ``side``."""
    return [g for g in range(2, min(side, 32) + 1) if side % g == 0]
