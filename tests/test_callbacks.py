"""Callbacks as a user writes them: they act only through the loop's context (stop, read and keep
weights, save checkpoints, carry state across a resume), in an order decided in one place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import cnnlab
from cnnlab.callbacks import Callback, Checkpoint, EarlyStopping, LambdaCallback
from cnnlab.engine import ordered

from conftest import interrupt_at, write_npz_dataset

SMALL = dict(model="cnn1", batch_size=32, device="cpu", precision="fp32", lr_schedule="one-cycle", progress=False)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("data") / "small.npz", 200, 40)


def test_a_user_callback_stops_training(npz, tmp_path):
    stop = LambdaCallback(on_epoch_end=lambda ctx, rows: rows[0]["epoch"] == 2 and ctx.stop("enough for today"))
    run = cnnlab.train(data=str(npz), epochs=5, out=tmp_path, callbacks=[stop], **SMALL)
    assert run.metrics["epochs_done"] == 2 and run.metrics["stopped_early"]
    assert run.metrics["stop_reason"] == "enough for today" and len(run.history) == 2


class SaveWeights(Callback):
    """Keras's ModelCheckpoint in a few lines: every epoch's weights, read through the context."""

    def __init__(self):
        self.saved = []

    def on_epoch_end(self, ctx, rows):
        self.saved.append({k: v.clone() for k, v in ctx.member_weights()[0].items()})


def test_a_user_callback_saves_each_epochs_weights(npz, tmp_path):
    saver = SaveWeights()
    run = cnnlab.train(data=str(npz), epochs=3, out=tmp_path, callbacks=[saver], **SMALL)
    final = load_file(str(run.path / "model.safetensors"))
    assert len(saver.saved) == 3
    assert all(torch.equal(saver.saved[-1][k], final[k]) for k in final)  # no restore_best: the last epoch's
    assert not all(torch.equal(saver.saved[0][k], final[k]) for k in final)


class KeepFirstEpoch(Callback):
    """Keeps epoch 1's weights as the final ones; it runs after early stopping (order 0 > -1), so its
    choice stands over early stopping's own."""

    def on_epoch_end(self, ctx, rows):
        if rows[0]["epoch"] == 1:
            self.first = ctx.member_weights()[0]
        ctx.keep_best(0, 1, self.first)


def test_kept_weights_become_the_final_ones_with_restore_best(npz, tmp_path):
    keeper, saver = KeepFirstEpoch(), SaveWeights()
    run = cnnlab.train(data=str(npz), epochs=3, out=tmp_path, callbacks=[keeper, saver], restore_best=True,
                       **SMALL)
    final = load_file(str(run.path / "model.safetensors"))
    assert run.metrics["weights_epoch"] == 1
    assert all(torch.equal(saver.saved[0][k], final[k]) for k in final)


def wreck_after(epoch: int) -> LambdaCallback:
    """Zeroes every weight after `epoch`: a ReLU network then stays dead, so later epochs score at chance."""
    def wreck(ctx, rows):
        if rows[0]["epoch"] >= epoch:
            with torch.no_grad():
                for p in ctx.setup.step_model.parameters():
                    p.zero_()
    return LambdaCallback(on_epoch_end=wreck)


def test_an_early_stopping_passed_by_hand_keeps_its_best_weights(npz, tmp_path):
    """callbacks=[EarlyStopping(...)] without early_stopping in the settings: its restore_best (on by default) was
    dropped, so the final weights were the last epoch's, not the best ones."""
    saver = SaveWeights()
    run = cnnlab.train(data=str(npz), epochs=6, out=tmp_path, callbacks=[
        EarlyStopping(patience=1, monitor="val_accuracy"), saver, wreck_after(2)], **SMALL)
    best = max(run.history.itertuples(), key=lambda r: r.val_accuracy).epoch
    assert run.metrics["stopped_early"] and best < run.metrics["epochs_done"] <= 4  # at chance from epoch 3 on
    assert run.metrics["weights_epoch"] == best
    final = load_file(str(run.path / "model.safetensors"))
    assert all(torch.equal(saver.saved[best - 1][k], final[k]) for k in final)
    assert run.metrics["val_accuracy"] == pytest.approx(run.history.val_accuracy.max(), abs=1e-6)


def test_a_resume_without_that_callback_keeps_the_new_epochs(npz, tmp_path):
    """The checkpoint holds the hand-passed EarlyStopping's best (epoch 1 here); a resume without the callback
    (the CLI's) restored it and threw away the new epochs, which nothing watched."""
    keeper = KeepFirstEpoch()
    run = cnnlab.train(data=str(npz), epochs=2, out=tmp_path, callbacks=[keeper], checkpoint_every=1, **SMALL)
    assert run.metrics["weights_epoch"] == 1
    resumed = cnnlab.train(resume=run.path, epochs=4, progress=False)
    assert resumed.metrics["weights_epoch"] == 4
    again = cnnlab.train(resume=run.path, epochs=5, progress=False, callbacks=[EarlyStopping(patience=0)])
    assert again.metrics["weights_epoch"] == min(again.history.itertuples(), key=lambda r: r.val_loss).epoch


class KeepOnlyFirst(Callback):
    """Keeps epoch 1's weights once, and nothing after: resumed with it, that best still stands."""

    def on_epoch_end(self, ctx, rows):
        if rows[0]["epoch"] == 1:
            ctx.keep_best(0, 1, ctx.member_weights()[0])


def test_a_resume_with_the_keeping_callback_passed_again_keeps_its_best(npz, tmp_path):
    run = cnnlab.train(data=str(npz), epochs=2, out=tmp_path, callbacks=[KeepOnlyFirst()], checkpoint_every=1,
                       **SMALL)
    resumed = cnnlab.train(resume=run.path, epochs=3, progress=False, callbacks=[KeepOnlyFirst()])
    assert resumed.metrics["weights_epoch"] == 1  # was 3: a best from the checkpoint was dropped


@pytest.mark.parametrize("kwargs, says", [({"monitor": "val_acc"}, "monitor must be one of val_loss"),
                                          ({"patience": -1}, "patience must be a whole number")])
def test_early_stopping_checks_its_arguments_when_made(kwargs, says):
    with pytest.raises(cnnlab.UserError, match=says):
        EarlyStopping(**kwargs)
    assert EarlyStopping(patience=np.int64(2)).patience == 2  # a numpy integer is a whole number too


def test_early_stopping_on_validation_without_a_split_is_one_line(npz, tmp_path):
    with pytest.raises(cnnlab.UserError, match="monitor val_loss needs a validation split"):
        cnnlab.train(data=str(npz), epochs=2, out=tmp_path, val_fraction=0, callbacks=[EarlyStopping(1)], **SMALL)
    run = cnnlab.train(data=str(npz), epochs=2, out=tmp_path / "t", val_fraction=0,
                       callbacks=[EarlyStopping(1, monitor="train_loss")], **SMALL)
    assert run.metrics["epochs_done"] == 2


class PressAfterCheckpoint(Callback):
    order = 2  # after the checkpoint callback (1): epoch 2's checkpoint is written, its history row is not

    def on_epoch_end(self, ctx, rows):
        if rows[0]["epoch"] == 2:
            raise KeyboardInterrupt


def test_ctrl_c_after_the_checkpoint_records_the_checkpoints_epochs(npz, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        cnnlab.train(data=str(npz), epochs=3, out=tmp_path, callbacks=[PressAfterCheckpoint()], **SMALL)
    (run_dir,) = tmp_path.iterdir()
    assert cnnlab.Run(run_dir).metrics["epochs_done"] == 2  # what a resume continues from
    assert cnnlab.train(resume=run_dir, progress=False).history.epoch.tolist() == [1, 2, 3]


def test_ctrl_c_in_an_epochs_callbacks_records_the_epochs_history_holds(npz, tmp_path):
    """Ctrl-C inside on_epoch_end of epoch 2 (before its checkpoint and history row): metrics.json said 2 epochs
    done where history.csv held 1; the resume then trains epoch 2 again."""
    def press(ctx, rows):
        if rows[0]["epoch"] == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cnnlab.train(data=str(npz), epochs=3, out=tmp_path, callbacks=[LambdaCallback(on_epoch_end=press)], **SMALL)
    (run_dir,) = tmp_path.iterdir()
    run = cnnlab.Run(run_dir)
    assert run.metrics["status"] == "interrupted" and run.metrics["epochs_done"] == len(run.history) == 1
    assert cnnlab.train(resume=run_dir, progress=False).history.epoch.tolist() == [1, 2, 3]


class EpochCounter(Callback):
    """A callback with state of its own that must survive an interruption."""

    def on_train_start(self, ctx):
        self.seen = 0

    def on_epoch_end(self, ctx, rows):
        self.seen += 1

    def state_dict(self):
        return [{"counter_seen": self.seen}]

    def load_state_dict(self, states):
        self.seen = states[0]["counter_seen"]


def test_callback_state_survives_a_resume(npz, tmp_path):
    counter = EpochCounter()
    with pytest.raises(KeyboardInterrupt):
        cnnlab.train(data=str(npz), epochs=4, out=tmp_path, callbacks=[counter, interrupt_at(3)], **SMALL)
    (run_dir,) = tmp_path.iterdir()
    assert counter.seen == 2
    resumed = EpochCounter()
    cnnlab.train(resume=run_dir, callbacks=[resumed], progress=False)
    assert resumed.seen == 4


def test_order_is_decided_in_one_place():
    user, early, checkpoint = LambdaCallback(), EarlyStopping(), Checkpoint()
    assert ordered([checkpoint, user, early]) == [early, user, checkpoint]


# ------------------------------------------------------------------ the pre-flight loads the data once


@pytest.fixture
def loads(monkeypatch):
    """Counts dataset loads from files (every command's loads go through data.prepared.load_data)."""
    import cnnlab.data.prepared as prepared

    count = {"n": 0}
    real = prepared.load_dataset

    def counting(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(prepared, "load_dataset", counting)
    return count


def test_each_command_loads_its_data_once(npz, tmp_path, loads):
    one_epoch = {**SMALL, "epochs": 1}
    cnnlab.train(data=str(npz), out=tmp_path / "t", **one_epoch)
    assert loads["n"] == 1
    one_epoch.pop("model")
    cnnlab.study("cnn1", 2, str(npz), out=tmp_path / "s", report=False, say=lambda s: None, **one_epoch)
    assert loads["n"] == 2
    cnnlab.ensemble("cnn1", 2, 0.0, data=str(npz), out=tmp_path / "e", say=lambda s: None, **one_epoch)
    assert loads["n"] == 3
    one_epoch.pop("progress")
    cnnlab.tune("cnn1", 2, data=str(npz), out=tmp_path / "u", say=lambda s: None, pruner="none", **one_epoch)
    assert loads["n"] == 4
