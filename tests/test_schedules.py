"""Mixing schedules: the schedule by epoch, and MixupClassifier, MixupCallback and openmix-train following it."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import openmix
from openmix.lightning import MixSchedule, MixupCallback, MixupClassifier
from openmix.lightning.schedules import SWITCH_SEED_OFFSET, ScheduledMixers
from openmix.results import run_id
from openmix.targets import soft_targets

NUM_CLASSES = 4
SMOOTHING = 0.1
X = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(16) % NUM_CLASSES


def data() -> DataLoader:
    """Two batches of 8, in a fixed order: only the mixer draws."""
    return DataLoader(TensorDataset(X, Y), batch_size=8)


def trainer(epochs: int, callbacks=()) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))


class Recorder(MixupClassifier):
    """A MixupClassifier that keeps each step's epoch, inputs, labels and result."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = []

    def train_step(self, x, y):
        step = super().train_step(x, y)
        self.steps.append((self.current_epoch, x, y, step))
        return step


def recorder(mixer="mixup", schedule=None, **kwargs) -> Recorder:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, NUM_CLASSES))
    return Recorder(model, num_classes=NUM_CLASSES, mixer=mixer, mix_seed=0, label_smoothing=SMOOTHING,
                    schedule=schedule, **kwargs)


class Logged(L.Callback):
    """The scheduled values logged in each epoch, and those the mixers held during it."""

    def __init__(self):
        self.logged, self.held = [], []

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.logged.append(tuple(float(metrics[k]) if k in metrics else None
                                 for k in ("train/mix_prob", "train/mix_alpha")))
        mixer = getattr(pl_module, "mixer", None)  # a user's module has none
        self.held.append(None if mixer is None else (mixer.prob, mixer.alpha))


# ---------------------------------------------------------------- the schedule by epoch
def test_schedule_values_per_epoch_by_hand():
    schedule = MixSchedule(off_epoch=5, prob_ramp_epochs=2, prob_start=0.5, alpha_ramp_epochs=4, switch_epoch=3,
                           switch_to="mixup")
    epochs = range(7)
    assert [schedule.mixing(e) for e in epochs] == [True] * 5 + [False] * 2
    assert [schedule.switched(e) for e in epochs] == [False] * 3 + [True] * 4
    assert [schedule.prob(e, 1.0) for e in epochs] == [0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [schedule.alpha(e, 2.0) for e in epochs] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_no_schedule_leaves_every_epoch_as_the_mixer_is():
    schedule = MixSchedule()
    assert all(schedule.mixing(e) and not schedule.switched(e) for e in range(100))
    assert schedule.prob(0, 0.3) == 0.3 and schedule.alpha(0, 0.2) == 0.2


def test_a_config_with_only_nulls_is_no_schedule():
    assert MixSchedule.of({"off_epoch": None, "switch_to": None}) is None
    assert MixSchedule.of({"off_epoch": 3, "prob_start": None}) == MixSchedule(off_epoch=3)


@pytest.mark.parametrize("settings, message", [
    ({"off_epoch": 0}, "schedule.off_epoch must be an integer >= 1, got 0"),
    ({"switch_epoch": -1, "switch_to": "mixup"}, "schedule.switch_epoch must be an integer >= 1"),
    ({"prob_ramp_epochs": 2.5}, "schedule.prob_ramp_epochs must be an integer"),
    ({"prob_start": 1.5}, r"schedule.prob_start must be in \[0.0, 1.0\]"),
    ({"alpha_start": -0.1}, "schedule.alpha_start must be >= 0"),
    ({"switch_epoch": 3}, "schedule.switch_epoch and schedule.switch_to go together"),
    ({"off_epoch": 3, "switch_epoch": 3, "switch_to": "mixup"}, "switch_epoch=3 must be below schedule.off_epoch=3"),
    ({"off_epoch": 3, "alpha_ramp_epochs": 4}, "schedule.alpha_ramp_epochs=4 must be below schedule.off_epoch=3"),
    ({"of_epoch": 3}, "unknown schedule setting.* schedule.of_epoch; available: off_epoch"),
])
def test_bad_schedules_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        MixSchedule.of(settings)


@pytest.mark.parametrize("settings, message", [
    ({"off_epoch": 4}, "schedule.off_epoch=4 must be below the run's 4 epochs"),
    ({"prob_ramp_epochs": 6}, "schedule.prob_ramp_epochs=6 must be below the run's 4 epochs"),
    ({"switch_epoch": 5, "switch_to": "cutmix"}, "schedule.switch_epoch=5 must be below the run's 4 epochs"),
])
def test_a_schedule_longer_than_the_run_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        MixSchedule(**settings).check_run(4)
    with pytest.raises(ValueError, match=message):
        trainer(4).fit(recorder(schedule=settings), data())


@pytest.mark.parametrize("mixer, settings, message", [
    ("mixup", {"switch_epoch": 1, "switch_to": "mixupp"}, "schedule.switch_to='mixupp': unknown mixer 'mixupp'"),
    ("mixup", {"switch_epoch": 1, "switch_to": "vanilla"}, "set schedule.off_epoch instead"),
    ("mixup", {"switch_epoch": 1, "switch_to": "automix"}, "a learned mixer .AutoMix. cannot be switched to"),
    ("smoothmix", {"alpha_ramp_epochs": 2}, "schedule.alpha_ramp_epochs: SmoothMix has no alpha"),
    ("automix", {"prob_ramp_epochs": 2}, "schedule.prob_ramp_epochs: AutoMix mixes every batch"),
    ("mixup", {"alpha_ramp_epochs": 3, "switch_epoch": 2, "switch_to": "smoothmix"}, "SmoothMix has no alpha"),
    (None, {"off_epoch": 2}, "a mixing schedule needs the mixer it schedules"),
])
def test_schedules_a_mixer_cannot_follow_are_refused(mixer, settings, message):
    built = None if mixer is None else openmix.build(mixer, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=message):
        ScheduledMixers.of(settings, built)


# ---------------------------------------------------------------- setting the mixers
def test_each_epoch_sets_prob_and_alpha_from_the_mixers_own_values_never_the_last_epochs():
    mixer = openmix.build("mixup", alpha=0.4, prob=0.8, num_classes=NUM_CLASSES)
    scheduled = ScheduledMixers(MixSchedule(prob_ramp_epochs=4, alpha_ramp_epochs=2), mixer)
    for epoch, prob, alpha in [(1, 0.2, 0.2), (1, 0.2, 0.2), (3, 0.6, 0.4), (0, 0.0, 0.0), (9, 0.8, 0.4)]:
        scheduled.start_epoch(epoch)
        assert (mixer.prob, mixer.alpha) == pytest.approx((prob, alpha)), epoch
    scheduled.restore()
    assert repr(mixer) == repr(openmix.build("mixup", alpha=0.4, prob=0.8, num_classes=NUM_CLASSES))


def test_a_scheduled_mixer_draws_as_one_built_with_those_values():
    """Setting alpha leaves the seeded streams alone: call n draws as call n of a mixer built with that alpha."""
    scheduled_mixer = openmix.build("mixup", alpha=1.0, mode="elem", num_classes=NUM_CLASSES, seed=3)
    built = openmix.build("mixup", alpha=0.5, mode="elem", num_classes=NUM_CLASSES, seed=3)
    scheduled = ScheduledMixers(MixSchedule(alpha_ramp_epochs=2), scheduled_mixer)
    for mixer in (scheduled_mixer, built):
        mixer(X, Y)  # one call first: the counters move on alike
    scheduled.start_epoch(1)  # alpha 0.5
    assert torch.equal(scheduled_mixer(X, Y).lam, built(X, Y).lam)


def test_a_ramp_that_ends_before_the_switch_asks_nothing_of_the_mixer_switched_to():
    schedule = MixSchedule(alpha_ramp_epochs=2, switch_epoch=2, switch_to="smoothmix")
    scheduled = ScheduledMixers(schedule, openmix.build("mixup", num_classes=NUM_CLASSES))
    assert type(scheduled.start_epoch(2).mixer).__name__ == "SmoothMix"


def test_random_choice_children_ramp_from_their_own_alphas():
    mixer = openmix.build("random_choice", mixers=[{"name": "mixup", "alpha": 0.8}, {"name": "cutmix", "alpha": 2.0}],
                          num_classes=NUM_CLASSES)
    epoch = ScheduledMixers(MixSchedule(alpha_ramp_epochs=2), mixer).start_epoch(1)
    assert [child.alpha for child in mixer.mixers] == [0.4, 1.0]
    assert epoch.alpha is None  # RandomChoice itself has no alpha to log


def test_the_mixer_switched_to_inherits_classes_smoothing_and_an_offset_seed():
    first = openmix.build("cutmix", num_classes=NUM_CLASSES, label_smoothing=SMOOTHING, seed=7)
    schedule = MixSchedule(switch_epoch=1, switch_to={"name": "mixup", "alpha": 0.2})
    switched = ScheduledMixers(schedule, first).switch_mixer
    assert (switched.alpha, switched.num_classes, switched.label_smoothing) == (0.2, NUM_CLASSES, SMOOTHING)
    assert switched.seed == 7 + SWITCH_SEED_OFFSET


# ---------------------------------------------------------------- MixupClassifier
def test_mixing_is_off_from_off_epoch_on_with_smoothed_targets_and_the_same_loss():
    module = recorder(schedule=MixSchedule(off_epoch=2))
    trainer(4).fit(module, data())
    for epoch, x, y, step in module.steps:
        if epoch < 2:
            assert (step.mix.lam < 1).all(), epoch  # mixup (alpha 1, prob 1) mixes every batch
            continue
        assert torch.equal(step.mix.x, x) and (step.mix.lam == 1).all()
        assert torch.equal(step.mix.y, soft_targets(y, NUM_CLASSES, SMOOTHING))
        expected = nn.functional.cross_entropy(step.logits, y, label_smoothing=SMOOTHING)
        assert step.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert module.mixer._calls == 4  # 2 epochs of 2 batches: the mixer is not called while off


def test_ramps_reach_the_mixers_own_values_and_are_logged():
    logged = Logged()
    module = recorder({"name": "mixup", "alpha": 0.4}, MixSchedule(prob_ramp_epochs=2, alpha_ramp_epochs=2))
    trainer(4, [logged]).fit(module, data())
    expected = [0.0, 0.0, 0.5, 0.2, 1.0, 0.4, 1.0, 0.4]  # (prob, alpha) of epochs 0-3
    assert [v for pair in logged.logged for v in pair] == pytest.approx(expected)
    assert [v for pair in logged.held for v in pair] == pytest.approx(expected)
    assert (module.mixer.prob, module.mixer.alpha) == (1.0, 0.4)  # its own values again after training


def test_a_switch_changes_the_mixer_at_its_epoch():
    module = recorder("cutmix", MixSchedule(switch_epoch=2, switch_to="mixup"))
    trainer(4).fit(module, data())
    assert [step.mix.mask is not None for _, _, _, step in module.steps] == [True] * 4 + [False] * 4  # cutmix's masks
    assert (module.mixer._calls, module.switch_mixer._calls) == (4, 4)
    assert "switch_mixer._extra_state" in module.state_dict()


def test_an_unscheduled_module_logs_no_schedule_and_keeps_its_state_dict_keys():
    logged = Logged()
    module = recorder()
    trainer(1, [logged]).fit(module, data())
    assert logged.logged == [(None, None)]
    assert not any(key.startswith("switch_mixer") for key in module.state_dict())


class StopAfter(L.Callback):
    """Ends a run after ``epochs`` epochs, as an interrupted job would."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


def test_a_resumed_run_follows_the_schedule_exactly(tmp_path):
    """Stopped after 2 of 4 epochs and resumed from the checkpoint: epochs 2 and 3 (a switch at 2, off
    at 3) mix and train exactly as in an uninterrupted run."""
    schedule = {"prob_ramp_epochs": 2, "prob_start": 0.5, "switch_epoch": 2, "switch_to": "cutmix", "off_epoch": 3}
    mixer = {"name": "mixup", "alpha": 1.0, "mode": "elem"}
    straight = recorder(mixer, schedule)
    trainer(4).fit(straight, data())
    first = trainer(4, [StopAfter(2)])
    first.fit(recorder(mixer, schedule), data())
    first.save_checkpoint(tmp_path / "epoch2.ckpt")
    resumed = recorder(mixer, schedule)
    trainer(4).fit(resumed, data(), ckpt_path=tmp_path / "epoch2.ckpt")
    later = [s for s in straight.steps if s[0] >= 2]
    assert [s[0] for s in resumed.steps] == [s[0] for s in later] == [2, 2, 3, 3]
    for (_, _, _, a), (_, _, _, b) in zip(later, resumed.steps, strict=True):
        assert torch.equal(a.mix.lam, b.mix.lam) and torch.equal(a.mix.x, b.mix.x)
        assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)


# ---------------------------------------------------------------- MixupCallback
class UserModule(L.LightningModule):
    """A user's own module: keeps what its training_step receives."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, NUM_CLASSES))
        self.received = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.received.append((self.current_epoch, x, y))
        return openmix.losses.soft_cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_switches_then_hands_unmixed_batches_with_smoothed_targets_once_off():
    module, logged = UserModule(), Logged()
    callback = MixupCallback("cutmix", num_classes=NUM_CLASSES, label_smoothing=SMOOTHING, seed=0,
                             schedule={"switch_epoch": 1, "switch_to": "mixup", "off_epoch": 2})
    trainer(3, [callback, logged]).fit(module, data())
    batches = [X[:8], X[8:]]
    for (epoch, x, y), batch in zip(module.received, batches * 3, strict=True):
        assert torch.equal(x, batch) == (epoch == 2), epoch
        assert torch.equal(y, soft_targets(Y[:8], NUM_CLASSES, SMOOTHING)) == (epoch == 2), epoch
    assert (callback.mixer._calls, callback.switch_mixer._calls) == (2, 2)
    assert logged.logged == [(1.0, 1.0), (1.0, 1.0), (0.0, 1.0)]
    assert set(callback.state_dict()) == {"mixer", "switch_mixer"}


def test_callback_refuses_to_switch_to_a_mixer_that_needs_the_model():
    with pytest.raises(ValueError, match="MixupCallback needs an input mixer, got a feature mixer"):
        MixupCallback("mixup", num_classes=NUM_CLASSES, schedule=MixSchedule(switch_epoch=1, switch_to="manifoldmix"))


# ---------------------------------------------------------------- openmix-train
def test_cli_composes_a_schedule_and_a_config_without_one_keeps_its_run_id():
    from test_cli import compose_cfg
    from omegaconf import OmegaConf

    default = OmegaConf.to_container(compose_cfg(), resolve=True)
    assert set(default["schedule"].values()) == {None}
    assert run_id(default) == run_id({k: v for k, v in default.items() if k != "schedule"})
    scheduled = OmegaConf.to_container(compose_cfg("schedule.off_epoch=2"), resolve=True)
    assert scheduled["schedule"]["off_epoch"] == 2 and run_id(scheduled) != run_id(default)
    switched = compose_cfg("schedule.switch_epoch=1", "schedule.switch_to={name: cutmix, alpha: 0.2}")
    assert OmegaConf.to_container(switched.schedule)["switch_to"] == {"name": "cutmix", "alpha": 0.2}


def test_cli_run_trains_with_the_schedule(tmp_path):
    from test_cli import run

    logged = Logged()
    row = run(tmp_path, "epochs=2", "schedule.off_epoch=1", "+trainer.limit_train_batches=2", callbacks=[logged])
    assert [prob for prob, _ in logged.logged] == [1.0, 0.0]
    assert row["epochs"] == 2


@pytest.mark.parametrize("override, message", [
    ("schedule.off_epoch=2", "schedule.off_epoch=2 must be below the run's 2 epochs"),
    ("schedule.off_epoch=-1", "schedule.off_epoch must be an integer >= 1"),
    ("schedule.switch_to=mixupp", "schedule.switch_to='mixupp': unknown mixer"),
])
def test_cli_refuses_a_bad_schedule_before_any_work(tmp_path, override, message):
    from test_cli import run

    from openmix.cli.train import ConfigError

    extra = ["schedule.switch_epoch=1"] if "switch_to" in override else []
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, "epochs=2", override, *extra)
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_schedule_for_mixing_in_dataloader_workers(tmp_path):
    """Workers keep the mixer they started with (timm's mixup_off_epoch bug with persistent workers):
    a schedule there would silently not happen, so it is an error."""
    from test_cli import run

    from openmix.cli.train import ConfigError

    with pytest.raises(ConfigError, match="does not reach mixing in DataLoader workers"):
        run(tmp_path, "epochs=2", "schedule.off_epoch=1", "++mix_in_workers=true", "data.num_workers=0")
    assert not (tmp_path / "run").exists()
