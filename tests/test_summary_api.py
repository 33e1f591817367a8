"""Issue 21: cnnlab.summary for a model name, an nn.Module and a run directory."""

from __future__ import annotations

import pytest
from torch import nn

import cnnlab
from cnnlab.models import create_architecture, summarize

from conftest import write_npz_dataset


def test_summary_of_a_name_is_the_keras_table():
    s = cnnlab.summary("cnn1", num_classes=5)
    expected = summarize(create_architecture("cnn1", num_classes=5, in_chans=1, image_size=28), (1, 28, 28))
    assert (s.total, s.trainable, s.non_trainable) == (expected.total, expected.trainable, expected.non_trainable)
    text = repr(s)
    assert text.startswith('Model: "cnn1"') and f"Total params: {expected.total:,}" in text
    assert "Layer (type)" in text and "(None, 26, 26, 32)" in text  # channels last, as Keras shows it
    frame = s.frame
    assert list(frame.columns) == ["layer", "type", "output_shape", "params"] and len(frame) == len(expected.rows)
    assert frame["params"].sum() == expected.total


def test_summary_of_a_module_and_of_a_run(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))
    s = cnnlab.summary(net, image_size=16)
    assert s.trainable == sum(p.numel() for p in net.parameters()) and s.non_trainable == 8  # BN's mean and variance
    assert [r.output_shape for r in s.rows][-1] == (3,)
    data = write_npz_dataset(tmp_path / "d.npz", 48, 12, size=12)
    run = cnnlab.train("cnn1", str(data), epochs=1, batch_size=16, device="cpu", out=tmp_path / "runs",
                       progress=False, checkpoint_every=0)
    from_run = cnnlab.summary(run.path)
    assert from_run.input_shape == (1, 12, 12) and from_run.rows[-1].output_shape == (3,)
    assert cnnlab.summary(run).total == from_run.total == cnnlab.summary("cnn1", num_classes=3, image_size=12).total
    with pytest.raises(cnnlab.UserError, match="summary: expected"):
        cnnlab.summary(3)
