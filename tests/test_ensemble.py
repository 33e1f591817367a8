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
from cnnlab.callbacks import Callback
from cnnlab.ensembles import parse_member_range, train_ensemble, vote
from cnnlab.errors import UserError

from conftest import interrupt_at, make_images, write_npz_dataset

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
    with pytest.raises(UserError, match="vote: must be hard or soft"):
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


def test_threshold_is_applied_on_validation(tmp_path):
    """Validation and test disagree on purpose: the test labels are shuffled, so every member scores
    about 1/3 on test and near 1 on validation. Filtering on test would keep none of them."""
    x, y = make_images(240, 16, classes=3)
    xt, yt = make_images(60, 16, classes=3, seed=7)
    np.random.default_rng(0).shuffle(yt)
    np.savez(tmp_path / "disagree.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    manifest = train_ensemble(cfg(tmp_path / "disagree.npz", epochs=2), tmp_path / "ens", members=3, threshold=0.6,
                              fuse=3, max_attempts=3, say=lambda t: None)
    assert manifest["threshold_split"] == "val"
    assert all(m["val_accuracy"] >= 0.6 > m["test_accuracy"] for m in manifest["members"])
    assert manifest["qualified"] == 3  # with the threshold on test accuracy: 0
    assert len(manifest["growth"]["test"]) == 3 and "test_accuracy" in manifest
    assert (tmp_path / "ens" / "growth.png").is_file()
    seeds = sorted(m["seed"] for m in manifest["members"])
    assert seeds == [0, 1, 2]


class InterruptOnSecondGroup(Callback):
    def __init__(self):
        self.starts = 0

    def on_epoch_start(self, ctx, epoch, steps):
        self.starts += 1
        if self.starts == 3:
            raise KeyboardInterrupt


def test_restart_keeps_finished_members(easy_npz, tmp_path):
    ens = tmp_path / "ens"
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(cfg(easy_npz), ens, members=4, threshold=0.0, fuse=1, callbacks=[InterruptOnSecondGroup()],
                       say=lambda t: None)
    from cnnlab.runs import RunDir

    statuses = {p.name: RunDir(p).status() for p in (ens / "members").iterdir()}
    assert statuses == {"member-000": "finished", "member-001": "finished", "member-002": "interrupted"}
    before = (ens / "members" / "member-000" / "model.safetensors").stat().st_mtime_ns
    manifest = train_ensemble(cfg(easy_npz), ens, members=4, threshold=0.0, fuse=1, say=lambda t: None)
    assert manifest["qualified"] == 4 and manifest["attempts"] == 4
    assert (ens / "members" / "member-000" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_interrupted_fused_group_resumes_as_the_same_group(easy_npz, tmp_path):
    """Killed in epoch 3, the group's members keep their epoch-2 checkpoints; the rerun finds the group in
    groups.json and continues it, ending bit-identical to a group that was never interrupted."""
    import torch

    settings = dict(members=2, threshold=0.0, fuse=2)
    train_ensemble(cfg(easy_npz, epochs=3), tmp_path / "full", say=lambda t: None, **settings)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(cfg(easy_npz, epochs=3), tmp_path / "cut", callbacks=[interrupt_at(3)], say=lambda t: None,
                       **settings)
    said = []
    train_ensemble(cfg(easy_npz, epochs=3), tmp_path / "cut", say=said.append, **settings)
    assert any("attempts 0, 1" in line and "resumed" in line for line in said), said
    for member in ("member-000", "member-001"):
        a, b = _weights(tmp_path / "full" / "members" / member), _weights(tmp_path / "cut" / "members" / member)
        assert all(torch.equal(a[k], b[k]) for k in a), member
        history = (tmp_path / "cut" / "members" / member / "history.csv").read_text().splitlines()
        assert len(history) == 4  # header + 3 epochs, none repeated


def test_other_options_in_same_directory_are_refused(easy_npz, tmp_path):
    train_ensemble(cfg(easy_npz), tmp_path / "ens", members=1, threshold=0.0, say=lambda t: None)
    with pytest.raises(UserError, match="other options \\(lr\\)"):
        train_ensemble(cfg(easy_npz, lr=0.01), tmp_path / "ens", members=1, threshold=0.0, say=lambda t: None)


@pytest.mark.slow
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


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "model.safetensors"))


@pytest.mark.parametrize("augment", [False, True])
def test_fused_member_equals_its_standalone_run(easy_npz, tmp_path, augment):
    """Each fused member trains exactly as a standalone run with its seed: same init, same shuffle, same
    augmentation draws, same Adam steps. Float64 (precision fp64), dropout 0 and one epoch, so the only
    differences are summation order (~1e-15); float64's default tolerances (rtol 1e-7) hold anywhere.
    With augmentation, the member also differs from a run of the same seed *without* it: the draws are
    its own, not merely its initial weights."""
    import torch

    from cnnlab.engine import fit
    from cnnlab.fused import train_members_fused
    from cnnlab.runs import RunDir

    config = cfg(easy_npz, precision="fp64", augment=augment, model_params={"dropout": 0.0})
    fused = [RunDir(tmp_path / f"fused-{s}") for s in (0, 1)]
    train_members_fused(config, [0, 1], fused)
    for seed in (0, 1):
        fit(config.__class__(**{**config.to_dict(), "seed": seed}), tmp_path / f"alone-{seed}")
        a, b = _weights(fused[seed].path), _weights(tmp_path / f"alone-{seed}")
        assert a.keys() == b.keys() and a["0.weight"].dtype == torch.float64
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=f"member {seed}, {key}")
    assert not torch.allclose(_weights(fused[0].path)["0.weight"], _weights(fused[1].path)["0.weight"])
    if augment:
        fit(config.__class__(**{**config.to_dict(), "augment": False}), tmp_path / "plain-0")
        assert not torch.allclose(_weights(fused[0].path)["0.weight"], _weights(tmp_path / "plain-0")["0.weight"])
