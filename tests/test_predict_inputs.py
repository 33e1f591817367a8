"""`cnnlab predict --input` on what a Kaggle user has: a flat folder of PNGs (ids from the file names, 2.png
before 10.png), image folders with subfolders, a single IDX images file, and CSVs whose pixel columns are
found by name. Bad input: one line, exit 2, no submission written."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
from PIL import Image

import cnnlab
from cnnlab.data import load_dataset, load_unlabeled

from conftest import make_images, small_cnn1_run, write_csv, write_idx

SIZE = 16


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return small_cnn1_run(tmp_path_factory, 300, epochs=2, size=SIZE)


@pytest.fixture(scope="module")
def images():
    """12 test images of 3 learnable classes, so the predicted labels tell images (and their order) apart."""
    return make_images(12, SIZE, classes=3, seed=7)[0]


def expected_labels(run, x: np.ndarray) -> list[str]:
    labels = cnnlab.load_run(run.path).predict(x)
    assert len(set(labels.tolist())) > 1, "the run predicts one class for all: the order would go untested"
    return [str(v) for v in labels]


def submission(path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label"]
    return [tuple(r) for r in rows[1:]]


def predict(cli, run, source, out) -> tuple[int, str]:
    code, _, err = cli("predict", run.path, "--input", source, "-o", out, "--device", "cpu")
    return code, err


def refused(cli, run, source, tmp_path, *says: str) -> str:
    out = tmp_path / "sub.csv"
    code, err = predict(cli, run, source, out)
    line = " ".join(err.split())
    assert code == 2 and err.strip().count("\n") == 0, err
    for text in says:
        assert text in line, line
    assert not out.exists(), "a failed predict wrote a submission"
    return line


def save_pngs(folder, named: dict[str, np.ndarray]) -> None:
    for name, array in named.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / name)


# ------------------------------------------------------------------ image folders


def test_a_flat_folder_of_pngs_is_read_in_numeric_order_with_stems_for_ids(cli, run, images, tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    order = [12, 3, 1, 10, 2, 11, 4, 5, 9, 6, 8, 7]  # written out of order: the file system's order is no help
    rgb = np.stack([images[0]] * 3, axis=-1)  # 1.png in RGB: converted to grayscale as the training reader does
    save_pngs(folder, {f"{n}.png": (rgb if n == 1 else images[n - 1]) for n in order})
    (folder / "notes.txt").write_text("not an image")
    code, err = predict(cli, run, folder, tmp_path / "sub.csv")
    assert code == 0, err
    rows = submission(tmp_path / "sub.csv")
    assert [i for i, _ in rows] == [str(n) for n in range(1, 13)]  # 2 before 10, not 1, 10, 11, 12, 2
    assert [label for _, label in rows] == expected_labels(run, images)
    assert "skipped 1 file not named like an image (notes.txt)" in " ".join(err.split())


def test_ids_are_the_file_names_stems(cli, run, images, tmp_path):
    folder = tmp_path / "test"
    save_pngs(folder, {f"img_{n:04d}.png": images[i] for i, n in enumerate([7, 42, 100, 8])})
    assert predict(cli, run, folder, tmp_path / "sub.csv")[0] == 0
    rows = submission(tmp_path / "sub.csv")
    assert [i for i, _ in rows] == ["img_0007", "img_0008", "img_0042", "img_0100"]
    assert [label for _, label in rows] == expected_labels(run, images[[0, 3, 1, 2]])


def test_subfolders_keep_stems_unless_two_share_one_then_paths_are_the_ids(cli, run, images, tmp_path):
    unique = tmp_path / "unique"
    save_pngs(unique, {"a/img_1.png": images[0], "b/img_2.png": images[1], "img_3.png": images[2]})
    assert predict(cli, run, unique, tmp_path / "u.csv")[0] == 0
    assert [i for i, _ in submission(tmp_path / "u.csv")] == ["img_1", "img_2", "img_3"]
    shared = tmp_path / "shared"  # cat/0.png and dog/0.png: a stem alone would give two rows the id 0
    save_pngs(shared, {"cat/0.png": images[0], "cat/1.png": images[1], "dog/0.png": images[2]})
    assert predict(cli, run, shared, tmp_path / "s.csv")[0] == 0
    rows = submission(tmp_path / "s.csv")
    assert [i for i, _ in rows] == ["cat/0", "cat/1", "dog/0"]
    assert [label for _, label in rows] == expected_labels(run, images[:3])


def test_train_and_test_image_folders_predict_the_test_folder(cli, run, images, tmp_path):
    save_pngs(tmp_path / "d", {"train/a/0.png": images[0], "train/b/0.png": images[1],
                               "test/a/t1.png": images[2], "test/b/t2.png": images[3]})
    assert predict(cli, run, tmp_path / "d", tmp_path / "sub.csv")[0] == 0
    assert [i for i, _ in submission(tmp_path / "sub.csv")] == ["t1", "t2"]


def test_a_flat_folder_through_the_python_api(images, tmp_path):
    save_pngs(tmp_path, {"b10.png": images[1], "b9.png": images[0]})
    split = load_unlabeled(tmp_path)
    assert split.ids == ["b9", "b10"] and split.labels is None
    assert np.array_equal(split.images[:, 0].numpy(), images[:2])


@pytest.mark.parametrize("case, says", [
    ("corrupt", ["broken.png: cannot read image", "replace or remove it"]),
    ("size", ["images are 1x8x8 but the model was trained on 1x16x16", "cnnlab does not resize"]),
    ("mixed sizes", ["b.png: image size 8x8 differs from a.png's 16x16", "resize them to one size"]),
    ("same stem", ["has the same name as", "would get the id 'a'", "rename or remove one"]),
    ("empty", ["no images (PNG, JPEG, ...) in the folder or its subfolders"]),
])
def test_a_bad_image_folder_is_one_line_and_writes_nothing(cli, run, images, tmp_path, case, says):
    folder = tmp_path / "test"
    folder.mkdir()
    if case == "corrupt":
        save_pngs(folder, {"a.png": images[0]})
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    elif case == "size":
        save_pngs(folder, {"a.png": images[0][:8, :8], "b.png": images[1][:8, :8]})
    elif case == "mixed sizes":
        save_pngs(folder, {"a.png": images[0], "b.png": images[1][:8, :8]})
    elif case == "same stem":
        save_pngs(folder, {"a.png": images[0], "a.bmp": images[1]})
    elif case == "empty":
        (folder / "readme.txt").write_text("x")
    refused(cli, run, folder, tmp_path, *says)


# ------------------------------------------------------------------ IDX images files


@pytest.mark.parametrize("gz", [True, False])
def test_a_single_idx_images_file_is_read(cli, run, images, tmp_path, gz):
    source = write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=gz)
    assert predict(cli, run, source, tmp_path / "sub.csv")[0] == 0
    rows = submission(tmp_path / "sub.csv")
    assert [i for i, _ in rows] == [str(n) for n in range(1, 13)]  # IDX has no ids: 1..N
    assert [label for _, label in rows] == expected_labels(run, images)


def test_an_idx_file_under_another_name_is_known_by_its_magic_number(images, tmp_path):
    write_idx(tmp_path / "x.bin", images, gz=False)
    assert np.array_equal(load_unlabeled(tmp_path / "x.bin").images[:, 0].numpy(), images)


def test_a_folder_with_only_the_test_images_idx_file_is_read(images, tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)  # no labels, no training split: predict needs neither
    assert len(load_unlabeled(tmp_path)) == 12


def test_an_idx_labels_file_alone_is_named_as_labels(cli, run, tmp_path):
    source = write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(12, dtype=np.uint8) % 3)
    refused(cli, run, source, tmp_path, "t10k-labels-idx1-ubyte.gz: holds labels", "not images",
            "give the images file")


def test_an_unknown_file_names_the_formats_predict_reads(cli, run, tmp_path):
    (tmp_path / "x.txt").write_text("hello\n")
    refused(cli, run, tmp_path / "x.txt", tmp_path, "x.txt: unknown format .txt", "IDX images file",
            "a folder of images")


# ------------------------------------------------------------------ CSV columns by name


def csv_text(images: np.ndarray, columns: list[str], first: int = 1, ids=None, labels=None) -> str:
    """A CSV whose pixel columns are pixel<first>.. in the order `columns` gives, with optional id/label columns."""
    flat = images.reshape(len(images), -1)
    index = {f"pixel{k + first}": k for k in range(flat.shape[1])}
    lines = [",".join(columns)]
    for row in range(len(flat)):
        extra = {"ImageId": ids[row] if ids else "", "label": labels[row] if labels else ""}
        lines.append(",".join(str(extra[c]) if c in extra else str(flat[row, index[c]]) for c in columns))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("first", [0, 1])
def test_csv_pixel_columns_are_taken_by_name_with_ids_and_labels_ignored(cli, run, images, tmp_path, first):
    pixels = sorted((f"pixel{k + first}" for k in range(SIZE * SIZE)))  # as text: pixel1, pixel10, pixel100, ...
    ids = [f"t{n}" for n in range(12)]
    text = csv_text(images, ["label"] + pixels[:100] + ["ImageId"] + pixels[100:], first, ids=ids,
                    labels=["?"] * 12)  # a label column is left unread by predict, even a junk one
    (tmp_path / "test.csv").write_text(text)
    code, err = predict(cli, run, tmp_path / "test.csv", tmp_path / "sub.csv")
    assert code == 0, err
    rows = submission(tmp_path / "sub.csv")
    assert [i for i, _ in rows] == ids
    assert [label for _, label in rows] == expected_labels(run, images)


def test_training_csv_pixels_are_taken_by_name_too(tmp_path):
    x, y = make_images(12, 4)
    columns = ["label"] + sorted(f"pixel{k}" for k in range(16))
    (tmp_path / "train.csv").write_text(csv_text(x, columns, 0, labels=y.tolist()))
    ds = load_dataset(tmp_path / "train.csv")
    assert np.array_equal(ds.train.images[:, 0].numpy(), x) and np.array_equal(ds.train.labels.numpy(), y)


@pytest.mark.parametrize("columns, says", [
    (["pixel0", "pixel1", "pixel2", "extra"], "column 'extra' is neither id, label nor a pixel<number> column"),
    (["pixel0", "pixel1", "pixel01", "pixel3"], "columns 'pixel1' and 'pixel01' are both pixel 1"),
    (["pixel0", "pixel1", "pixel2", "pixel4"], "column 'pixel3' is missing between 'pixel0' and 'pixel4'"),
    (["pixel2", "pixel3", "pixel4", "pixel5"], "the pixel columns start at 'pixel2'; number them from pixel0"),
])
def test_csv_pixel_columns_that_do_not_add_up_are_one_line(cli, run, tmp_path, columns, says):
    (tmp_path / "t.csv").write_text(",".join(columns) + "\n" + ",".join(["7"] * 4) + "\n")
    refused(cli, run, tmp_path / "t.csv", tmp_path, "t.csv: " + says)


def test_duplicate_csv_ids_are_named_and_nothing_is_written(cli, run, images, tmp_path):
    write_csv(tmp_path / "t.csv", images[:3], None, ids=["a", "b", "a"])
    refused(cli, run, tmp_path / "t.csv", tmp_path, "duplicate ids (id 'a' is there twice)")


def test_a_gzipped_csv_with_pixel_names_out_of_order(images, tmp_path):
    columns = sorted(f"pixel{k}" for k in range(SIZE * SIZE))
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(csv_text(images, columns, 0).encode()))
    split = load_unlabeled(tmp_path / "t.csv.gz")
    assert split.ids is None and np.array_equal(split.images[:, 0].numpy(), images)


# ------------------------------------------------------------------ the submission's header


def test_columns_names_the_header_a_competition_asks_for(cli, run, images, tmp_path):
    np.save(tmp_path / "test.npy", images)
    code, _, err = cli("predict", run.path, "--input", tmp_path / "test.npy", "-o", tmp_path / "sub.csv",
                       "--device", "cpu", "--columns", " ImageId , Label")
    assert code == 0, err
    with open(tmp_path / "sub.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "Label"]  # Kaggle's Digit Recognizer
    assert rows[1:] == [[str(n), label] for n, label in enumerate(expected_labels(run, images), 1)]


@pytest.mark.parametrize("columns", ["ImageId", "a,b,c", "Label,Label", ",Label", 'Image"Id,Label'])
def test_columns_that_are_not_two_names_are_one_line_and_write_nothing(cli, run, images, tmp_path, columns):
    np.save(tmp_path / "test.npy", images)
    code, _, err = cli("predict", run.path, "--input", tmp_path / "test.npy", "-o", tmp_path / "sub.csv",
                       "--device", "cpu", "--columns", columns)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "give two different column names" in " ".join(err.split()) and not (tmp_path / "sub.csv").exists()
