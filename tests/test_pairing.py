"""How partners are drawn: C-Mixup's label kernel, the modes each mixer takes, and pairing across DDP ranks.

(timm's ``pair``/``half`` modes against timm: tests/test_parity.py; every input mixer's contract in
every mode: tests/test_mixer_contract.py.)
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import openmix
from helpers import images, seeded_batch, tiny_convnet
from openmix.mixer import gather_batch
from openmix.sampling import label_kernel_index, label_kernel_weights

LABELS = torch.tensor([0.0, 1.0, 3.0])


def kernel(d: float, sigma: float = 1.0) -> float:
    return math.exp(-d * d / (2 * sigma * sigma))


# ------------------------------------------------------------------ C-Mixup's label kernel
def test_kernel_weights_by_hand():
    """Row i: exp(-|y_i - y_j|^2 / 2 sigma^2) over the others, normalised; never i itself."""
    expected = torch.tensor([
        [0.0, kernel(1), kernel(3)],
        [kernel(1), 0.0, kernel(2)],
        [kernel(3), kernel(2), 0.0],
    ])
    expected /= expected.sum(1, keepdim=True)
    torch.testing.assert_close(label_kernel_weights(LABELS, 1.0), expected)
    wider = label_kernel_weights(LABELS, 2.0)
    assert float(wider[0, 2]) == pytest.approx(kernel(3, 2) / (kernel(1, 2) + kernel(3, 2)), rel=1e-5)


def test_kernel_distance_is_euclidean_over_the_label_vector():
    values = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])  # distances 5 and 1 from row 0
    weights = label_kernel_weights(values, 2.0)
    assert float(weights[0, 1] / weights[0, 2]) == pytest.approx(kernel(5, 2) / kernel(1, 2), rel=1e-4)


def test_drawn_partners_follow_the_kernel():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([label_kernel_index(LABELS, 1.0, generator=g) for _ in range(4000)])  # (4000, 3)
    counts = torch.stack([(draws == j).float().mean(0) for j in range(3)], 1)  # counts[i, j]: how often i took j
    torch.testing.assert_close(counts, label_kernel_weights(LABELS, 1.0), atol=0.025, rtol=0)


def test_far_labels_and_a_small_bandwidth_give_the_nearest_label_not_nan():
    values = torch.tensor([0.0, 100.0, 100.5, 1000.0])
    weights = label_kernel_weights(values, 0.01)
    assert bool(torch.isfinite(weights).all())
    assert label_kernel_index(values, 0.01).tolist() == [1, 2, 1, 2]


def test_a_single_sample_is_its_own_partner():
    assert label_kernel_index(torch.tensor([2.0]), 1.0).tolist() == [0]


def test_candidates_exclude_the_sample_at_its_offset():
    """Under global pairing a rank's samples draw from every rank's labels, and sample i sits at offset + i."""
    everyone = torch.tensor([0.0, 0.1, 5.0, 5.1])
    weights = label_kernel_weights(everyone[2:], 1.0, candidates=everyone, offset=2)
    assert weights.shape == (2, 4) and weights[0, 2] == 0 and weights[1, 3] == 0
    assert label_kernel_index(everyone[2:], 1.0, candidates=everyone, offset=2).tolist() == [3, 2]


def regression_batch(batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(batch, 3, 8, 8, generator=g), torch.randn(batch, 2, generator=g) * 3


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_regression_targets_mix_like_vectors(mode):
    """``num_classes=None`` and float ``(B, D)`` targets: ``out.y`` is ``out.vector(y)``."""
    x, values = regression_batch()
    out = openmix.build("cutmix", mode=mode, pairing="label_kernel", bandwidth=2.0, seed=1)(x, values)
    torch.testing.assert_close(out.y, out.vector(values))
    torch.testing.assert_close(out.y, out.lam[:, None] * values + (1 - out.lam[:, None]) * values[out.index])


def test_pair_by_draws_partners_for_a_call_without_labels():
    x, values = regression_batch()
    mixer = openmix.build("mixup", pairing="label_kernel", bandwidth=2.0, seed=1)
    with_labels = mixer(x, values)
    again = openmix.build("mixup", pairing="label_kernel", bandwidth=2.0, seed=1)(x, pair_by=values)
    assert again.y is None and torch.equal(again.index, with_labels.index)
    params = openmix.build("mixup", pairing="label_kernel", bandwidth=2.0, seed=1).sample_params(x, pair_by=values)
    assert torch.equal(params["index"], with_labels.index)


def test_the_same_seed_draws_the_same_partners():
    x, values = regression_batch(32)

    def indices(seed: int) -> list[list[int]]:
        mixer = openmix.build("mixup", mode="elem", pairing="label_kernel", bandwidth=3.0, seed=seed)
        return [mixer(x, values).index.tolist() for _ in range(3)]

    assert indices(4) == indices(4)
    assert indices(4) != indices(5)
    assert len({tuple(i) for i in indices(4)}) > 1  # the stream moves on between calls


def test_partners_are_near_in_label():
    x = torch.rand(64, 1, 4, 4)
    values = torch.cat([torch.zeros(32), torch.full((32,), 10.0)]) + torch.rand(64) * 0.1
    out = openmix.build("mixup", pairing="label_kernel", bandwidth=1.0, seed=0)(x, values[:, None])
    assert bool(((out.index < 32) == (torch.arange(64) < 32)).all())  # never across the gap
    assert bool((out.index != torch.arange(64)).all())


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_label_kernel_pairing_reads_nothing_on_the_host(mode):
    """On ``meta`` tensors (no data) any host read raises: the kernel and its draw stay on the device."""
    x, values = torch.empty(16, 3, 8, 8, device="meta"), torch.empty(16, 2, device="meta")
    out = openmix.build("cutmix", mode=mode, pairing="label_kernel")(x, values)
    assert out.index.device.type == "meta" and out.y.shape == (16, 2)


def test_label_kernel_errors():
    x, values = regression_batch()
    mixer = openmix.build("mixup", pairing="label_kernel")
    with pytest.raises(ValueError, match="label distance: give the labels"):
        mixer(x)
    with pytest.raises(TypeError, match="floating point"):
        mixer(x, pair_by=torch.arange(8))
    with pytest.raises(ValueError, match=r"pair_by must be labels \(B,\) or \(B, D\) with B = 8, got \(4, 2\)"):
        mixer(x, pair_by=values[:4])
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        openmix.build("mixup", pairing="label_kernel", bandwidth=0.0)
    with pytest.raises(ValueError, match="pairing must be 'flip'"):
        openmix.build("mixup", mode="pair", pairing="label_kernel")
    with pytest.raises(ValueError, match="for input mixers"):
        openmix.build("manifoldmix", pairing="label_kernel")
    with pytest.raises(ValueError, match="pair_by is read by pairing='label_kernel' only"):
        openmix.build("mixup")(x, pair_by=values)


def test_random_choice_children_pair_by_label_too():
    x, values = regression_batch()
    mixer = openmix.build("random_choice", pairing="label_kernel", bandwidth=2.0, seed=0)
    assert all(child.pairing == "label_kernel" and child.bandwidth == 2.0 for child in mixer.mixers)
    out = mixer(x, pair_by=values)
    expected = openmix.build("random_choice", pairing="label_kernel", bandwidth=2.0, seed=0)(x, values)
    assert torch.equal(out.index, expected.index)


# ------------------------------------------------------------------ modes per mixer
MODEL_MODES = {"manifoldmix": ("batch", "elem", "pair"), "alignmix": ("batch", "elem", "pair"),
               "puzzlemix": ("batch", "elem"), "automix": ("batch",), "samix": ("batch",), "adautomix": ("batch",),
               "guidedmixup": ("batch", "elem"), "sumix": ("batch", "elem", "pair"),
               "snapmix": ("batch", "elem"), "attentivemix": ("batch", "elem"),
               "transmix": ("batch", "elem", "pair"), "smmix": ("batch", "elem", "pair"), "comixup": ("batch",)}


def test_every_model_aware_mixer_is_listed():
    assert set(MODEL_MODES) == set(openmix.available()) - set(openmix.available("input"))


@pytest.mark.parametrize("name", sorted(MODEL_MODES))
def test_model_aware_mixers_refuse_the_modes_they_cannot_mix_in(name):
    for mode in openmix.mixer.MODES:
        if mode in MODEL_MODES[name]:
            openmix.build(name, num_classes=10, mode=mode)
        else:
            with pytest.raises(ValueError, match="mode"):
                openmix.build(name, num_classes=10, mode=mode)
    with pytest.raises(ValueError, match="half mode returns ceil"):
        openmix.build(name, num_classes=10, mode="half")


@pytest.mark.parametrize("name", ["manifoldmix", "alignmix"])
def test_feature_mixers_pair_mode_shares_lam_within_each_pair(name):
    from openmix.training import mix_step

    x, y = seeded_batch(n=8)
    mixer = openmix.build(name, num_classes=10, mode="pair", pairing="flip", seed=0)
    step = mix_step(tiny_convnet(), mixer, x, y)
    assert step.mix.index.tolist() == [7, 6, 5, 4, 3, 2, 1, 0]
    assert torch.equal(step.mix.lam, step.mix.lam.flip(0)) and len(set(step.mix.lam[:4].tolist())) == 4
    assert torch.isfinite(step.loss)


# ------------------------------------------------------------------ pairing across ranks
def test_global_pairing_errors():
    with pytest.raises(ValueError, match="global_pairing is for input mixers"):
        openmix.build("manifoldmix", global_pairing=True)
    with pytest.raises(ValueError, match="mode must be 'batch' or 'elem'"):
        openmix.build("mixup", mode="pair", global_pairing=True)
    with pytest.raises(ValueError, match="global_pairing must be True or False"):
        openmix.build("mixup", global_pairing="yes")


def test_global_pairing_in_one_process_is_the_batch_pairing():
    x, y = images(6), torch.arange(6) % 3
    ours = openmix.build("cutmix", num_classes=3, mode="elem", global_pairing=True, seed=2)(x, y)
    plain = openmix.build("cutmix", num_classes=3, mode="elem", seed=2)(x, y)
    assert torch.equal(ours.x, plain.x) and torch.equal(ours.index, plain.index) and ours.batch_size is None


WORLD, BATCH, NUM_CLASSES = 2, 8, 5
CASES = {  # name: (mixer, its arguments)
    "mixup_elem": ("mixup", {"mode": "elem"}),
    "mixup_batch": ("mixup", {"mode": "batch"}),
    "cutmix_elem": ("cutmix", {"mode": "elem"}),
    "cutmix_flip": ("cutmix", {"mode": "elem", "pairing": "flip"}),
    "resizemix_elem": ("resizemix", {"mode": "elem"}),
    "kernel": ("mixup", {"mode": "elem", "pairing": "label_kernel", "bandwidth": 0.5}),
}


def rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank ``r``'s images, class ids and regression values (two well-separated label groups per rank)."""
    g = torch.Generator().manual_seed(10 + rank)
    x = torch.rand(BATCH, 3, 8, 8, generator=g) + rank * BATCH + torch.arange(BATCH).view(-1, 1, 1, 1)
    values = (torch.arange(BATCH) % 2 * 10.0 + torch.rand(BATCH, generator=g) * 0.1).unsqueeze(1)
    return x, (torch.arange(BATCH) + rank) % NUM_CLASSES, values


def _global_worker(rank: int, folder: str, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, y, values = rank_batch(rank)
        record = {}
        for case, (name, kwargs) in CASES.items():
            mixer = openmix.build(name, num_classes=None if case == "kernel" else NUM_CLASSES, seed=3,
                                  global_pairing=True, **kwargs)
            drawn = []
            draw = mixer.draw_params
            mixer.draw_params = lambda x_, draws_, draw=draw: drawn.append(draw(x_, draws_)) or drawn[-1]
            source = x.clone().requires_grad_()
            out = mixer(source, values if case == "kernel" else y)
            out.x.sum().backward()
            own_rows = {k: v[:BATCH] for k, v in drawn[0].items() if torch.is_tensor(v) and v.shape[:1] == (2 * BATCH,)}
            record[case] = {"x": out.x.detach(), "y": out.y, "lam": out.lam, "index": out.index, "grad": source.grad,
                            "params": own_rows, "dense": out.dense(gather_batch(x)),
                            "vector": out.vector(gather_batch(values)), "batch_size": out.batch_size,
                            "offset": out.offset}
        torch.save(record, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    import socket

    folder = tmp_path_factory.mktemp("global")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_global_worker, args=(str(folder), port), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


def concatenated(ranks: list[dict], case: str, key: str) -> torch.Tensor:
    return torch.cat([r[case][key] for r in ranks])


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_global_pairing_equals_one_mix_of_the_concatenated_batch(two_ranks, case):
    """Each rank mixes its own 8 samples with partners from all 16: the result is the single-process mix of
    the concatenated batch with the same partners and draws."""
    name, kwargs = CASES[case]
    x = torch.cat([rank_batch(r)[0] for r in range(WORLD)])
    y = torch.cat([rank_batch(r)[1 if case != "kernel" else 2] for r in range(WORLD)])
    index = concatenated(two_ranks, case, "index")
    params = {k: torch.cat([r[case]["params"][k] for r in two_ranks]) for k in two_ranks[0][case]["params"]}
    params["index"] = index
    mixer = openmix.build(name, num_classes=None if case == "kernel" else NUM_CLASSES, **kwargs)
    soft = y if case == "kernel" else torch.nn.functional.one_hot(y, NUM_CLASSES).float()
    single = mixer.apply_params(x, soft, params)
    torch.testing.assert_close(concatenated(two_ranks, case, "x"), single.x)
    torch.testing.assert_close(concatenated(two_ranks, case, "y"), single.y)
    torch.testing.assert_close(concatenated(two_ranks, case, "lam"), single.lam)
    torch.testing.assert_close(concatenated(two_ranks, case, "dense"), single.x)  # targets of the global batch
    torch.testing.assert_close(concatenated(two_ranks, case, "vector"), single.vector(torch.cat(
        [rank_batch(r)[2] for r in range(WORLD)])))
    assert [r[case]["batch_size"] for r in two_ranks] == [16, 16] and [r[case]["offset"] for r in two_ranks] == [0, 8]


@pytest.mark.slow
def test_global_partners_come_from_both_ranks(two_ranks):
    for case in ("mixup_elem", "mixup_batch", "cutmix_elem", "resizemix_elem"):
        index = concatenated(two_ranks, case, "index")
        assert sorted(index.tolist()) == list(range(16)), case  # one global permutation, drawn alike on both
        for rank in two_ranks:
            assert bool((rank[case]["index"] < BATCH).any() and (rank[case]["index"] >= BATCH).any()), case
    assert concatenated(two_ranks, "cutmix_flip", "index").tolist() == list(range(15, -1, -1))


@pytest.mark.slow
def test_global_label_kernel_pairs_near_labels_on_any_rank(two_ranks):
    index = concatenated(two_ranks, "kernel", "index")
    group = torch.arange(16) % 2  # each rank's labels alternate between ~0 and ~10
    assert torch.equal(group[index], group) and bool((index != torch.arange(16)).all())
    assert bool((index[:8] >= 8).any() or (index[8:] < 8).any())  # some partners from the other rank


@pytest.mark.slow
def test_gathered_partners_carry_no_gradient(two_ranks):
    """The gradient of the mix reaches each rank's own samples through their own share only."""
    for rank in two_ranks:
        lam = rank["mixup_elem"]["lam"]
        torch.testing.assert_close(rank["mixup_elem"]["grad"], lam.view(-1, 1, 1, 1).expand(BATCH, 3, 8, 8))
