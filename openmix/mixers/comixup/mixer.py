"""The Co-Mixup mixer: one training step of saliency, whole-partition block labellings, mixing and loss.

One step (:meth:`CoMixup.step`), as the official code (``snu-mllab/Co-Mixup``: ``main.py::train``,
``mixup.py::mixup_process``, ``match.py``) does it:

1. **Saliency** ``(B, H, W)``: the RMS over channels of the input gradient of the clean batch's loss
   (:func:`~openmix.mixers.puzzlemix.saliency.input_saliency`). With ``clean_lam > 0`` (official: 1) that
   forward runs in train mode and its clean CE keeps its graph: it is added to the step's loss (the
   official keeps its parameter gradients), weighted as :func:`~openmix.losses.clean_loss_weight` says (the
   official ``2 * clean_lam / num_classes`` beside its BCE, ``2 * clean_lam`` beside the soft CE: the same
   ratio to the main loss); with 0, eval mode, no gradient.
2. **Partitions** of ``partition`` samples (official ``m_part`` = 20) of a random permutation of the batch
   (the official takes consecutive samples); a short last partition mixes its own samples only
   (:func:`~openmix.mixers.comixup.objective.comixup_problem`; one sample is left unmixed).
3. **Labelling**: each partition's ``m`` outputs, every block of a ``block_num x block_num`` grid labelled
   with one of its ``m`` inputs, minimising the official objective (block saliency, Potts smoothness,
   thresholded supermodular diversity with the compatibility matrix, a Dirichlet(``alpha``) prior drawn
   per partition) with the batched solver (:func:`~openmix.mixers.comixup.solver.solve_comixup`).
4. **Mixing**: ``x_out[j] = sum_i M_ji * x_i`` block by block (every pixel from one input); targets are
   the inputs' targets weighted by their block counts (the official ``mix_input`` with ``sc=None``).
5. **Loss**: the trainer's criterion (``loss="soft_ce"``, OpenMixup's way) or the official BCE of the
   softmax (``loss="bce"``), plus the clean term of step 1.

Outputs are exchangeable in the objective, so each partition's outputs are given to its rows by a
greedy matching of block counts: row ``i`` is the output that takes most from ``x[i]`` where that is
possible. :class:`~openmix.output.MixOutput` then holds ``sources`` ``(B, K)`` (``K = min(m, G^2)``,
the most inputs one output can show: the row's own sample first, then the others by share, zero
weights for inputs it does not show), their per-pixel ``source_masks`` ``(B, K, H, W)``, ``lam`` = the
own sample's share (0 where the output shows none of it), ``index`` = the largest other source, and
``binary=True``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from openmix.checks import check_int, check_number
from openmix.losses import Criterion, clean_loss_weight, model_mixer_loss, soft_cross_entropy
from openmix.mixer import Draws, Params
from openmix.mixers.comixup.objective import block_counts, comixup_problem
from openmix.mixers.comixup.solver import RESTARTS, SWEEPS, solve_comixup
from openmix.mixers.puzzlemix.saliency import _saliency_pass
from openmix.model_mixer import ModelMixer
from openmix.output import MixOutput, StepResult
from openmix.registry import register
from openmix.targets import soft_targets

__all__ = ["CoMixup", "match_outputs"]


@register("comixup")
class CoMixup(ModelMixer):
    """Co-Mixup: every output mixes blocks of several inputs of its partition, chosen jointly (needs the model).

    Use it through :func:`openmix.training.mix_step` (which calls :meth:`step`), or call it with a
    saliency map: ``mixer(x, y, saliency=s)``. The defaults are the official CIFAR-100 run's.

    Args:
        alpha: concentration of the Dirichlet prior over a partition's inputs (official ``mixup_alpha``
            2.0); ``0`` disables mixing.
        num_classes: needed for class-id labels (and for ``clean_lam > 0``).
        block_num: the grid side ``G`` (official ``m_block_num`` 4), or several to draw one from each step
            (the official ``-1`` is ``(2, 4, 8, 16)``); ``G`` must divide the image's height and width.
        partition: samples per partition (official ``m_part`` 20); the outputs of a partition mix its inputs.
        beta: smoothness (official ``m_beta`` 0.32).
        gamma: diversity (official ``m_gamma`` 1.0).
        eta: weight of the prior (official ``m_eta`` 0.05).
        thres: the hard threshold of the diversity term, in images (official ``m_thres`` 0.83).
        omega: weight of the saliency-distance compatibility (official ``m_omega`` 0.001).
        clean_lam: weight of the clean loss of the saliency pass (official 1.0; 0: the pass runs in eval mode
            and adds nothing) (:func:`~openmix.losses.clean_loss_weight`: the official ``2 * clean_lam / num_classes * CE`` beside ``loss="bce"``,
            ``2 * clean_lam * CE`` beside the soft CE, the same ratio to the main loss).
        loss: ``"soft_ce"`` (the ``criterion`` of :meth:`step`) or ``"bce"`` (official: BCE of the softmax,
            :func:`~openmix.losses.softmax_bce`).
        sweeps, restarts, candidates: the solver's (:func:`~openmix.mixers.comixup.solver.solve_comixup`).
        **kwargs: the common :class:`~openmix.mixer.Mixer` arguments (``mode="batch"``, ``prob`` per batch).

    Example:
        >>> import torch, openmix
        >>> from openmix.training import mix_step
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 10))
        >>> mixer = openmix.build("comixup", num_classes=10, partition=4, seed=0)
        >>> step = mix_step(model, mixer, torch.rand(8, 3, 16, 16), torch.arange(8))
        >>> ids, weights = step.mix.sources
        >>> ids.shape, torch.allclose(weights.sum(1), torch.ones(8))  # each output: up to 4 inputs of its partition
        (torch.Size([8, 4]), True)
    """

    kind = "saliency"
    mixes = "blocks of several inputs chosen by the model's saliency"
    pure_mix = False  # the labelling is solved from the saliency inside
    spatial_dims = (2,)
    modes = ("batch",)  # one joint problem per partition: no per-sample draw to make

    def __init__(
        self,
        alpha: float = 2.0,
        num_classes: int | None = None,
        *,
        block_num: int | Sequence[int] = 4,
        partition: int = 20,
        beta: float = 0.32,
        gamma: float = 1.0,
        eta: float = 0.05,
        thres: float = 0.83,
        omega: float = 0.001,
        clean_lam: float = 1.0,
        loss: str = "soft_ce",
        sweeps: int = SWEEPS,
        restarts: int = RESTARTS,
        candidates: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, num_classes, **kwargs)
        nums = (block_num,) if isinstance(block_num, int) and not isinstance(block_num, bool) else tuple(block_num)
        if not nums or any(isinstance(g, bool) or not isinstance(g, int) or g < 2 for g in nums):
            raise ValueError(f"block_num must be an integer >= 2 or a sequence of them, got {block_num!r}")
        if self.pairing != "random" or self.global_pairing:
            raise ValueError("CoMixup partitions the batch by a random permutation: pairing and global_pairing do not "
                             f"apply (got pairing={self.pairing!r}, global_pairing={self.global_pairing})")
        for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta), ("thres", thres), ("clean_lam", clean_lam)):
            check_number(name, value, low=0.0)
        check_number("omega", omega, low=0.0, high=1.0)
        model_mixer_loss(loss, soft_cross_entropy)  # checks the name
        if clean_lam > 0 and num_classes is None:
            raise ValueError("clean_lam > 0 adds the clean loss of class-id labels: pass num_classes")
        self.block_num = nums[0] if len(nums) == 1 else nums
        self._block_nums = nums
        self.partition = check_int("partition", partition, 1)
        self.beta, self.gamma, self.eta, self.thres, self.omega = float(beta), float(gamma), float(eta), float(thres), float(omega)
        self.clean_lam, self.loss = float(clean_lam), loss
        self.sweeps, self.restarts = check_int("sweeps", sweeps, 1), check_int("restarts", restarts, 1)
        self.candidates = None if candidates is None else check_int("candidates", candidates, 1)

    # ------------------------------------------------------------------ calls
    def forward(self, x: Tensor, y: Tensor | None = None, *, saliency: Tensor | None = None,
                generator: torch.Generator | None = None) -> MixOutput:
        """Mix a batch given its saliency map ``(B, H, W)`` (see :func:`~openmix.mixers.puzzlemix.input_saliency`).

        Co-Mixup computes the saliency from the model: in training, use :func:`openmix.training.mix_step` /
        :meth:`step` (it also adds the clean loss).
        """
        if saliency is None:
            raise TypeError(
                "CoMixup needs the model's saliency: train with openmix.training.mix_step(model, mixer, x, y) "
                "(it calls mixer.step), or pass saliency=openmix.mixers.puzzlemix.input_saliency(model, x, y)"
            )
        self.check_inputs(x)
        if y is not None:
            y = soft_targets(y, self.num_classes, self.label_smoothing, batch=x.shape[0])
        if not isinstance(saliency, Tensor) or saliency.shape != (x.shape[0],) + tuple(x.shape[2:]):
            shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
            raise ValueError(f"saliency must be (B, H, W) = {(x.shape[0],) + tuple(x.shape[2:])}, got {shape}")
        params = self.sample_params(x, generator=generator)
        if not params.get("identity", False):
            params["saliency"] = saliency.detach()
        return self.apply_params(x, y, params)

    def mixed_step(self, model: nn.Module, x: Tensor, soft: Tensor, params: Params, criterion: Criterion) -> StepResult:
        """Saliency pass (with the clean loss when ``clean_lam > 0``), labellings, mixing, loss on the mixed batch."""
        weight = clean_loss_weight(self.clean_lam, self.num_classes, self.loss)
        saliency, _, clean = _saliency_pass(model, x, soft, clean_weight=weight, eval_mode=weight == 0)
        params["saliency"] = saliency
        return self.train_on_mix(model, self.apply_params(x, soft, params), criterion, clean)

    def loss_for(self, criterion: Criterion) -> Criterion:
        """``criterion`` (``loss="soft_ce"``) or :func:`~openmix.losses.softmax_bce` (``loss="bce"``)."""
        return model_mixer_loss(self.loss, criterion)

    def check_inputs(self, x: Tensor) -> None:
        """The common checks, then images whose sides every ``block_num`` divides."""
        super().check_inputs(x)
        height, width = x.shape[-2:]
        bad = [g for g in self._block_nums if height % g or width % g]
        if bad:
            sides = [g for g in range(2, min(height, width, 32) + 1) if height % g == 0 and width % g == 0]
            raise ValueError(f"block_num {bad} does not divide the image sides {height}x{width}: pass block_num from "
                             f"{sides} (or pad the images)")

    def draw_params(self, x: Tensor, draws: Draws) -> Params:
        """This call's draws: ``block_num`` (a host int), the permutation ``order`` ``(B,)`` that fills the
        partitions, the Dirichlet ``prior`` ``(P, m)`` and the solver's random ``starts``, on ``x.device``
        (``lam`` and ``index`` are placeholders: the solve decides the shares); ``alpha = 0`` gives the identity."""
        batch, device = x.shape[0], x.device
        if self.alpha == 0:
            return {"lam": torch.ones(batch, device=device, dtype=torch.float32), "index": torch.arange(batch, device=device),
                    "identity": True}
        nums = self._block_nums
        grid = nums[0] if len(nums) == 1 else nums[int(torch.randint(len(nums), (), generator=draws.host))]
        slots, n_parts = min(self.partition, batch), -(-batch // self.partition)
        order = torch.randperm(batch, device=device, generator=draws.device)
        gammas = torch._standard_gamma(torch.full((n_parts, slots), self.alpha, device=device, dtype=torch.float32),
                                       generator=draws.device)
        present = (torch.arange(n_parts * slots, device=device) < batch).view(n_parts, slots)
        gammas = gammas * present
        prior = gammas / gammas.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        starts = torch.rand((n_parts * self.restarts, slots, grid, grid), device=device, generator=draws.device,
                            dtype=torch.float32)
        # lam and index are the solve's (shares of the blocks): the draw holds placeholders in their dtypes
        return {"lam": torch.ones(batch, device=device, dtype=torch.float32), "index": torch.arange(batch, device=device),
                "block_num": grid, "order": order, "prior": prior, "starts": starts}

    def apply_params(self, x: Tensor, y: Tensor | None, params: Params) -> MixOutput:
        """Mix ``x`` and soft targets ``y`` ``(B, C)`` (or none) with the draws and the ``saliency`` in ``params``."""
        if params.get("identity", False):
            out = MixOutput.identity(x, y)
            out.binary, out.mixer = True, type(self).__name__
            return out
        with torch.no_grad():
            plan = self.plan(params, x)
            mixed = _mix_blocks(x, plan["block_source"])
        indices, weights = plan["sources"]
        target = None if y is None else torch.einsum("bk,bkc->bc", weights.to(y.dtype), y[indices])
        return MixOutput(x=mixed, y=target, lam=weights[:, 0].float(), index=plan["index"],
                         mask=plan["source_masks"][:, :1], sources=(indices, weights), source_masks=plan["source_masks"],
                         binary=True, mixer=type(self).__name__)

    def plan(self, params: Params, x: Tensor) -> dict[str, Tensor]:
        """The solved mix of this call: ``block_source`` ``(B, G, G)`` (the sample each block of each output
        shows), ``sources`` ``(indices, weights)`` ``(B, K)``, ``source_masks`` ``(B, K, H, W)`` and ``index``."""
        batch, device = x.shape[0], x.device
        grid, order = int(params["block_num"]), params["order"]
        problem = comixup_problem(params["saliency"].float(), grid, self.partition, order=order, prior=params["prior"],
                                  beta=self.beta, gamma=self.gamma, eta=self.eta, thres=self.thres, omega=self.omega)
        labels = solve_comixup(problem, sweeps=self.sweeps, restarts=self.restarts, candidates=self.candidates,
                               starts=params["starts"])
        n_parts, slots = problem.present.shape
        counts = block_counts(labels, slots) * problem.present.unsqueeze(-1)
        owner = match_outputs(counts, problem.present)  # (P, m): the output each slot's row gets
        labels = labels.gather(1, owner.view(n_parts, slots, 1, 1).expand_as(labels))
        counts = counts.gather(1, owner.unsqueeze(-1).expand_as(counts))
        # global rows: slot q = p * m + k holds sample order[q]; absent slots stand for the row itself, weight 0
        position = torch.arange(n_parts * slots, device=device).view(n_parts, slots)
        rows = order[position.clamp(max=batch - 1)]
        shares = counts / (grid * grid)  # (P, output slot, input slot)
        k = min(slots, grid * grid)
        own = torch.eye(slots, device=device, dtype=torch.bool)
        others = shares.masked_fill(own, -1.0)
        top = others.topk(k - 1, dim=-1) if k > 1 else None
        slot_ids = torch.arange(slots, device=device).view(1, slots, 1).expand(n_parts, slots, 1)
        chosen = slot_ids if top is None else torch.cat([slot_ids, top.indices], -1)  # (P, m, K) input slots
        weights = shares.gather(-1, chosen).clamp_min(0.0)
        source_rows = rows.gather(1, chosen.flatten(1)).view(n_parts, slots, k)
        usable = problem.present.gather(1, chosen.flatten(1)).view(n_parts, slots, k)
        source_rows = torch.where(usable, source_rows, rows.unsqueeze(-1))
        block_rows = rows.gather(1, labels.flatten(1)).view_as(labels)  # (P, m, G, G): the sample each block shows
        masks = labels.unsqueeze(2) == chosen.view(n_parts, slots, k, 1, 1)  # (P, m, K, G, G)
        # output slots back to the rows of their samples (present slots: the first B positions)
        inverse = torch.argsort(order)
        flat = lambda t: t.flatten(0, 1)[:batch][inverse]  # noqa: E731
        height, width = x.shape[-2:]
        source_masks = flat(masks).to(torch.float32)
        source_masks = source_masks.repeat_interleave(height // grid, 2).repeat_interleave(width // grid, 3)
        indices = flat(source_rows)
        return {"block_source": flat(block_rows), "sources": (indices, flat(weights)), "source_masks": source_masks,
                "index": indices[:, 1] if k > 1 else indices[:, 0]}

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields.update(block_num=self.block_num, partition=self.partition, beta=self.beta, gamma=self.gamma, eta=self.eta,
                      thres=self.thres, omega=self.omega, clean_lam=self.clean_lam, loss=self.loss)
        if (self.sweeps, self.restarts, self.candidates) != (SWEEPS, RESTARTS, None):
            fields.update(sweeps=self.sweeps, restarts=self.restarts, candidates=self.candidates)
        return fields


def match_outputs(counts: Tensor, present: Tensor) -> Tensor:
    """Give each slot of a partition one of its (exchangeable) outputs: ``owner`` ``(P, m)``, the output of slot ``k``.

    Greedy on the block counts ``(P, output, input)``: the largest count of a free output and a free slot is
    matched first, ``m`` rounds for every partition at once, so an output goes to the row of the sample it
    shows most where that sample is still free. Absent slots take the absent outputs.

    Example:
        >>> counts = torch.tensor([[[0.0, 3.0], [4.0, 0.0]]])  # output 0 shows input 1, output 1 input 0
        >>> match_outputs(counts, torch.ones(1, 2, dtype=torch.bool)).tolist()
        [[1, 0]]
    """
    n_parts, slots, _ = counts.shape
    both = present.unsqueeze(2) & present.unsqueeze(1)
    score = torch.where(both, counts, torch.where(present.unsqueeze(2) | present.unsqueeze(1), -2.0, -1.0))
    owner = torch.zeros(n_parts, slots, dtype=torch.long, device=counts.device)
    rows = torch.arange(n_parts, device=counts.device)
    for _ in range(slots):  # m rounds of tensor work over every partition: not a loop over samples
        best = score.flatten(1).argmax(1)
        output, slot = best.div(slots, rounding_mode="floor"), best % slots
        owner[rows, slot] = output
        score[rows, output, :] = -float("inf")
        score[rows, :, slot] = -float("inf")
    return owner


def _mix_blocks(x: Tensor, block_source: Tensor) -> Tensor:
    """``x`` ``(B, C, H, W)`` with block ``(r, c)`` of row ``b`` taken from sample ``block_source[b, r, c]``,
    in the memory format of ``x``."""
    batch, channels, height, width = x.shape
    grid = block_source.shape[-1]
    blocks = x.reshape(batch, channels, grid, height // grid, grid, width // grid)
    index = block_source.view(batch, 1, grid, 1, grid, 1).expand_as(blocks)
    mixed = blocks.gather(0, index).view(batch, channels, height, width)
    return torch.empty_like(x).copy_(mixed)
