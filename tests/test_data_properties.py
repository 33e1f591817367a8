"""Property-based tests of the data readers: corrupt and odd inputs of every format hold the contract.

The contract: `load_dataset` either returns a valid dataset (uint8 N x C x H x W images, int64 labels in
0..classes-1, matching lengths, at least 2 classes) or raises a UserError whose message is one line naming
the file or folder -- never another exception, never a warning (it would print extra lines), and nothing
is left behind in the folder. Each example works in its own temporary folder.

Budget: the examples of all tests below add up to EXAMPLES_TOTAL; together they run in well under a
minute on 2 CPU cores. The number of examples actually generated is printed at the end of the module.
"""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.data import load_dataset, parse_classes
from cnnlab.errors import UserError

from conftest import make_images, write_csv, write_idx, write_image_folder

EXAMPLES = {"idx": 250, "npy": 300, "npz": 250, "csv": 300, "images": 120, "truncate": 300, "classes": 300}
EXAMPLES_TOTAL = sum(EXAMPLES.values())
GENERATED = {"count": 0, "loaded": 0, "refused": 0}
# deadline: per example (ms); generous because 2 shared cores can stall any single example. database=None: no
# .hypothesis folder in the repository. No health check is suppressed: the strategies are cheap.
SETTINGS = dict(deadline=5000, database=None)


@pytest.fixture(scope="module", autouse=True)
def report_generated(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    line = (f"test_data_properties: {GENERATED['count']} generated examples (budget {EXAMPLES_TOTAL}): "
            f"{GENERATED['loaded']} loaded, {GENERATED['refused']} refused with a UserError")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    else:  # pragma: no cover
        print(line)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def check_dataset(ds) -> None:
    for split in (ds.train, ds.test):
        if split is None:
            continue
        images, labels = split.images, split.labels
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] in (1, 3)
        assert len(images) > 0 and all(d > 0 for d in images.shape)
        if labels is None and split is ds.test:
            continue  # an unlabeled test split is valid (e.g. an NPZ with x_test only); it is never scored
        assert labels.dtype == torch.int64 and labels.shape == (len(images),)
        assert int(labels.min()) >= 0 and int(labels.max()) < ds.num_classes
    assert ds.num_classes >= 2 and len(ds.class_names) == ds.num_classes
    assert ds.test is None or ds.test.images.shape[1:] == ds.train.images.shape[1:]


def holds_contract(folder: Path, target: Path, **kwargs) -> str | None:
    """Load `target`; return the UserError message (None when it loaded); fail on anything else."""
    GENERATED["count"] += 1
    before = tree(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = load_dataset(target, **kwargs)
        except UserError as exc:
            GENERATED["refused"] += 1
            message = str(exc)
            assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
            assert str(folder) in message or "--classes" in message, message
        else:
            message = None
            check_dataset(ds)
            GENERATED["loaded"] += 1
    assert not caught, [str(w.message) for w in caught]
    assert tree(folder) == before, "a file was left behind"
    return message


def in_tmp(fn):
    """Run fn(folder) in a fresh temporary folder per example (tmp_path is one folder for all examples)."""
    with tempfile.TemporaryDirectory() as name:
        return fn(Path(name))


# ------------------------------------------------------------------ IDX

dims = st.one_of(st.integers(0, 12), st.sampled_from([28, 255, 256, 60000, 2**16, 2**31, 2**32 - 1]))


@st.composite
def idx_files(draw):
    """An images/labels IDX pair: a plausible one with some fields changed, or random magic, dimensions and payload."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):  # plausible: exact sizes, labels 0..k-1; then maybe one field changed
        n, h, w, k = draw(st.integers(2, 20)), draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(2, 3))
        magic, n_labels = 0x803, n
        payload = rng.integers(0, 256, n * h * w, dtype=np.uint8).tobytes()
        label_values = bytes(np.arange(n, dtype=np.uint8) % k)
        change = draw(st.sampled_from([None, None, "n", "h", "magic", "n_labels", "label", "pixels"]))
        n = draw(dims) if change == "n" else n
        h = draw(dims) if change == "h" else h
        magic = draw(st.sampled_from([0x801, 0x804, 0x0D03, 0])) if change == "magic" else magic
        n_labels = draw(dims) if change == "n_labels" else n_labels
        if change == "label":
            label_values = label_values[:-1] + bytes([draw(st.integers(0, 255))])
        if change == "pixels":
            payload = payload[: draw(st.integers(0, len(payload)))]
    else:
        n, h, w = draw(dims), draw(dims), draw(dims)
        magic = draw(st.sampled_from([0x803, 0x803, 0x803, 0x801, 0x808, 0x0D03, 0xFFFFFFFF]))
        exact = n * h * w if n * h * w < 5000 else 0
        payload = draw(st.binary(max_size=300)) if draw(st.booleans()) else \
            rng.integers(0, 256, draw(st.one_of(st.just(exact), st.integers(0, 300))), dtype=np.uint8).tobytes()
        n_labels = draw(st.one_of(st.just(n if n < 5000 else 0), st.integers(0, 20)))
        label_values = rng.integers(0, draw(st.sampled_from([2, 3, 256])), min(n_labels, 5000), dtype=np.uint8).tobytes()
    ndim = magic & 0xFF if magic not in (0xFFFFFFFF, 0) else 3
    images = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in [n, h, w][:ndim]) + payload
    labels = struct.pack(">II", 0x801, n_labels) + label_values
    return images, labels, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=EXAMPLES["idx"], **SETTINGS)
@given(idx_files())
def test_idx_random_headers(case):
    images, labels, gz_images, gz_labels = case

    def run(folder: Path):
        (folder / ("train-images-idx3-ubyte" + ".gz" * gz_images)).write_bytes(gzip.compress(images) if gz_images else images)
        (folder / ("train-labels-idx1-ubyte" + ".gz" * gz_labels)).write_bytes(gzip.compress(labels) if gz_labels else labels)
        holds_contract(folder, folder)

    in_tmp(run)


# ------------------------------------------------------------------ NPY

DTYPES = ["|u1", "<u2", ">u2", "<i4", "<i8", "<f2", "<f4", ">f8", "<c8", "|b1", "<U3", "|S2", "|O", "|V4", "<M8[s]"]
shape_dims = st.one_of(st.integers(0, 9), st.sampled_from([28, 3, 1, 10**6, 10**12, 2**62]))


@st.composite
def npy_files(draw):
    shape = tuple(draw(st.lists(shape_dims, min_size=0, max_size=5)))
    descr = draw(st.sampled_from(DTYPES))
    if draw(st.booleans()):  # plausible: N x H x W uint8 or float, which labels beside it can make valid
        shape = (draw(st.integers(2, 12)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        descr = draw(st.sampled_from(["|u1", "<f4"]))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": draw(st.booleans()), "shape": shape})
    size = np.prod(shape, dtype=object) * np.dtype(descr).itemsize
    exact = int(size) if size < 4000 else 0
    length = draw(st.one_of(st.just(exact), st.integers(0, 400)))
    payload = bytes(np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, length, dtype=np.uint8))
    if draw(st.booleans()):  # sometimes pixel values, so that some files pass the pixel checks
        values = np.frombuffer(payload[: len(payload) // np.dtype(descr).itemsize * np.dtype(descr).itemsize], np.uint8)
        pixels = (values % 200 + 2).astype(descr) if np.dtype(descr).kind in "uif" else values
        payload = pixels.tobytes() + payload[len(pixels.tobytes()):]
    return buf.getvalue() + payload, draw(st.sampled_from([None, "same", "short", "random"]))


@settings(max_examples=EXAMPLES["npy"], **SETTINGS)
@given(npy_files(), st.integers(0, 2**16))
def test_npy_random_headers(case, seed):
    data, labels = case

    def run(folder: Path):
        (folder / "x.npy").write_bytes(data)
        if labels is not None:
            rng = np.random.default_rng(seed)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # numpy's memmap warns on overflowing shapes
                    n = len(np.load(folder / "x.npy", mmap_mode="r", allow_pickle=False))
            except Exception:  # the harness only wants a label count; the reader's behaviour is what is checked
                n = 5
            n = n if n <= 1000 else 5  # shape (10**12, 0) holds no bytes but a huge length
            if labels == "same":
                np.save(folder / "x_labels.npy", np.arange(n) % 2)
            else:
                count = max(n - 1, 0) if labels == "short" else int(rng.integers(0, 10))
                np.save(folder / "x_labels.npy", rng.integers(-1, 4, count))
        holds_contract(folder, folder / "x.npy")

    in_tmp(run)


# ------------------------------------------------------------------ NPZ


def arrays(max_side: int = 6):
    dtype = st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_, np.complex64, np.str_])
    shape = st.lists(st.integers(0, max_side), min_size=0, max_size=5).map(tuple)

    @st.composite
    def build(draw):
        kind, dims = draw(dtype), draw(shape)
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        scale = draw(st.sampled_from([1, 3, 255, 300, 1e20]))
        values = rng.random(dims) * scale
        if draw(st.booleans()):
            values = np.where(rng.random(dims) < 0.05, np.nan, values)
        with np.errstate(invalid="ignore", over="ignore"):
            return values.astype(kind) if kind is not np.str_ else values.astype(str)

    return build()


@st.composite
def npz_members(draw):
    layout = draw(st.sampled_from([("images", "labels"), ("images", "labels"), ("x_train", "y_train", "x_test", "y_test"),
                                   ("x",), ("foo",)]))
    members = {}
    n = draw(st.integers(0, 12))
    k = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    plausible = st.integers(0, 3).map(bool)  # 3 in 4: plausible, else a random array
    for key in layout:
        if key.startswith(("images", "x")) and draw(plausible):
            members[key] = rng.integers(0, 256, (n, *draw(st.sampled_from([(4, 4), (4, 4, 1), (1, 4, 4), (16,), (3, 4, 4)]))))
        elif key.startswith(("labels", "y")) and draw(plausible):
            members[key] = np.arange(draw(st.sampled_from([n, n, n, n - 1 if n else 0, 2 * n]))) % k
        else:
            members[key] = draw(arrays())
    names = draw(st.sampled_from([None, None, "plausible", "random"]))
    if names == "plausible":
        members["class_names"] = np.array([f"c{i}" for i in range(k)])
    elif names == "random":
        members["class_names"] = draw(st.one_of(arrays(3), st.lists(st.text(max_size=3), max_size=5).map(np.array)))
    return members


@settings(max_examples=EXAMPLES["npz"], **SETTINGS)
@given(npz_members(), st.booleans())
def test_npz_random_arrays(members, compressed):
    def run(folder: Path):
        (np.savez_compressed if compressed else np.savez)(folder / "d.npz", **members)
        holds_contract(folder, folder / "d.npz")

    in_tmp(run)


# ------------------------------------------------------------------ CSV

cells = st.one_of(st.integers(0, 255).map(str), st.sampled_from(
    ["", " ", "-1", "256", "1.5", "nan", "NaN", "inf", "1e400", "x", "0x10", '"7"', "1e20", "3 ", "٣", "\t", "#"]))
headers = st.one_of(st.just("label"), st.just("id"), st.just("pixel"), st.text(max_size=4))


@st.composite
def csv_texts(draw):
    n_cols = draw(st.sampled_from([1, 2, 4, 5, 10, 17]))
    header = draw(st.lists(headers, min_size=n_cols, max_size=n_cols))
    if draw(st.booleans()):
        header = ["label"] + [f"p{i}" for i in range(n_cols - 1)]
    rows = []
    plausible = draw(st.booleans())  # every row well-formed, labels alternate; then maybe one cell changed
    for r in range(draw(st.integers(0, 8))):
        if plausible:
            rows.append([str(r % 2)] + [str(draw(st.integers(2, 255))) for _ in range(n_cols - 1)])
            continue
        width = n_cols if draw(st.integers(0, 5)) else draw(st.integers(0, n_cols + 2))
        plain = draw(st.booleans())
        rows.append([str(draw(st.integers(0, 3)) if i == 0 else draw(st.integers(2, 255))) if plain else draw(cells)
                     for i in range(width)])
    if plausible and rows and draw(st.booleans()):
        row = rows[draw(st.integers(0, len(rows) - 1))]
        row[draw(st.integers(0, len(row) - 1))] = draw(cells)
    text = "\n".join(",".join(r) for r in [header, *rows]) + draw(st.sampled_from(["\n", "", "\r\n", "\n\n"]))
    return text, draw(st.sampled_from([".csv", ".csv.gz", ".CSV"]))


@settings(max_examples=EXAMPLES["csv"], **SETTINGS)
@given(csv_texts())
def test_csv_random_cells(case):
    text, suffix = case

    def run(folder: Path):
        data = text.encode("utf-8")  # st.text never draws surrogates
        (folder / f"d{suffix}").write_bytes(gzip.compress(data) if suffix == ".csv.gz" else data)
        holds_contract(folder, folder / f"d{suffix}")

    in_tmp(run)


# ------------------------------------------------------------------ image folders


def png_claiming(width: int, height: int, payload: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b""))


image_files = st.one_of(
    st.tuples(st.just("array"), st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "F"]),
              st.sampled_from([(8, 8), (8, 8), (8, 9), (1, 1)]), st.sampled_from([".png", ".jpg", ".bmp", ".gif"])),
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(st.just("claim"), st.sampled_from([1, 8, 300, 2**15, 10**5, 2**31 - 1]),
              st.sampled_from([1, 8, 300, 2**15, 10**5]), st.binary(max_size=32)),
)


def write_image(path: Path, spec, rng) -> None:
    from PIL import Image

    if spec[0] == "bytes":
        path.with_suffix(".png").write_bytes(spec[1])
    elif spec[0] == "claim":
        path.with_suffix(".png").write_bytes(png_claiming(spec[1], spec[2], spec[3]))
    else:
        _, mode, (w, h), suffix = spec
        if mode == "F" or mode == "I;16":
            data = rng.random((h, w)) * 70000
            image = Image.fromarray(data.astype(np.float32 if mode == "F" else np.uint16))
            image.save(path.with_suffix(".png"), format="TIFF" if mode == "F" else "PNG")
            return
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        if suffix == ".jpg" and mode not in ("L", "RGB"):
            suffix = ".png"
        image.save(path.with_suffix(suffix))


@settings(max_examples=EXAMPLES["images"], **SETTINGS)
@given(st.lists(st.lists(image_files, min_size=0, max_size=3), min_size=1, max_size=3), st.booleans(),
       st.integers(0, 2**16))
def test_image_folder_random_files(classes, keep_rgb, seed):
    def run(folder: Path):
        rng = np.random.default_rng(seed)
        root = folder / "imgs"
        for k, files in enumerate(classes):
            (root / f"class{k}").mkdir(parents=True)
            for i, spec in enumerate(files):
                write_image(root / f"class{k}" / str(i), spec, rng)
        holds_contract(folder, root, keep_rgb=keep_rgb)

    in_tmp(run)


# ------------------------------------------------------------------ truncations and bit flips of valid files


def valid_file(folder: Path, kind: str) -> Path:
    x, y = make_images(12, 4)
    if kind == "npz":
        np.savez(folder / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y, class_names=np.array(["a", "b", "c"]))
        return folder / "d.npz"
    if kind == "npz-compressed":
        np.savez_compressed(folder / "d.npz", images=x, labels=y)
        return folder / "d.npz"
    if kind == "npy":
        np.save(folder / "d.npy", x)
        np.save(folder / "d_labels.npy", y)
        return folder / "d.npy"
    if kind in ("csv", "csv.gz"):
        path = write_csv(folder / "d.csv", x, y)
        if kind == "csv.gz":
            (folder / "d.csv.gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
            return folder / "d.csv.gz"
        return path
    if kind in ("idx", "idx.gz"):
        write_idx(folder / "train-images-idx3-ubyte", x, gz=kind == "idx.gz")
        write_idx(folder / "train-labels-idx1-ubyte", y, gz=kind == "idx.gz")
        return folder / ("train-images-idx3-ubyte" + ".gz" * (kind == "idx.gz"))
    root = write_image_folder(folder / "imgs", n_per_class=2, size=4)
    return root / "cat" / "0.png"


@settings(max_examples=EXAMPLES["truncate"], **SETTINGS)
@given(st.sampled_from(["npz", "npz-compressed", "npy", "csv", "csv.gz", "idx", "idx.gz", "png"]),
       st.floats(0, 1), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=3), st.booleans())
def test_truncated_and_flipped_valid_files(kind, cut, flips, truncate):
    def run(folder: Path):
        path = valid_file(folder, kind)
        data = bytearray(path.read_bytes())
        if truncate:
            data = data[: int(len(data) * cut)]
        for where, xor in flips:
            if data:
                data[min(int(where * len(data)), len(data) - 1)] ^= xor
        path.write_bytes(bytes(data))
        target = folder if kind.startswith("idx") else folder / "imgs" if kind == "png" else path
        holds_contract(folder, target)

    in_tmp(run)


# ------------------------------------------------------------------ --classes

NAMES = ["T-shirt/top", "Trouser", "3", "10", "Bag"]


@settings(max_examples=EXAMPLES["classes"], **SETTINGS)
@given(st.one_of(st.lists(st.sampled_from(list("0123456789,- ²٣") + NAMES), max_size=8).map("".join),
                 st.lists(st.sampled_from(NAMES + ["0", "1", "4", "5", "-1", ""]), max_size=4).map(",".join)))
def test_classes_spec(spec):
    GENERATED["count"] += 1
    try:
        chosen = parse_classes(spec, NAMES)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("classes")
        return
    assert chosen is not None and len(chosen) >= 2 and len(set(chosen)) == len(chosen)
    assert all(0 <= c < len(NAMES) for c in chosen)
