"""A non-editable install (a wheel) runs the command-line tools from any folder.

The wheel is built from this checkout and installed with ``--target`` into a temporary
folder (no dependencies: those of the test environment are used), and the tools are run
from another temporary folder, so only the files shipped in the wheel can be found.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    wheels, target = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True)
    [wheel] = wheels.glob("openmix_torch-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def tool(installed: Path, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(installed / "bin" / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_wheel_ships_configs_and_published_tables(installed):
    package = installed / "openmix"
    assert (package / "configs" / "train.yaml").is_file()
    assert {p.stem for p in (package / "configs" / "experiment").glob("*.yaml")} >= {"cifar100_r18", "imagenet_r50"}
    assert (package / "published" / "cifar100_r18.csv").is_file()


def test_installed_train_composes_an_experiment_outside_the_checkout(installed, tmp_path):
    done = tool(installed, "openmix-train", "experiment=cifar100_r18", "mixer=cutmix", "--cfg", "job", "--resolve",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "name: cifar100_r18" in done.stdout and "alpha: 0.2" in done.stdout


def test_installed_show_composes_outside_the_checkout(installed, tmp_path):
    done = tool(installed, "openmix-show", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "mixers:" in done.stdout


def test_installed_report_finds_the_published_tables(installed, tmp_path):
    code = ("import sys; from openmix.results import example_row, write_result; "
            "write_result(sys.argv[1], example_row(mixer='cutmix', alpha=0.2, epochs=200, top1_median10=79.0)); "
            "import openmix; print(openmix.__file__)")
    env = {**os.environ, "PYTHONPATH": str(installed)}
    made = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs" / "r")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True)
    assert made.stdout.strip().startswith(str(installed))  # the installed copy, not the checkout
    done = tool(installed, "openmix-report", "runs", "--paper", "cifar100_r18", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "79.45" in done.stdout  # the published 200-epoch CutMix cell
    json.loads((tmp_path / "runs" / "r" / "result.json").read_text())
