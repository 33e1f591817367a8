"""Datasets: every format round-trips, every bad input fails with one clear line, splits are sound."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from cnnlab.data import load_dataset, load_unlabeled, train_val_split
from cnnlab.errors import UserError

from conftest import (FASHION_DIR, make_images, needs_fashion, write_csv, write_idx, write_idx_folder,
                      write_image_folder)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_round_trip(tmp_path, gz):
    write_idx_folder(tmp_path, gz=gz)
    ds = load_dataset(tmp_path)
    x, y = make_images(60, 8)
    assert ds.train.images.dtype == torch.uint8
    assert ds.train.images.shape == (60, 1, 8, 8)
    assert np.array_equal(ds.train.images[:, 0].numpy(), x)
    assert np.array_equal(ds.train.labels.numpy(), y)
    assert len(ds.test) == 30 and ds.num_classes == 3


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "flat"])
def test_npz_round_trip(tmp_path, layout):
    x, y = make_images(40, 8)
    xt, yt = make_images(20, 8, seed=3)
    shape = {"nhw": lambda a: a, "nhwc": lambda a: a[..., None], "nchw": lambda a: a[:, None],
             "flat": lambda a: a.reshape(len(a), -1)}[layout]
    np.savez(tmp_path / "d.npz", x_train=shape(x), y_train=y, x_test=shape(xt), y_test=yt)
    ds = load_dataset(tmp_path / "d.npz")
    assert np.array_equal(ds.train.images[:, 0].numpy(), x)
    assert np.array_equal(ds.test.labels.numpy(), yt)


def test_npz_float_pixels_and_one_hot_labels(tmp_path):
    x, y = make_images(30, 8)
    np.savez(tmp_path / "d.npz", images=x.astype(np.float32), labels=np.eye(3)[y], class_names=np.array(["a", "b", "c"]))
    ds = load_dataset(tmp_path / "d.npz")
    assert np.array_equal(ds.train.images[:, 0].numpy(), x)
    assert ds.class_names == ["a", "b", "c"] and ds.test is None


def test_npy_pair_round_trip(tmp_path):
    x, y = make_images(30, 8)
    np.save(tmp_path / "train.npy", x)
    np.save(tmp_path / "train_labels.npy", y)
    ds = load_dataset(tmp_path / "train.npy")
    assert np.array_equal(ds.train.labels.numpy(), y)


def test_csv_labeled_and_unlabeled(tmp_path):
    x, y = make_images(30, 6)
    ds = load_dataset(write_csv(tmp_path / "train.csv", x, y))
    assert ds.train.images.shape == (30, 1, 6, 6)
    assert np.array_equal(ds.train.images[:, 0].numpy(), x) and np.array_equal(ds.train.labels.numpy(), y)
    plain = load_unlabeled(write_csv(tmp_path / "test.csv", x, None))
    assert plain.labels is None and plain.ids is None and np.array_equal(plain.images[:, 0].numpy(), x)
    with_ids = load_unlabeled(write_csv(tmp_path / "test_ids.csv", x, None, ids=list(range(100, 130))))
    assert with_ids.ids[0] == "100" and np.array_equal(with_ids.images[:, 0].numpy(), x)


def test_image_folder_png_and_jpeg(tmp_path):
    write_image_folder(tmp_path / "png")
    ds = load_dataset(tmp_path / "png")
    assert ds.class_names == ["cat", "dog", "owl"] and ds.train.images.shape == (18, 1, 8, 8)
    assert torch.bincount(ds.train.labels).tolist() == [6, 6, 6]
    write_image_folder(tmp_path / "jpg", suffix=".jpg", size=16)
    assert load_dataset(tmp_path / "jpg").train.images.shape == (18, 1, 16, 16)


def test_rgb_converted_to_gray_unless_kept(tmp_path):
    write_image_folder(tmp_path / "rgb", rgb=True)
    assert load_dataset(tmp_path / "rgb").train.images.shape[1] == 1
    assert load_dataset(tmp_path / "rgb", keep_rgb=True).train.images.shape[1] == 3
    x = np.zeros((9, 4, 4, 3), np.uint8)
    x[..., 0] = 255  # pure red -> luma 0.299 * 255
    np.savez(tmp_path / "rgb.npz", images=x, labels=np.arange(9) % 3)
    assert int(load_dataset(tmp_path / "rgb.npz").train.images.max()) == 76


def test_image_folder_with_train_and_test(tmp_path):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "test", n_per_class=2)
    ds = load_dataset(tmp_path)
    assert len(ds.train) == 18 and len(ds.test) == 6


def test_class_subset_remaps_labels(tmp_path):
    write_idx_folder(tmp_path)
    ds = load_dataset(tmp_path, classes="2,0")
    assert ds.num_classes == 2 and ds.class_ids == [2, 0]
    x, y = make_images(60, 8)
    keep = (y == 2) | (y == 0)
    assert np.array_equal(ds.train.labels.numpy(), np.where(y[keep] == 2, 0, 1))
    assert set(ds.test.labels.tolist()) == {0, 1}


# ------------------------------------------------------------------ splits


def test_split_is_stratified_deterministic_and_disjoint(tmp_path):
    x, y = make_images(300, 8, classes=3)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    ds = load_dataset(tmp_path / "d.npz")
    a, b, c = (train_val_split(ds, 0.2, seed=s) for s in (0, 0, 1))
    assert len(a.train) == 240 and len(a.val) == 60
    assert torch.bincount(a.val.labels).tolist() == [20, 20, 20]
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    seen = {bytes(img.numpy()) for img in a.train.images}
    assert not any(bytes(img.numpy()) in seen for img in a.val.images)


def test_test_split_untouched_by_split(tmp_path):
    write_idx_folder(tmp_path)
    ds = load_dataset(tmp_path)
    assert train_val_split(ds).test is ds.test


# ------------------------------------------------------------------ bad input, through the CLI


def _gz_truncated(p):
    write_idx_folder(p)
    data = (p / "train-images-idx3-ubyte.gz").read_bytes()
    (p / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    return p


def _bad_magic(p):
    write_idx_folder(p, gz=False)
    raw = bytearray((p / "train-images-idx3-ubyte").read_bytes())
    raw[3] = 0x07
    (p / "train-images-idx3-ubyte").write_bytes(bytes(raw))
    return p


def _wrong_length(p):
    write_idx_folder(p, gz=False)
    raw = (p / "train-labels-idx1-ubyte").read_bytes()
    (p / "train-labels-idx1-ubyte").write_bytes(raw[:-5])
    return p


def _idx_count_mismatch(p):
    write_idx_folder(p)
    write_idx(p / "train-labels-idx1-ubyte", np.zeros(59, np.uint8))
    return p


def _npz(**arrays):
    def make(p):
        np.savez(p / "d.npz", **arrays)
        return p / "d.npz"
    return make


def _csv_text(text):
    def make(p):
        (p / "d.csv").write_text(text)
        return p / "d.csv"
    return make


def _folder_empty_class(p):
    write_image_folder(p / "imgs")
    for f in (p / "imgs" / "dog").iterdir():
        f.unlink()
    return p / "imgs"


def _folder_mixed_sizes(p):
    from PIL import Image

    write_image_folder(p / "imgs")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(p / "imgs" / "owl" / "big.png")
    return p / "imgs"


def _corrupt_png(p):
    write_image_folder(p / "imgs")
    (p / "imgs" / "cat" / "0.png").write_bytes(b"not a png")
    return p / "imgs"


X, Y = make_images(12, 4)
BAD_INPUTS = {
    "missing file": (lambda p: p / "nope.npz", "no such file or folder"),
    "truncated gzip": (_gz_truncated, "corrupt or truncated gzip"),
    "bad IDX magic": (_bad_magic, "bad IDX magic"),
    "wrong IDX length": (_wrong_length, "wrong length"),
    "IDX count mismatch": (_idx_count_mismatch, "60 images but"),
    "NPZ count mismatch": (_npz(images=X, labels=Y[:-1]), "12 images but 11 labels"),
    "label out of range": (_npz(images=X, labels=Y * 2, class_names=np.array(["a", "b", "c"])), "out of range"),
    "negative label": (_npz(images=X, labels=Y - 1), "0 or more"),
    "non-integer label": (_npz(images=X, labels=Y + 0.5), "must be integers"),
    "NaN pixels": (_npz(images=np.where(X > 100, np.nan, X.astype(float)), labels=Y), "NaN"),
    "inf pixels": (_npz(images=np.where(X > 100, np.inf, X.astype(float)), labels=Y), "infinite"),
    "pixels above 255": (_npz(images=X.astype(int) + 200, labels=Y), "0..255"),
    "empty NPZ": (_npz(images=np.zeros((0, 4, 4), np.uint8), labels=np.zeros(0, int)), "empty"),
    "NPZ without known keys": (_npz(foo=X), "images/labels"),
    "ragged CSV (long row)": (_csv_text("label,p0,p1,p2,p3\n0,1,2,3,4\n1,1,2,3,4,5\n"), "ragged"),
    "ragged CSV (short row)": (_csv_text("label,p0,p1,p2,p3\n0,1,2,3,4\n1,1,2\n"), "ragged"),
    "non-numeric pixels": (_csv_text("label,p0,p1,p2,p3\n0,1,2,3,4\n1,1,x,3,4\n"), "non-numeric pixel value 'x'"),
    "non-integer CSV label": (_csv_text("label,p0,p1,p2,p3\n0,1,2,3,4\ncat,1,2,3,4\n"), "labels must be integers"),
    "negative CSV pixel": (_csv_text("label,p0,p1,p2,p3\n0,1,2,3,4\n1,1,-2,3,4\n"), "0..255"),
    "empty CSV": (_csv_text("label,p0,p1,p2,p3\n"), "empty"),
    "class folder without images": (_folder_empty_class, "class folder has no images"),
    "mixed image sizes": (_folder_mixed_sizes, "mixed image sizes"),
    "corrupt image": (_corrupt_png, "cannot read image"),
    "unknown format": (_csv_text("x"), None),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line(tmp_path, cli, case):
    maker, message = BAD_INPUTS[case]
    if message is None:  # rename the file to an unknown suffix
        path = maker(tmp_path).rename(tmp_path / "d.xyz")
        message = "unknown format .xyz"
    else:
        path = maker(tmp_path)
    out = tmp_path / "grid.png"
    code, stdout, stderr = cli("data", "preview", path, "-o", out)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert message in lines[0]
    assert lines[0].startswith("cnnlab: error: ")
    assert path.name in lines[0] or str(path.parent) in lines[0]
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".grid.png*"))


def test_unknown_dataset_lists_known_ones(cli):
    code, _, err = cli("data", "info", "cifar-100")
    assert code == 2 and "unknown dataset 'cifar-100'" in err and "fashion-mnist, mnist" in err


def test_unknown_class_is_refused(tmp_path, cli):
    write_idx_folder(tmp_path)
    code, _, err = cli("data", "info", tmp_path, "--classes", "0,7")
    assert code == 2 and "class 7 does not exist" in err and "0..2" in err
    code, _, err = cli("data", "info", tmp_path, "--classes", "0,Hat")
    assert code == 2 and "unknown class 'Hat'" in err


def test_missing_builtin_says_where_it_looked(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from cnnlab.data import builtin

    monkeypatch.setattr(builtin, "_download", lambda spec: None)  # the network is not part of this test
    code, _, err = cli("data", "info", "mnist", "--data-dir", tmp_path)
    assert code == 2
    assert "dataset mnist not found; looked in" in err and str(tmp_path / "mnist") in err
    assert "--data-dir" in err and "internet" in err


def test_builtin_checksum_mismatch_is_refused(tmp_path, cli):
    write_idx_folder(tmp_path / "fashion-mnist")
    code, _, err = cli("data", "info", "fashion-mnist", "--data-dir", tmp_path)
    assert code == 2 and "does not match the official fashion-mnist release" in err


# ------------------------------------------------------------------ CLI happy path and real data


def test_data_info_and_preview(tmp_path, cli):
    write_idx_folder(tmp_path / "d")
    code, out, _ = cli("data", "info", tmp_path / "d")
    assert code == 0 and "train pool" in out and "60" in out and "30" in out
    code, out, _ = cli("data", "preview", tmp_path / "d", "-o", tmp_path / "g.png")
    assert code == 0 and (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_fashion
def test_fashion_mnist_from_debian_files(cli):
    ds = load_dataset("fashion-mnist")
    assert ds.verified and ds.source == str(FASHION_DIR)
    assert len(ds.train) == 60_000 and len(ds.test) == 10_000 and ds.num_classes == 10
    assert ds.shape == (1, 28, 28)
    assert torch.bincount(ds.train.labels).tolist() == [6000] * 10
    code, out, _ = cli("data", "info")
    assert code == 0 and "60000" in out and "10000" in out and "Ankle boot" in out
    five = load_dataset("fashion-mnist", classes="0,1,2,3,4")
    assert len(five.train) == 30_000 and five.num_classes == 5


def test_truncated_gzip_is_detected_directly(tmp_path):
    path = write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(gzip.compress(b"\x00" * 100)[:20])
    from cnnlab.data.formats import IDX_IMAGE_MAGIC, read_idx

    with pytest.raises(UserError, match="corrupt or truncated gzip"):
        read_idx(path, IDX_IMAGE_MAGIC)
