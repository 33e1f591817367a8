"""bench/accuracy.py and bench/run.py: a bad flag is one line on stderr and exit 2, refused before any training or
measurement, with no temporary folder left; the frontier (--budgets) honours --precision and shows it, and a budget
too small for one epoch loses its own row only, not the others nor --json."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnnlab.budget import TooSmall
from conftest import needs_fashion, one_line

REPO = Path(__file__).resolve().parents[1]
ACCURACY, RUN = REPO / "bench" / "accuracy.py", REPO / "bench" / "run.py"


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


accuracy = load(ACCURACY, "bench_accuracy")  # also imports bench/run.py (as `run`), as the script does
run = load(RUN, "bench_run")


def call(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A script's main(argv) in-process: (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """Where tempfile makes its folders for the test: empty again after a call means nothing was left behind."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def trained(monkeypatch):
    """cnnlab.train as bench/accuracy.py calls it, replaced: records each call's settings and answers with the
    precision it was asked for (bf16 when none, as `auto` picks on a bf16 CPU); a budget under 20 s cannot hold one
    epoch (TooSmall, as cnnlab refuses it before the first step)."""
    calls: list[dict] = []

    def train(out, callbacks, progress, **settings):
        calls.append(settings)
        budget = settings.get("time_budget") or 0
        if 0 < budget < 20:
            raise TooSmall(f"time budget {budget:.1f} s cannot hold one epoch of resnet9 (60,000 images)")
        assert Path(out).is_dir()
        metrics = {"test_accuracy": 0.9 + settings["seed"] / 100, "train_seconds_total": 10.0, "epochs_done": 3,
                   "precision": settings.get("precision", "bf16"), "time_budget_seconds": budget,
                   "budget_seconds_used": 0.9 * budget, "chosen_epochs": 3, "probe_seconds_per_epoch": 2.0,
                   "replanned_epochs": 3, "replan_seconds_per_epoch": 2.0}
        width = (settings.get("model_params") or {}).get("width", 8)
        return SimpleNamespace(metrics=metrics, config={"model_params": {"width": width}})

    monkeypatch.setattr(accuracy.cnnlab, "train", train)
    return calls


# ------------------------------------------------------------------ bench/accuracy.py


@pytest.mark.parametrize("argv, named", [
    (["--seeds", "abc"], "--seeds"),
    (["--seeds", ","], "--seeds"),
    (["--peer-seeds", "x"], "--peer-seeds"),
    (["--recipe", "nosuch"], "recipe"),
    (["--precision", "fp33"], "precision"),
    (["--peer", "nosuch"], "nosuch"),
    (["--budgets", "0"], "--budgets"),
    (["--budgets", "10m,,25m"], "--budgets"),
    (["--budgets", "abc"], "--budgets"),
    (["--budgets", "25s", "--time-budget", "5m"], "--time-budget"),
    (["--width", "0"], "--width"),
])
def test_accuracy_refuses_a_bad_flag_before_training(argv, named, trained, temp_root, capsys):
    code, out, err = call(accuracy.main, argv, capsys)
    assert code == 2, err
    assert named in one_line(err) and "error" in one_line(err)
    assert trained == []  # no run started (--budgets 0 trained 200 unbudgeted epochs)
    assert list(temp_root.iterdir()) == []  # and no temporary run folder made


def test_accuracy_budgets_train_in_the_precision_asked_and_say_it(trained, temp_root, tmp_path, capsys):
    report = tmp_path / "frontier.json"
    code, out, err = call(accuracy.main, ["--budgets", "25s", "--precision", "fp32", "--epochs", "30", "--width", "16",
                                          "--seeds", "0,1", "--peer-seeds", "", "--json", str(report)], capsys)
    assert code == 0, err
    assert len(trained) == 2
    for settings in trained:  # what budgets mode used to drop
        assert settings["precision"] == "fp32" and settings["time_budget"] == 25.0
        assert settings["epochs"] == 30 and settings["model_params"] == {"width": 16}
    row = next(line for line in out.splitlines() if line.startswith("| 0.416667 min"))
    assert row.split(" | ")[6].endswith(", fp32")  # the CPU cell, as the README's rows write the precision
    assert "precision fp32" in out
    assert [r["precision"] for r in json.loads(report.read_text())["recipe"]] == ["fp32", "fp32"]
    assert list(temp_root.iterdir()) == []


def test_accuracy_a_budget_too_small_loses_only_its_row(trained, temp_root, tmp_path, capsys):
    report = tmp_path / "frontier.json"
    code, out, err = call(accuracy.main, ["--budgets", "30s,10s,40s", "--seeds", "0,1", "--peer-seeds", "",
                                          "--json", str(report)], capsys)
    assert code == 2
    line = one_line(err)
    assert line.startswith("accuracy.py: error: --budgets 10s:") and "cannot hold one epoch" in line
    assert [s["time_budget"] for s in trained] == [30.0, 30.0, 10.0, 40.0, 40.0]  # 10s: its second seed not tried
    rows = [line for line in out.splitlines() if line.startswith("| 0.")]
    assert [row.split(" | ")[0] for row in rows] == ["| 0.5 min", "| 0.666667 min"] * 2  # as it ran, then the table
    written = json.loads(report.read_text())
    assert [r["settings"]["time_budget"] for r in written["recipe"]] == [30.0, 30.0, 40.0, 40.0]
    assert [(r["budget"], r["seeds_done"]) for r in written["too_small"]] == [("10s", 0)]
    assert list(temp_root.iterdir()) == []


@needs_fashion
def test_accuracy_script_refuses_a_one_second_budget_in_one_line(tmp_path):
    """The real script and cnnlab's real refusal (before the first step: a few seconds): one line, exit 2, the JSON
    written, no temporary folder left."""
    report, root = tmp_path / "frontier.json", tmp_path / "tmp"
    root.mkdir()
    done = subprocess.run([sys.executable, str(ACCURACY), "--budgets", "1s", "--seeds", "0", "--peer-seeds", "",
                           "--device", "cpu", "--json", str(report)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TMPDIR": str(root)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert one_line(done.stderr).startswith("accuracy.py: error: --budgets 1s: time budget 1.0 s cannot hold one epoch")
    assert json.loads(report.read_text())["too_small"][0]["budget"] == "1s"
    assert list(root.glob("cnnlab-*")) == []  # (torch keeps its compile cache there too)


# ------------------------------------------------------------------ bench/run.py


@pytest.mark.parametrize("argv, named", [
    (["--models", "nosuch"], "nosuch"),
    (["--models", ","], "--models"),
    (["--images", "abc"], "--images"),
    (["--images", "0"], "--images"),
    (["--images", "cnn1=0"], "--images"),
    (["--images", "cnn9=100"], "cnn9"),
    (["--models", "cnn1", "--images", "cnn2=100"], "cnn2"),
    (["--peak-size", "0"], "--peak-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--rounds", "0"], "--rounds"),
    (["--images", "cnn1=10,cnn1=20"], "given twice"),
    (["--json", "/nonexistent-cnnlab-folder/x.json"], "--json"),  # made that folder, as root, after measuring
    (["--graphs", "--device", "cpu"], "--graphs"),
])
def test_run_refuses_a_bad_flag_before_measuring(argv, named, monkeypatch, capsys):
    def measured(*args, **kwargs):
        raise AssertionError("measured before the flags were checked")

    monkeypatch.setattr(run, "measure_peaks", measured)  # the first measurement: about a minute with the defaults
    monkeypatch.setattr(run, "load_dataset", measured)
    code, out, err = call(run.main, argv, capsys)
    assert code == 2, err
    assert named in one_line(err) and one_line(err).startswith("run.py: error:")
    assert out == ""


def test_run_images_per_model():
    device = SimpleNamespace(type="cpu")
    spec = run.image_counts("512,cnn2=128")
    assert run.images_per_model(spec, ["cnn1", "cnn2"], device) == {"cnn1": 512, "cnn2": 128}
    assert run.images_per_model(None, ["cnn1", "resnet9"], device) == {"cnn1": run.CPU_IMAGES["cnn1"],
                                                                       "resnet9": run.CPU_IMAGES_OTHER}
    assert run.images_per_model(run.image_counts("cnn1=64"), ["cnn1"], SimpleNamespace(type="cuda")) == {"cnn1": 64}


@pytest.mark.parametrize("script, argv", [(ACCURACY, ["--seeds", "abc"]), (RUN, ["--models", "nosuch"])])
def test_script_refusal_has_no_traceback(script, argv, tmp_path):
    """The scripts as a user runs them: one line, exit 2, and no temporary folder left."""
    done = subprocess.run([sys.executable, str(script), *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 2
    assert one_line(done.stderr).startswith(f"{script.name}: error: argument {argv[0]}:")
    assert done.stdout == "" and list(tmp_path.iterdir()) == []
