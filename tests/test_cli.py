"""openmix-train / -report / -show end to end: configs, runs, sweeps, resume, bad input."""

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import data_files as files
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import openmix
from openmix.cli.train import CONFIG_DIR, ConfigError, _launching_process, train, validate
from openmix.data import check_settings
from openmix.lightning import MixupClassifier
from openmix.lightning.logging import TrainThroughput
from openmix.results import example_row, read_eval, read_result, write_result

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
MIXER_CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "mixer").glob("*.yaml"))
DATA_CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))
# Tiny real training: synthetic data, a narrow CIFAR ResNet, CPU.
TINY = [
    "data=synthetic", "data.num_samples=64", "data.num_val_samples=32", "data.image_size=16", "batch_size=16",
    "+model.kwargs.channels=[8,8,8,8]", "+model.kwargs.stem_width=8", "trainer.accelerator=cpu", "print_table=false",
    "eval.enabled=false",  # tests/test_evaluation.py covers the evaluation after training
]


def compose_cfg(*overrides: str, config: str = "train"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config, overrides=list(overrides))


def run(tmp_path: Path, *overrides: str, run_dir: str = "run", callbacks=()) -> dict:
    cfg = compose_cfg("~experiment", *TINY, f"+run_dir={tmp_path / run_dir}", *overrides)
    return train(cfg, callbacks=callbacks)


class Interrupted(Exception):
    pass


class InterruptAt(L.Callback):
    """Stops a run as a killed job would: at the start of an epoch (0-based), after the last checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupted


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """openmix-train in a subprocess: its stdout is a pipe, as in a SLURM log or CI."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "openmix.cli.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_config_groups_cover_the_registry():
    assert set(openmix.available()) | {"vanilla"} == set(MIXER_CONFIGS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment):
    cfg = compose_cfg(f"experiment={experiment}", "mixer=cutmix")
    validate(cfg)  # names, numbers, data and model arguments
    assert OmegaConf.to_container(cfg, resolve=True)["name"] == cfg.name
    with torch.device("meta"):
        module = MixupClassifier(cfg.model.name, num_classes=10, model_kwargs=cfg.model.kwargs,
                                 mixer=OmegaConf.to_container(cfg.mixer, resolve=True),
                                 optimizer=OmegaConf.to_container(cfg.optim.optimizer),
                                 scheduler=OmegaConf.to_container(cfg.optim.scheduler))
    assert module.mixer.alpha == cfg.mixer.alpha


def test_published_alpha_follows_the_experiment():
    assert compose_cfg("experiment=cifar100_r18", "mixer=cutmix").mixer.alpha == 0.2
    assert compose_cfg("experiment=tinyimagenet_r18", "mixer=cutmix").mixer.alpha == 1.0
    assert compose_cfg("experiment=cifar100_r18", "mixer=cutmix", "mixer.alpha=0.7").mixer.alpha == 0.7


@pytest.mark.parametrize("data", DATA_CONFIGS)
def test_every_data_group_gets_only_settings_its_datamodule_takes(data):
    cfg = compose_cfg(f"data={data}")  # with the default (quick) experiment merged in
    check_settings(cfg.data.name, [key for key in cfg.data if key != "name"])


@pytest.mark.parametrize("mixer", MIXER_CONFIGS)
def test_every_mixer_config_builds(mixer):
    validate(compose_cfg(f"mixer={mixer}", "experiment=cifar100_r18"))


@pytest.mark.parametrize("override, message", [
    ("epochs=-1", "epochs must be a positive integer"),
    ("batch_size=0", "batch_size must be a positive integer"),
    ("mixer.name=mixupp", "unknown mixer 'mixupp'; available: vanilla, adautomix, alignmix, attentivemix, automix"),
    ("data.name=cifar1000", "unknown data 'cifar1000'; available: cifar10"),
    ("model.name=resnet1800", "unknown model 'resnet1800'"),
    ("mixer.alpha=-1", "alpha must be >= 0"),
])
def test_invalid_settings_fail_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        run(tmp_path, override)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mixer", ["vanilla", "mixup", "cutmix"])
def test_fast_dev_run_writes_a_result_row(tmp_path, mixer):
    row = run(tmp_path, f"mixer={mixer}", "+trainer.fast_dev_run=true")
    assert row["mixer"] == mixer and row["data"] == "synthetic"
    assert read_result(tmp_path / "run") == row
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_run_records_metrics_and_result(tmp_path):
    row = run(tmp_path, "epochs=2")
    lines = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(line["epoch"]) for line in lines] == [1, 2]
    assert float(lines[-1]["val_top1"]) == pytest.approx(row["top1_final"])
    assert row["top1_median10"] == pytest.approx(sorted(float(line["val_top1"]) for line in lines)[0] / 2
                                                 + sorted(float(line["val_top1"]) for line in lines)[1] / 2)
    assert row["images_per_s"] > 0 and row["device"] == "cpu"


def test_existing_result_is_skipped(tmp_path):
    first = run(tmp_path, "+trainer.fast_dev_run=true")
    stamp = (tmp_path / "run" / "result.json").stat().st_mtime_ns
    assert run(tmp_path, "+trainer.fast_dev_run=true") == first
    assert (tmp_path / "run" / "result.json").stat().st_mtime_ns == stamp


def test_a_run_another_process_trains_is_skipped_and_left_alone(tmp_path, hold_lock, capsys):
    holder = hold_lock(tmp_path / "run")
    assert run(tmp_path, "+trainer.fast_dev_run=true") == {}
    assert f"another process (pid {holder.pid} on" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["running.lock"]
    holder.kill()
    holder.wait()
    assert run(tmp_path, "+trainer.fast_dev_run=true")["mixer"] == "mixup"  # its holder gone, the run is free
    assert not (tmp_path / "run" / "running.lock").exists()


def test_resumed_run_continues_exactly(tmp_path):
    """Stop after 2 of 3 epochs, resume from last.ckpt: epoch 3 matches an uninterrupted run."""
    run(tmp_path, "epochs=3", "mixer=cutmix", run_dir="straight")
    with pytest.raises(Interrupted):
        run(tmp_path, "epochs=3", "mixer=cutmix", run_dir="resumed", callbacks=[InterruptAt(2)])
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").is_file()
    run(tmp_path, "epochs=3", "mixer=cutmix", run_dir="resumed")
    straight = list(csv.DictReader((tmp_path / "straight" / "metrics.csv").open()))
    resumed = list(csv.DictReader((tmp_path / "resumed" / "metrics.csv").open()))
    assert [line["epoch"] for line in resumed] == ["1", "2", "3"]
    for key in ("train_loss", "val_loss", "val_top1"):
        assert float(resumed[2][key]) == pytest.approx(float(straight[2][key]), rel=1e-5), key


class Clocks(L.Callback):
    """What a run's clocks read, from inside it: the seconds since its set-up at its last training
    batch and at its teardown, and its TrainThroughput's images and seconds when an epoch ends."""

    def setup(self, trainer, pl_module, stage):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last_batch = time.perf_counter() - self.started

    def on_train_epoch_end(self, trainer, pl_module):
        throughput = next(c for c in trainer.callbacks if isinstance(c, TrainThroughput))
        self.images, self.train_seconds = throughput.images, throughput.seconds

    def teardown(self, trainer, pl_module, stage):
        self.ended = time.perf_counter() - self.started


def test_resumed_run_reports_the_time_and_images_of_every_attempt(tmp_path):
    """Stop after 1 of 2 epochs, resume: wall time and images/s cover both attempts, not only the last."""
    first, second = Clocks(), Clocks()
    with pytest.raises(Interrupted):
        run(tmp_path, "epochs=2", callbacks=[first, InterruptAt(1)])
    row = run(tmp_path, "epochs=2", callbacks=[second])
    assert row["wall_time_s"] >= first.last_batch + second.ended  # the first attempt's time up to its checkpoint
    assert second.images == 2 * first.images and second.train_seconds > first.train_seconds
    assert row["images_per_s"] == pytest.approx(second.images / second.train_seconds)


def run_folder(*overrides: str) -> str:
    """The folder Hydra would give this run."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra.run.dir


def test_run_folder_follows_every_defining_setting():
    base = run_folder("mixer=cutmix")
    assert base.startswith("runs/fashion_mnist_quick/cutmix/e5_s0_a1_id")
    defining = ["mixer.alpha=0.2", "mixer.mode=elem", "label_smoothing=0.1", "optim=adamw_cosine",
                "optim.optimizer.lr=0.05", "optim.scheduler.min_lr=0.001", "model=cifar_resnet34",
                "+model.kwargs.widths=[8,16,32]", "batch_size=64", "trainer.precision=bf16-mixed",
                "+trainer.max_steps=100", "data.on_device=false", "epochs=4", "seed=1"]
    folders = [run_folder("mixer=cutmix", override) for override in defining]
    assert base not in folders and len(set(folders)) == len(folders)
    assert run_folder("mixer=cutmix", "mixer.alpha=0.2").endswith(folders[0].rsplit("/", 1)[1])
    assert "/e5_s0_a0.2_id" in folders[0]
    same = ["data.root=/scratch", "data.num_workers=0", "data.download=true", "trainer.accelerator=cpu",
            "skip_done=false", "resume=false", "print_table=false", "mixer.alpha=1"]
    assert all(run_folder("mixer=cutmix", override) == base for override in same)


def test_skip_and_resume_refuse_a_folder_of_another_run(tmp_path):
    run(tmp_path, "mixer=cutmix", "+trainer.fast_dev_run=true")
    for overrides in (["skip_done=true"], ["skip_done=false"]):  # the finished result; the checkpoint
        with pytest.raises(ConfigError, match=r"holds another run.*mixer\.alpha: 1\.0 there, 0\.2 now"):
            run(tmp_path, "mixer=cutmix", "mixer.alpha=0.2", "+trainer.fast_dev_run=true", *overrides)
    with pytest.raises(ConfigError, match=r"label_smoothing: 0\.0 there, 0\.1 now; mixer\.alpha: 1\.0 there, 0\.2"):
        run(tmp_path, "mixer=cutmix", "mixer.alpha=0.2", "label_smoothing=0.1", "+trainer.fast_dev_run=true")
    assert read_result(tmp_path / "run")["alpha"] == 1.0
    # a folder with a result but no config.yaml cannot be checked: refused too
    write_result(tmp_path / "foreign", example_row())
    with pytest.raises(ConfigError, match="no config.yaml"):
        run(tmp_path, "+trainer.fast_dev_run=true", run_dir="foreign")


def test_corrupt_checkpoint_is_reported_and_run_folder_left_alone(tmp_path):
    run(tmp_path, "+trainer.fast_dev_run=true")  # the run's folder, with its config.yaml
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(RuntimeError, match="corrupt or unreadable.*resume=false"):
        run(tmp_path, "+trainer.fast_dev_run=true", "skip_done=false")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert checkpoint.read_bytes() == b"not a checkpoint"


def table_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")] if line.startswith("|") else [""]


@pytest.mark.slow
def test_sweep_over_alpha_gives_a_run_each_prints_epoch_lines_then_rerun_skips_then_report(tmp_path):
    tiny = [arg for arg in TINY if not arg.startswith("print_table")]
    args = ["-m", "~experiment", *tiny, "epochs=2", "mixer=cutmix", "mixer.alpha=0.2,1.0", "name=tiny", "out_dir=runs"]
    first = cli(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = sorted(tmp_path.glob("runs/tiny/cutmix/e2_s0_a*_id*/result.json"))
    assert len(rows) == 2 and [read_result(p.parent)["alpha"] for p in rows] == [0.2, 1.0]
    assert all(p.parent.name.endswith("_id" + read_result(p.parent)["run_id"]) for p in rows)
    # stdout is a pipe, not a terminal: one line per epoch of each run
    epoch_lines = [line for line in first.stdout.splitlines() if line.startswith("[openmix] epoch ")]
    assert [line.split()[2] for line in epoch_lines] == ["1/2", "2/2"] * 2, first.stdout[-3000:]
    pattern = r"val top-1 \d+\.\d\d%  train loss \d+\.\d{4}  [\d,]+ img/s  \d+:\d\d:\d\d elapsed"
    assert all(re.search(pattern, line) for line in epoch_lines), epoch_lines
    # the table at the end (openmix-report on the sweep): the median of 2 epochs and, beside it, the final top-1
    assert ["method", "alpha", "2", "2 final"] in map(table_cells, first.stdout.splitlines())
    assert [cells[:2] for cells in map(table_cells, first.stdout.splitlines()) if cells[0] == "cutmix"] == [
        ["cutmix", "0.2"], ["cutmix", "1"]]  # one line per alpha
    stamps = [p.stat().st_mtime_ns for p in rows]
    again = cli(tmp_path, *args)
    assert again.returncode == 0 and again.stdout.count("skipped (skip_done=true)") == 2
    assert [p.stat().st_mtime_ns for p in rows] == stamps
    # a run pointed at another run's folder: exit 2, naming the setting and both values
    clash = cli(tmp_path, "~experiment", *TINY, "epochs=2", "mixer=cutmix", "mixer.alpha=0.5", "name=tiny",
                f"hydra.run.dir={rows[0].parent}")
    assert clash.returncode == 2 and "mixer.alpha: 0.2 there, 0.5 now" in clash.stderr, clash.stderr[-2000:]
    assert [p.stat().st_mtime_ns for p in rows] == stamps


@pytest.mark.slow
def test_cli_rejects_bad_override_with_exit_code_2(tmp_path):
    result = cli(tmp_path, "batch_size=0", "data=synthetic")
    assert result.returncode == 2 and "batch_size must be a positive integer" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_show_writes_a_gallery(tmp_path):
    from openmix.cli.show import gallery

    images, labels = torch.rand(4, 3, 16, 16), torch.arange(4)
    path = gallery(images, labels, ["mixup", "cutmix", {"name": "fmix", "alpha": 1.0}], 4, tmp_path / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_short_real_run_on_fashion_mnist(tmp_path):
    cfg = compose_cfg(f"+run_dir={tmp_path / 'run'}", "epochs=1", "mixer=vanilla", "+trainer.limit_train_batches=30",
                      "+trainer.limit_val_batches=20", "trainer.accelerator=cpu", "print_table=false",
                      "eval.subset=100", "eval.pgd_steps=2", "eval.corruptions=[gaussian_noise,defocus_blur,rotate]")
    row = train(cfg)  # the default experiment: Fashion-MNIST from Debian's package
    assert row["data"] == "fashion_mnist" and row["experiment"] == "fashion_mnist_quick"
    assert 25.0 < row["top1_final"] <= 100.0  # 30 plain steps beat chance (10%) on real data (measured: 36%)
    metrics = read_eval(tmp_path / "run")  # and it is evaluated on the whole real test set (and 100 of its images)
    assert metrics["num_test"] == 10_000 and metrics["num_subset"] == 100 and 0.0 <= metrics["ece"] <= 100.0
    assert metrics["fgsm_top1"] <= metrics["subset_top1"] and set(metrics["corruption"]) == {
        "gaussian_noise", "defocus_blur", "rotate"}


class InputShapes(L.Callback):
    """Records the shape of every training batch's inputs."""

    def __init__(self) -> None:
        self.shapes: set[tuple[int, ...]] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.shapes.add(tuple(batch[0].shape))


def test_quick_recipe_trains_on_an_image_folder_at_its_own_size(tmp_path):
    files.write_imagefolder(tmp_path / "images", per_class=4, size=12)
    overrides = ["data=imagefolder", f"data.root={tmp_path / 'images'}", "data.num_workers=0", "epochs=1", "eval.enabled=false",
                 "batch_size=4", "trainer.accelerator=cpu", "print_table=false"]
    assert run_folder(*overrides).startswith("runs/imagefolder_quick/mixup/e1_s0_a0.2_id")
    shapes = InputShapes()
    row = train(compose_cfg(*overrides, f"+run_dir={tmp_path / 'run'}"), callbacks=[shapes])
    assert (row["experiment"], row["data"], row["model"]) == ("imagefolder_quick", "imagefolder", "small_convnet")
    assert 0.0 <= row["top1_final"] <= 100.0 and read_result(tmp_path / "run") == row
    assert shapes.shapes == {(4, 3, 12, 12)}  # 12 train images of 12x12, in batches of 4


@pytest.mark.slow
def test_a_data_setting_the_datamodule_does_not_take_is_one_line_and_exit_code_2(tmp_path):
    files.write_imagefolder(tmp_path / "images")
    result = cli(tmp_path, "data=imagefolder", "data.root=images", "+data.crop_padding=4")
    assert result.returncode == 2
    assert re.fullmatch(r"openmix-train: data\.crop_padding is not a setting of imagefolder "
                        r"\(it takes: image_size, num_classes, in_chans, root, .*\)", result.stderr.strip())
    assert not (tmp_path / "runs").exists()


def test_slurm_launcher_config_composes_on_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1


def test_parallel_launcher_config_composes_on_joblib():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=parallel", "hydra.launcher.n_jobs=3"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3


@pytest.mark.parametrize("rank_variable", ["LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"])
def test_only_the_launching_process_takes_the_run_lock(monkeypatch, rank_variable):
    for name in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert _launching_process()
    monkeypatch.setenv(rank_variable, "0")
    assert _launching_process()
    monkeypatch.setenv(rank_variable, "1")  # a DDP rank started for the run: its rank 0 holds the lock
    assert not _launching_process()


@pytest.mark.slow
def test_missing_dataset_is_one_clear_error_and_no_run_folder(tmp_path):
    result = cli(tmp_path, "experiment=cifar100_r18", "data.root=nowhere")
    assert result.returncode == 2
    assert "nowhere/cifar-100-python" in result.stderr and "data.download=true" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()
