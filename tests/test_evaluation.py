"""Evaluation beyond top-1 end to end: evaluate() on a datamodule, the evaluation a run writes after
training, openmix-eval on run folders, and the report's evaluation metrics, tables and plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from openmix.cli.eval import main as openmix_eval
from openmix.cli.report import main as openmix_report
from openmix.data import build_datamodule
from openmix.evaluation import EvalSettings, evaluate, evaluate_run, load_run
from openmix.models import create_model
from openmix.reporting.evaluation import format_metric_markdown, metric_tables, with_evaluation
from openmix.results import EVAL_FILE, RESULT_FILE, WEIGHTS_FILE, example_row, read_eval, write_eval, write_result

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = EvalSettings(subset=12, corruptions=("gaussian_noise", "contrast"), pgd_steps=2, batch_size=8)
# a tiny run's evaluation, set on the command line
SMALL_OVERRIDES = ["eval.subset=12", "eval.corruptions=[gaussian_noise,contrast]", "eval.pgd_steps=2"]


def data_and_model():
    data = build_datamodule("synthetic", num_samples=32, num_val_samples=20, image_size=16, in_chans=1, batch_size=8)
    torch.manual_seed(0)
    return data, create_model("small_convnet", num_classes=10, in_chans=1, widths=(8, 8, 8))


# ------------------------------------------------------------------ evaluate()
def test_evaluate_measures_everything_it_is_asked_for_on_a_fixed_subset():
    data, model = data_and_model()
    metrics = evaluate(model, data, SMALL)
    assert metrics["num_test"] == 20 and metrics["num_subset"] == 12
    assert set(metrics["corruption"]) == {"gaussian_noise", "contrast"}
    assert all(len(entry["top1"]) == 5 and entry["family"] for entry in metrics["corruption"].values())
    assert metrics["corruption_top1"] == pytest.approx(sum(sum(e["top1"]) for e in metrics["corruption"].values()) / 10)
    assert set(metrics["occlusion"]) == {"0.1", "0.2", "0.3", "0.4", "0.5"}
    for key in ("top1", "ece", "adaptive_ece", "subset_top1", "fgsm_top1", "pgd_top1", "occlusion_top1"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics["settings"] == SMALL.to_dict() and json.loads(json.dumps(metrics)) == metrics


def test_evaluate_gives_the_same_numbers_twice_and_leaves_the_model_as_it_was():
    data, model = data_and_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, second = evaluate(model, data, SMALL), evaluate(model, data, SMALL)
    assert first == second and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched too


def test_evaluate_runs_only_what_the_settings_turn_on():
    data, model = data_and_model()
    metrics = evaluate(model, data, EvalSettings(corruption=False, adversarial=False, occlusion=False))
    assert "ece" in metrics and not {"corruption", "fgsm_top1", "occlusion", "subset_top1"} & set(metrics)


@pytest.mark.parametrize("config, error", [
    ({"subsets": 10}, "eval settings \\['subsets'\\] are unknown"),
    ({"subset": 0}, "subset must be an integer >= 1"),
    ({"eps": -0.1}, "eps must be in"),
    ({"corruptions": ["fog"]}, "unknown corruptions \\['fog'\\]"),
    ({"occlusion_fractions": [0.0, 1.0]}, "occlusion_fractions must be fractions in \\(0, 1\\)"),
])
def test_bad_eval_settings_name_what_is_wrong(config, error):
    with pytest.raises(ValueError, match=error):
        EvalSettings.from_config({"enabled": True, **config})


def test_eval_settings_from_a_config_node():
    assert EvalSettings.from_config(None) is None and EvalSettings.from_config({"enabled": False}) is None
    assert EvalSettings.from_config({"enabled": True, "subset": None, "corruptions": ["contrast"]}) == EvalSettings(
        corruptions=("contrast",))


# ------------------------------------------------------------------ a run, openmix-eval
def tiny_run(tmp_path: Path, *overrides: str) -> Path:
    from test_cli import run

    run(tmp_path, "epochs=1", "eval.enabled=true", *SMALL_OVERRIDES, *overrides)
    return tmp_path / "run"


def test_a_run_leaves_its_weights_and_its_evaluation(tmp_path):
    folder = tiny_run(tmp_path)
    metrics = read_eval(folder)
    assert metrics["num_subset"] == 12 and set(metrics["corruption"]) == {"gaussian_noise", "contrast"}
    model, data, config = load_run(folder)
    assert config["mixer"]["name"] == "mixup" and (folder / WEIGHTS_FILE).is_file()
    assert evaluate(model, data, SMALL)["top1"] == metrics["top1"]  # the same model, evaluated again


def test_a_finished_run_stopped_before_its_evaluation_is_evaluated_when_the_sweep_reruns(tmp_path, capsys):
    from test_cli import run

    folder = tiny_run(tmp_path)
    metrics, stamps = read_eval(folder), [(folder / name).stat().st_mtime_ns for name in (RESULT_FILE, WEIGHTS_FILE)]
    (folder / EVAL_FILE).unlink()  # its trainer was killed after the result row and the weights
    run(tmp_path, "epochs=1", "eval.enabled=true", *SMALL_OVERRIDES)  # skip_done: not trained again
    assert "no eval.json, evaluating its saved model" in capsys.readouterr().out
    assert read_eval(folder)["top1"] == metrics["top1"]
    assert [(folder / name).stat().st_mtime_ns for name in (RESULT_FILE, WEIGHTS_FILE)] == stamps
    run(tmp_path, "epochs=1", "eval.enabled=true", *SMALL_OVERRIDES)  # evaluated: nothing more to do
    assert "evaluating" not in capsys.readouterr().out


def test_openmix_eval_evaluates_a_run_from_its_checkpoint_and_then_skips_it(tmp_path, capsys):
    folder = tiny_run(tmp_path, "eval.enabled=false")
    (folder / WEIGHTS_FILE).unlink()  # a run from before model.pt: its checkpoint holds the weights
    args = [str(tmp_path), "--subset", "12", "--corruptions", "gaussian_noise,contrast", "--pgd-steps", "2"]
    assert openmix_eval(args) == 0 and "top1" in capsys.readouterr().out
    stamp = (folder / EVAL_FILE).stat().st_mtime_ns
    assert openmix_eval(args) == 0 and "skipped" in capsys.readouterr().out
    assert (folder / EVAL_FILE).stat().st_mtime_ns == stamp
    assert openmix_eval([*args, "--subset", "6"]) == 0 and read_eval(folder)["num_subset"] == 6  # new settings


def test_a_run_measures_ood_auroc_and_openmix_eval_asks_for_the_same(tmp_path, capsys):
    from PIL import Image

    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (80 * i, 40, 200)).save(outside / f"{i}.png")
    folder = tiny_run(tmp_path / "runs", f"eval.ood={outside}")
    metrics = read_eval(folder)
    assert 0.0 <= metrics["ood_auroc"] <= 100.0 and metrics["ood"] == {"source": str(outside), "num_images": 3}
    args = [str(folder), "--subset", "12", "--corruptions", "gaussian_noise,contrast", "--pgd-steps", "2"]
    capsys.readouterr()
    assert openmix_eval([*args, "--ood", str(outside)]) == 0  # what training measured: nothing to do
    assert re.search(r"ood_auroc [\d.]+ \(done before, skipped\)", capsys.readouterr().out)
    assert openmix_eval(args) == 0 and "ood_auroc" not in read_eval(folder)  # without it: evaluated again


def test_openmix_eval_leaves_a_run_that_a_trainer_holds_to_its_trainer(tmp_path, capsys):
    from openmix.run_lock import run_lock

    write_result(tmp_path / "training", example_row())  # its trainer still evaluates, or is about to
    with run_lock(tmp_path / "training") as held:
        assert held and openmix_eval([str(tmp_path)]) == 0
    assert "is training it, skipped" in capsys.readouterr().out and read_eval(tmp_path / "training") is None


def test_openmix_eval_refuses_what_it_cannot_evaluate(tmp_path, capsys):
    assert openmix_eval([str(tmp_path / "nowhere")]) == 2
    assert openmix_eval([str(tmp_path)]) == 2 and "no runs" in capsys.readouterr().err
    write_result(tmp_path / "empty", example_row())
    assert openmix_eval([str(tmp_path)]) == 2 and "holds no trained model" in capsys.readouterr().err
    assert openmix_eval([str(tmp_path), "--corruptions", "fog"]) == 2


def test_evaluate_run_redoes_nothing_with_the_settings_the_run_was_evaluated_with(tmp_path):
    folder = tiny_run(tmp_path)  # evaluated after training with SMALL_OVERRIDES, batches of 500
    as_trained = EvalSettings(**{**SMALL.__dict__, "batch_size": 500})
    assert evaluate_run(folder, as_trained) == (read_eval(folder), False)
    metrics, fresh = evaluate_run(folder, SMALL)
    assert fresh and read_eval(folder)["settings"]["batch_size"] == 8


# ------------------------------------------------------------------ the report
def evaluated_runs(tmp_path: Path) -> Path:
    """Result rows with made-up evaluations: vanilla over 2 seeds, cutmix over 2 seeds."""
    for mixer, seed, speed, corrupted in [("vanilla", 0, 1000.0, 60.0), ("vanilla", 1, 1000.0, 80.0),
                                          ("cutmix", 0, 500.0, 85.0), ("cutmix", 1, 500.0, 85.0)]:
        folder = tmp_path / f"{mixer}{seed}"
        write_result(folder, example_row(mixer=mixer, seed=seed, alpha=None if mixer == "vanilla" else 1.0,
                                         images_per_s=speed))
        write_eval(folder, {"ece": 2.0 + seed, "subset_top1": 90.0, "corruption_top1": corrupted,
                            "corruption": {"noise": {"family": "noise", "top1": [corrupted] * 5}},
                            "reliability": {"edges": [0.0, 0.5, 1.0], "confidence": [None, 0.8],
                                            "accuracy": [None, 0.7], "count": [0, 10]}})
    return tmp_path


def test_mce_and_time_ratio_are_relative_to_the_mean_vanilla(tmp_path):
    rows = {(r["mixer"], r["seed"]): r for r in with_evaluation(find(evaluated_runs(tmp_path)))}
    # vanilla's mean error under the corruption: (40 + 20) / 2 = 30 per severity; cutmix's: 15
    assert rows[("cutmix", 0)]["mce"] == pytest.approx(50.0)
    assert rows[("vanilla", 0)]["mce"] == pytest.approx(100.0 * 40 / 30)
    assert rows[("cutmix", 1)]["time_ratio"] == pytest.approx(2.0) and rows[("vanilla", 1)]["time_ratio"] == 1.0


def test_a_metric_table_puts_metrics_side_by_side_with_the_best_in_bold(tmp_path):
    text = format_metric_markdown(metric_tables(with_evaluation(find(evaluated_runs(tmp_path))),
                                                ["ece", "corruption_top1", "mce"]))
    vanilla, cutmix = (line for line in text.splitlines() if line.startswith("| vanilla") or line.startswith("| cutmix"))
    assert "70.00 ± 14.14" in vanilla and "**85.00 ± 0.00**" in cutmix and "**50.00 ± 0.00**" in cutmix
    assert "**2.50 ± 0.71**" in vanilla  # ECE: lower is better, and the two tie


def test_openmix_report_tabulates_and_plots_the_evaluation(tmp_path, capsys):
    runs = evaluated_runs(tmp_path)
    assert openmix_report([str(runs), "--metric", "ece"]) == 0 and "2.50 ± 0.71" in capsys.readouterr().out
    assert openmix_report([str(runs), "--metrics", "ece,mce,time_ratio", "--severity", str(tmp_path / "sev.png"),
                           "--reliability", str(tmp_path / "rel.png"), "--csv", str(tmp_path / "table.csv")]) == 0
    assert "| method" in capsys.readouterr().out
    header, vanilla, cutmix = (tmp_path / "table.csv").read_text().splitlines()
    assert header.endswith("ece_mean,ece_std,ece_n,mce_mean,mce_std,mce_n,time_ratio_mean,time_ratio_std,time_ratio_n")
    assert ",cutmix,1.0,2.5,0.7071" in cutmix and ",vanilla,,2.5," in vanilla
    for png in ("sev.png", "rel.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert openmix_report([str(runs), "--metrics", "ece,speed"]) == 2


def find(folder: Path) -> list[dict]:
    from openmix.results import find_results

    return find_results(folder)
