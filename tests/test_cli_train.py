"""The train / evaluate / predict / plot commands as a user runs them, bad flags included."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import make_images, write_csv, write_npz_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_npz_dataset(root / "train.npz", 300, 60)
    xt, _ = make_images(60, 16, classes=3, seed=7)
    write_csv(root / "test.csv", xt, None, ids=list(range(500, 560)))
    write_csv(root / "test_noid.csv", xt, None)
    return root


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    import sys

    from cnnlab.cli import main

    out = tmp_path_factory.mktemp("runs")
    sys.argv = ["cnnlab", "train", "cnn1", "--data", str(data / "train.npz"), "--epochs", "2", "--batch-size", "32",
                "--device", "cpu", "--precision", "fp32", "--out", str(out), "--quiet"]
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    (run,) = out.iterdir()
    return run


def test_train_writes_run_and_figures(run_dir):
    for name in ("acc_loss.png", "confusion_val.png", "mistakes_val.png", "history.csv", "model.safetensors"):
        assert (run_dir / name).is_file()


def test_evaluate_prints_per_class_table(cli, run_dir):
    code, out, _ = cli("evaluate", run_dir, "--split", "test", "--json", run_dir / "eval.json")
    assert code == 0 and "precision %" in out and "confusion matrix" in out and "hardest class" in out
    assert (run_dir / "eval.json").is_file()


def test_predict_writes_valid_submission(cli, run_dir, data, tmp_path):
    code, out, _ = cli("predict", run_dir, "--input", data / "test.csv", "-o", tmp_path / "sub.csv", "--device", "cpu")
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "sub.csv")))
    assert list(rows[0]) == ["id", "label"] and len(rows) == 60
    assert rows[0]["id"] == "500" and {r["label"] for r in rows} <= {"0", "1", "2"}
    _, yt = make_images(60, 16, classes=3, seed=7)
    assert np.mean([int(r["label"]) == t for r, t in zip(rows, yt)]) > 0.8
    code, _, _ = cli("predict", run_dir, "--input", data / "test_noid.csv", "-o", tmp_path / "sub2.csv")
    assert code == 0 and [r["id"] for r in csv.DictReader(open(tmp_path / "sub2.csv"))][:2] == ["1", "2"]


def test_predict_refuses_wrong_image_size(cli, run_dir, tmp_path):
    x, _ = make_images(5, 8)
    write_csv(tmp_path / "small.csv", x, None)
    code, _, err = cli("predict", run_dir, "--input", tmp_path / "small.csv", "-o", tmp_path / "s.csv")
    assert code == 2 and "images are 1x8x8 but the model was trained on 1x16x16" in err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("args,message", [
    (["--optimizer", "nadam"], "optimizer: must be one of adam, sgd, rmsprop, adamw, got 'nadam'"),
    (["--epochs", "0"], "epochs: must be a positive integer, got 0"),
    (["--lr", "inf"], "lr: must be a finite number, got inf"),
    (["--lr", "nan"], "lr: must be a finite number"),
    (["--val-fraction", "2"], "--val-fraction: must lie in [0, 1), got 2.0"),
    (["--val-fraction", "0"], "val_fraction = 0 leaves no validation split"),
    (["--recipe", "fancy"], "recipe: must be one of report, modern, cpu-budget, got 'fancy'"),
    (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs: CUDA graphs need a CUDA device"),
    (["--data", "/nowhere/x.npz"], "no such file or folder"),
    (["--device", "cuda"], None),
])
def test_bad_train_flags_are_one_line(cli, data, tmp_path, args, message):
    import torch

    if args[0] == "--device":
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        message = "no CUDA device is available"
    base = ["train", "cnn1", "--data", str(data / "train.npz"), "--out", str(tmp_path), "--epochs", "1"]
    code, _, err = cli(*base, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_config_file_and_unknown_keys(cli, data, tmp_path):
    (tmp_path / "bad.toml").write_text('epochs = 1\nlearning_rate = 0.1\n')
    code, _, err = cli("train", "--config", tmp_path / "bad.toml", "--out", tmp_path / "runs")
    assert code == 2 and "unknown key 'learning_rate'" in err
    (tmp_path / "good.toml").write_text(f'model = "cnn1"\ndata = "{data / "train.npz"}"\nepochs = 1\n'
                                        'batch_size = 64\ndevice = "cpu"\n')
    code, _, _ = cli("train", "--config", tmp_path / "good.toml", "--out", tmp_path / "runs", "--quiet")
    assert code == 0
    (run,) = (tmp_path / "runs").iterdir()
    import json

    assert json.loads((run / "config.json").read_text())["batch_size"] == 64


def test_params_file_round_trips_into_train(cli, data, tmp_path):
    import json

    (tmp_path / "best.json").write_text(json.dumps({"params": {"dropout": 0.3, "dense": 256, "lr": 0.002}}))
    code, _, err = cli("train", "cnn1", "--data", data / "train.npz", "--params", tmp_path / "best.json",
                       "--epochs", "1", "--out", tmp_path / "runs", "--quiet", "--device", "cpu")
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == 0.002 and cfg["model_params"] == {"dropout": 0.3, "dense": 256}
    spec = json.loads((run / "model.json").read_text())["spec"]
    assert spec["dense"] == 256 and spec["dropout"] == 0.3


def test_resume_refuses_changed_options_and_missing_checkpoint(cli, run_dir, tmp_path):
    code, _, err = cli("train", "--resume", run_dir, "--lr", "0.1")
    assert code == 2 and "only --epochs and --device may change (got --lr)" in err
    code, _, err = cli("train", "--resume", tmp_path)
    assert code == 2 and "not a cnnlab run directory" in err


def test_evaluate_on_missing_run_dir(cli, tmp_path):
    code, _, err = cli("evaluate", tmp_path / "nope")
    assert code == 2 and "no such run directory" in err


@pytest.mark.parametrize("args,message", [(["train", "--bogus"], "No such option: --bogus"),
                                          (["train", "--epochs", "abc"], "Invalid value for '--epochs'"),
                                          (["nonsense"], "No such command 'nonsense'")])
def test_unknown_flags_and_commands_are_one_line(cli, args, message):
    code, _, err = cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("cnnlab: error: ") and message in err and "--help" in err


@pytest.mark.slow
def test_kill_leaves_a_resumable_run(data, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    base = [sys.executable, "-m", "cnnlab", "train"]
    proc = subprocess.Popen(base + ["cnn1", "--data", str(data / "train.npz"), "--epochs", "500", "--batch-size", "16",
                                    "--device", "cpu", "--out", str(tmp_path), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("*/history.csv")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "cnnlab train --resume" in err.decode()
    (run,) = tmp_path.iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs_done"] >= 1
    done = subprocess.run(base + ["--resume", str(run), "--epochs", str(metrics["epochs_done"] + 1), "--quiet"],
                          env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


def test_markup_in_names_is_printed_as_text(tmp_path, cli):
    """Rich markup in a class name or a folder name is shown literally, never interpreted (or crashing)."""
    x, y = make_images(240, 16, classes=3)
    np.savez(tmp_path / "odd.npz", x_train=x, y_train=y, class_names=np.array(["[/bold]", "[red]b", "c"]))
    code, out, err = cli("data", "info", tmp_path / "odd.npz")
    assert code == 0 and "[/bold]" in out and "[red]b" in out, err
    out_dir = tmp_path / "runs[/]"
    code, out, err = cli("train", "cnn1", "--data", tmp_path / "odd.npz", "--epochs", "1", "--batch-size", "32",
                         "--device", "cpu", "--out", out_dir)
    assert code == 0 and "runs[/]" in out, err
    (run,) = out_dir.iterdir()
    code, out, err = cli("evaluate", run)
    assert code == 0 and "[/bold]" in out, err
    from cnnlab.report import build_report

    _, md = build_report([run], tmp_path / "r.html")
    assert "\\[/bold\\]" in md.read_text() and "[/bold]" in (tmp_path / "r.html").read_text()
