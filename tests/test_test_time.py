"""Test-time augmentation's views (cnnlab.test_time, issue 20 item 4): flip TTA and the shifted views of
tta_translate, the same scores through every path (the final evaluation, predict's eager, lean and
onnxruntime routes, export), and the setting's refusal without tta."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab import inference, onnx_route, test_time
from cnnlab.models import create_architecture

from conftest import make_images

FAST = dict(batch_size=32, device="cpu", precision="fp32", progress=False)
CPU = torch.device("cpu")
RTOL = 64 * torch.finfo(torch.float32).eps  # fp32 rounding: a batch of six views against six batches of one


def close(a, b) -> bool:
    return np.allclose(a, b, rtol=RTOL, atol=RTOL * max(1.0, float(np.abs(b).max())))


def test_the_views_are_the_mirror_and_the_diagonal_one_pixel_shifts_with_reflected_borders():
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).reshape(2, 1, 5, 6)
    out = test_time.views(x, translate=True)
    assert len(out) == test_time.VIEWS[True] == 10 and len(test_time.views(x)) == test_time.VIEWS[False] == 2
    assert torch.equal(out[0], x) and torch.equal(out[1], x.flip(-1))
    up_left, down_right, up_right, down_left = out[2], out[4], out[6], out[8]  # SHIFTS: where the content moves
    assert all(v.shape == x.shape for v in out)
    assert torch.equal(down_right[..., 1:, 1:], x[..., :-1, :-1])
    assert torch.equal(down_right[..., 0, 1:], x[..., 1, :-1])  # the border row reflected, not zero
    assert torch.equal(up_left[..., :-1, :-1], x[..., 1:, 1:])
    assert torch.equal(down_left[..., 1:, :-1], x[..., :-1, 1:])
    assert torch.equal(up_right[..., :-1, 1:], x[..., 1:, :-1])
    for i in range(2, 10, 2):
        assert torch.equal(out[i + 1], out[i].flip(-1))


def test_the_mean_weights_every_view_equally():
    parts = [torch.full((1, 3), float(v)) for v in (1, 3, 2, 2, 2, 2, 2, 2, 2, 2)]
    assert torch.equal(test_time.mean(parts[:2]), torch.full((1, 3), 2.0))
    assert torch.equal(test_time.mean(parts), torch.full((1, 3), 2.0))
    assert torch.equal(test_time.mean([torch.zeros(1)] * 9 + [torch.full((1,), 10.0)]), torch.ones(1))


@pytest.mark.parametrize("name", ["tuned-cnn", "resnet9"])
def test_every_small_batch_route_gives_the_eager_translated_scores(name):
    model = create_architecture(name, num_classes=5, image_size=16).to(memory_format=torch.channels_last).eval()
    x = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    eager = inference.predict_logits(model, x, tta=True, translate=True).numpy()
    assert not close(eager, inference.predict_logits(model, x, tta=True).numpy())  # the shifts change the scores
    lean = inference.lean_model(model, [1, 16, 16], 1000 * torch.finfo(torch.float32).eps)
    assert close(inference.lean_logits(lean, x, True, True).numpy(), eager)
    if onnx_route.available():
        session, why = onnx_route.session_for(lean, [1, 16, 16], 1000 * torch.finfo(torch.float32).eps, 1)
        assert session is not None, why
        assert close(onnx_route.session_logits(session, x, True, True).numpy(), eager)
    member = inference._Member(model, contextlib.nullcontext, True, [1, 16, 16], translate=True)
    assert close(member.logits(x, CPU, 1024).numpy(), eager)


def test_tta_translate_needs_tta():
    with pytest.raises(cnnlab.UserError, match="tta_translate: .*set tta = true"):
        cnnlab.train("cnn1", make_images(60, 8), epochs=1, tta_translate=True, **FAST)


@pytest.fixture(scope="module")
def translated_run(tmp_path_factory):
    x, y = make_images(240, 16, classes=3)
    xt, yt = make_images(60, 16, classes=3, seed=7)
    run = cnnlab.train("tuned-cnn", (x, y, xt, yt), epochs=1, tta=True, tta_translate=True,
                       out=tmp_path_factory.mktemp("runs"), **FAST)
    return run, xt


def test_the_stored_logits_and_predict_use_the_shifted_views(translated_run):
    run, xt = translated_run
    meta = run.dir.read_model_meta()
    assert meta["tta"] and meta["tta_translate"]
    stored = run.dir.logits("test")[0]
    assert np.array_equal(run.logits(xt), stored)  # 60 images: the eager path, the same views
    model = run.model
    images = torch.from_numpy(xt[:, None].copy())
    assert np.array_equal(inference.predict_logits(model, images, tta=True, translate=True).numpy(), stored)
    assert not np.allclose(inference.predict_logits(model, images, tta=True).numpy(), stored)
    assert close(run.logits(xt[:2]), stored[:2])  # a small batch: the lean copy, all six views in one forward


def test_an_export_carries_the_shifted_views(translated_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra")
    run, xt = translated_run
    info = cnnlab.export(run, tmp_path / "model.onnx")  # export checks onnxruntime against PyTorch itself
    got = cnnlab.deploy.onnx_predict_logits(tmp_path / "model.onnx", xt[:, None])
    assert info["images_checked"] > 0 and close(got, run.dir.logits("test")[0])
