"""Ensembles: vote logic, the threshold on validation, restarts, and several processes on one directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnlab.config import build_config
from cnnlab.engine import Reporter
from cnnlab.ensemble import parse_member_range, train_ensemble, vote
from cnnlab.errors import UserError

from conftest import make_images, write_npz_dataset

ROOT = Path(__file__).resolve().parents[1]


def onehot_logits(classes: list[int], strength: float = 5.0, k: int = 3) -> np.ndarray:
    out = np.zeros((len(classes), k))
    out[np.arange(len(classes)), classes] = strength
    return out


def test_hard_vote_majority_and_ties():
    # three members, two images: image 0 has a 2-1 majority for class 1
    logits = np.stack([onehot_logits([1, 0]), onehot_logits([1, 2], strength=9), onehot_logits([2, 1])])
    assert vote(logits, "hard").argmax(1)[0] == 1
    # image 1: one vote each for 0, 2, 1 -> the most confident summed probability wins (member 2 is surest)
    assert vote(logits, "hard").argmax(1)[1] == 2
    # an exact tie in votes and probability goes to the lower class index
    tie = np.stack([onehot_logits([0]), onehot_logits([2])])
    assert vote(tie, "hard").argmax(1)[0] == 0


def test_soft_vote_and_single_member():
    logits = np.stack([np.array([[2.0, 0.0, 0.0]]), np.array([[0.0, 1.5, 1.4]]), np.array([[0.0, 1.5, 1.4]])])
    assert vote(logits, "hard").argmax(1)[0] == 1
    probs = vote(logits, "soft")
    assert np.allclose(probs.sum(1), 1)
    one = np.array([[[0.1, 3.0, 0.2], [4.0, 0.0, 0.0]]])
    assert list(vote(one, "hard").argmax(1)) == [1, 0] == list(vote(one, "soft").argmax(1))
    with pytest.raises(UserError, match="--vote must be hard or soft"):
        vote(one, "median")


@pytest.fixture(scope="module")
def easy_npz(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("ens") / "easy.npz", 240, 60)


def cfg(data, **kw):
    return build_config({"model": "cnn1", "data": str(data), "epochs": 1, "batch_size": 32, "device": "cpu",
                         "precision": "fp32", **kw})


def test_all_members_below_threshold(tmp_path):
    rng = np.random.default_rng(0)  # random labels: nothing can pass a threshold of 0.99
    np.savez(tmp_path / "noise.npz", images=rng.integers(0, 255, (150, 16, 16)), labels=rng.integers(0, 3, 150))
    manifest = train_ensemble(cfg(tmp_path / "noise.npz"), tmp_path / "ens", members=2, threshold=0.99,
                              max_attempts=3, say=lambda t: None)
    assert manifest["qualified"] == 0 and manifest["attempts"] == 3 and manifest["members"] == []
    assert len(manifest["discarded"]) == 3


def test_threshold_is_applied_on_validation(easy_npz, tmp_path):
    manifest = train_ensemble(cfg(easy_npz), tmp_path / "ens", members=3, threshold=0.5, fuse=3, say=lambda t: None)
    assert manifest["qualified"] == 3 and manifest["threshold_split"] == "val"
    assert all(m["val_accuracy"] >= 0.5 for m in manifest["members"])
    assert len(manifest["growth"]["test"]) == 3 and "test_accuracy" in manifest
    assert (tmp_path / "ens" / "growth.png").is_file()
    seeds = sorted(m["seed"] for m in manifest["members"])
    assert seeds == [0, 1, 2]


class InterruptOnSecondGroup(Reporter):
    def __init__(self):
        self.starts = 0

    def epoch_start(self, epoch, epochs, steps):
        self.starts += 1
        if self.starts == 3:
            raise KeyboardInterrupt


def test_restart_keeps_finished_members(easy_npz, tmp_path):
    ens = tmp_path / "ens"
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(cfg(easy_npz), ens, members=4, threshold=0.0, fuse=1, reporter=InterruptOnSecondGroup(),
                       say=lambda t: None)
    kept = sorted(p.name for p in (ens / "members").iterdir())
    assert kept == ["member-000", "member-001"]  # the interrupted attempt's directory was released
    before = (ens / "members" / "member-000" / "model.safetensors").stat().st_mtime_ns
    manifest = train_ensemble(cfg(easy_npz), ens, members=4, threshold=0.0, fuse=1, say=lambda t: None)
    assert manifest["qualified"] == 4 and manifest["attempts"] == 4
    assert (ens / "members" / "member-000" / "model.safetensors").stat().st_mtime_ns == before


def test_other_options_in_same_directory_are_refused(easy_npz, tmp_path):
    train_ensemble(cfg(easy_npz), tmp_path / "ens", members=1, threshold=0.0, say=lambda t: None)
    with pytest.raises(UserError, match="other options \\(lr\\)"):
        train_ensemble(cfg(easy_npz, lr=0.01), tmp_path / "ens", members=1, threshold=0.0, say=lambda t: None)


def test_two_processes_share_one_directory(easy_npz, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "cnnlab", "ensemble", "cnn1", "--data", str(easy_npz), "--members", "4",
               "--threshold", "0", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--fuse", "1",
               "--out", str(tmp_path / "ens"), "--quiet"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    members = sorted((tmp_path / "ens" / "members").iterdir())
    seeds = [json.loads((m / "config.json").read_text())["seed"] for m in members]
    assert len(seeds) == len(set(seeds)) and 4 <= len(seeds) <= 5  # nobody trained an attempt twice
    manifest = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert manifest["qualified"] == 4


def test_ensemble_directory_works_with_predict_and_evaluate(easy_npz, tmp_path, cli):
    from conftest import write_csv

    train_ensemble(cfg(easy_npz), tmp_path / "ens", members=2, threshold=0.0, say=lambda t: None)
    xt, yt = make_images(60, 16, classes=3, seed=7)
    write_csv(tmp_path / "test.csv", xt, None)
    code, _, err = cli("predict", tmp_path / "ens", "--input", tmp_path / "test.csv", "-o", tmp_path / "sub.csv")
    assert code == 0, err
    labels = [int(line.split(",")[1]) for line in (tmp_path / "sub.csv").read_text().splitlines()[1:]]
    assert len(labels) == 60 and np.mean(np.array(labels) == yt) > 0.8
    code, out, _ = cli("evaluate", tmp_path / "ens", "--split", "test")
    assert code == 0 and "test accuracy" in out
    code, out, _ = cli("ensemble", "combine", tmp_path / "ens")
    assert code == 0 and "2 of 2 trained members qualified" in out


def test_member_range():
    assert parse_member_range("0-9") == range(0, 10) and parse_member_range("4") == range(4, 5)
    with pytest.raises(UserError):
        parse_member_range("9-2")


def test_fused_members_with_augmentation(easy_npz, tmp_path):
    manifest = train_ensemble(cfg(easy_npz, augment=True, epochs=2), tmp_path / "ens", members=2, threshold=0.0, fuse=2,
                              say=lambda t: None)
    assert manifest["qualified"] == 2
    histories = [(tmp_path / "ens" / m["path"] / "history.csv").read_text() for m in manifest["members"]]
    assert histories[0] != histories[1]  # members differ by seed: init, shuffle and augmentation
