"""Output that fits logs: whole epoch lines in a pipe (| tee, CI), flags shown as flags in --help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_images

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"^epoch +\d+/\d+  loss \S+  acc \S+  val_loss \S+  val_acc \S+  lr \S+  train \S+s  eval \S+s$")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    x, y = make_images(120, 16, classes=3)
    names = np.array(["a-class-name-long-enough-to-push-any-line-past-forty-columns", "b", "c"])
    np.savez(root / "d.npz", images=x, labels=y, class_names=names)
    return root / "d.npz"


def cnnlab(*args, columns: int = 40) -> subprocess.CompletedProcess:
    """`python -m cnnlab ...` with stdout a pipe, as under `| tee` or in CI, in a narrow COLUMNS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": str(columns)}
    env.pop("FORCE_COLOR", None)
    env.pop("TTY_COMPATIBLE", None)
    return subprocess.run([sys.executable, "-m", "cnnlab", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=180)


def test_epoch_lines_stay_whole_in_a_pipe(data, tmp_path):
    done = cnnlab("train", "cnn1", "--data", data, "--epochs", "2", "--batch-size", "32", "--device", "cpu",
                  "--precision", "fp32", "--out", tmp_path / "a-folder-name-long-enough-to-wrap")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(EPOCH_LINE.match(line) for line in epochs), lines
    assert not [line for line in lines if line.lstrip().startswith(("train ", "eval "))], lines  # no wrapped tails
    (header,) = [line for line in lines if "trainable params" in line]
    assert header.startswith("cnn1 on d (") and header.endswith(", fp32"), lines
    run_lines = [line for line in lines if line.startswith("run directory: ")]
    assert run_lines and all(line.endswith(tuple(str(p) for p in (tmp_path / "a-folder-name-long-enough-to-wrap").iterdir()))
                             for line in run_lines), lines


def test_the_time_budget_lines_stay_whole_in_a_pipe(data, tmp_path):
    done = cnnlab("train", "cnn1", "--data", data, "--epochs", "3", "--batch-size", "32", "--device", "cpu",
                  "--precision", "fp32", "--time-budget", "1h", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    (chosen,) = [line for line in lines if line.startswith("time budget 1:00:00: ")]
    (again,) = [line for line in lines if line.startswith("time budget: the first epoch took ")]
    assert "epochs chosen (at most 3)" in chosen and "raise epochs" in chosen, lines
    assert "3 epochs kept" in again and again.endswith("raise epochs to use the budget"), lines


@pytest.mark.parametrize("command", [("train",), ("ensemble",), ("study",), ("tune",), ("data", "info"), ()])
def test_help_shows_boolean_options_as_flags(command, data, tmp_path, cli):
    done = cnnlab(*command, "--help", columns=200)
    assert done.returncode == 0, done.stderr
    assert "<bool>" not in done.stdout and "BOOLEAN" not in done.stdout, done.stdout
    assert re.search(r"--help +Show this message", done.stdout)
    if command == ("train",):
        for flag in ("--quiet ", "--augment ", "--no-augment ", "--tta ", "--no-tta ", "--mlflow ", "--no-mlflow "):
            assert flag in done.stdout, flag
        assert re.search(r"--epochs +<int>", done.stdout)  # options that take a value still say which
        # ... and the flags are spelled as before
        code, out, err = cli("train", "cnn1", "--data", data, "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                             "--out", tmp_path / "r", "--augment", "--hflip", "--no-tta", "--quiet")
        (run,) = (tmp_path / "r").iterdir()
        assert code == 0 and out == f"{run}\n", err  # --quiet: the run directory alone
        config = json.loads((run / "config.json").read_text())
        assert config["augment"] is True and config["hflip"] is True and config["tta"] is False
