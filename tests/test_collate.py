"""Mixing inside DataLoader workers (openmix.data.MixingCollate): workers, epochs, resume, the mixer's draws."""

import pickle
from pathlib import Path

import data_files as files
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import openmix
from openmix.data import EpochSampler, KeyedDataset, MixingCollate, build_datamodule
from openmix.data.base import TensorImageDataset
from openmix.lightning import MixupCallback, MixupClassifier

CLASSES = 3  # write_imagefolder's cat, dog, eel


def folder_data(root: Path, mixer: str = "cutmix", **kwargs):
    """An imagefolder datamodule on a tiny tree of PNG files, mixing in its DataLoader."""
    if not (root / "train").exists():
        files.write_imagefolder(root, per_class=4, size=12)
    mixer_kwargs = kwargs.pop("mixer_kwargs", {})
    dm = build_datamodule("imagefolder", root=root, image_size=8, batch_size=4, seed=1,
                          collate_mixer=openmix.build(mixer, num_classes=CLASSES, **mixer_kwargs), **kwargs)
    dm.setup("fit")
    return dm


def epochs_of(loader, count: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The batches of ``count`` successive epochs (each iteration is the next epoch)."""
    return [list(loader) for _ in range(count)]


def same_batches(first, second) -> bool:
    return len(first) == len(second) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(first, second, strict=True)
    )


def keyed_samples(n: int = 6, classes: int = 4) -> list:
    """``((index, epoch seed), (x, y))`` items, as KeyedDataset hands them to the collate."""
    g = torch.Generator().manual_seed(5)
    return [((i, 11), (torch.rand(3, 8, 8, generator=g), i % classes)) for i in range(n)]


# -- the draws follow the batch, not the workers ------------------------------------------------------
def test_batches_and_mixing_do_not_depend_on_the_workers(tmp_path):
    runs = [epochs_of(folder_data(tmp_path, num_workers=workers).train_dataloader(), 2) for workers in (0, 2)]
    assert all(same_batches(a, b) for a, b in zip(runs[0], runs[1], strict=True))


def seed_like_every_epoch(worker_id: int) -> None:
    """A worker_init_fn that puts each worker in the same random state every epoch."""
    torch.manual_seed(worker_id)


@pytest.mark.parametrize("persistent", [False, True])
def test_each_epoch_draws_anew(tmp_path, persistent):
    """Lightning#20412: a collate_fn drawing from the workers' state repeats its draws every epoch when the
    workers start each epoch in the same state (here forced by the worker_init_fn)."""
    dm = folder_data(tmp_path, mixer="mixup", num_workers=2)  # batch mode: one lam per batch
    loader = dm.train_dataloader()
    loader = DataLoader(loader.dataset, batch_size=4, sampler=loader.sampler, collate_fn=loader.collate_fn,
                        num_workers=2, persistent_workers=persistent, worker_init_fn=seed_like_every_epoch)
    first, second = epochs_of(loader, 2)
    # a row's largest target weight is max(lam, 1 - lam) (or 1 where a sample is its own partner)
    weights = [[y.max(1).values.sort().values for _, y in epoch] for epoch in (first, second)]
    assert all(not torch.allclose(a, b) for a, b in zip(*weights, strict=True))


def test_a_resumed_epoch_is_mixed_as_in_an_uninterrupted_run(tmp_path):
    straight = epochs_of(folder_data(tmp_path, num_workers=0).train_dataloader(), 3)
    loader = folder_data(tmp_path, num_workers=0).train_dataloader()
    loader.sampler.set_epoch(2)  # as Lightning does when it resumes at epoch 2
    assert same_batches(list(loader), straight[2])
    assert not same_batches(straight[1], straight[2])


def test_ranks_draw_their_own_mixing():
    collate = MixingCollate(openmix.build("cutmix", num_classes=4))
    first_batches = [list(EpochSampler(range(16), seed=1, rank=r, world_size=2))[:4] for r in (0, 1)]
    assert collate.batch_seed(first_batches[0]) != collate.batch_seed(first_batches[1])


# -- the mixing is the mixer's ----------------------------------------------------------------------------
def test_collate_mixing_equals_the_mixer_on_the_plain_batch(tmp_path):
    """The float batch of the plain DataLoader path, mixed by the mixer with the batch's generator: no rounding."""
    mixed = folder_data(tmp_path, num_workers=0)
    plain = build_datamodule("imagefolder", root=tmp_path, image_size=8, batch_size=4, seed=1, num_workers=0)
    plain.setup("fit")
    keys = list(plain.train_dataloader().sampler)
    collate = mixed.train_dataloader().collate_fn
    for b, ((x, y), (x_mixed, y_mixed)) in enumerate(zip(plain.train_dataloader(), mixed.train_dataloader(),
                                                         strict=True)):
        generator = torch.Generator().manual_seed(collate.batch_seed(keys[4 * b: 4 * b + 4]))
        out = collate.mixer(x, y, generator=generator)
        assert torch.equal(out.x, x_mixed) and torch.equal(out.y, y_mixed)


def test_targets_are_soft_and_sum_to_one(tmp_path):
    for x, y in folder_data(tmp_path, num_workers=0).train_dataloader():
        assert y.shape == (x.shape[0], CLASSES) and y.dtype == torch.float32
        assert torch.allclose(y.sum(1), torch.ones(x.shape[0]))


def test_label_smoothing_of_the_mixer_reaches_the_targets(tmp_path):
    dm = folder_data(tmp_path, mixer="mixup", num_workers=0, mixer_kwargs={"alpha": 0.0, "label_smoothing": 0.3})
    _, y = next(iter(dm.train_dataloader()))  # alpha 0: no mixing, only smoothing
    assert torch.allclose(y.max(1).values, torch.full((4,), 0.8))
    assert torch.allclose(y.min(1).values, torch.full((4,), 0.1))


@pytest.mark.parametrize("name", sorted(openmix.available("input")))
def test_every_input_mixer_mixes_in_the_collate_repeatably(name):
    collate = MixingCollate(openmix.build(name, num_classes=4))
    (x, y), (x_again, y_again) = collate(keyed_samples()), collate(keyed_samples())
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    assert x.shape == (6, 3, 8, 8) and torch.allclose(y.sum(1), torch.ones(6))


def test_the_collate_pickles_and_draws_the_same_after(tmp_path):
    collate = MixingCollate(openmix.build("fmix", num_classes=4))
    copy = pickle.loads(pickle.dumps(collate))
    assert torch.equal(collate(keyed_samples())[0], copy(keyed_samples())[0])


def test_other_keys_draw_otherwise():
    collate = MixingCollate(openmix.build("cutmix", num_classes=4))
    later = [((i, 12), sample) for (i, _), sample in keyed_samples()]  # the same samples in another epoch
    assert not torch.equal(collate(keyed_samples())[1], collate(later)[1])


def test_any_dataset_mixes_in_a_plain_dataloader_with_keyed_dataset_and_epoch_sampler():
    dataset = [(torch.rand(1, 6, 6), i % 4) for i in range(8)]  # not a SeededDataset: indexed by the index
    loader = DataLoader(KeyedDataset(dataset), batch_size=4, sampler=EpochSampler(dataset, seed=0),
                        collate_fn=MixingCollate(openmix.build("mixup", num_classes=4)))
    assert [tuple(y.shape) for _, y in loader] == [(4, 4), (4, 4)]


def test_keyed_dataset_replays_a_seeded_datasets_augmentation_from_the_key():
    flip = lambda image: image.flip(-1) if torch.rand(()) < 0.5 else image  # noqa: E731
    dataset = TensorImageDataset(torch.arange(32, dtype=torch.uint8).view(2, 1, 4, 4), torch.arange(2), flip)
    keyed = KeyedDataset(dataset)
    assert all(torch.equal(keyed[(1, seed)][1][0], dataset[(1, seed)][0]) for seed in range(8))
    assert len({bool(torch.equal(keyed[(1, seed)][1][0], dataset.images[1])) for seed in range(8)}) == 2


# -- what is refused ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["puzzlemix", "manifoldmix", "automix"])
def test_a_mixer_that_needs_the_model_is_refused(name):
    with pytest.raises(ValueError, match=r"needs the model, which DataLoader workers do not have"):
        MixingCollate(openmix.build(name, num_classes=4))


def test_a_mixer_that_needs_the_model_is_refused_by_the_datamodule():
    with pytest.raises(ValueError, match="saliency mixer"):
        build_datamodule("synthetic", collate_mixer=openmix.build("puzzlemix", num_classes=10))


def test_something_else_than_a_mixer_is_refused():
    with pytest.raises(TypeError, match="needs an openmix mixer"):
        MixingCollate("cutmix")


def test_samples_without_keys_are_refused():
    plain = [sample for _, sample in keyed_samples()]
    with pytest.raises(TypeError, match=r"\(index, epoch seed\).*got a Tensor where the key should be"):
        MixingCollate(openmix.build("mixup", num_classes=4))(plain)


def test_plain_integer_keys_are_refused():
    with pytest.raises(TypeError, match="EpochSampler"):
        MixingCollate(openmix.build("mixup", num_classes=4))([(i, sample) for (i, _), sample in keyed_samples()])


def test_the_small_sets_take_the_dataloader_path_and_refuse_the_device_path():
    mixer = openmix.build("cutmix", num_classes=10)
    dm = build_datamodule("synthetic", num_samples=16, image_size=8, batch_size=8, num_workers=0, collate_mixer=mixer)
    dm.setup("fit")
    assert dm.on_device is False and isinstance(dm.train_dataloader(), DataLoader)
    with pytest.raises(ValueError, match="on_device=True trains without a DataLoader"):
        build_datamodule("synthetic", on_device=True, collate_mixer=mixer)


def test_validation_batches_are_not_mixed():
    dm = build_datamodule("synthetic", num_samples=16, image_size=8, batch_size=8, num_workers=0,
                          collate_mixer=openmix.build("cutmix", num_classes=10))
    dm.setup("fit")
    _, y = next(iter(dm.val_dataloader()))
    assert y.dtype == torch.int64 and y.ndim == 1


def test_a_mixer_of_other_classes_is_refused_before_the_first_batch():
    dm = build_datamodule("synthetic", num_samples=16, image_size=8, num_workers=0,
                          collate_mixer=openmix.build("cutmix", num_classes=7))
    dm.setup("fit")
    with pytest.raises(ValueError, match="num_classes=7, but synthetic has 10 classes"):
        dm.train_dataloader()


# -- with Lightning and the command line ------------------------------------------------------------------
def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def synthetic(mixer: str = "cutmix"):
    return build_datamodule("synthetic", num_samples=64, num_val_samples=16, image_size=8, batch_size=16,
                            num_workers=0, collate_mixer=openmix.build(mixer, num_classes=10))


def test_mixup_classifier_trains_on_the_mixed_batches(one_torch_thread):
    module = MixupClassifier("small_convnet", num_classes=10, mixer=None, optimizer={"lr": 0.05})
    before = [p.detach().clone() for p in module.parameters()]
    run = trainer(max_epochs=2, limit_val_batches=1)
    run.fit(module, datamodule=synthetic())
    assert torch.isfinite(run.callback_metrics["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    assert len(module.val_top1_history) == 2


def test_mixing_twice_is_refused():
    module = MixupClassifier("small_convnet", num_classes=10, mixer="mixup")
    with pytest.raises(ValueError, match=r"MixupClassifier\(mixer=MixUp.*would mix them again"):
        trainer(fast_dev_run=True).fit(module, datamodule=synthetic())


def test_mixing_twice_with_the_callback_is_refused():
    module = MixupClassifier("small_convnet", num_classes=10, mixer=None)
    run = trainer(fast_dev_run=True, callbacks=[MixupCallback("mixup", num_classes=10)])
    with pytest.raises(ValueError, match=r"MixupCallback\(MixUp"):
        run.fit(module, datamodule=synthetic())


def test_cli_mix_in_workers_trains_and_is_its_own_run(tmp_path):
    from test_cli import TINY, compose_cfg, run

    from openmix.cli.train import _datamodule
    from openmix.results import run_id

    row = run(tmp_path, "mixer=cutmix", "mix_in_workers=true", "data.num_workers=0", "+trainer.fast_dev_run=true")
    assert row["mixer"] == "cutmix" and row["top1_final"] is not None
    cfg = compose_cfg("~experiment", *TINY, "mixer=cutmix", "mix_in_workers=true")
    assert type(_datamodule(cfg).collate_mixer).__name__ == "CutMix"
    overrides = ([], ["mix_in_workers=null"], ["mix_in_workers=true"])
    ids = [run_id(OmegaConf.to_container(compose_cfg("mixer=cutmix", *extra), resolve=True)) for extra in overrides]
    assert ids[0] == ids[1] != ids[2]


def test_cli_refuses_mix_in_workers_for_a_mixer_that_needs_the_model(tmp_path):
    from test_cli import run

    from openmix.cli.train import ConfigError

    with pytest.raises(ConfigError, match="saliency mixer.*mix_in_workers=null"):
        run(tmp_path, "mixer=puzzlemix", "mix_in_workers=true")
    assert not (tmp_path / "run").exists()
