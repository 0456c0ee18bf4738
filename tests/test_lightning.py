"""MixupClassifier, MixupCallback and the shared training step, on tiny in-memory data."""

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import openmix
from openmix.lightning import MixupCallback, MixupClassifier
from openmix.lightning.logging import EpochMetricsCSV
from openmix.results import read_metrics
from openmix.training import build_mixer, mix_step, mixed_accuracy

NUM_CLASSES = 4


def tiny_model(in_chans: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, NUM_CLASSES))


def loaders(n: int = 32, batch: int = 8) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % NUM_CLASSES
    prototypes = torch.randn(NUM_CLASSES, 3, 8, 8, generator=g)
    x = prototypes[y] + 0.5 * torch.randn(n, 3, 8, 8, generator=g)  # one noisy prototype per class
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=batch, shuffle=True), DataLoader(data, batch_size=batch)


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("mixer", ["vanilla", *sorted(openmix.available("input"))])
def test_classifier_trains_with_every_input_mixer(mixer):
    module = MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer=mixer, mix_seed=0)
    train, val = loaders()
    t = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2)
    t.fit(module, train, val)
    metrics = t.callback_metrics
    for key in ("train/loss_epoch", "train/top1", "val/loss", "val/top1", "val/top5", "val/top1_median10"):
        assert key in metrics, key
    assert 0.0 <= float(metrics["val/top1"]) <= 100.0


def test_mixing_only_in_training():
    seen = {}

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()

        def forward(self, x):
            seen.setdefault("train" if self.training else "val", []).append(x.detach().clone())
            return self.net(x)

    module = MixupClassifier(Spy(), num_classes=NUM_CLASSES, mixer={"name": "mixup", "alpha": 1.0}, mix_seed=0)
    x = torch.rand(8, 3, 8, 8)
    y = torch.arange(8) % NUM_CLASSES
    trainer(max_epochs=1, num_sanity_val_steps=0).fit(
        module, DataLoader(TensorDataset(x, y), batch_size=8), DataLoader(TensorDataset(x, y), batch_size=8)
    )
    assert not torch.equal(seen["train"][0], x)
    torch.testing.assert_close(seen["val"][0], x)


def test_median10_is_logged_from_history():
    module = MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer="vanilla")
    train, val = loaders()
    t = trainer(max_epochs=3, limit_train_batches=1)
    t.fit(module, train, val)
    assert len(module.val_top1_history) == 3
    history = torch.tensor(module.val_top1_history)
    assert float(t.callback_metrics["val/top1_median10"]) == pytest.approx(float(history.median()), abs=1e-4) or \
        float(t.callback_metrics["val/top1_median10"]) == pytest.approx(float(history.sort().values[1]))


class RecordLR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cosine_follows_max_steps_per_step():
    """max_steps decides the length (max_epochs=-1): the cosine runs over the steps, not over one epoch."""
    module = MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer="vanilla",
                             optimizer={"name": "sgd", "lr": 0.1}, scheduler={"name": "cosine"})
    lrs = RecordLR()
    trainer(max_epochs=-1, max_steps=10, limit_val_batches=0, callbacks=[lrs]).fit(module, loaders()[0])  # 4 per epoch
    assert lrs.lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])


def test_cosine_over_max_epochs_moves_once_per_epoch_after_a_per_step_warmup():
    module = MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer="vanilla",
                             optimizer={"name": "sgd", "lr": 0.1}, scheduler={"name": "cosine", "warmup_epochs": 1})
    lrs = RecordLR()
    trainer(max_epochs=3, limit_val_batches=0, callbacks=[lrs]).fit(module, loaders()[0])
    warmup = [0.1 * (k + 1) / 5 for k in range(4)]  # 4 steps of warmup
    assert lrs.lrs == pytest.approx(warmup + [0.1] * 4 + [0.05] * 4)  # then cosine over epochs 2 and 3


def test_cosine_with_interval_step_moves_every_step_over_max_epochs():
    module = MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer="vanilla",
                             optimizer={"name": "sgd", "lr": 0.1}, scheduler={"name": "cosine", "interval": "step"})
    lrs = RecordLR()
    trainer(max_epochs=2, limit_val_batches=0, callbacks=[lrs]).fit(module, loaders()[0])  # 4 steps per epoch
    assert lrs.lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])


def test_unknown_schedule_interval_is_refused():
    module = MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer="vanilla",
                             scheduler={"name": "cosine", "interval": "batch"})
    with pytest.raises(ValueError, match="interval"):
        trainer(max_epochs=1, limit_val_batches=0).fit(module, loaders()[0])


def test_step_schedule_drops_at_milestone_epochs_even_when_max_steps_ends_the_run():
    module = MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer="vanilla",
                             optimizer={"name": "sgd", "lr": 0.1}, scheduler={"name": "step", "milestones": [1, 2]})
    lrs = RecordLR()
    trainer(max_epochs=5, max_steps=10, limit_val_batches=0, callbacks=[lrs]).fit(module, loaders()[0])
    assert lrs.lrs == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.001] * 2)


class RecordValTop1(L.Callback):
    def __init__(self):
        self.values, self.losses = [], []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val/top1"]))
            self.losses.append(float(trainer.callback_metrics["val/loss"]))


def test_history_counts_epochs_not_validations(tmp_path):
    module = MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer="vanilla")
    train, val = loaders()
    seen = RecordValTop1()
    t = trainer(max_epochs=2, val_check_interval=0.5, callbacks=[seen, EpochMetricsCSV(tmp_path)])  # 2 per epoch
    t.fit(module, train, val)
    assert len(seen.values) == 4
    assert module.val_top1_history == pytest.approx([seen.values[1], seen.values[3]])  # each epoch's last
    lines = read_metrics(tmp_path)  # one line per epoch, from its last validation (losses tell them apart)
    assert len(set(seen.losses)) == 4 and [line["epoch"] for line in lines] == [1, 2]
    assert [line["val_loss"] for line in lines] == pytest.approx([seen.losses[1], seen.losses[3]])
    assert module.epoch_summary["epoch"] == 2 and module.epoch_summary["val_top1"] == pytest.approx(seen.values[3])
    t.validate(module, val)  # an extra validation after training adds nothing
    assert module.val_top1_history == pytest.approx([seen.values[1], seen.values[3]])
    assert module.epoch_summary["epoch"] == 2


@pytest.mark.parametrize("mixer, kwargs, message", [
    (lambda: openmix.build("mixup", num_classes=NUM_CLASSES), {"label_smoothing": 0.1}, "label_smoothing=0.1"),
    (lambda: openmix.build("mixup", num_classes=NUM_CLASSES), {"mix_seed": 3}, "mix_seed=3 but the mixer has seed=None"),
    (lambda: openmix.build("mixup", num_classes=NUM_CLASSES, seed=1), {"mix_seed": 3}, "seed=1"),
    (lambda: openmix.build("mixup", num_classes=7), {}, "num_classes=4 but the mixer has num_classes=7"),
    (lambda: {"name": "cutmix", "seed": 5}, {"mix_seed": 0}, "mix_seed=0 but the mixer has seed=5"),
    (lambda: {"name": "cutmix", "label_smoothing": 0.2}, {"label_smoothing": 0.1}, "label_smoothing=0.1"),
])
def test_mixer_settings_that_contradict_the_arguments_are_an_error(mixer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer=mixer(), **kwargs)


def test_mixer_settings_that_agree_with_the_arguments_are_fine():
    mixer = openmix.build("mixup", num_classes=NUM_CLASSES, seed=3, label_smoothing=0.1)
    module = MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer=mixer, mix_seed=3, label_smoothing=0.1)
    assert module.mixer is mixer
    assert MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, mixer=mixer).mixer is mixer


def test_unknown_optimizer_lists_choices():
    with pytest.raises(ValueError, match="sgd, adamw"):
        MixupClassifier(tiny_model(), num_classes=NUM_CLASSES, optimizer={"name": "lamb"})


def test_callback_hands_mixed_batch_and_soft_targets_to_user_module():
    received = []

    class UserModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            received.append((x.detach().clone(), y.clone()))
            return openmix.losses.soft_cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            received.append(("val", y.clone()))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % NUM_CLASSES
    module = UserModule()
    callback = MixupCallback("cutmix", num_classes=NUM_CLASSES, seed=0)
    trainer(max_epochs=1, callbacks=[callback], num_sanity_val_steps=0).fit(
        module, DataLoader(TensorDataset(x, y), batch_size=8), DataLoader(TensorDataset(x, y), batch_size=8)
    )
    train_x, train_y = received[0]
    assert train_y.shape == (8, NUM_CLASSES) and not torch.equal(train_x, x)
    assert received[1][0] == "val" and received[1][1].shape == (8,)
    assert "training_step" not in vars(module)  # the module is restored after fit


class RecordingModule(L.LightningModule):
    """A user's own module: records the (mixed) inputs its training_step receives, per epoch."""

    def __init__(self):
        super().__init__()
        self.net = tiny_model()
        self.received: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.received.append((self.current_epoch, x.detach().clone()))
        return openmix.losses.soft_cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_checkpoints_its_mixer_so_a_resumed_run_draws_the_same(tmp_path):
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % NUM_CLASSES
    data = DataLoader(TensorDataset(x, y), batch_size=4)  # a fixed order: only the mixer draws

    def fit(epochs, ckpt_path=None):
        module = RecordingModule()
        callback = MixupCallback("cutmix", num_classes=NUM_CLASSES, seed=0, mode="elem")
        t = trainer(max_epochs=epochs, callbacks=[callback])
        t.fit(module, data, ckpt_path=ckpt_path)
        return module, t

    straight, _ = fit(2)
    _, first = fit(1)
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed, _ = fit(2, tmp_path / "epoch1.ckpt")
    second_epoch = [x for epoch, x in straight.received if epoch == 1]
    assert [epoch for epoch, _ in resumed.received] == [1] * 4
    for a, b in zip(second_epoch, [x for _, x in resumed.received], strict=True):
        assert torch.equal(a, b)


def test_callback_rejects_non_input_mixers_and_vanilla():
    with pytest.raises(ValueError, match="input mixer"):
        MixupCallback("vanilla")


def test_mix_step_in_a_plain_loop_learns():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, NUM_CLASSES))
    mixer = openmix.build("mixup", alpha=0.2, num_classes=NUM_CLASSES, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train, val = loaders(64, 16)

    def clean_loss() -> float:
        with torch.no_grad():
            return sum(float(nn.functional.cross_entropy(model(x), y)) for x, y in val) / len(val)

    before = clean_loss()
    for _ in range(10):
        for x, y in train:
            step = mix_step(model, mixer, x, y)
            opt.zero_grad()
            step.loss.backward()
            opt.step()
    assert step.mix is not None and step.logits.shape == (16, NUM_CLASSES)
    assert clean_loss() < 0.5 * before


def test_mixed_accuracy_weights_hits_by_lam():
    out = openmix.MixOutput(x=torch.zeros(2, 1), y=torch.zeros(2, 2), lam=torch.tensor([0.7, 0.4]),
                            index=torch.tensor([1, 0]))
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0]])  # predicts class 0 twice
    acc = mixed_accuracy(logits, torch.tensor([0, 1]), out)
    # sample 0: own label 0 hit (0.7), partner label 1 missed; sample 1: own miss, partner label 0 hit (0.6)
    assert float(acc) == pytest.approx((0.7 + 0.6) / 2)


def test_build_mixer_specs():
    assert build_mixer(None) is None and build_mixer("none") is None
    mixer = build_mixer({"name": "mixup", "alpha": None}, num_classes=3)
    assert mixer.alpha == 1.0 and mixer.num_classes == 3
    with pytest.raises(ValueError, match="name"):
        build_mixer({"alpha": 1.0})
    with pytest.raises(ValueError, match="available"):
        build_mixer("mixupp")
