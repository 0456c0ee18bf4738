"""openmix-report: tables from fake run folders, published columns, CSV, plot, and the published CSVs."""

import csv
import os
import statistics
from pathlib import Path

import pytest

import openmix
from openmix.cli.report import main
from openmix.reporting import PUBLISHED_DIR, available_papers, build_tables, load_published
from openmix.results import ResultWarning, append_metrics, example_row, write_result

# top1_median10 of each seed, per (mixer, epochs); the spreads differ so cells cannot be confused.
VALUES = {
    ("vanilla", 200): [76.0, 77.0],
    ("vanilla", 400): [77.0, 79.0],
    ("cutmix", 200): [79.0, 79.5],
    ("cutmix", 400): [80.0, 83.0],
}
ALPHA = {"vanilla": None, "cutmix": 0.2}


def make_run(run: Path, mixer: str, epochs: int, seed: int, value: float, **changes) -> None:
    for epoch in range(1, epochs + 1, 50):
        append_metrics(run, {"epoch": epoch, "val_top1": value * epoch / epochs, "val_top5": 90.0, "train_loss": 1.0})
    row = example_row(mixer=mixer, alpha=ALPHA[mixer], epochs=epochs, seed=seed, top1_median10=value, **changes)
    write_result(run, row)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 mixers x 2 epoch budgets x 2 seeds, in Hydra's nested layout."""
    root = tmp_path / "multirun"
    for job, ((mixer, epochs), values) in enumerate(VALUES.items()):
        for seed, value in enumerate(values):
            make_run(root / "2026-11-26" / "20-00-00" / f"{job}{seed}", mixer, epochs, seed, value)
    return root


def report(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def cells(markdown: str, method: str) -> list[str]:
    """The cells of the table line of ``method``."""
    [line] = [line for line in markdown.splitlines() if line.startswith(f"| {method} ")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_table_has_mean_and_std_over_seeds(capsys, sweep):
    code, out, _ = report(capsys, sweep)
    assert code == 0
    assert cells(out, "vanilla") == ["vanilla", "", "76.50 ± 0.71", "78.00 ± 1.41"]
    assert cells(out, "cutmix") == ["cutmix", "0.2", "79.25 ± 0.35", "81.50 ± 2.12"]
    assert cells(out, "method") == ["method", "alpha", "200", "400"]


def test_runs_shorter_than_10_epochs_show_the_final_top1_beside_the_median(capsys, tmp_path):
    for seed, (median, final) in enumerate([(40.0, 50.0), (42.0, 54.0)]):
        make_run(tmp_path / f"short{seed}", "cutmix", 3, seed, median, top1_final=final)
        make_run(tmp_path / f"long{seed}", "cutmix", 200, seed, 78.0 + seed, top1_final=70.0)
    code, out, _ = report(capsys, tmp_path)
    assert code == 0
    [header] = [line for line in out.splitlines() if line.startswith("| method")]
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["method", "alpha", "3", "3 final", "200"]
    assert cells(out, "cutmix") == ["cutmix", "0.2", "41.00 ± 1.41", "52.00 ± 2.83", "78.50 ± 0.71"]
    assert "final = top-1 of the last epoch" in out
    code, out, _ = report(capsys, tmp_path, "--metric", "top1_final")  # no second column of the same numbers
    assert "final |" not in out and cells(out, "cutmix")[2] == "52.00 ± 2.83"


def test_rows_without_paper_are_vanilla_first_then_alphabetical(capsys, sweep):
    write_result(sweep / "extra", example_row(mixer="alignmix", alpha=2.0, epochs=200))
    _, out, _ = report(capsys, sweep)
    methods = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert methods == ["method", "vanilla", "alignmix", "cutmix"]


def test_seed_counts_shown_when_they_differ_and_std_left_out_for_one_seed(capsys, sweep):
    make_run(sweep / "third", "cutmix", 200, 2, 79.25)
    write_result(sweep / "lone", example_row(mixer="mixup", alpha=1.0, epochs=200, seed=0, top1_median10=78.0))
    _, out, _ = report(capsys, sweep)
    assert cells(out, "cutmix")[2] == "79.25 ± 0.25 (n=3)"
    assert cells(out, "vanilla")[2] == "76.50 ± 0.71 (n=2)"
    assert cells(out, "mixup")[2:] == ["78.00 (n=1)", ""]


def test_caption_names_the_seed_count_and_says_one_seed_has_no_std(capsys, sweep, tmp_path):
    _, out, _ = report(capsys, sweep)
    assert "mean ± std over 2 seeds" in out
    write_result(tmp_path / "single" / "run", example_row(mixer="mixup", alpha=1.0, epochs=200, seed=0))
    _, out, _ = report(capsys, tmp_path / "single")
    assert "one seed (no std)" in out and "±" not in out


def test_paper_columns_hold_published_values_and_differences(capsys, sweep):
    code, out, _ = report(capsys, sweep, "--paper", "cifar100_r18")
    assert code == 0
    # method, mixer, alpha, then ours / published / ours - published for 200 and 400 epochs
    assert cells(out, "method") == ["method", "mixer", "alpha", "200", "200 pub", "200 Δ", "400", "400 pub", "400 Δ"]
    assert cells(out, "vanilla")[2:] == ["", "76.50 ± 0.71", "76.42", "+0.08", "78.00 ± 1.41", "77.73", "+0.27"]
    assert cells(out, "cutmix")[2:] == ["0.2", "79.25 ± 0.35", "79.45", "-0.20", "81.50 ± 2.12", "79.58", "+1.92"]


def test_paper_rows_without_runs_show_only_the_published_value_in_paper_order(capsys, sweep):
    _, out, _ = report(capsys, sweep, "--paper", "cifar100_r18")
    assert cells(out, "mixup") == ["mixup", "mixup", "1", "", "78.52", "", "", "79.34", ""]
    order = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert order[:4] == ["method", "vanilla", "mixup", "cutmix"]
    assert len(order) == 1 + 15


def test_paper_alpha_mismatch_is_shown(capsys, tmp_path):
    write_result(tmp_path / "r", example_row(mixer="cutmix", alpha=1.0, epochs=200))
    _, out, _ = report(capsys, tmp_path, "--paper", "cifar100_r18")
    assert cells(out, "cutmix")[2] == "1 (pub 0.2)"


def test_paper_accepts_a_csv_path(capsys, sweep, tmp_path):
    paper = tmp_path / "mine.csv"
    paper.write_text("# my numbers\nmethod,mixer,alpha,200\nCutMix,cutmix,0.2,79.00\n")
    _, out, _ = report(capsys, sweep, "--paper", paper)
    assert cells(out, "CutMix") == [
        "CutMix", "cutmix", "0.2", "79.25 ± 0.35", "79.00", "+0.25", "81.50 ± 2.12", "", ""
    ]
    assert "published: mine" in out


def test_csv_round_trips_the_numbers(capsys, sweep, tmp_path):
    path = tmp_path / "out" / "table.csv"
    assert report(capsys, sweep, "--paper", "cifar100_r18", "--csv", path)[0] == 0
    with path.open(newline="") as f:
        rows = {row["mixer"]: row for row in csv.DictReader(f)}
    for (mixer, epochs), values in VALUES.items():
        row = rows[mixer]
        assert float(row[f"{epochs}_mean"]) == statistics.fmean(values)
        assert float(row[f"{epochs}_std"]) == statistics.stdev(values)
        assert int(row[f"{epochs}_n"]) == 2
    published = load_published("cifar100_r18").rows[0].values  # vanilla
    assert float(rows["vanilla"]["400_published"]) == published["400"]
    assert float(rows["vanilla"]["400_diff"]) == pytest.approx(78.0 - published["400"])
    assert rows["mixup"]["200_mean"] == "" and float(rows["mixup"]["200_published"]) == 78.52
    assert (rows["vanilla"]["data"], rows["vanilla"]["model"]) == ("cifar100", "cifar_resnet18")
    assert rows["cutmix"]["alpha"] == "0.2"


def test_markdown_file_matches_stdout(capsys, sweep, tmp_path):
    path = tmp_path / "table.md"
    _, out, _ = report(capsys, sweep, "--markdown", path)
    assert path.read_text() == out


def test_plot_writes_a_valid_png(capsys, sweep, tmp_path):
    import matplotlib.image

    path = tmp_path / "curves.png"
    assert report(capsys, sweep, "--paper", "cifar100_r18", "--plot", path)[0] == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_without_metrics_fails_clearly(capsys, tmp_path):
    write_result(tmp_path / "r", example_row())
    code, _, err = report(capsys, tmp_path, "--plot", tmp_path / "p.png")
    assert code == 2 and "nothing to plot" in err


def test_corrupt_result_is_skipped_with_a_warning(capsys, sweep):
    (sweep / "broken").mkdir()
    (sweep / "broken" / "result.json").write_text('{"schema": 1, "mix')
    code, out, err = report(capsys, sweep)
    assert code == 0
    assert "warning" in err and "broken" in err
    assert cells(out, "vanilla")[2] == "76.50 ± 0.71"


def test_rerun_of_a_seed_counts_once_using_the_latest(capsys, sweep):
    later = "2026-11-27T08:00:00+00:00"
    make_run(sweep / "rerun", "cutmix", 200, 0, 80.0, finished_at=later)  # replaces seed 0's 79.0
    _, out, err = report(capsys, sweep)
    assert cells(out, "cutmix")[2] == "79.75 ± 0.35"  # seeds 80.0 and 79.5
    assert "two runs of cutmix seed 0" in err


def test_run_without_the_metric_is_left_out_with_a_warning(capsys, sweep):
    write_result(sweep / "diverged", example_row(mixer="vanilla", alpha=None, seed=7, top1_median10=float("nan")))
    code, out, err = report(capsys, sweep)
    assert code == 0 and "top1_median10 was not measured" in err
    assert cells(out, "vanilla")[2] == "76.50 ± 0.71"


@pytest.mark.parametrize("missing", ["empty", "nowhere"])
def test_no_runs_exits_2_with_a_message(capsys, tmp_path, missing):
    (tmp_path / "empty").mkdir()
    code, out, err = report(capsys, tmp_path / missing)
    assert code == 2 and out == ""
    assert str(tmp_path / missing) in err


def test_unknown_paper_lists_the_available_ones(capsys, sweep):
    code, _, err = report(capsys, sweep, "--paper", "cifar1000_r18")
    assert code == 2
    assert "unknown published table 'cifar1000_r18'" in err and "cifar100_r18" in err and "imagenet_r50" in err


def test_paper_needs_epoch_columns(capsys, sweep):
    code, _, err = report(capsys, sweep, "--paper", "cifar100_r18", "--columns", "data")
    assert code == 2 and "--columns epochs" in err


def test_mixed_data_and_model_get_one_table_each(capsys, sweep):
    write_result(sweep / "tiny", example_row(mixer="cutmix", data="tinyimagenet", model="resnet18", epochs=400))
    _, out, _ = report(capsys, sweep)
    headings = [line for line in out.splitlines() if line.startswith("## ")]
    assert headings == ["## cifar100 · cifar_resnet18", "## tinyimagenet · resnet18"]


def test_paper_goes_only_with_the_data_and_model_it_is_about(capsys, sweep):
    write_result(sweep / "tiny", example_row(mixer="cutmix", data="tiny_imagenet", model="cifar_resnet18", epochs=400))
    _, out, err = report(capsys, sweep, "--paper", "cifar100_r18")
    cifar, tiny = out.split("## tiny_imagenet")
    assert cells(cifar, "method")[:5] == ["method", "mixer", "alpha", "200", "200 pub"]
    assert cells(tiny, "method") == ["method", "alpha", "400"]
    assert "not compared with cifar100_r18, published for cifar100 · cifar_resnet18" in tiny
    assert err == ""


def test_paper_about_other_runs_is_still_compared_with_a_warning(capsys, sweep):
    code, out, err = report(capsys, sweep, "--paper", "imagenet_r50")
    assert code == 0
    assert "published table imagenet_r50 is for data=imagenet model=resnet50" in err
    assert cells(out, "vanilla")[3:6] == ["76.50 ± 0.71", "", ""]  # no 200-epoch column in the paper


def test_columns_data_puts_datasets_side_by_side(capsys, tmp_path):
    for data, value in [("cifar10", 95.0), ("cifar100", 78.0)]:
        write_result(tmp_path / data, example_row(data=data, top1_median10=value))
    _, out, _ = report(capsys, tmp_path, "--columns", "data", "--metric", "top1_median10")
    assert "## cifar_resnet18 · 200 epochs" in out
    assert cells(out, "method") == ["method", "alpha", "cifar10", "cifar100"]
    assert cells(out, "cutmix") == ["cutmix", "0.2", "95.00", "78.00"]


# ---------------------------------------------------------------- the published CSVs
# Lines copied from /work/shared/reference/published.md (kept here: CI machines lack that file).
PUBLISHED_TEXT = {
    ("cifar100_r18", "cutmix"): "| cutmix | 0.2 | 79.45 | 79.58 | 78.17 | 78.29 |",
    ("cifar100_r18", "attentivemix+"): "| attentivemix+ | 2 | 79.62 | 80.14 | 78.91 | 78.41 |",
    ("cifar100_r18", "alignmix (pub)"): "| alignmix (pub) | 2 | - | - | - | 81.71 |",
    ("cifar100_rx50", "samix"): "| samix | 83.81 | 84.27 | 84.42 | 84.31 | 85.50 |",
    ("cifar100_wrn28_8", "samix"): "| samix | 83.81 | 84.27 | 84.42 | 84.31 | 85.50 |",
    ("imagenet_r50", "mixup"): "| mixup | 0.2 | 77.12 | 78.44 |",
    ("tinyimagenet_r18", "manifoldmix"): "| manifoldmix | 0.2 | 64.15 | 67.30 |",
    ("tinyimagenet_r18", "alignmix (pub)"): "| alignmix (pub) | | 66.87 | - |",
    ("fashion_mnist_r18", "FMix"): "baseline 95.70, mixup 96.28, cutmix 96.03, FMix 96.36.",
}
EXPECTED = {  # what the CSV must hold for the line above: alpha and the value per column (of any metric)
    ("cifar100_r18", "cutmix"): (0.2, {"200": 79.45, "400": 79.58, "800": 78.17, "1200": 78.29}),
    ("cifar100_r18", "attentivemix+"): (2.0, {"200": 79.62, "400": 80.14, "800": 78.91, "1200": 78.41}),
    ("cifar100_r18", "alignmix (pub)"): (2.0, {"200": None, "400": None, "800": None, "1200": 81.71}),
    ("cifar100_rx50", "samix"): (2.0, {"200": 83.81, "400": 84.27, "800": 84.42, "1200": 84.31}),
    ("cifar100_wrn28_8", "samix"): (2.0, {"400": 85.50}),
    ("imagenet_r50", "mixup"): (0.2, {"100": 77.12, "300": 78.44}),
    ("tinyimagenet_r18", "manifoldmix"): (0.2, {"400": 64.15}),
    ("tinyimagenet_r18", "alignmix (pub)"): (2.0, {"400": 66.87}),
    ("fashion_mnist_r18", "FMix"): (None, {"200": 96.36}),
}
MIXERS = {"vanilla", *openmix.available()}
PUBLISHED_MD = Path("/work/shared/reference/published.md")


def test_published_tables_are_all_there():
    assert available_papers() == sorted(
        ["cifar100_r18", "cifar100_rx50", "cifar100_wrn28_8", "imagenet_r50", "tinyimagenet_r18",
         "tinyimagenet_rx50", "fashion_mnist_r18", "cifar100_deit_s", "cifar100_swin_t"]
    )
    assert PUBLISHED_DIR.is_dir()


@pytest.mark.parametrize("name", sorted(PUBLISHED_DIR.glob("*.csv")), ids=lambda p: p.stem)
def test_published_table_uses_registry_names(name):
    table = load_published(name)
    assert {row.mixer for row in table.rows} <= MIXERS
    assert table.rows[0].mixer == "vanilla"
    assert all(column.isdigit() for column in table.columns)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_published_cells_match_the_reference_text(key):
    paper, method = key
    [row] = [row for row in load_published(paper).rows if row.method == method]
    alpha, values = EXPECTED[key]
    assert (row.alpha, row.values | row.other_metric) == (alpha, values)
    text = PUBLISHED_TEXT[key]
    for value in filter(None, values.values()):
        assert f"{value:.2f}" in text
    if PUBLISHED_MD.is_file():
        assert text in PUBLISHED_MD.read_text()


def test_imagenet_table_has_no_unsourced_gridmix_row_and_names_its_metric():
    table = load_published("imagenet_r50")
    assert "gridmix" not in {row.mixer for row in table.rows}
    assert "MEDIAN OF THE LAST 5 EPOCHS" in (PUBLISHED_DIR / "imagenet_r50.csv").read_text()


def test_fashion_mnist_table_is_marked_second_hand():
    assert all("second-hand" in row.note for row in load_published("fashion_mnist_r18").rows)


def test_alignmix_numbers_are_marked_as_another_metric_in_every_table():
    """The AlignMix (pub) rows hold the official repository's results (best epoch, its own epochs)."""
    rows = [(name, row) for name in available_papers() for row in load_published(name).rows if row.mixer == "alignmix"]
    assert {name for name, _ in rows} == {"cifar100_r18", "imagenet_r50", "tinyimagenet_r18"}
    for name, row in rows:
        assert row.other_metric and not any(row.values.values()), name
        assert all(f"({value:.2f})" in row.note for value in row.other_metric.values()), name


def test_published_value_of_another_metric_is_shown_in_parentheses_and_never_compared(capsys, tmp_path):
    for seed in (0, 1):
        write_result(tmp_path / f"a{seed}", example_row(mixer="alignmix", alpha=2.0, epochs=1200, seed=seed,
                                                        top1_median10=80.0 + seed))
    code, out, _ = report(capsys, tmp_path, "--paper", "cifar100_r18", "--csv", tmp_path / "t.csv")
    assert code == 0
    assert cells(out, "method")[3:6] == ["1200", "1200 pub", "1200 Δ"]
    assert cells(out, "alignmix (pub)")[3:6] == ["80.50 ± 0.71", "(81.71)", ""]
    assert "in parentheses is of another metric" in out and "best epoch of a 2000-epoch run" in out
    with (tmp_path / "t.csv").open(newline="") as f:
        [alignmix] = [row for row in csv.DictReader(f) if row["mixer"] == "alignmix"]
    assert (alignmix["1200_mean"], alignmix["1200_published"], alignmix["1200_diff"]) == ("80.5", "", "")


def test_published_csv_reads_numbers_in_parentheses_as_another_metric(tmp_path):
    paper = tmp_path / "mine.csv"
    paper.write_text("method,mixer,alpha,200,400\nCutMix,cutmix,0.2, (79.00) ,80.0\n")
    [row] = load_published(paper).rows
    assert (row.values, row.other_metric) == ({"200": None, "400": 80.0}, {"200": 79.0})
    paper.write_text("method,mixer,alpha,200\nCutMix,cutmix,0.2,()\n")
    with pytest.raises(ValueError, match=r"column '200': expected a number in the parentheses, got '\(\)'"):
        load_published(paper)


def test_median_of_the_last_5_epochs_is_a_metric(capsys, tmp_path):
    write_result(tmp_path / "r", {**example_row(mixer="mixup", alpha=0.2, epochs=100), "top1_median5": 77.5})
    code, out, _ = report(capsys, tmp_path, "--metric", "top1_median5")
    assert code == 0 and cells(out, "mixup")[2] == "77.50"


def row_without(key: str, **changes) -> dict:
    row = example_row(**changes)
    del row[key]
    return row


def test_rows_without_the_metric_key_are_left_out_with_a_warning():
    rows = [row_without("top1_median5", seed=0), example_row(seed=1, top1_median5=77.0)]
    with pytest.warns(ResultWarning, match="top1_median5 was not measured in a run; run left out"):
        [table] = build_tables(rows, metric="top1_median5")
    assert table.lines[0].cells == {"200": [77.0]}


def test_report_of_top1_median5_leaves_out_runs_written_without_it(capsys, tmp_path):
    write_result(tmp_path / "old", row_without("top1_median5", mixer="mixup", alpha=0.2, epochs=100))
    write_result(tmp_path / "new", example_row(mixer="mixup", alpha=0.2, epochs=100, seed=1, top1_median5=77.5))
    code, out, err = report(capsys, tmp_path, "--metric", "top1_median5")
    assert code == 0 and cells(out, "mixup")[2] == "77.50"
    assert f"top1_median5 was not measured in {tmp_path / 'old'}; run left out" in err


@pytest.mark.parametrize("option", ["--markdown", "--csv"])
def test_a_failed_table_write_leaves_the_old_file_whole(capsys, sweep, tmp_path, monkeypatch, option):
    path = tmp_path / "out" / "table"
    path.parent.mkdir()
    path.write_text("the old table\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        main([str(sweep), option, str(path)])
    assert path.read_text() == "the old table\n" and [p.name for p in path.parent.iterdir()] == ["table"]
