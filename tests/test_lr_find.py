"""Issue 21: the learning-rate finder (fastai's range test and valley rule)."""

from __future__ import annotations

import pytest
import torch

import cnnlab
from cnnlab.config import build_config
from cnnlab.engine import prepare
from cnnlab.lr_find import suggest, sweep, valley

from conftest import write_npz_dataset

SETTINGS = dict(model="cnn1", batch_size=32, device="cpu", precision="fp32", seed=0, checkpoint_every=0)


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("data") / "small.npz", 480, 60)


def test_valley_is_fastais_rule():
    # the longest falling subsequence is 0, 2..8 (length 8 ending at 8: start 8 - 8 = 0); sections 8/3: 0 + 2 + 1
    losses = [5.0, 6.0, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 9.0]
    assert valley(list(range(10)), losses) == 3
    assert suggest([1.0, 2.0], [3.0, 2.0], steps=100) == 1.0  # too short for fastai's cut: all of it


def test_sweep_restores_weights_optimizer_and_generators(small_npz):
    setup = prepare(build_config({**SETTINGS, "data": str(small_npz)}))
    before = {k: v.clone() for k, v in setup.model.state_dict().items()}
    gen = setup.generators[0].get_state()
    result = sweep(setup, steps=30)
    assert len(result.lrs) > 5 and result.lrs[0] == pytest.approx(1e-7)
    after = setup.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm's statistics too
    assert not setup.optimizer.state  # Adam's moments of the sweep are gone
    assert setup.optimizer.param_groups[0]["lr"] == setup.config.lr
    assert torch.equal(setup.generators[0].get_state(), gen)


def test_suggestion_trains_better_than_100x_lower(small_npz, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a sweep to 1,000 diverges whatever the dropout draws; to fastai's 10, cnn1 on these blobs sometimes
    # still learns at the end (it did once its masks came from 64-bit draws), and nothing would stop it
    result = cnnlab.lr_find(data=str(small_npz), plot=tmp_path / "find.png", end_lr=1000.0, **SETTINGS)
    assert (tmp_path / "find.png").stat().st_size > 1000 and result.plot == tmp_path / "find.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["find.png"]  # no run directory (the runs below come later)
    assert len(result.lrs) < 100 and result.smoothed[-1] > 4 * min(result.smoothed[:-1])  # stopped on divergence
    assert result.smoothed[-2] <= 4 * min(result.smoothed[:-1])  # at the first step past 4x the best
    assert 1e-5 < result.suggestion < 1
    # on these easy blobs 100x higher still learns them (BatchNorm and Adam cope); 100x lower is clearly worse:
    # measured 1.0 against 0.33 (chance) after one epoch
    accuracy = {}
    for name, lr in (("suggested", result.suggestion), ("100x lower", result.suggestion / 100)):
        run = cnnlab.train(data=str(small_npz), epochs=1, lr=lr, out=tmp_path / "runs", progress=False, **SETTINGS)
        accuracy[name] = run.metrics["val_accuracy"]
    assert accuracy["suggested"] > accuracy["100x lower"] + 0.3, accuracy


def test_cli_prints_the_command(small_npz, tmp_path, cli):
    code, out, err = cli("lr-find", "cnn1", "--data", small_npz, "--device", "cpu", "--batch-size", "32",
                         "--steps", "20", "--plot", tmp_path / "p.png")
    assert code == 0, err
    assert "use it: cnnlab train cnn1 --lr " in out and (tmp_path / "p.png").is_file()
