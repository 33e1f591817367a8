"""Command-line options a user finds in the README and expects to work: --split-seed and --monitor on the training
commands, `train --quiet` printing the run directory (a script's one handle on it), `data info` on a test file
without labels, and the ensemble's help naming how its submission is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_npz_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("d") / "d.npz", 120, 30)


QUICK = ["--epochs", "2", "--batch-size", "32", "--device", "cpu"]


def test_split_seed_and_monitor_reach_the_run(cli, data, tmp_path):
    code, out, err = cli("train", "cnn1", "--data", data, *QUICK, "--split-seed", "3", "--monitor", "val_accuracy",
                         "--early-stopping", "1", "--out", tmp_path, "--quiet")
    assert code == 0, err
    config = json.loads((Path(out.strip()) / "config.json").read_text())
    assert config["split_seed"] == 3 and config["monitor"] == "val_accuracy"


def test_quiet_train_prints_only_the_run_directory(cli, data, tmp_path):
    code, out, err = cli("train", "cnn1", "--data", data, *QUICK, "--out", tmp_path / "runs", "--quiet")
    assert code == 0, err
    (line,) = out.splitlines()
    assert Path(line).parent == tmp_path / "runs" and (Path(line) / "model.safetensors").is_file()


def test_data_info_describes_a_test_file_without_labels(cli, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (7, 784))
    with open(tmp_path / "test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *(f"pixel{i}" for i in range(784))])
        writer.writerows([i, *row] for i, row in enumerate(pixels))
    code, out, err = cli("data", "info", tmp_path / "test.csv")
    assert code == 0, err
    assert "7 images without labels" in out and "1 x 28 x 28" in out
    code, _, err = cli("train", "cnn1", "--data", tmp_path / "test.csv", *QUICK, "--out", tmp_path / "r")
    assert code == 2 and "the training data has no labels (a test file?" in err


def test_the_ensemble_help_says_how_its_submission_is_written(cli):
    code, out, _ = cli("ensemble", "--help")
    assert code == 0 and "cnnlab predict ENSEMBLE_DIR" in " ".join(out.split())
