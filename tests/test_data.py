"""Datamodules read the real on-disk formats, batch correctly, augment only training, shard and seed."""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import data_files as files
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openmix.data import (
    DeviceLoader,
    ShardSampler,
    available_datasets,
    build_datamodule,
    crop_flip,
)
from openmix.data.fashion_mnist import FashionMNISTDataModule
from openmix.data.formats import read_idx

NAMES = ["cifar10", "cifar100", "fashion_mnist", "imagefolder", "imagenet", "synthetic", "tiny_imagenet"]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    """Hide Debian's Fashion-MNIST so that only the test's files are found."""
    monkeypatch.setattr(FashionMNISTDataModule, "system_dir", tmp_path / "not-installed")


def expected_input(images: torch.Tensor, dm) -> torch.Tensor:
    """What a normalised batch of these uint8 images must be."""
    mean, std = torch.tensor(dm.mean).view(1, -1, 1, 1), torch.tensor(dm.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def to_pixels(x: torch.Tensor, dm) -> torch.Tensor:
    mean, std = torch.tensor(dm.mean).view(1, -1, 1, 1), torch.tensor(dm.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def crops_of(image: torch.Tensor, padding: int, mode: str = "reflect") -> list[torch.Tensor]:
    """Every crop (flipped or not) of ``image`` ``(C, H, W)`` from its padded copy."""
    h, w = image.shape[-2:]
    padded = F.pad(image[None].float(), (padding,) * 4, mode=mode)[0].to(image.dtype)
    out = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top : top + h, left : left + w]
            out += [crop, crop.flip(-1)]
    return out


def is_crop_of(candidate: torch.Tensor, image: torch.Tensor, padding: int, mode: str = "reflect") -> bool:
    return any(torch.equal(candidate, c) for c in crops_of(image, padding, mode))


# -- names and arguments -------------------------------------------------------------------------
def test_available_datasets_are_the_sorted_names():
    assert available_datasets() == NAMES


def test_a_setting_the_datamodule_does_not_take_is_named_with_those_it_takes():
    with pytest.raises(ValueError, match=r"^crop_padding is not a setting of imagefolder \(it takes: image_size, "):
        build_datamodule("imagefolder", crop_padding=4)


def test_unknown_dataset_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar1000'.*cifar10, cifar100, fashion_mnist"):
        build_datamodule("cifar1000")


@pytest.mark.parametrize(
    "name, kwargs, argument",
    [
        ("synthetic", {"batch_size": 0}, "batch_size"),
        ("synthetic", {"batch_size": 2.5}, "batch_size"),
        ("cifar10", {"eval_batch_size": 0}, "eval_batch_size"),
        ("cifar10", {"num_workers": -1}, "num_workers"),
        ("cifar10", {"on_device": "yes"}, "on_device"),
        ("tiny_imagenet", {"on_device": True}, "on_device"),
        ("cifar10", {"seed": -1}, "seed"),
        ("cifar10", {"download": "no"}, "download"),
        ("cifar10", {"root": 3}, "root"),
        ("imagefolder", {"image_size": 0}, "image_size"),
        ("imagefolder", {"num_classes": 0}, "num_classes"),
        ("imagefolder", {"in_chans": 2}, "in_chans"),
        ("synthetic", {"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_argument_raises_naming_it(name, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        build_datamodule(name, **kwargs)


@pytest.mark.parametrize(
    "name, kwargs, facts",
    [
        ("cifar10", {}, (10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))),
        ("cifar100", {}, (100, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))),
        ("fashion_mnist", {}, (10, 1, 28, (0.2860,), (0.3530,))),
        ("tiny_imagenet", {}, (200, 3, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
        ("imagenet", {}, (1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
        (
            "imagefolder",
            {"image_size": 96, "num_classes": 7, "in_chans": 3},
            (7, 3, 96, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ),
        ("synthetic", {"num_classes": 4, "image_size": 16, "in_chans": 1}, (4, 1, 16, (0.5,), (0.25,))),
    ],
)
def test_facts_are_known_before_setup(tmp_path, name, kwargs, facts):
    dm = build_datamodule(name, root=tmp_path / "absent", **kwargs)
    assert (dm.num_classes, dm.in_chans, dm.image_size, dm.mean, dm.std) == facts


@pytest.mark.parametrize("name", NAMES)
def test_auto_holds_only_small_sets_on_device(name):
    assert build_datamodule(name).on_device == (name in {"cifar10", "cifar100", "fashion_mnist", "synthetic"})


# -- missing data --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, hints",
    [
        ("cifar10", ["cifar-10-batches-py", "data_batch_1", "test_batch", "download=True"]),
        ("cifar100", ["cifar-100-python", "download=True"]),
        (
            "fashion_mnist",
            ["train-images-idx3-ubyte", "FashionMNIST/raw", "apt-get install dataset-fashion-mnist", "download=True"],
        ),
        ("tiny_imagenet", ["tiny-imagenet-200", "val_annotations.txt", "download=True"]),
        ("imagenet", ["train", "val", "image-net.org"]),
        ("imagefolder", ["train", "val"]),
    ],
)
def test_missing_dataset_says_where_and_how(tmp_path, no_system_fashion, name, hints):
    dm = build_datamodule(name, root=tmp_path / "data", num_workers=0)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert str(tmp_path / "data") in message
    assert all(h in message for h in hints), message


# -- CIFAR ---------------------------------------------------------------------------------------
def test_cifar10_reads_the_five_train_batches_in_order(tmp_path):
    written = files.write_cifar10(tmp_path)
    dm = build_datamodule("cifar10", root=tmp_path)
    dm.setup("fit")
    assert torch.equal(dm.train_set[0], written["train_x"]) and torch.equal(dm.train_set[1], written["train_y"])
    assert torch.equal(dm.val_set[0], written["test_x"]) and torch.equal(dm.val_set[1], written["test_y"])


def test_cifar100_reads_fine_labels(tmp_path):
    written = files.write_cifar100(tmp_path)
    dm = build_datamodule("cifar100", root=tmp_path)
    dm.setup("fit")
    assert torch.equal(dm.train_set[1], written["train_y"]) and dm.train_set[1].dtype == torch.int64
    assert torch.equal(dm.val_set[0], written["test_x"])


@pytest.mark.parametrize("on_device", [True, False])
def test_val_batches_are_the_written_images_normalised(tmp_path, on_device):
    written = files.write_cifar10(tmp_path, n_test=7)
    dm = build_datamodule("cifar10", root=tmp_path, batch_size=2, eval_batch_size=3, num_workers=0, on_device=on_device)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    assert [tuple(x.shape) for x, _ in batches] == [(3, 3, 32, 32), (3, 3, 32, 32), (1, 3, 32, 32)]
    x, y = collect(batches)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, expected_input(written["test_x"], dm), atol=1e-5, rtol=0)
    assert torch.equal(to_pixels(x, dm), written["test_x"]) and torch.equal(y, written["test_y"])


@pytest.mark.parametrize("on_device", [True, False])
def test_val_is_not_augmented_between_epochs(tmp_path, on_device):
    files.write_cifar100(tmp_path)
    dm = build_datamodule("cifar100", root=tmp_path, batch_size=4, num_workers=0, on_device=on_device)
    dm.setup("fit")
    loader = dm.val_dataloader()
    first, second = collect(loader), collect(loader)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_device_train_batches_are_crops_and_flips_of_their_images(tmp_path):
    written = files.write_cifar10(tmp_path, per_batch=6)
    dm = build_datamodule("cifar10", root=tmp_path, batch_size=30, on_device=True)
    dm.setup("fit")
    loader = dm.train_dataloader()
    order = loader.sampler.indices()  # epoch 0, as the first iteration will draw it
    x, y = next(iter(loader))
    images = to_pixels(x, dm)
    assert torch.equal(y, written["train_y"][order])
    assert all(is_crop_of(img, written["train_x"][i], padding=4) for img, i in zip(images, order, strict=True))
    assert not torch.equal(images, written["train_x"][order])  # augmentation changed something


def test_dataloader_train_transform_is_a_crop_or_flip(tmp_path):
    dm = build_datamodule("cifar10", root=tmp_path, on_device=False)
    image = files.random_images(1, 3, 32, seed=5)
    outs = [to_pixels(dm.train_transform()(image[0])[None], dm)[0] for _ in range(6)]
    assert all(is_crop_of(out, image[0], padding=4) for out in outs)
    assert any(not torch.equal(out, image[0]) for out in outs)


def test_device_and_dataloader_paths_give_the_same_val_batches(tmp_path):
    files.write_cifar10(tmp_path)
    loaders = []
    for on_device in (True, False):
        dm = build_datamodule("cifar10", root=tmp_path, batch_size=4, num_workers=0, on_device=on_device)
        dm.setup("fit")
        loaders.append(collect(dm.val_dataloader()))
    torch.testing.assert_close(loaders[0], loaders[1], atol=1e-5, rtol=0)


# -- batched crop and flip on the device -----------------------------------------------------------
@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_crop_flip_equals_slicing_the_padded_image(mode):
    images = torch.randint(0, 256, (5, 3, 8, 10), dtype=torch.uint8)
    index = torch.tensor([4, 0, 0, 2, 3, 1])
    top, left = torch.randint(0, 7, (6,)), torch.randint(0, 7, (6,))
    flip = torch.tensor([True, False, True, False, True, False])
    out = crop_flip(images, index, top, left, flip, padding=3, padding_mode=mode)
    padded = F.pad(images.float(), (3, 3, 3, 3), mode=mode).to(torch.uint8)
    for k in range(6):
        crop = padded[index[k], :, top[k] : top[k] + 8, left[k] : left[k] + 10]
        assert torch.equal(out[k], crop.flip(-1) if flip[k] else crop)


def test_crop_flip_flipped_image_equals_torch_flip():
    images = torch.randint(0, 256, (4, 1, 6, 6), dtype=torch.uint8)
    centre = torch.full((4,), 2)
    out = crop_flip(images, torch.arange(4), centre, centre, torch.ones(4, dtype=torch.bool), padding=2)
    assert torch.equal(out, torch.flip(images, dims=[-1]))


def test_crop_flip_rejects_reflect_padding_as_large_as_the_image():
    one = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="padding"):
        crop_flip(torch.zeros(1, 1, 4, 4), one, one, one, one.bool(), padding=4)


def test_fashion_mnist_crop_pads_with_zeros(tmp_path, no_system_fashion):
    folder = tmp_path / "data"
    files.write_fashion(folder, n_train=8, n_test=2)
    white = torch.full((8, 28, 28), 255, dtype=torch.uint8)
    files.write_idx(folder / "train-images-idx3-ubyte", white.numpy())
    dm = build_datamodule("fashion_mnist", root=folder, batch_size=8)
    dm.setup("fit")
    pixels = to_pixels(next(iter(dm.train_dataloader()))[0], dm)
    assert set(pixels.unique().tolist()) == {0, 255}


@pytest.mark.parametrize("on_device", [True, False])
def test_crop_padding_zero_turns_the_crop_off(tmp_path, no_system_fashion, on_device):
    folder = tmp_path / "data"
    files.write_fashion(folder, n_train=8, n_test=2)
    white = torch.full((8, 28, 28), 255, dtype=torch.uint8)
    files.write_idx(folder / "train-images-idx3-ubyte", white.numpy())
    dm = build_datamodule("fashion_mnist", root=folder, batch_size=8, crop_padding=0, on_device=on_device,
                          num_workers=0)
    dm.setup("fit")
    assert dm.padding == 0 and FashionMNISTDataModule.padding == 4
    pixels = to_pixels(next(iter(dm.train_dataloader()))[0], dm)
    assert set(pixels.unique().tolist()) == {255}  # no zero padding shifted in
    with pytest.raises(ValueError, match="crop_padding"):
        build_datamodule("fashion_mnist", root=folder, crop_padding=-1)


# -- seeding and epochs --------------------------------------------------------------------------
def first_train_batch(seed: int, on_device: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    dm = build_datamodule("synthetic", num_samples=64, batch_size=16, seed=seed, on_device=on_device, num_workers=0)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_same_seed_gives_the_same_batches():
    a, b = first_train_batch(3), first_train_batch(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_other_seed_gives_other_batches():
    assert not torch.equal(first_train_batch(3)[0], first_train_batch(4)[0])


def test_each_epoch_reshuffles_and_set_epoch_replays_one():
    dm = build_datamodule("synthetic", num_samples=64, batch_size=64, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    epoch0, epoch1 = collect(loader), collect(loader)
    assert not torch.equal(epoch0[1], epoch1[1])
    loader.set_epoch(0)
    replay = collect(loader)
    assert torch.equal(replay[0], epoch0[0]) and torch.equal(replay[1], epoch0[1])


# -- DDP sharding ------------------------------------------------------------------------------
def test_train_shards_are_disjoint_and_equally_long():
    shards = [ShardSampler(11, shuffle=True, seed=3, rank=r, world_size=2).indices() for r in (0, 1)]
    assert [len(s) for s in shards] == [5, 5]
    assert len(set(torch.cat(shards).tolist())) == 10 and torch.cat(shards).max() < 11


def test_eval_shards_cover_every_sample_once():
    shards = [ShardSampler(11, shuffle=False, rank=r, world_size=3, even=False).indices() for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(11))


def test_ranks_iterate_different_shards_in_the_same_number_of_steps():
    images = files.random_images(21, 3, 8, seed=0)
    loaders = [
        DeviceLoader(
            images,
            torch.arange(21),
            4,
            (0.5,) * 3,
            (0.25,) * 3,
            shuffle=True,
            padding=1,
            flip=True,
            rank=r,
            world_size=2,
        )
        for r in (0, 1)
    ]
    assert len(loaders[0]) == len(loaders[1]) == 3
    labels = [collect(loader)[1] for loader in loaders]
    assert len(labels[0]) == len(labels[1]) == 10
    assert not set(labels[0].tolist()) & set(labels[1].tolist())


def test_datamodule_takes_device_rank_and_world_from_the_trainer():
    dm = build_datamodule("synthetic", num_samples=40, batch_size=5)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), global_rank=1, world_size=4)
    loader = dm.train_dataloader()
    assert (loader.sampler.rank, loader.sampler.world_size, len(loader)) == (1, 4, 2)


def test_dataloader_path_shards_by_rank_and_stays_a_distributed_sampler(tmp_path):
    """Lightning keeps a DistributedSampler under DDP (use_distributed_sampler), so the order stays ours."""
    files.write_imagefolder(tmp_path, per_class=4)
    shards = []
    for rank in (0, 1):
        dm = build_datamodule("imagefolder", root=tmp_path, image_size=8, batch_size=2, num_workers=0)
        dm.setup("fit")
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), global_rank=rank,
                                     world_size=2)
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, torch.utils.data.DistributedSampler) and (sampler.rank, len(sampler)) == (rank, 6)
        shards.append({i for i, _ in sampler})
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 12


def test_dataloader_path_batches_do_not_depend_on_the_workers(tmp_path):
    files.write_imagefolder(tmp_path, per_class=3, size=12)
    epochs = []
    for workers in (0, 2):
        dm = build_datamodule("imagefolder", root=tmp_path, image_size=8, batch_size=4, num_workers=workers)
        dm.setup("fit")
        loader = dm.train_dataloader()
        epochs.append([collect(loader) for _ in range(2)])
    for (x0, y0), (x2, y2) in zip(epochs[0], epochs[1], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert not torch.equal(epochs[0][0][0], epochs[0][1][0])  # each epoch its own order and crops


# -- with a Lightning Trainer -------------------------------------------------------------------------
class TinyClassifier(L.LightningModule):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = torch.nn.Linear(in_features, num_classes)
        self.seen: list[tuple[int, torch.Tensor]] = []
        self.seen_x: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, y.clone()))
        self.seen_x.append((self.current_epoch, x.clone()))
        return F.cross_entropy(self.net(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x.flatten(1)), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_trainer_fast_dev_run_uses_the_device_path():
    dm = build_datamodule("synthetic", num_samples=32, batch_size=8, image_size=8)
    model = TinyClassifier(3 * 8 * 8, dm.num_classes)
    trainer(fast_dev_run=True).fit(model, datamodule=dm)
    assert len(model.seen) == 1 and isinstance(dm.train_dataloader(), DeviceLoader)


def test_trainer_epochs_reshuffle_with_limited_batches():
    dm = build_datamodule("synthetic", num_samples=64, batch_size=16, image_size=8)
    model = TinyClassifier(3 * 8 * 8, dm.num_classes)
    fit = trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    fit.fit(model, datamodule=dm)
    assert [epoch for epoch, _ in model.seen] == [0, 0, 1, 1]
    assert not torch.equal(model.seen[0][1], model.seen[2][1])


@pytest.mark.parametrize("name", ["imagefolder", "synthetic"])
def test_resumed_fit_sees_the_batches_of_an_uninterrupted_one(tmp_path, name):
    """The DataLoader path (imagefolder) and the device path (synthetic) replay epoch 2 exactly after a resume."""
    if name == "imagefolder":
        files.write_imagefolder(tmp_path / "images", per_class=4, size=12)
        kwargs = {"root": tmp_path / "images", "image_size": 8, "num_workers": 0}
    else:
        kwargs = {"num_samples": 12, "image_size": 8}

    def fit(epochs: int, ckpt_path=None) -> tuple[TinyClassifier, L.Trainer]:
        dm = build_datamodule(name, batch_size=4, seed=3, **kwargs)
        model = TinyClassifier(3 * 8 * 8, dm.num_classes)
        run = trainer(max_epochs=epochs, limit_val_batches=0, num_sanity_val_steps=0)
        run.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model, run

    def epoch_batches(model: TinyClassifier, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs = [x for e, x in model.seen_x if e == epoch]
        ys = [y for e, y in model.seen if e == epoch]
        return torch.cat(xs), torch.cat(ys)

    straight, _ = fit(2)
    _, first = fit(1)
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed, _ = fit(2, ckpt_path=tmp_path / "epoch1.ckpt")
    assert [e for e, _ in resumed.seen] == [1, 1, 1]
    x, y = epoch_batches(straight, 1)
    x_resumed, y_resumed = epoch_batches(resumed, 1)
    assert torch.equal(y, y_resumed) and torch.equal(x, x_resumed)
    assert not torch.equal(epoch_batches(straight, 0)[0], x)  # epoch 2 is not a replay of epoch 1


# -- Fashion-MNIST -------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["root", "torchvision"])
def test_fashion_mnist_reads_idx_files(tmp_path, no_system_fashion, gz, layout):
    folder = tmp_path if layout == "root" else tmp_path / "FashionMNIST" / "raw"
    written = files.write_fashion(folder, gz=gz)
    dm = build_datamodule("fashion_mnist", root=tmp_path, batch_size=4, on_device=True)
    dm.setup("fit")
    assert torch.equal(dm.train_set[0], written["train_x"]) and torch.equal(dm.train_set[1], written["train_y"])
    x, y = collect(dm.val_dataloader())
    assert x.shape == (5, 1, 28, 28) and torch.equal(to_pixels(x, dm), written["t10k_x"])
    assert torch.equal(y, written["t10k_y"])


def test_read_idx_rejects_a_bad_header(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x08\x03\x00\x00" + bytes(20))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = files.write_idx(tmp_path / "t10k-images-idx3-ubyte", torch.zeros(3, 4, 4, dtype=torch.uint8).numpy())
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"shape \(3, 4, 4\)"):
        read_idx(path)


def test_read_idx_rejects_a_corrupt_gzip(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-8])
    with pytest.raises(ValueError, match="cannot read"):
        read_idx(path)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_found_and_complete(tmp_path):
    dm = build_datamodule("fashion_mnist", root=tmp_path)
    dm.setup("fit")
    (train_x, train_y), (val_x, val_y) = dm.train_set, dm.val_set
    assert train_x.shape == (60000, 1, 28, 28) and val_x.shape == (10000, 1, 28, 28)
    assert torch.equal(train_y.unique(), torch.arange(10)) and torch.equal(val_y.unique(), torch.arange(10))


# -- Tiny-ImageNet and image folders -------------------------------------------------------------------
def test_tiny_imagenet_reads_train_folders_and_val_annotations(tmp_path):
    written = files.write_tiny_imagenet(tmp_path)
    dm = build_datamodule("tiny_imagenet", root=tmp_path, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == written["n_train"]
    assert sorted({label for _, label in dm.train_set.samples}) == [0, 1, 2]  # wnids sorted, not as in the file
    x, y = collect(dm.val_dataloader())
    decoded = torch.stack(
        [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p, _ in dm.val_set.samples]
    )
    assert torch.equal(y, written["val_y"]) and torch.equal(to_pixels(x, dm), decoded)
    train_x, train_y = next(iter(dm.train_dataloader()))
    assert train_x.shape == (4, 3, 64, 64) and train_x.dtype == torch.float32 and train_y.dtype == torch.int64


def test_tiny_imagenet_rejects_an_unknown_val_wnid(tmp_path):
    folder = files.write_tiny_imagenet(tmp_path)["folder"]
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt:1"):
        build_datamodule("tiny_imagenet", root=tmp_path).setup("fit")


def test_imagefolder_val_is_resized_and_centre_cropped(tmp_path):
    val = files.write_imagefolder(tmp_path, size=36)  # 36 = 32 * 256 / 224: the resize keeps the pixels
    dm = build_datamodule("imagefolder", root=tmp_path, image_size=32, batch_size=2, num_workers=0)
    assert dm.num_classes == 3
    dm.setup("fit")
    x, y = collect(dm.val_dataloader())
    assert torch.equal(y, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(to_pixels(x, dm), torch.cat([val[c][..., 2:34, 2:34] for c in ("cat", "dog", "eel")]))


def test_imagefolder_trains_on_jpeg_at_the_chosen_size(tmp_path):
    files.write_imagefolder(tmp_path, size=50, ext="jpg")
    dm = build_datamodule("imagefolder", root=tmp_path, image_size=24, batch_size=4, num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 24, 24) and y.dtype == torch.int64


def test_imagefolder_reads_its_size_and_channels_from_the_images_before_setup(tmp_path):
    val = files.write_imagefolder(tmp_path, size=20)
    dm = build_datamodule("imagefolder", root=tmp_path, batch_size=4, num_workers=0)
    assert (dm.num_classes, dm.in_chans, dm.image_size, dm.mean) == (3, 3, 20, (0.485, 0.456, 0.406))
    assert dm.train_set is None
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 20, 20)
    x, _ = collect(dm.val_dataloader())  # a size read from the images: val images pass unchanged
    assert torch.equal(to_pixels(x, dm), torch.cat([val[c] for c in ("cat", "dog", "eel")]))


def test_imagefolder_image_size_is_the_shorter_side_of_the_first_training_image(tmp_path):
    files.write_imagefolder(tmp_path, size=20)
    Image.new("RGB", (30, 12)).save(tmp_path / "train" / "cat" / "0.png")  # width 30, height 12
    assert build_datamodule("imagefolder", root=tmp_path).image_size == 12


def test_imagefolder_of_grey_images_has_one_channel(tmp_path):
    val = files.write_imagefolder(tmp_path, size=16, channels=1)
    dm = build_datamodule("imagefolder", root=tmp_path, batch_size=4, num_workers=0)
    assert (dm.in_chans, dm.mean, dm.std) == (1, (0.449,), (0.226,))
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 1, 16, 16)
    x, _ = collect(dm.val_dataloader())
    assert torch.equal(to_pixels(x, dm), torch.cat([val[c] for c in ("cat", "dog", "eel")]))


def test_imagefolder_given_in_chans_decodes_grey_images_as_rgb(tmp_path):
    files.write_imagefolder(tmp_path, size=16, channels=1)
    dm = build_datamodule("imagefolder", root=tmp_path, in_chans=3, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 16, 16)


def test_imagefolder_without_images_says_so_when_its_size_is_asked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*absent/train/<class>/<image files>"):
        build_datamodule("imagefolder", root=tmp_path / "absent").image_size
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train: Found no valid file for the classes cat"):
        build_datamodule("imagefolder", root=tmp_path).in_chans


def test_imagefolder_rejects_val_classes_that_train_lacks(tmp_path):
    files.write_imagefolder(tmp_path)
    (tmp_path / "val" / "zebra").mkdir()
    with pytest.raises(ValueError, match="zebra"):
        build_datamodule("imagefolder", root=tmp_path).setup("fit")


def test_imagenet_checks_the_number_of_classes(tmp_path):
    files.write_imagefolder(tmp_path)
    with pytest.raises(ValueError, match="expected 1000 class folders.*found 3"):
        build_datamodule("imagenet", root=tmp_path).setup("fit")


# -- synthetic ---------------------------------------------------------------------------------
def test_synthetic_classes_are_learnable_in_a_few_steps():
    torch.manual_seed(0)
    dm = build_datamodule("synthetic", num_samples=256, batch_size=32, num_classes=4, image_size=8, seed=1)
    dm.setup("fit")
    model = torch.nn.Linear(3 * 8 * 8, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x_val, y_val = collect(dm.val_dataloader())
    before = F.cross_entropy(model(x_val.flatten(1)), y_val).item()
    for x, y in dm.train_dataloader():
        optimizer.zero_grad()
        F.cross_entropy(model(x.flatten(1)), y).backward()
        optimizer.step()
    assert F.cross_entropy(model(x_val.flatten(1)), y_val).item() < 0.5 * before
