"""Integrity of what a run wrote: a SHA-256 recorded with the weights, logits, checkpoint and exported ONNX
file, checked when they are read, so flipped bytes are one clear line and a non-zero exit, never other
predictions with exit 0. Files written before the digest was recorded still load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import cnnlab
from cnnlab import runs
from cnnlab.errors import UserError

from conftest import interrupt_at, train_test_images, write_npz_dataset

FAST = dict(batch_size=32, device="cpu", precision="fp32", progress=False)
ALTERED = "its bytes differ from what cnnlab wrote (SHA-256 mismatch: the file was damaged or edited)"


@pytest.fixture(scope="module")
def arrays():
    return train_test_images()


@pytest.fixture(scope="module")
def trained(arrays, tmp_path_factory):
    return cnnlab.train("cnn1", arrays, epochs=1, out=tmp_path_factory.mktemp("runs"), **FAST).path


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run for one test to damage."""
    return shutil.copytree(trained, tmp_path / "run", ignore=shutil.ignore_patterns(".owner.lock"))


@pytest.fixture
def inputs(arrays, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, arrays[2])
    return path


def flip_middle(path, start: int, end: int, count: int = 200) -> None:
    """XOR the lowest bit of `count` bytes in the middle of [start, end): the values stay finite and plausible."""
    data = bytearray(path.read_bytes())
    middle = (start + end) // 2
    for i in range(middle - count // 2, middle + count // 2):
        data[i] ^= 0x01
    path.write_bytes(bytes(data))


def flip_tensor_data(path, count: int = 200) -> None:
    size = path.stat().st_size
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    assert size - header > 4 * count
    flip_middle(path, header, size, count)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_every_tensor_file_records_its_digest(trained):
    names = [p.name for p in trained.glob("*.safetensors")]
    assert {runs.WEIGHTS, runs.LOGITS, runs.SAMPLES} <= set(names)
    for name in names:
        with safe_open(str(trained / name), "pt") as f:
            meta = f.metadata()
            assert len(meta[runs.INTEGRITY_KEY]) == 64, name
            assert runs.content_digest({k: f.get_tensor(k) for k in f.keys()}, meta) == meta[runs.INTEGRITY_KEY]


def test_damaged_weights_are_refused_by_predict_and_the_api(run, inputs, arrays, tmp_path, cli):
    before = cnnlab.load_run(run)
    expected = before.predict(arrays[2])
    flip_tensor_data(run / runs.WEIGHTS)
    code, _, err = cli("predict", run, "--input", inputs, "-o", tmp_path / "sub.csv", "--device", "cpu")
    assert code != 0 and not (tmp_path / "sub.csv").exists()
    line = one_line(err)
    assert f"{run / runs.WEIGHTS}: {ALTERED}; restore it from a copy or train the run again" in line
    with pytest.raises(UserError, match=r"model\.safetensors: its bytes differ from what cnnlab wrote"):
        cnnlab.load_run(run).predict(arrays[2])
    with pytest.raises(UserError, match="SHA-256 mismatch"):  # a Run loaded before the damage notices it too
        before.predict(arrays[2])
    assert expected.shape == (len(arrays[2]),)


def test_damaged_logits_are_refused_by_evaluate(run, cli):
    flip_tensor_data(run / runs.LOGITS, count=40)
    code, _, err = cli("evaluate", run)
    assert code != 0
    assert f"{run / runs.LOGITS}: {ALTERED}; restore it" in one_line(err)
    with pytest.raises(UserError, match="logits.safetensors: its bytes differ"):
        cnnlab.evaluate(run)


def test_a_run_without_a_recorded_digest_still_loads(run, arrays, inputs, tmp_path, cli):
    """Runs written before the digest: no error, the same predictions."""
    expected = cnnlab.load_run(run).predict(arrays[2])
    for name in (runs.WEIGHTS, runs.LOGITS):
        with safe_open(str(run / name), "pt") as f:
            meta = {k: v for k, v in f.metadata().items() if k != runs.INTEGRITY_KEY}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(run / name), metadata=meta)
    np.testing.assert_array_equal(cnnlab.load_run(run).predict(arrays[2]), expected)
    cnnlab.evaluate(run)
    code, _, err = cli("predict", run, "--input", inputs, "-o", tmp_path / "sub.csv", "--device", "cpu")
    assert code == 0, err


def test_edited_metadata_is_refused(tmp_path):
    """The header's metadata (a checkpoint's training state) is covered too, not only the tensor bytes."""
    path = tmp_path / "t.safetensors"
    runs.save_tensors(path, {"w": torch.arange(6.0)}, {"cnnlab": json.dumps({"epoch": 3})})
    assert torch.equal(runs.load_tensors(path)["w"], torch.arange(6.0))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file({"w": torch.arange(6.0)}, str(path), metadata={**meta, "cnnlab": json.dumps({"epoch": 4})})
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        runs.load_tensors(path)


def test_a_damaged_checkpoint_is_not_resumed(tmp_path, cli):
    from cnnlab.config import build_config
    from cnnlab.engine import fit

    data = write_npz_dataset(tmp_path / "data.npz", 120, 30, size=16)
    config = build_config(dict(data=str(data), model="cnn1", epochs=2, **{k: v for k, v in FAST.items()
                                                                          if k != "progress"}))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(config, out, [interrupt_at(2)])
    flip_tensor_data(out / runs.CHECKPOINT)
    code, _, err = cli("train", "--resume", out, "--quiet")
    assert code != 0
    assert f"{out / runs.CHECKPOINT}: {ALTERED}; restore it from a copy, or train a new run without --resume" \
        in one_line(err)
    assert not (out / runs.MODEL).exists()


# ------------------------------------------------------------------ exported ONNX


@pytest.fixture
def exported(trained, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    cnnlab.export(trained, path)
    return path


def test_damaged_onnx_is_refused(exported, arrays, inputs, tmp_path, cli):
    import onnx

    from cnnlab.deploy import DIGEST_KEY, onnx_predict_logits, read_onnx_metadata

    assert len(read_onnx_metadata(exported)[DIGEST_KEY]) == 64
    onnx_predict_logits(exported, arrays[2])  # the file as written passes its own check
    data = exported.read_bytes()
    biggest = max(onnx.load(str(exported)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    start = data.find(biggest)
    assert start > 0 and len(biggest) > 800
    flip_middle(exported, start, start + len(biggest))
    code, _, err = cli("predict", exported, "--input", inputs, "-o", tmp_path / "sub.csv")
    assert code != 0 and not (tmp_path / "sub.csv").exists()
    line = one_line(err)
    assert f"{exported}: its bytes differ from what cnnlab exported (SHA-256 mismatch" in line
    assert "export it again" in line
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        onnx_predict_logits(exported, arrays[2])


def test_onnx_without_a_recorded_digest_still_runs(exported, inputs, tmp_path, cli):
    import onnx

    from cnnlab.deploy import DIGEST_KEY

    model = onnx.load(str(exported))
    kept = [(e.key, e.value) for e in model.metadata_props if e.key != DIGEST_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(exported))
    code, _, err = cli("predict", exported, "--input", inputs, "-o", tmp_path / "sub.csv")
    assert code == 0, err
