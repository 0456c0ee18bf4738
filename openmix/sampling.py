"""Random draws for mixers: lambda, partners, boxes, and the seeds of a mixer's streams.

Per-sample draws happen on the input's device, batched: every such function takes an
optional ``torch.Generator`` that lives on ``device``; none of them moves data between
host and device or loops over the batch. Per-batch draws (``host_*``) happen on the host
with a CPU generator and return Python numbers, so batch mode can use scalar and slice
operations without waiting on an accelerator.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, Sequence

import torch
from torch import Tensor

__all__ = [
    "beta",
    "uniform",
    "partner_index",
    "partner_indices",
    "pair_partners",
    "half_partners",
    "label_kernel_weights",
    "label_kernel_index",
    "host_coin",
    "host_beta",
    "host_uniform",
    "host_box",
    "host_rows",
    "random_boxes",
    "boxes_at",
    "box_mask",
    "one_minus_outer",
    "stream_seed",
    "PAIRINGS",
]

Pairing = Literal["random", "flip", "roll", "label_kernel"]
PAIRINGS: tuple[str, ...] = ("random", "flip", "roll", "label_kernel")


def beta(alpha: float, n: int, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws of ``Beta(alpha, alpha)`` as float32 ``(n,)``; ``alpha == 0`` gives ones (no mixing).

    Example:
        >>> lam = beta(1.0, 5, generator=torch.Generator().manual_seed(0))
        >>> lam.shape, bool(((lam >= 0) & (lam <= 1)).all())
        (torch.Size([5]), True)
    """
    if alpha == 0:
        return torch.ones(n, device=device, dtype=torch.float32)
    if alpha >= 0.5:
        alphas = torch.full((2, n), float(alpha), device=device, dtype=torch.float32)
        gammas = torch._standard_gamma(alphas, generator=generator)
        return gammas[0] / gammas.sum(0)
    # Small alpha: float32 gammas underflow (both to the same subnormal, giving 0.5 where the
    # distribution puts almost no mass). Draw them in log space instead, using
    # Gamma(a) = Gamma(a + 1) * U ** (1 / a), and take lam = sigmoid(log g0 - log g1).
    alphas = torch.full((2, n), float(alpha) + 1.0, device=device, dtype=torch.float32)
    log_g = torch._standard_gamma(alphas, generator=generator).log_()
    log_g += torch.rand((2, n), device=device, generator=generator, dtype=torch.float32).log_().div_(alpha)
    return torch.sigmoid(log_g[0] - log_g[1]).nan_to_num_(0.5)


def uniform(
    shape: Sequence[int] | int,
    low: float = 0.0,
    high: float = 1.0,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Float32 draws from ``U[low, high)``.

    Example:
        >>> bool((uniform(4, 2.0, 3.0) >= 2.0).all())
        True
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return torch.rand(shape, device=device, generator=generator, dtype=torch.float32).mul_(high - low).add_(low)


def partner_index(
    batch: int, pairing: str = "random", *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> Tensor:
    """Partner of each sample, int64 ``(batch,)``.

    ``random``: a random permutation; ``flip``: ``i -> B-1-i`` (timm's pairing);
    ``roll``: ``i -> i-1`` (torchvision's ``roll(1, 0)``).

    Example:
        >>> partner_index(4, "flip"), partner_index(4, "roll")
        (tensor([3, 2, 1, 0]), tensor([3, 0, 1, 2]))
    """
    if pairing == "random":
        return torch.randperm(batch, device=device, generator=generator)
    if pairing == "flip":
        return torch.arange(batch - 1, -1, -1, device=device)
    if pairing == "roll":
        return torch.arange(-1, batch - 1, device=device).remainder_(batch)
    if pairing == "label_kernel":
        raise ValueError("pairing 'label_kernel' draws partners by label distance: use label_kernel_index(values, ...)")
    raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


def partner_indices(
    batch: int,
    count: int,
    pairing: str = "random",
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``count`` partners of each sample, int64 ``(count, batch)``, for mixers of more than two samples.

    ``random``: ``count`` independent permutations. The fixed pairings move on per row, so that a
    sample's partners differ from each other and (for an even batch) from the sample:
    ``flip``, row ``k``: ``i -> (B-1-2k-i) mod B`` (row 0 is timm's flip); ``roll``, row ``k``:
    ``i -> i-1-k`` (row 0 is torchvision's roll).

    Example:
        >>> partner_indices(4, 2, "flip")
        tensor([[3, 2, 1, 0],
                [1, 0, 3, 2]])
        >>> partner_indices(4, 2, "roll")
        tensor([[3, 0, 1, 2],
                [2, 3, 0, 1]])
    """
    if pairing == "random":
        return torch.stack([torch.randperm(batch, device=device, generator=generator) for _ in range(count)])
    shift = torch.arange(count, device=device).unsqueeze(1)
    i = torch.arange(batch, device=device)
    if pairing == "flip":
        return (batch - 1 - 2 * shift - i).remainder_(batch)
    if pairing == "roll":
        return (i - 1 - shift).remainder_(batch)
    raise ValueError(f"pairing must be one of {PAIRINGS[:3]}, got {pairing!r}")


def pair_partners(
    batch: int, pairing: str = "flip", *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The batch cut into pairs that mix with each other (``pair`` mode): ``(index, leader)``, int64 ``(batch,)``.

    ``flip``: the pairs ``(i, B-1-i)`` (timm's); ``random``: the pairs ``(p[k], p[B-1-k])`` of a random
    permutation ``p``. ``index`` is each sample's partner (``index[index] = arange``); ``leader`` is the
    first sample of its pair (``min(i, B-1-i)`` for ``flip``), whose draws the pair shares. In an odd
    batch the middle sample (``p[(B-1)/2]``) is its own partner and leader.

    Example:
        >>> pair_partners(5, "flip")
        (tensor([4, 3, 2, 1, 0]), tensor([0, 1, 2, 1, 0]))
    """
    i = torch.arange(batch, device=device)
    if pairing == "flip":
        return batch - 1 - i, torch.minimum(i, batch - 1 - i)
    if pairing != "random":
        raise ValueError(f"pair mode pairs samples two by two: pairing must be 'flip' or 'random', got {pairing!r}")
    order = torch.randperm(batch, device=device, generator=generator)
    position = torch.empty_like(order).scatter_(0, order, i)  # where each sample sits in the order
    mirror = batch - 1 - position
    return order.index_select(0, mirror), order.index_select(0, torch.minimum(position, mirror))


def half_partners(
    batch: int, pairing: str = "flip", *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> Tensor:
    """Partners for ``half`` mode, int64 ``(batch,)``: each of the first ``h = ceil(B/2)`` samples mixes with
    ``B-1-p[i]``, one of the last ``h`` samples (``p`` the identity for ``flip``, timm's pairs, a random
    permutation of ``h`` for ``random``); the rest are their own partners (half mode drops them).

    In an odd batch the middle sample is among the first ``h`` and among the partners: with ``flip`` it
    mixes with itself.

    Example:
        >>> half_partners(6, "flip"), half_partners(5, "flip")
        (tensor([5, 4, 3, 3, 4, 5]), tensor([4, 3, 2, 3, 4]))
    """
    kept = (batch + 1) // 2
    if pairing == "flip":
        order = torch.arange(kept, device=device)
    elif pairing == "random":
        order = torch.randperm(kept, device=device, generator=generator)
    else:
        raise ValueError(f"half mode mixes each first-half sample with one of the second half: pairing must be 'flip' "
                         f"or 'random', got {pairing!r}")
    return torch.cat([batch - 1 - order, torch.arange(kept, batch, device=device)])


def label_kernel_weights(
    values: Tensor, bandwidth: float, *, candidates: Tensor | None = None, offset: int = 0
) -> Tensor:
    """C-Mixup's sampling probabilities: row ``i`` puts ``exp(-|v_i - c_j|^2 / (2 bandwidth^2))``, normalised,
    on each candidate ``j`` other than itself. Float32 ``(B, N)``; each row sums to 1.

    Args:
        values: float ``(B,)`` or ``(B, D)`` labels of the samples (regression targets).
        bandwidth: the kernel's ``sigma``, in the labels' units.
        candidates: ``(N,)`` or ``(N, D)`` labels of the partners to draw from (default ``values``).
        offset: the candidate row of sample 0 (sample ``i`` is candidate ``offset + i``, excluded); with
            one candidate only, that one is its own partner.

    The distances are shifted by each row's smallest before ``exp`` (the same distribution), so far-apart
    labels and small bandwidths never give a row of zeros.

    Example:
        >>> label_kernel_weights(torch.tensor([0.0, 1.0, 3.0]), 1.0)
        tensor([[0.0000, 0.9820, 0.0180],
                [0.8176, 0.0000, 0.1824],
                [0.0759, 0.9241, 0.0000]])
    """
    own = values.detach().float().reshape(values.shape[0], -1)
    other = own if candidates is None else candidates.detach().float().reshape(candidates.shape[0], -1)
    if other.shape[0] == 1:
        return torch.ones(own.shape[0], 1, device=own.device)
    # exact distances without a (B, N, D) tensor or the matmul shortcut's cancellation
    logits = torch.cdist(own, other, compute_mode="donot_use_mm_for_euclid_dist").square_().div_(-2.0 * bandwidth**2)
    logits.diagonal(offset).fill_(-math.inf)
    return torch.softmax(logits, 1)


def label_kernel_index(
    values: Tensor,
    bandwidth: float,
    *,
    candidates: Tensor | None = None,
    offset: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """C-Mixup's partners: for each sample a candidate drawn by :func:`label_kernel_weights`, int64 ``(B,)``.

    One ``torch.multinomial`` draw per row on the labels' device (``generator`` lives there); it never
    waits on the device.

    Example:
        >>> label_kernel_index(torch.tensor([0.0, 0.1, 50.0, 50.2]), 1.0, generator=torch.Generator().manual_seed(0))
        tensor([1, 0, 3, 2])
    """
    weights = label_kernel_weights(values, bandwidth, candidates=candidates, offset=offset)
    if weights.shape[1] == 1:
        return torch.zeros(weights.shape[0], dtype=torch.long, device=weights.device)
    return torch.multinomial(weights, 1, generator=generator).squeeze_(1)


def host_coin(prob: float, generator: torch.Generator | None = None) -> bool:
    """A host-side Bernoulli(prob) draw for per-batch decisions; never touches the accelerator.

    ``generator`` must be a CPU generator (or ``None`` for the global CPU RNG).
    """
    if prob >= 1.0:
        return True
    if prob <= 0.0:
        return False
    return torch.rand((), generator=generator, dtype=torch.float32).item() < prob


def host_beta(alpha: float, generator: torch.Generator | None = None) -> float:
    """One ``Beta(alpha, alpha)`` draw on the host, as a Python float; ``alpha == 0`` gives 1.

    Same distribution as :func:`beta` (log-space draws for small ``alpha``). ``generator``
    must be a CPU generator (or ``None`` for the global CPU RNG).

    Example:
        >>> 0.0 <= host_beta(1.0, torch.Generator().manual_seed(0)) <= 1.0
        True
    """
    if alpha == 0:
        return 1.0
    if alpha < 0.5:  # the log-space draw of beta()
        return beta(alpha, 1, generator=generator).item()
    g0, g1 = torch._standard_gamma(_host_alphas(float(alpha)), generator=generator).tolist()
    return g0 / (g0 + g1) if g0 + g1 > 0 else 0.5


@functools.lru_cache(maxsize=16)
def _host_alphas(alpha: float) -> Tensor:
    """``(alpha, alpha)`` on the host, made once (callers must not modify it)."""
    return torch.full((2,), alpha, dtype=torch.float32)


def host_rows(*rows: Sequence[float], dtype: torch.dtype = torch.int64) -> tuple[Tensor, ...]:
    """Host numbers as ``(1, d)`` CPU tensors, one per row, made by one tensor construction.

    Example:
        >>> host_rows([1, 2], [3, 4])
        (tensor([[1, 2]]), tensor([[3, 4]]))
    """
    return torch.tensor(rows, dtype=dtype).unsqueeze(1).unbind(0)


def host_uniform(n: int, generator: torch.Generator | None = None) -> list[float]:
    """``n`` host draws from ``U[0, 1)`` as Python floats (one CPU call for all of them).

    Example:
        >>> len(host_uniform(3, torch.Generator().manual_seed(0)))
        3
    """
    return torch.rand(n, generator=generator, dtype=torch.float32).tolist()


def host_box(
    lam: float, spatial: Sequence[int], generator: torch.Generator | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One CutMix box on the host: the geometry of :func:`boxes_at` with a uniform integer centre.

    Side ``cut = int(size * (1 - lam) ** (1 / d))`` per axis, centre ``c`` uniform over the
    pixels, box ``[c - cut // 2, c - cut // 2 + cut)`` clipped to the image (timm's
    ``rand_bbox``), in float64 as timm computes it.

    Returns:
        ``(lo, hi)``: one int per spatial axis (``lo`` inclusive, ``hi`` exclusive).

    Example:
        >>> lo, hi = host_box(0.75, (8, 8), torch.Generator().manual_seed(0))
        >>> [h - l for l, h in zip(lo, hi)] in ([4, 4], [4, 3], [3, 4], [3, 3], [2, 4], [4, 2], [2, 3], [3, 2], [2, 2])
        True
    """
    rest, d = max(1.0 - lam, 0.0), len(spatial)
    ratio = math.sqrt(rest) if d == 2 else rest ** (1.0 / d)  # timm's np.sqrt, bit for bit, in 2-D
    lo, hi = [], []
    for size, u in zip(spatial, host_uniform(len(spatial), generator)):
        cut = int(size * ratio)
        start = min(int(u * size), size - 1) - cut // 2
        lo.append(max(start, 0))
        hi.append(min(start + cut, size))
    return tuple(lo), tuple(hi)


def random_boxes(
    lam: Tensor,
    spatial: Sequence[int],
    *,
    shared: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """CutMix boxes: each side is ``(1 - lam) ** (1 / d)`` of the image side, centre uniform, clipped.

    Args:
        lam: float ``(B,)`` target weight of the original.
        spatial: the ``d`` spatial sizes, e.g. ``(H, W)``.
        shared: one centre for the whole batch instead of one per sample (CutMix's batch
            mode draws its one box on the host instead, with :func:`host_box`).

    Returns:
        ``(lo, hi)``: int64 ``(B, d)`` box bounds (``lo`` inclusive, ``hi`` exclusive).

    Example:
        >>> lo, hi = random_boxes(torch.tensor([0.75]), (8, 8))
        >>> (hi - lo).tolist()[0] in ([4, 4], [4, 3], [3, 4], [3, 3], [2, 4], [4, 2], [2, 3], [3, 2], [2, 2])
        True
    """
    shape = (1 if shared else lam.shape[0], len(spatial))
    centre = torch.rand(shape, device=lam.device, generator=generator, dtype=torch.float32)
    return boxes_at(lam, centre.mul_(_sizes(tuple(spatial), lam.device)).floor_(), spatial)


def boxes_at(lam: Tensor, centre: Tensor, spatial: Sequence[int]) -> tuple[Tensor, Tensor]:
    """CutMix boxes around given integer centres ``(B or 1, d)``; see :func:`random_boxes`.

    timm's convention: side ``cut = floor(size * (1 - lam) ** (1/d))``, box
    ``[c - cut // 2, c + (cut + 1) // 2)`` clipped to the image.

    Example:
        >>> boxes_at(torch.tensor([0.75]), torch.tensor([[0, 4]]), (8, 8))
        (tensor([[0, 2]]), tensor([[2, 6]]))
    """
    sizes = _sizes(tuple(spatial), lam.device)
    cut = (1.0 - lam.float()).pow_(1.0 / len(spatial)).unsqueeze(1).mul(sizes).floor_()
    below = torch.div(cut, 2, rounding_mode="floor")  # the box spans [c - below, c - below + cut)
    lo = (centre - below).clamp_(min=0)  # c < size, so lo < size already
    hi = torch.minimum(centre.add(cut).sub_(below), sizes)
    return lo.long(), hi.long()


@functools.lru_cache(maxsize=64)
def _sizes(spatial: tuple[int, ...], device: torch.device) -> Tensor:
    """The spatial sizes as a float tensor on ``device``, made once: copying a new host tensor to an
    accelerator on every call could wait on it. Callers must not modify it in place."""
    return torch.tensor(tuple(spatial), dtype=torch.float32, device=device)


def box_mask(lo: Tensor, hi: Tensor, spatial: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Weight of the original around the boxes ``[lo, hi)``: ``(B, 1, *spatial)``, 0 inside, 1 outside.

    Example:
        >>> box_mask(torch.tensor([[1, 0]]), torch.tensor([[3, 1]]), (4, 2))[0, 0]
        tensor([[1., 1.],
                [0., 1.],
                [0., 1.],
                [1., 1.]])
    """
    # One comparison for all axes against the longest one, then a profile per axis.
    coords = torch.arange(max(spatial), device=lo.device)
    hits = ((coords >= lo.unsqueeze(2)) & (coords < hi.unsqueeze(2))).to(dtype)  # (B, d, max side)
    return one_minus_outer([hits[:, axis, :size] for axis, size in enumerate(spatial)])


def one_minus_outer(profiles: Sequence[Tensor]) -> Tensor:
    """``1 - p_1 (x) p_2 (x) ... (x) p_d`` for per-axis profiles ``(n, size_i)``, as ``(n, 1, *sizes)``.

    The weight of the original for any separable paste region (a box, a grid of holes, a
    Gaussian blob): 1 where no axis profile is hit, ``1 - product`` elsewhere.

    Example:
        >>> one_minus_outer([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 1.0]])])[0, 0]
        tensor([[0.5000, 0.0000],
                [1.0000, 1.0000]])
    """
    d = len(profiles)
    views = []
    for axis, profile in enumerate(profiles):  # the (at most 3) spatial axes, not the batch
        view = [profile.shape[0], 1] + [1] * d
        view[2 + axis] = profile.shape[1]
        views.append(profile.reshape(view))
    product = views[0]
    for view in views[1:]:
        product = product * view
    return (1.0 - product) if d == 1 else product.neg_().add_(1.0)  # a broadcast addcmul is ~2.5x slower on CPU


# ------------------------------------------------------------------ stream seeds
_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


def _mix64(z: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers in which every input bit moves every output bit."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix32(z: int) -> int:
    """murmur3's ``fmix32``: a bijection of 32-bit integers with the same mixing property."""
    z ^= z >> 16
    z = (z * 0x85EBCA6B) & _M32
    z ^= z >> 13
    z = (z * 0xC2B2AE35) & _M32
    return z ^ (z >> 16)


def stream_seed(seed: int, rank: int, stream: int, call: int) -> int:
    """Seed of draw number ``call`` of a mixer's ``stream`` on distributed ``rank``.

    A pure function of its arguments, so a run resumed from ``call`` alone (the same on
    every rank) re-derives each rank's own draws. For fixed ``(seed, rank, stream)`` the
    map ``call -> seed`` is a bijection of 32-bit integers: a rank never repeats a seed
    within ``2**32`` calls. Seeds are 32-bit because torch's CPU Mersenne Twister keeps
    only the low 32 bits of a seed; streams of different ranks are unrelated.

    Example:
        >>> stream_seed(0, 0, 0, 1) == stream_seed(0, 0, 0, 1), stream_seed(0, 0, 0, 1) == stream_seed(0, 1, 0, 1)
        (True, False)
    """
    base = _mix64(_mix64(seed & _M64) ^ ((rank & _M32) << 8 | (stream & 0xFF)))
    return _mix32((base + call) & _M32)
