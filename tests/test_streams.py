"""Random streams: seeded draws, exact resume, one stream per DDP rank, sample_params on its own."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import openmix
from helpers import INPUT_MIXERS, MODES, images

NUM_CLASSES = 5


def build(name: str, **kwargs) -> openmix.Mixer:
    kwargs.setdefault("num_classes", NUM_CLASSES)
    return openmix.build(name, **kwargs)


def labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % NUM_CLASSES


def run(mixer: openmix.Mixer, calls: int, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(mixed x, lam, index)`` of ``calls`` consecutive calls."""
    outs = []
    for _ in range(calls):
        out = mixer(x, labels(x.shape[0]))
        outs.append((out.x, out.lam, out.index))
    return outs


def assert_same_draws(a, b) -> None:
    assert len(a) == len(b)
    for (xa, la, ia), (xb, lb, ib) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(xa, xb)


def differ(a, b) -> bool:
    return any(not torch.equal(xa, xb) for (xa, _, _), (xb, _, _) in zip(a, b))


@pytest.fixture
def rank(monkeypatch):
    """Pretend to run under ``torch.distributed`` as a chosen rank: ``rank(1)``."""

    def set_rank(r: int) -> None:
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: r)

    return set_rank


# ------------------------------------------------------------------- resume
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_save_and_load_continue_the_uninterrupted_draws(name, mode):
    x = images(6)
    straight = run(build(name, mode=mode, prob=0.7, seed=5), 6, x)
    first = build(name, mode=mode, prob=0.7, seed=5)
    assert_same_draws(run(first, 3, x), straight[:3])
    resumed = build(name, mode=mode, prob=0.7, seed=5)
    resumed.load_state_dict(first.state_dict())
    assert_same_draws(run(resumed, 3, x), straight[3:])


def test_state_dict_after_load_returns_the_loaded_state():
    x = images(4)
    mixer = build("cutmix", mode="elem", seed=1)
    run(mixer, 3, x)
    state = mixer.state_dict()
    fresh = build("cutmix", mode="elem", seed=1)
    fresh.load_state_dict(state)
    again = fresh.state_dict()  # before any call
    assert again.keys() == state.keys() and again["_extra_state"] == state["_extra_state"]
    resumed_twice = build("cutmix", mode="elem", seed=1)
    resumed_twice.load_state_dict(again)
    assert_same_draws(run(resumed_twice, 2, x), run(fresh, 2, x))


def test_random_choice_children_resume_too():
    x = images(6)
    straight = run(build("random_choice", mode="elem", seed=2), 8, x)
    first = build("random_choice", mode="elem", seed=2)
    run(first, 4, x)
    resumed = build("random_choice", mode="elem", seed=2)
    resumed.load_state_dict(first.state_dict())
    assert_same_draws(run(resumed, 4, x), straight[4:])


def test_old_checkpoints_warn_and_start_over():
    mixer = build("mixup", seed=0)
    with pytest.warns(UserWarning, match="call counter"):
        mixer.set_extra_state({"generators": {}})


# ---------------------------------------------------------------------- ranks
@pytest.mark.parametrize("name", ["mixup", "cutmix", "fmix"])
def test_resumed_rank_continues_its_own_stream(name, rank):
    """Rank 0 writes the checkpoint; rank 1 loads it and goes on with rank 1's draws, not rank 0's."""
    x = images(6)
    rank(0)
    writer = build(name, mode="elem", seed=3)
    run(writer, 2, x)
    checkpoint = writer.state_dict()
    rank0_next = run(writer, 3, x)
    rank(1)
    rank1_straight = run(build(name, mode="elem", seed=3), 5, x)
    rank1 = build(name, mode="elem", seed=3)
    rank1.load_state_dict(checkpoint)
    rank1_next = run(rank1, 3, x)
    assert_same_draws(rank1_next, rank1_straight[2:])
    assert differ(rank1_next, rank0_next)


def test_ranks_draw_differently_unless_told_otherwise(rank):
    x = images(8)
    rank(0)
    zero = run(build("cutmix", mode="elem", seed=4), 2, x)
    same_zero = run(build("cutmix", mode="elem", seed=4, same_on_all_ranks=True), 2, x)
    rank(1)
    one = run(build("cutmix", mode="elem", seed=4), 2, x)
    same_one = run(build("cutmix", mode="elem", seed=4, same_on_all_ranks=True), 2, x)
    assert differ(zero, one)
    assert_same_draws(same_zero, same_one)


def _two_rank_worker(rank: int, world: int, folder: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = images(6)
        straight = run(build("cutmix", mode="elem", seed=7), 4, x)
        first = build("cutmix", mode="elem", seed=7)
        run(first, 2, x)
        path = os.path.join(folder, "mixer.pt")
        if rank == 0:  # only rank 0 writes the checkpoint, as Lightning does
            torch.save(first.state_dict(), path)
        dist.barrier()
        resumed = build("cutmix", mode="elem", seed=7)
        resumed.load_state_dict(torch.load(path))
        after = run(resumed, 2, x)
        assert_same_draws(after, straight[2:])
        torch.save([o[0] for o in after], os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_resume_keeps_each_ranks_stream(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    zero, one = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert any(not torch.equal(a, b) for a, b in zip(zero, one))


# -------------------------------------------------------------- sample_params
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_sample_params_uses_the_seeded_stream(name, mode):
    x, y = images(6), torch.eye(NUM_CLASSES)[labels(6)]
    a, b = build(name, mode=mode, seed=11), build(name, mode=mode, seed=11)
    first, again = a.sample_params(x), b.sample_params(x)
    torch.testing.assert_close(a.apply_params(x, y, first).x, b.apply_params(x, y, again).x)
    torch.testing.assert_close(first["lam"], again["lam"])
    called = build(name, mode=mode, seed=11)(x, labels(6))  # a call draws the same
    torch.testing.assert_close(a.apply_params(x, y, first).x, called.x)
    later = [a.sample_params(x) for _ in range(4)]  # the stream moves on
    assert any(not torch.equal(a.apply_params(x, y, p).x, called.x) for p in later)


@pytest.mark.parametrize("name", INPUT_MIXERS)
def test_sample_params_honours_prob_in_batch_mode(name):
    x, y = images(6), torch.eye(NUM_CLASSES)[labels(6)]
    params = build(name, mode="batch", prob=0.0, seed=0).sample_params(x)
    torch.testing.assert_close(params["lam"], torch.ones(6))
    assert params["index"].tolist() == list(range(6))
    out = build(name, mode="batch", prob=0.0).apply_params(x, y, params)
    assert torch.equal(out.x, x) and torch.equal(out.y, y)
    mixer = build(name, mode="batch", prob=0.5, seed=1)
    skipped = sum(bool(mixer.sample_params(x).get("identity", False)) for _ in range(200))
    assert 70 < skipped < 130


def test_a_cpu_generator_drives_host_and_device_draws():
    x = images(6)
    mixer = build("cutmix", mode="batch", prob=0.5, seed=1)
    first = [mixer.sample_params(x, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert first[0].get("identity", False) == first[1].get("identity", False)
    if not first[0].get("identity", False):
        assert torch.equal(first[0]["lo"], first[1]["lo"]) and torch.equal(first[0]["index"], first[1]["index"])
