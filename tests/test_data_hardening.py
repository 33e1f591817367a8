"""Hardening of the data readers: every user-caused failure is one UserError line naming the path and the fix.

Each case builds a bad input in tmp_path, calls `load_dataset` (a few through the CLI) and checks the
contract: a UserError (never another exception), a message on one line that names the file or folder,
the expected explanation, and no file written beside the data.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import load_dataset, parse_classes
from cnnlab.data import common
from cnnlab.errors import UserError

from conftest import make_images, write_csv, write_idx_folder, write_image_folder

X, Y = make_images(12, 4)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def refused(path: Path, *expected: str, names: str | None = None, **kwargs) -> str:
    """load_dataset(path) must raise one UserError line naming `names` (default: the path) with `expected` in it."""
    root = path.parent
    before = tree(root)
    with pytest.raises(UserError) as info:
        load_dataset(path, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message, message
    assert (names or str(path)) in message, message
    for text in expected:
        assert text in message, message
    assert tree(root) == before, "a file was written"
    return message


def loads(path: Path, **kwargs):
    ds = load_dataset(path, **kwargs)
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.ndim == 4
    assert ds.train.labels.dtype == torch.int64 and len(ds.train.labels) == len(ds.train.images)
    assert 0 <= int(ds.train.labels.min()) and int(ds.train.labels.max()) < ds.num_classes
    return ds


# ------------------------------------------------------------------ CSV


def csv(tmp_path: Path, text: str | bytes, name: str = "d.csv") -> Path:
    path = tmp_path / name
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


GOOD_CSV = "label,p0,p1,p2,p3\n0,10,20,30,40\n1,50,60,70,80\n"


@pytest.mark.parametrize("text, expected", [
    ("label,p0,p1,p2,p3\n0,1,2,3,4,5\n1,1,2,3,4,5\n", ["ragged", "line 2"]),  # every row long: no silent index column
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n1,1,2\n", ["row 3", "fewer values"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n1,1,0x1f,3,4\n", ["non-numeric pixel value '0x1f'", "row 3", "'p1'"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n1,1,256,3,4\n", ["0..255", "256"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n1,1,-1,3,4\n", ["0..255"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,nan\n1,1,2,3,4\n", ["image 0", "NaN"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n1,1,2,3,1e400\n", ["image 1", "infinite"]),
    ("label,p0,p1,p2,p3\n", ["empty", "header but no rows"]),
    ("", ["empty"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n1.5,1,2,3,4\n", ["labels must be integers, found 1.5"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\ncat,1,2,3,4\n", ["labels must be integers, found 'cat' in row 3"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\nnan,1,2,3,4\n", ["labels must be integers"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n1e20,1,2,3,4\n", ["far too large"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n1000000000,1,2,3,4\n", ["labels go up to 1000000000", "only 2 training images"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n-1,1,2,3,4\n", ["0 or more"]),
    ("label,p0,p1,p2,p3,p4\n0,1,2,3,4,5\n1,1,2,3,4,5\n", ["5 pixels per row is not a square image"]),
    ("0,1,2,3,4\n0,1,2,3,4\n1,1,2,3,4\n", ["first row holds numbers", "header row"]),
    ("label,p0,p0,p2,p3\n0,1,2,3,4\n1,1,2,3,4\n", ["column 'p0' appears twice"]),
    ("label\n0\n1\n", ["no pixel columns"]),
    ("label,p0,p1,p2,p3\n0,0,1,1,0\n1,1,0,0,1\n", ["every pixel is 0 or 1", "multiply by 255"]),
    ("label,p0,p1,p2,p3\n0,1,2,3,4\n0,5,6,7,8\n", ["only one class ('0')", "at least 2 classes"]),
    (b"label,p\xe9,p1,p2,p3\n0,1,2,3,4\n", ["not a text CSV file"]),
    (bytes(range(256)) * 4, []),
])
def test_bad_csv(tmp_path, text, expected):
    refused(csv(tmp_path, text), *expected)


def test_csv_gz_read_and_damaged(tmp_path):
    assert len(loads(csv(tmp_path, GOOD_CSV, "a.csv.gz")).train) == 2
    assert len(loads(csv(tmp_path, GOOD_CSV, "b.CSV.GZ")).train) == 2  # suffix case does not matter
    (tmp_path / "plain.csv.gz").write_text(GOOD_CSV)  # named .gz but not gzipped: read as it is (documented)
    assert len(loads(tmp_path / "plain.csv.gz").train) == 2
    whole = gzip.compress(GOOD_CSV.encode() * 50)
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    refused(tmp_path / "cut.csv.gz", "corrupt or truncated gzip")
    flipped = bytearray(whole)
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "flip.csv.gz").write_bytes(bytes(flipped))
    refused(tmp_path / "flip.csv.gz", "corrupt or truncated gzip")


def test_csv_with_bom_and_spaces_loads(tmp_path):
    ds = loads(csv(tmp_path, "\ufeff Label ,p0,p1,p2,p3\n0, 1,2,3,4\n1,5,6,7,8\n".encode("utf-8")))
    assert ds.train.labels.tolist() == [0, 1]


# ------------------------------------------------------------------ image folders


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (its data is far too short)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30000, 10000])  # over Pillow's error limit, and between warning and error
def test_decompression_bomb_is_refused(tmp_path, side):
    root = write_image_folder(tmp_path / "imgs")
    (root / "cat" / "bomb.png").write_bytes(png_claiming(side, side))
    refused(root, "image too large", "resize it", names=str(root / "cat" / "bomb.png"))


@pytest.mark.parametrize("content", [b"not a png", None])
def test_corrupt_or_truncated_image(tmp_path, content):
    root = write_image_folder(tmp_path / "imgs")
    file = root / "cat" / "0.png"
    file.write_bytes(content if content is not None else file.read_bytes()[:50])
    refused(root, "cannot read image", "replace or remove it", names=str(file))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IHDR_8X8 = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))


@pytest.mark.parametrize("content", [
    PNG_SIGNATURE + png_chunk(b"IHDR", b"\0" * 5) + png_chunk(b"IEND", b""),  # Pillow: ValueError
    PNG_SIGNATURE + PNG_IHDR_8X8 + png_chunk(b"IDAT", zlib.compress(b"\0" * 72)[:5]) + png_chunk(b"\xc7\xc8[v", b"abc")
    + png_chunk(b"IEND", b""),  # Pillow: SyntaxError
])
def test_images_pillow_fails_on_with_other_exception_types(tmp_path, content):
    root = write_image_folder(tmp_path / "imgs")
    (root / "owl" / "odd.png").write_bytes(content)
    refused(root, "cannot read image", names=str(root / "owl" / "odd.png"))


def test_pillow_warnings_do_not_escape(tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    real_open = Image.open

    def warning_open(*args, **kwargs):
        warnings.warn("Corrupt EXIF data.", UserWarning)  # what Pillow says of some damaged but readable files
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", warning_open)
    root = write_image_folder(tmp_path / "imgs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loads(root)
    assert not caught


def test_gzip_bomb_behind_idx_header_is_not_decompressed(tmp_path):
    import tracemalloc

    folder = write_idx_folder(tmp_path / "idx")
    header = idx_header(0x803, 60, 8, 8)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(60 * 8 * 8) + bytes(64 << 20), 1))
    tracemalloc.start()
    try:
        refused(folder, "wrong length", "at least", names=str(folder / "train-images-idx3-ubyte.gz"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes held while reading a 64 MiB gzip bomb"


def test_symlink_loops(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    (root / "cat" / "x.png").symlink_to(root / "cat" / "x.png")  # a file link pointing at itself
    refused(root, "symbolic link loop", names=str(root / "cat" / "x.png"))
    (root / "cat" / "x.png").unlink()
    (root / "loop").symlink_to(root)  # the folder linked into itself: no recursion, an empty "class"
    refused(root, "class folder has no images", names=str(root / "loop"))
    (tmp_path / "self").symlink_to(tmp_path / "self")
    refused(tmp_path / "self", "link loop")


def test_class_folder_without_images_and_single_class(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    for f in (root / "dog").iterdir():
        f.unlink()
    (root / "dog" / "notes.txt").write_text("no images here")
    refused(root, "class folder has no images", names=str(root / "dog"))
    one = write_image_folder(tmp_path / "one", classes=("cat",))
    refused(one, "only one class ('cat')", "at least 2 classes")


def test_mixed_sizes_refused_mixed_modes_converted(tmp_path):
    from PIL import Image

    root = write_image_folder(tmp_path / "imgs")
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(gray).convert("RGB").save(root / "cat" / "rgb.png")
    Image.fromarray(gray).convert("RGBA").save(root / "dog" / "rgba.png")
    Image.fromarray(gray).convert("P").save(root / "owl" / "p.png")
    Image.fromarray(gray).convert("1").save(root / "owl" / "bw.png")
    Image.fromarray(gray).save(root / "owl" / "gray.jpg")
    (root / "owl" / "._gray.png").write_bytes(b"macOS resource fork, not an image")  # hidden: skipped
    ds = loads(root)
    assert ds.train.images.shape == (23, 1, 8, 8)
    assert loads(root, keep_rgb=True).train.images.shape == (23, 3, 8, 8)
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / "owl" / "tall.png")
    refused(root, "image size 8x9 differs", "resize them to one size", names=str(root / "owl" / "tall.png"))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_deep_images_refused_not_clipped(tmp_path, dtype):
    from PIL import Image

    root = write_image_folder(tmp_path / "imgs")
    file = root / "cat" / "deep.png"
    image = Image.fromarray((np.arange(64).reshape(8, 8) * 900).astype(dtype))
    # 16-bit is a real PNG; PNG cannot hold 32-bit or float, so those are TIFFs under a .png name (Pillow goes by content)
    image.save(file, format="PNG" if dtype == np.uint16 else "TIFF")
    refused(root, "image", "8-bit", names=str(file))


# ------------------------------------------------------------------ NPY / NPZ


def npy_bytes(shape, descr: str = "|u1", payload: bytes = b"\0" * 100) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def test_npy_header_claiming_absurd_size_is_refused_before_allocating(tmp_path):
    (tmp_path / "d.npy").write_bytes(npy_bytes((10**12, 28, 28)))
    refused(tmp_path / "d.npy", "header claims shape (1000000000000, 28, 28)", "only 100 bytes follow")
    (tmp_path / "big.npy").write_bytes(npy_bytes((10**6, 28, 28), "<f8"))
    refused(tmp_path / "big.npy", "truncated or corrupt")


def test_npy_header_garbled(tmp_path):
    good = npy_bytes((12, 4, 4), payload=X.tobytes())
    (tmp_path / "paren.npy").write_bytes(good.replace(b"(12, 4, 4)", b"(12, 4, 4 "))  # numpy's parser: TokenError
    refused(tmp_path / "paren.npy", "not a valid NPY array", "numpy.save")
    (tmp_path / "magic.npy").write_bytes(b"\x93NUMPX" + good[6:])
    refused(tmp_path / "magic.npy", "not a valid NPY array")


def test_npz_member_claiming_absurd_size_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("images.npy", npy_bytes((10**12, 28, 28)))
        z.writestr("labels.npy", npy_bytes((10,), "<i8", b"\0" * 80))
    refused(tmp_path / "d.npz", "[images]: header claims", "only 100 bytes follow")


def test_array_larger_than_memory_is_refused(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", images=X, labels=Y)
    monkeypatch.setattr(common, "memory_bytes", lambda: 100)
    refused(tmp_path / "d.npz", "more than this machine's memory")


def test_object_arrays_and_pickles_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([X, "x"], dtype=object), allow_pickle=True)
    refused(tmp_path / "o.npy", "Python objects", "does not unpickle")
    np.savez(tmp_path / "n.npz", images=X, labels=Y, class_names=np.array(["a", 1, None], dtype=object))
    refused(tmp_path / "n.npz", "[class_names]: holds Python objects")
    import pickle

    (tmp_path / "p.npz").write_bytes(pickle.dumps({"images": X, "labels": Y}))
    refused(tmp_path / "p.npz", "is a Python pickle, not an NPZ archive; cnnlab does not unpickle")
    (tmp_path / "r.npz").write_bytes(np.random.default_rng(0).bytes(4096))  # numpy's own words: use allow_pickle
    refused(tmp_path / "r.npz", "not an NPZ archive (a zip of .npy arrays; this file is not a zip)")


def test_npy_and_npz_swapped(tmp_path):
    np.save(tmp_path / "a.npy", X)
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    refused(tmp_path / "a.npz", "is an NPY file", "rename it to .npy")
    np.savez(tmp_path / "b.npz", images=X, labels=Y)
    (tmp_path / "b.npz").rename(tmp_path / "b.npy")
    refused(tmp_path / "b.npy", "is an NPZ archive", "rename it to .npz")


def test_damaged_npz(tmp_path):
    np.savez(tmp_path / "d.npz", images=X, labels=Y)
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.npz", "cannot read as NPZ")
    (tmp_path / "noise.npz").write_bytes(os.urandom(300))
    refused(tmp_path / "noise.npz")


@pytest.mark.parametrize("images, expected", [
    (X / 255.0, "scaled to 0..1"),
    (np.array(5, np.uint8), "images have shape ()"),
    (np.arange(12, dtype=np.uint8), "images have shape (12,)"),
    (X[:, None, None], "images have shape (12, 1, 1, 4, 4)"),
    (np.zeros((12, 0, 4), np.uint8), "at least one pixel"),
    (np.zeros((12, 0), np.uint8), "at least one pixel"),
    (np.zeros((12, 4, 4, 2), np.uint8), "1 or 3 channels"),
    (X.astype(np.complex64), "complex"),
    (X > 100, "not numeric (dtype bool)"),
    (X.astype(str), "not numeric"),
    ((X > 100).astype(np.uint8), "every pixel is 0 or 1"),
    (X.astype(np.int64) - 300, "0..255"),
])
def test_bad_image_arrays(tmp_path, images, expected):
    np.savez(tmp_path / "d.npz", images=images, labels=Y)
    refused(tmp_path / "d.npz", expected)


def test_float_images_in_0_255_are_rounded(tmp_path):
    np.savez(tmp_path / "d.npz", images=X.astype(np.float64) + 0.4, labels=Y)
    assert np.array_equal(loads(tmp_path / "d.npz").train.images[:, 0].numpy(), X)


@pytest.mark.parametrize("labels, expected", [
    (Y[:-1], "12 images but 11 labels"),
    (np.eye(3)[Y][:-2], "12 images but 10 labels"),
    (np.random.default_rng(0).random((12, 3)), "not one-hot"),
    (np.stack([Y, Y], axis=1), "not one-hot"),
    (Y.reshape(3, 4), "12 images but 3 labels"),
    (Y.astype(str), "labels must be integers"),
    (np.where(Y == 2, 2**40, Y), "far too large"),
    (np.where(Y == 2, 2**64 - 1, Y).astype(np.uint64), "far too large"),
    (np.where(Y == 2, 10**6, Y), "labels go up to 1000000"),
    (np.where(Y == 2, np.nan, Y), "labels must be integers, found nan"),
    (Y + 0j, "labels must be integers"),
])
def test_bad_label_arrays(tmp_path, labels, expected):
    np.savez(tmp_path / "d.npz", images=X, labels=labels)
    refused(tmp_path / "d.npz", expected)


def test_label_layouts_that_load(tmp_path):
    for name, labels in {"col": Y[:, None], "onehot": np.eye(3)[Y], "float": Y.astype(np.float32)}.items():
        np.savez(tmp_path / f"{name}.npz", images=X, labels=labels)
        assert loads(tmp_path / f"{name}.npz").train.labels.tolist() == Y.tolist()


@pytest.mark.parametrize("names, expected", [
    (np.array([0, 1, 2]), "1-D array of strings"),
    (np.array([["a", "b", "c"]]), "1-D array of strings"),
    (np.array("abc"), "1-D array of strings"),
    (np.array(["a", "b", "a"]), "class name 'a' appears twice"),
    (np.array(["a", "b"]), "the 2 class_names means labels 0..1"),
    (np.array(["a", "b", "c", "d"]), "class 'd' has no training images"),
    (np.array([b"\xff", b"b", b"c"]), "not UTF-8"),
])
def test_bad_class_names(tmp_path, names, expected):
    np.savez(tmp_path / "d.npz", images=X, labels=Y, class_names=names)
    refused(tmp_path / "d.npz", expected)


def test_bytes_class_names_are_decoded(tmp_path):
    np.savez(tmp_path / "d.npz", images=X, labels=Y, class_names=np.array([b"a", b"b", b"c"]))
    assert loads(tmp_path / "d.npz").class_names == ["a", "b", "c"]


def test_npy_labels_file_checked_too(tmp_path):
    np.save(tmp_path / "train.npy", X)
    (tmp_path / "train_labels.npy").write_bytes(npy_bytes((10**9,), "<i8"))
    refused(tmp_path / "train.npy", "header claims", names=str(tmp_path / "train_labels.npy"))


# ------------------------------------------------------------------ IDX


def idx_folder(tmp_path: Path, images: bytes | None = None, labels: bytes | None = None, gz: bool = False) -> Path:
    folder = write_idx_folder(tmp_path / "idx", gz=gz)
    suffix = ".gz" if gz else ""
    if images is not None:
        (folder / f"train-images-idx3-ubyte{suffix}").write_bytes(gzip.compress(images) if gz else images)
    if labels is not None:
        (folder / f"train-labels-idx1-ubyte{suffix}").write_bytes(gzip.compress(labels) if gz else labels)
    return folder


def idx_header(magic: int, *dims: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dimensions_overflowing(tmp_path, gz):
    folder = idx_folder(tmp_path, idx_header(0x803, 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\0" * 64, gz=gz)
    refused(folder, "header claims shape [4294967295, 4294967295, 4294967295]", "memory",
            names=str(folder / "train-images-idx3-ubyte"))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_claim_larger_than_payload(tmp_path, gz):
    folder = idx_folder(tmp_path, idx_header(0x803, 10**6, 28, 28) + b"\0" * 64, gz=gz)
    refused(folder, "wrong length: header promises 784000016 bytes", "truncated or corrupt")


@pytest.mark.parametrize("images, expected", [
    (b"\0\0\x08", "too short to be an IDX file (3 bytes)"),
    (idx_header(0x803, 5), "truncated IDX header"),
    (idx_header(0x801, 60) + b"\0" * 60, "bad IDX magic number 0x00000801 (expected 0x00000803 for images)"),
    (idx_header(0x803, 60, 0, 0), "header says shape [60, 0, 0], which holds no data"),
    (idx_header(0x803, 0, 2**32 - 1, 2**32 - 1), "which holds no data"),
    (idx_header(0x803, 60, 8, 8) + b"\0" * 100, "wrong length"),
])
def test_bad_idx_images(tmp_path, images, expected):
    refused(idx_folder(tmp_path, images), expected)


def test_idx_count_mismatch_and_gzip_damage(tmp_path):
    folder = idx_folder(tmp_path, labels=idx_header(0x801, 59) + bytes(np.arange(59, dtype=np.uint8) % 3))
    refused(folder, "60 images but train-labels-idx1-ubyte has 59 labels")
    gz = write_idx_folder(tmp_path / "gz")
    path = gz / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes() + b"trailing garbage")
    refused(gz, "corrupt or truncated gzip", names=str(path))


# ------------------------------------------------------------------ --classes


@pytest.mark.parametrize("spec, expected", [
    ("0,0", "class '0' is listed twice"),
    ("0,cat", "class 'cat' is listed twice"),
    ("0,Hat", "unknown class 'Hat'; known classes are 0..2 (cat, dog, owl)"),
    ("0,7", "class 7 does not exist"),
    ("-1,0", "class -1 does not exist"),
    ("\u00b2,1", "unknown class"),
    ("1.5,0", "unknown class '1.5'"),
    ("1", "keep at least 2 classes; a classifier needs at least two"),
    ("", "classes: none listed"),
    (" , ", "classes: none listed"),
    ("0,,1", "empty entry between commas"),
])
def test_bad_classes(tmp_path, spec, expected):
    root = write_image_folder(tmp_path / "imgs", n_per_class=2)
    refused(root, expected, names="classes", classes=spec)


def test_class_names_that_are_numbers_mean_names(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n_per_class=2, classes=("1", "10", "2"))
    ds = loads(root, classes="2,10")
    assert ds.class_names == ["2", "10"] and ds.class_ids == [2, 1]
    assert parse_classes("0,1", ["a", "b"]) == [0, 1] and parse_classes("b,a", ["a", "b"]) == [1, 0]
    assert parse_classes(None, ["a", "b"]) is None and parse_classes([], ["a", "b"]) is None


# ------------------------------------------------------------------ OS errors


def test_folder_where_file_expected_and_file_where_folder_expected(tmp_path):
    (tmp_path / "d.npz").mkdir()
    refused(tmp_path / "d.npz", "is a folder", "give the file's path")
    (tmp_path / "d.csv.gz").mkdir()
    refused(tmp_path / "d.csv.gz", "is a folder")
    root = write_image_folder(tmp_path / "imgs")
    (root / "cat" / "dir.png").mkdir()
    refused(root, "is a folder", names=str(root / "cat" / "dir.png"))
    np.savez(tmp_path / "f.npz", images=X, labels=Y)
    refused(tmp_path / "f.npz" / "inner.npz", "no such file or folder")
    from cnnlab.data.builtin import locate, BUILTIN

    with pytest.raises(UserError, match="is a file, but a folder is expected"):
        locate(BUILTIN["mnist"], tmp_path / "f.npz", download=False)


def _deny(monkeypatch, target: Path):
    """Make reading `target` (a file, or listing it as a folder) fail as for a user without permission."""
    def error():
        return PermissionError(errno.EACCES, "Permission denied", str(target))

    real_open, real_iterdir, real_read_bytes = open, Path.iterdir, Path.read_bytes

    def fake_open(file, *args, **kwargs):
        if str(file) == str(target):
            raise error()
        return real_open(file, *args, **kwargs)

    def fake_iterdir(self):
        if str(self) == str(target):
            raise error()
        return real_iterdir(self)

    def fake_read_bytes(self):
        if str(self) == str(target):
            raise error()
        return real_read_bytes(self)

    import builtins

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(Path, "iterdir", fake_iterdir)
    monkeypatch.setattr(Path, "read_bytes", fake_read_bytes)


@pytest.mark.parametrize("kind", ["csv", "npz", "npy", "npy labels", "idx", "image", "class folder", "image root"])
def test_permission_denied(tmp_path, monkeypatch, kind):
    if kind == "csv":
        path = target = write_csv(tmp_path / "d.csv", X, Y)
    elif kind == "npz":
        np.savez(tmp_path / "d.npz", images=X, labels=Y)
        path = target = tmp_path / "d.npz"
    elif kind.startswith("npy"):
        np.save(tmp_path / "d.npy", X)
        np.save(tmp_path / "d_labels.npy", Y)
        path, target = tmp_path / "d.npy", tmp_path / ("d_labels.npy" if kind == "npy labels" else "d.npy")
    elif kind == "idx":
        path = write_idx_folder(tmp_path / "idx")
        target = path / "train-labels-idx1-ubyte.gz"
    else:
        path = write_image_folder(tmp_path / "imgs")
        target = {"image": path / "dog" / "3.png", "class folder": path / "dog", "image root": path}[kind]
    _deny(monkeypatch, target)
    refused(path, "permission denied", "chmod", names=str(target))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_real_permission_denied(tmp_path):
    path = write_csv(tmp_path / "d.csv", X, Y)
    path.chmod(0)
    try:
        refused(path, "permission denied")
    finally:
        path.chmod(0o644)


# ------------------------------------------------------------------ through the CLI


@pytest.mark.parametrize("case", ["npy header", "bomb", "classes"])
def test_cli_prints_one_line_and_exits_2(tmp_path, cli, case):
    args = []
    if case == "npy header":
        path = tmp_path / "d.npy"
        path.write_bytes(npy_bytes((10**12, 28, 28)))
    elif case == "bomb":
        path = write_image_folder(tmp_path / "imgs")
        (path / "cat" / "bomb.png").write_bytes(png_claiming(30000, 30000))
    else:
        path = write_image_folder(tmp_path / "imgs")
        args = ["--classes", "cat"]
    code, out, err = cli("data", "info", path, *args)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: ")


def test_numbered_labels_with_a_gap_say_how_to_number_them(tmp_path):
    # labels 7..9 only: was "class '0' has no training images", without the hint the other gap cases give
    np.savez(tmp_path / "d.npz", images=X, labels=Y + 7)
    refused(tmp_path / "d.npz", "class '0' has no training images (labels 0, 1, 2, 3, 4, ... never occur); number the "
                                "classes 0..K-1 without gaps, or choose some with classes")
