"""benchmarks/REPRODUCE.md against the published recipes (recipe drift).

Every ``openmix-train`` line of REPRODUCE.md is composed with Hydra (each mixer and each epoch
budget of its sweep at least once), and the composed config must carry the recipe of its table,
written out below as data from the reference notes (``published.md``) and the shipped CSVs.
A config change that drifts from a published recipe, or a command that no longer runs its whole
table, fails here. Composition only: nothing trains.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import openmix
from openmix.cli.train import CONFIG_DIR
from openmix.data import build_datamodule
from openmix.evaluation import EvalSettings
from openmix.model_mixer import trains_with
from openmix.models import create_model
from openmix.reporting import available_papers, load_published
from openmix.results import run_id

ROOT = Path(__file__).resolve().parents[1]
REPRODUCE = ROOT / "benchmarks" / "REPRODUCE.md"
BENCH_SCRIPT = ROOT / "benchmarks" / "fashion_mnist_bench.sh"

# published.md, "OpenMixup ..., CIFAR-100": SGD lr 0.1 momentum 0.9 wd 1e-4, cosine to 0, batch 100
# on one GPU, RandomCrop 32 pad 4 (reflect) + flip, mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).
OPENMIXUP_SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False}
COSINE_TO_0 = {"name": "cosine", "warmup_epochs": 0, "min_lr": 0.0}
CIFAR_DATA = {"num_classes": 100, "image_size": 32, "padding": 4, "padding_mode": "reflect",
              "mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010)}
# OpenMixup's CIFAR and Tiny-ImageNet learned-mixer configs anneal the model's lr to 0.05, not 0
# (not in published.md: the experiment files and the README say so).
LEARNED_FLOOR = {"automix": 0.05, "samix": 0.05}
# OpenMixup's AttentiveMix+ in every table: k from Beta(alpha, alpha), the cells of a frozen torchvision
# ImageNet ResNet-18 (timm's resnet18.tv_in1k) on the batch resized to 224 (r18_attentivemix_CE_none.py;
# its ViT configs take a ResNet-50).
ATTENTIVEMIX_PLUS = {"use_alpha": True, "attention_model": "resnet18.tv_in1k", "attention_size": 224}
# published.md, "Method recipes": PuzzleMix block_num {2, 4, 8, 16} (null: those that divide the
# image side), beta 1.2, gamma 0.5 over neigh_size 4, eta 0.2, n_labels 3, t_eps 0.8, transport on;
# AutoMix EMA 0.999 -> 0.999999, mask loss 0.1, lam margin 0.08, nearest upsampling; SAMix bilinear.
# OpenMixup's benchmark configs draw ResizeMix's scale from Beta(alpha, alpha) (use_alpha).
OPENMIXUP_MIXERS = {
    "attentivemix": ATTENTIVEMIX_PLUS,
    "resizemix": {"use_alpha": True},
    "puzzlemix": {"t_size": 4, "block_nums": None},
    "automix": {"end_momentum": 0.999999, "lr": None, "min_lr": None, "lam_channel": False,
                "mask_loss_anneal": False},
    "samix": {"end_momentum": 0.999999, "lr": None, "min_lr": None, "lam_scaling": 0.25, "value_dropout": 0.0},
}
# published.md, "Method recipes (from the official code)": settings every table shares.
METHOD_RECIPES = {
    "puzzlemix": {"beta": 1.2, "gamma": 0.5, "eta": 0.2, "neigh_size": 4, "n_labels": 3, "t_eps": 0.8,
                  "transport": True},
    "alignmix": {"eps": 0.1, "max_iter": 100, "tol": 0.1},
    "automix": {"momentum": 0.999, "mask_loss": 0.1, "lam_margin": 0.08, "upsample": "nearest"},
    "samix": {"momentum": 0.999, "upsample": "bilinear"},
    "fmix": {"decay_power": 3.0},
    "resizemix": {"scope": [0.1, 0.8]},
}
# Mixers whose config has no alpha: vanilla mixes nothing, SmoothMix draws no lambda (its
# published alpha is unused by the method), RandomChoice's children have their own.
ALPHA_FREE = {"vanilla", "smoothmix", "random_choice"}

CIFAR_R18 = {  # published.md, "OpenMixup ..., CIFAR-100, top-1 (%)", ResNet-18 table
    "experiment": "cifar100_r18", "data": "cifar100", "model": "cifar_resnet18",
    "epochs": [200, 400, 800, 1200], "batch_size": 100, "devices": 1, "precision": "32-true",
    "optimizer": OPENMIXUP_SGD, "scheduler": COSINE_TO_0, "learned_min_lr": LEARNED_FLOOR,
    "mixers": OPENMIXUP_MIXERS, "data_recipe": CIFAR_DATA, "metrics": ["top1_median10"],
    "published_md_alpha": {"mixup": 1, "cutmix": 0.2, "manifoldmix": 2, "smoothmix": 0.2, "saliencymix": 0.2,
                           "attentivemix": 2, "fmix": 0.2, "puzzlemix": 1, "comixup": 2, "gridmix": 0.2,
                           "resizemix": 1, "alignmix": 2, "automix": 2, "samix": 2},
}
TINY_R18 = {  # published.md, "OpenMixup, Tiny-ImageNet (64x64), 400 epochs"; lr 0.2 and batch 100 are
    # OpenMixup's Tiny-ImageNet config (not in published.md), as are its AutoMix/SAMix settings
    "experiment": "tinyimagenet_r18", "data": "tiny_imagenet", "model": "cifar_resnet18",
    "epochs": [400], "batch_size": 100, "devices": 1, "precision": "32-true",
    "optimizer": {**OPENMIXUP_SGD, "lr": 0.2}, "scheduler": COSINE_TO_0, "learned_min_lr": LEARNED_FLOOR,
    "mixers": {**OPENMIXUP_MIXERS,
               "automix": {**OPENMIXUP_MIXERS["automix"], "lr": 0.1, "min_lr": 0.001},
               "samix": {**OPENMIXUP_MIXERS["samix"], "lr": 0.1, "min_lr": 0.001, "lam_scaling": -1}},
    "data_recipe": {"num_classes": 200, "image_size": 64}, "metrics": ["top1_median10"],
    "published_md_alpha": {"mixup": 1, "cutmix": 1, "manifoldmix": 0.2, "smoothmix": 0.2, "saliencymix": 1,
                           "fmix": 1, "puzzlemix": 1, "gridmix": 0.2},
}
# OpenMixup's CIFAR-100 ViT configs (configs/classification/cifar100/mixups/vits/: deit_s_mixups_sz224_bs100_randaug.py,
# swin_t_mixups_sz224_bs100.py, deit_small/*, swin_tiny/*; not in published.md): CIFAR-100 resized to 224 px, batch 100
# on one GPU, AdamW wd 0.05, per-step cosine to 1e-6 after 20 warmup epochs, gradient norm clipped at 5, label
# smoothing 0.1. DeiT-S: lr 1e-3, fp32, no drop path (its input-mixer configs' `drop_path` key is swallowed);
# Swin-T: lr 5e-4, fp16, drop path 0.2. "DeiT" is timm's mixup 0.8 / CutMix 1 switch, random_choice's default.
# Their AutoMix/SAMix configs: the model's lr to 1e-4, the Mix Block's own lr to 1e-4, EMA held at 0.999 for a
# quarter of the run then to 0.99996, mask loss annealed, nearest upsampling, AutoMix's lambda channel, SAMix's
# lambda scaling (-1) and value dropout 0.1; DeiT-S's Mix Block on the tokens after block 6 (feature_stage 2).
VIT_DATA = {"num_classes": 100, "image_size": 224, "padding": 4, "mean": CIFAR_DATA["mean"], "std": CIFAR_DATA["std"]}
VIT_LEARNED = {"end_momentum": 0.99996, "momentum_hold": 0.25, "mask_loss_anneal": True, "min_lr": 1e-4,
               "upsample": "nearest"}
VIT_MIXERS = {
    "attentivemix": {**ATTENTIVEMIX_PLUS, "attention_model": "resnet50.tv_in1k"},  # deit_s_attentivemix_a2_*.py
    "resizemix": {"use_alpha": True},
    "puzzlemix": {"t_size": -1, "block_nums": [2, 4, 8]},
    "random_choice": {"mixers": None, "p": None},
}
VIT_SCHEDULE = {"name": "cosine", "warmup_epochs": 20, "min_lr": 1e-6, "interval": "step"}
VIT_RUN = {"label_smoothing": 0.1, "gradient_clip_val": 5.0}
DEIT_S = {
    "experiment": "cifar100_deit_s", "data": "cifar100", "model": "deit_small_patch16_224",
    "epochs": [200, 600], "batch_size": 100, "devices": 1, "precision": "32-true",
    "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}, "scheduler": VIT_SCHEDULE,
    "learned_min_lr": {"automix": 1e-4, "samix": 1e-4},
    "mixers": {**VIT_MIXERS,
               "automix": {**VIT_LEARNED, "feature_stage": 2, "lam_channel": True, "lr": 1e-3},
               "samix": {**VIT_LEARNED, "feature_stage": 2, "lam_scaling": -1, "value_dropout": 0.1, "lr": 7.5e-4}},
    "run": {**VIT_RUN, "drop_path_rate": 0.0},
    "per_mixer": {  # deit_s_automix_l6_a2_near_sz224_bs100_ep200.py, deit_s_samix_l6_a2_near_sz224_bs100_ep200.py
        "automix": {"optimizer": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.05},
                    "scheduler": {**VIT_SCHEDULE, "warmup_epochs": 5},
                    "run": {**VIT_RUN, "gradient_clip_val": 10.0, "drop_path_rate": 0.1}},
        "samix": {"optimizer": {"name": "adamw", "lr": 7.5e-4, "weight_decay": 0.05},
                  "run": {**VIT_RUN, "gradient_clip_val": 20.0, "drop_path_rate": 0.1}},
    },
    "data_recipe": VIT_DATA, "metrics": ["top1_best"], "published_md_alpha": {},
    # TransMix's CSV alpha is two (mixup 0.8 on 20% of the batches, TransMix 1 on the rest); openmix's TransMix is
    # the TransMix branch alone, at its alpha
    "unpublished_alpha": {"transmix": 1.0},
}
SWIN_T = {
    **DEIT_S, "experiment": "cifar100_swin_t", "model": "swin_tiny_patch4_window7_224", "precision": "16-mixed",
    "optimizer": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.05},
    "mixers": {**VIT_MIXERS,
               "automix": {**VIT_LEARNED, "feature_stage": 3, "lam_channel": True, "lr": 1e-3},
               "samix": {**VIT_LEARNED, "feature_stage": 3, "lam_scaling": -1, "value_dropout": 0.1, "lr": 5e-4}},
    "run": {**VIT_RUN, "drop_path_rate": 0.2},
    "not_run": {"transmix": "openmix's TransMix reads a class token, which a Swin has not"},
    "per_mixer": {  # swin_t_automix_l3_a2_near_sz224_bs100_ep200.py, swin_t_samix_l3_a2_near_sz224_bs100_ep200.py
        "automix": {"precision": "32-true", "run": {**VIT_RUN, "gradient_clip_val": 10.0, "drop_path_rate": 0.2}},
        "samix": {"precision": "32-true", "run": {**VIT_RUN, "gradient_clip_val": 20.0, "drop_path_rate": 0.2}},
    },
}
TABLES = {
    "cifar100_r18": CIFAR_R18,
    "cifar100_deit_s": DEIT_S,
    "cifar100_swin_t": SWIN_T,
    # published.md: "ResNeXt-50 (32x4d), same columns" (no alphas there; the CSV's are OpenMixup's)
    "cifar100_rx50": {**CIFAR_R18, "experiment": "cifar100_rx50", "model": "cifar_resnext50_32x4d",
                      "published_md_alpha": {}},
    # published.md: "WRN-28-8 at 400 epochs (lr 0.03, wd 1e-3)"; OpenMixup has no learned-mixer WRN
    # config and its 0.05 floor exceeds lr 0.03, so the learned mixers anneal to 0 (openmix's choice)
    "cifar100_wrn28_8": {**CIFAR_R18, "experiment": "cifar100_wrn28_8", "model": "cifar_wrn28_8", "epochs": [400],
                         "optimizer": {**OPENMIXUP_SGD, "lr": 0.03, "weight_decay": 1e-3}, "learned_min_lr": {},
                         "published_md_alpha": {}},
    "tinyimagenet_r18": TINY_R18,
    "tinyimagenet_rx50": {**TINY_R18, "experiment": "tinyimagenet_rx50", "model": "cifar_resnext50_32x4d",
                          "published_md_alpha": {}},
    # published.md, "OpenMixup, ImageNet-1k ResNet-50 (PyTorch-style recipe)": 4x64 batch, SGD lr 0.1
    # wd 1e-4, cosine, 100 or 300 epochs, fp16. The 100-epoch column is the median of the last 5
    # epochs (the CSV says so). PuzzleMix, AutoMix and SAMix as OpenMixup's ImageNet configs
    # (experiment file): block transport on grids {2, 4, 8}; lambda channel / lambda scaling, EMA
    # end 0.99999, annealed mask loss, the Mix Block at lr 0.1 to 0.001; the model's lr to 0.
    "imagenet_r50": {
        "experiment": "imagenet_r50", "data": "imagenet", "model": "resnet50",
        "epochs": [100, 300], "batch_size": 64, "devices": 4, "precision": "16-mixed",
        "optimizer": OPENMIXUP_SGD, "scheduler": COSINE_TO_0, "learned_min_lr": {},
        "mixers": {
            "attentivemix": ATTENTIVEMIX_PLUS,
            "resizemix": {"use_alpha": True},
            "puzzlemix": {"t_size": -1, "block_nums": [2, 4, 8]},
            "automix": {"lam_channel": True, "end_momentum": 0.99999, "mask_loss_anneal": True, "lr": 0.1,
                        "min_lr": 0.001},
            "samix": {"lam_scaling": -1, "value_dropout": 0.1, "end_momentum": 0.99999, "mask_loss_anneal": True,
                      "lr": 0.1, "min_lr": 0.001},
        },
        "data_recipe": {"num_classes": 1000, "image_size": 224}, "metrics": ["top1_median5", "top1_median10"],
        "published_md_alpha": {"mixup": 0.2, "cutmix": 1},
    },
    # published.md, "FMix paper, Fashion-MNIST, PreAct-ResNet-18, 200 epochs": batch 128, lr 0.1 with
    # drops at 100 and 150, RandomCrop 28 pad 4 + flip. It gives no alpha and no weight decay: alpha 1
    # for every mixer is the FMix paper's setting as the experiment reads it, wd 1e-4 openmix's sgd_step.
    "fashion_mnist_r18": {
        "experiment": "fashion_mnist_r18", "data": "fashion_mnist", "model": "cifar_preact_resnet18",
        "epochs": [200], "batch_size": 128, "devices": 1, "precision": "32-true",
        "optimizer": OPENMIXUP_SGD,
        "scheduler": {"name": "step", "milestones": [100, 150], "gamma": 0.1, "warmup_epochs": 0},
        "learned_min_lr": {}, "mixers": {}, "unpublished_alpha": {"mixup": 1.0, "cutmix": 1.0, "fmix": 1.0},
        "data_recipe": {"num_classes": 10, "image_size": 28, "padding": 4}, "metrics": ["top1_median10"],
        "published_md_alpha": {},
    },
}
# experiment=fashion_mnist_bench (its YAML; no published table): small_convnet, 10 epochs, batch 128,
# SGD + Nesterov lr 0.1 wd 5e-4, per-step cosine after 0.3 epochs of warmup, each mixer's own alpha.
BENCH = {"data": "fashion_mnist", "model": "small_convnet", "epochs": 10, "batch_size": 128,
         "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
         "scheduler": {"name": "cosine", "warmup_epochs": 0.3, "interval": "step"},
         "out_dir": "benchmarks/results/fashion_mnist"}

PARSER = OverridesParser.create()


def sections() -> dict[str, str]:
    """REPRODUCE.md's sections by the name in their heading, ``## `name`: ...``."""
    found: dict[str, str] = {}
    for part in re.split(r"^## ", REPRODUCE.read_text(encoding="utf-8"), flags=re.M)[1:]:
        heading = re.match(r"`(\w+)`", part)
        if heading:
            found[heading.group(1)] = part
    return found


def commands(text: str, program: str) -> list[str]:
    """The lines of ``text``'s bash blocks that run ``program``."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.split(" ", 1)[0] == program]


def sweep(command: str) -> tuple[list[str], dict[str, list[str]]]:
    """An ``openmix-train -m`` line as its fixed overrides and its swept ``key: values``."""
    words = shlex.split(command)
    assert words[:2] == ["openmix-train", "-m"], command
    fixed, swept = [], {}
    for override in PARSER.parse_overrides(words[2:]):
        if override.is_sweep_override():
            swept[override.get_key_element()] = list(override.sweep_string_iterator())
        else:
            fixed.append(override.input_line)
    return fixed, swept


def covering(swept: dict[str, list[str]]) -> list[list[str]]:
    """Combinations of the sweep that take every value of every key at least once."""
    n = max(len(values) for values in swept.values())
    return [[f"{key}={values[i % len(values)]}" for key, values in swept.items()] for i in range(n)]


def local_and_slurm(table: str) -> tuple[str, str]:
    lines = commands(sections()[table], "openmix-train")
    local = [line for line in lines if "hydra/launcher=slurm" not in line]
    slurm = [line for line in lines if "hydra/launcher=slurm" in line]
    assert len(local) == 1 and len(slurm) == 1, f"{table}: one local and one SLURM command, got {lines}"
    return local[0], slurm[0]


def runnable(table: str) -> list[str]:
    have = {"vanilla", *openmix.available()} - set(TABLES[table].get("not_run", {}))
    return [row.mixer for row in load_published(table).rows if row.mixer in have]


@pytest.fixture(scope="module")
def composed():
    """``composed(overrides)``: the resolved config as a dict (composed once per list of overrides, Hydra
    initialised once for the module); ``composed(overrides, hydra=True)``: the DictConfig with its ``hydra`` node."""
    cache: dict[tuple[str, ...], dict] = {}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        def compose_resolved(overrides, hydra=False):
            if hydra:
                return compose("train", overrides=list(overrides), return_hydra_config=True)
            key = tuple(overrides)
            if key not in cache:
                cache[key] = OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)
            return cache[key]
        yield compose_resolved


def test_every_published_table_has_a_section_and_an_expected_recipe():
    assert sorted(TABLES) == sorted(available_papers())
    missing = sorted(set(available_papers()) - set(sections()))
    assert not missing, f"published tables without a section in REPRODUCE.md: {missing}"


def test_every_train_command_belongs_to_a_checked_section():
    checked = {*TABLES, "fashion_mnist_bench", "fashion_mnist_budget"}
    everywhere = commands(REPRODUCE.read_text(encoding="utf-8"), "openmix-train")
    in_sections = [line for name in checked for line in commands(sections().get(name, ""), "openmix-train")]
    assert sorted(everywhere) == sorted(in_sections)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_sweep_runs_every_runnable_row_every_column_and_three_seeds(table):
    fixed, swept = sweep(local_and_slurm(table)[0])
    assert f"experiment={TABLES[table]['experiment']}" in fixed
    assert set(swept.get("mixer", [])) == set(runnable(table))
    epochs = swept.get("epochs") or [o.split("=", 1)[1] for o in fixed if o.startswith("epochs=")]
    assert [int(e) for e in epochs] == [int(c) for c in load_published(table).columns] == TABLES[table]["epochs"]
    assert swept.get("seed") == ["0", "1", "2"]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_rows_openmix_cannot_run_are_listed(table):
    missing = [row.mixer for row in load_published(table).rows if row.mixer not in runnable(table)]
    text = sections()[table]
    assert all(f"`{mixer}`" in text for mixer in missing), missing


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_mixer_and_epoch_budget_composes_with_the_published_recipe(table, composed):
    alphas = {row.mixer: row.alpha for row in load_published(table).rows}
    fixed, swept = sweep(local_and_slurm(table)[0])
    for combination in covering(swept):
        cfg = composed([*fixed, *combination])
        mixer, where = cfg["mixer"]["name"], f"{table} {combination}"
        expected = {**TABLES[table], **TABLES[table].get("per_mixer", {}).get(mixer, {})}  # a method's own recipe
        assert cfg["data"]["name"] == expected["data"] and cfg["model"]["name"] == expected["model"], where
        given = dict(override.split("=", 1) for override in [*fixed, *combination])
        assert cfg["epochs"] == int(given["epochs"]), where
        assert cfg["batch_size"] == expected["batch_size"], where
        assert (cfg["trainer"]["devices"], cfg["trainer"]["num_nodes"]) == (expected["devices"], 1), where
        assert cfg["trainer"]["precision"] == expected["precision"], where
        assert {k: cfg["optim"]["optimizer"].get(k) for k in expected["optimizer"]} == expected["optimizer"], where
        schedule = dict(expected["scheduler"])
        if mixer in expected["learned_min_lr"]:
            schedule["min_lr"] = expected["learned_min_lr"][mixer]
        assert {k: cfg["optim"]["scheduler"].get(k) for k in schedule} == schedule, where
        if mixer in ALPHA_FREE:
            assert "alpha" not in cfg["mixer"], where
        else:
            alpha = alphas[mixer] if alphas[mixer] is not None else expected["unpublished_alpha"][mixer]
            assert cfg["mixer"]["alpha"] == alpha, where
        settings = {**METHOD_RECIPES.get(mixer, {}), **expected["mixers"].get(mixer, {})}
        assert {k: cfg["mixer"].get(k, "<absent>") for k in settings} == settings, where
        if "run" in expected:  # the ViT tables: label smoothing, gradient clipping, drop path
            run = {"label_smoothing": cfg["label_smoothing"], "gradient_clip_val": cfg["trainer"]["gradient_clip_val"],
                   "drop_path_rate": cfg["model"]["kwargs"].get("drop_path_rate")}
            assert run == expected["run"], where


@pytest.mark.parametrize("table", sorted(TABLES))
def test_published_alphas_of_the_csv_match_the_reference_notes(table):
    alphas = {row.mixer: row.alpha for row in load_published(table).rows}
    for mixer, alpha in TABLES[table]["published_md_alpha"].items():
        assert alphas[mixer] == alpha, f"{table}: {mixer} alpha {alphas[mixer]} in the CSV, {alpha} in published.md"


@pytest.mark.parametrize("table", sorted(TABLES))
def test_the_data_is_the_published_data(table, composed):
    fixed, swept = sweep(local_and_slurm(table)[0])
    cfg = composed([*fixed, *covering(swept)[0]])
    datamodule = build_datamodule(cfg["data"]["name"], seed=cfg["seed"],
                                  **{key: value for key, value in cfg["data"].items() if key != "name"})
    expected = TABLES[table]["data_recipe"]
    assert {key: getattr(datamodule, key) for key in expected} == expected


@pytest.mark.parametrize("table", sorted(TABLES))
def test_slurm_command_is_the_local_sweep_on_the_slurm_launcher(table, composed):
    local, slurm = local_and_slurm(table)
    (local_fixed, local_swept), (slurm_fixed, slurm_swept) = sweep(local), sweep(slurm)
    assert slurm_swept == local_swept
    for combination in covering(local_swept)[:1]:
        assert run_id(composed([*local_fixed, *combination])) == run_id(composed([*slurm_fixed, *combination]))
        cfg = composed([*slurm_fixed, *combination], hydra=True)
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher") and launcher.partition
        assert launcher.gpus_per_node == launcher.tasks_per_node == cfg.trainer.devices


@pytest.mark.parametrize("table", sorted(TABLES))
def test_report_commands_compare_the_runs_with_the_table(table, composed):
    fixed, swept = sweep(local_and_slurm(table)[0])
    name = composed([*fixed, *covering(swept)[0]])["name"]
    metrics = []
    for line in commands(sections()[table], "openmix-report"):
        words = shlex.split(line)
        assert words[1] == f"runs/{name}" and words[words.index("--paper") + 1] == table, line
        metrics.append(words[words.index("--metric") + 1] if "--metric" in words else "top1_median10")
    assert sorted(metrics) == sorted(TABLES[table]["metrics"])


@pytest.mark.parametrize("mixer", ["puzzlemix", "samix"])
def test_imagenet_300_epochs_runs_the_300_epoch_experiment(mixer, composed):
    swept = composed(["experiment=imagenet_r50", f"mixer={mixer}", "epochs=300"])
    assert run_id(swept) == run_id(composed(["experiment=imagenet_r50_300ep", f"mixer={mixer}"]))


def test_fashion_mnist_bench_command_runs_every_registered_cnn_mixer_and_vanilla():
    (line,) = commands(sections()["fashion_mnist_bench"], "openmix-train")
    fixed, swept = sweep(line)
    assert "experiment=fashion_mnist_bench" in fixed and f"out_dir={BENCH['out_dir']}" in fixed
    cnn = create_model(BENCH["model"], num_classes=10, in_chans=1)
    assert sorted(swept["mixer"]) == sorted(["vanilla", *(n for n in openmix.available()
                                                         if trains_with(openmix.build(n, num_classes=10), cnn))])
    assert {"transmix", "smmix"}.isdisjoint(swept["mixer"])  # they read a ViT's attention
    assert swept["seed"] == ["0", "1", "2"]
    assert f"out={BENCH['out_dir']}" in BENCH_SCRIPT.read_text(encoding="utf-8")
    assert "bash benchmarks/fashion_mnist_bench.sh" in commands(sections()["fashion_mnist_bench"], "bash")


def test_fashion_mnist_bench_recipe(composed):
    (line,) = commands(sections()["fashion_mnist_bench"], "openmix-train")
    fixed, swept = sweep(line)
    for combination in covering(swept):
        cfg = composed([*fixed, *combination])
        assert (cfg["data"]["name"], cfg["model"]["name"]) == (BENCH["data"], BENCH["model"])
        assert (cfg["epochs"], cfg["batch_size"]) == (BENCH["epochs"], BENCH["batch_size"])
        assert {k: cfg["optim"]["optimizer"].get(k) for k in BENCH["optimizer"]} == BENCH["optimizer"]
        assert {k: cfg["optim"]["scheduler"].get(k) for k in BENCH["scheduler"]} == BENCH["scheduler"]
        assert cfg["published_alpha"] == {}  # every mixer at its own default alpha


def test_fashion_mnist_bench_evaluates_once_with_the_settings_its_runs_train_with(composed):
    # openmix-eval in the script must ask for what training already measured, or it evaluates every run again
    (line,) = commands(sections()["fashion_mnist_bench"], "openmix-train")
    fixed, swept = sweep(line)
    evaluation = EvalSettings.from_config(composed([*fixed, *covering(swept)[0]])["eval"])
    (eval_line,) = [line for line in BENCH_SCRIPT.read_text(encoding="utf-8").splitlines()
                    if line.strip().startswith("openmix-eval")]
    options = shlex.split(eval_line.split("||")[0])[2:]
    assert options == ["--ood", evaluation.ood] and evaluation == EvalSettings(ood="digits")


def test_fashion_mnist_budget_is_the_bench_recipe_at_four_times_the_epochs(composed):
    (line,) = commands(sections()["fashion_mnist_budget"], "openmix-train")
    fixed, swept = sweep(line)
    assert "experiment=fashion_mnist_budget" in fixed and f"out_dir={BENCH['out_dir']}" in fixed
    assert swept["mixer"] == ["vanilla", "mixup", "cutmix"]
    (script_line,) = [line for line in BENCH_SCRIPT.read_text(encoding="utf-8").splitlines()
                      if "experiment=fashion_mnist_budget" in line and line.strip().startswith("openmix-train")]
    assert f"mixer={','.join(swept['mixer'])}" in script_line
    for mixer in swept["mixer"]:
        budget = composed([*fixed, f"mixer={mixer}"])
        bench = composed(["experiment=fashion_mnist_bench", f"mixer={mixer}", f"out_dir={BENCH['out_dir']}"])
        assert budget["epochs"] == 4 * BENCH["epochs"]
        assert {k: v for k, v in budget.items() if k not in ("epochs", "name")} == \
               {k: v for k, v in bench.items() if k not in ("epochs", "name")}
