"""Hostile and ambiguous inputs (issue 22): each is refused in one short line naming the file, or read as the
user meant it, never silently misread.

Cases: train/ and test/ image folders with different class sets (matched by name), multi-frame images,
ambiguous sources (an NPZ with two key sets, raw and .gz IDX twins that differ, fractional CSV pixels,
folders beside train/ and test/, images in subfolders of class folders), a CSV whose header alone
shows it cannot be read (refused from its first line, however wide or long the file), ';'- and
tab-separated CSVs, long values cut in messages, label problems tagged [labels]; and the split of
formats.py into modules by format.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import load_dataset
from cnnlab.errors import UserError

from conftest import make_images, write_csv, write_idx, write_idx_folder, write_image_folder

X, Y = make_images(30, 4)
MESSAGE_LIMIT = 400  # characters: a long tmp path, the explanation and a value cut to 80


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def refused(path: Path, *expected: str, names: str | None = None, **kwargs) -> str:
    """load_dataset(path) raises one short UserError line naming `names` (default: the path) with `expected`."""
    before = tree(path.parent)
    with pytest.raises(UserError) as info:
        load_dataset(path, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message, message
    assert len(message) < MESSAGE_LIMIT, f"{len(message)} characters: {message[:500]}"
    assert (names or str(path)) in message, message
    for text in expected:
        assert text in message, message
    assert tree(path.parent) == before, "a file was written"
    return message


def solid_folder(root: Path, classes: dict[str, int], n: int = 4, size: int = 8) -> Path:
    """One folder per class whose images are all of one grey value, so a label can be checked by its pixels."""
    from PIL import Image

    for name, value in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((size, size), value, np.uint8)).save(root / name / f"{i}.png")
    return root


# ------------------------------------------------------------------ 1. train/ and test/ classes matched by name


def test_test_classes_are_matched_to_training_classes_by_name(tmp_path):
    solid_folder(tmp_path / "d" / "train", {"a": 10, "b": 120, "c": 240})
    solid_folder(tmp_path / "d" / "test", {"a": 10, "c": 240})  # a subset: keeps training's indices
    ds = load_dataset(tmp_path / "d")
    assert ds.class_names == ["a", "b", "c"]
    pixel = ds.test.images[:, 0, 0, 0].tolist()
    assert [(v, k) for v, k in zip(pixel, ds.test.labels.tolist())] == [(10, 0)] * 4 + [(240, 2)] * 4


def test_test_class_unknown_to_training_is_refused(tmp_path, cli):
    solid_folder(tmp_path / "d" / "train", {"a": 10, "b": 120})
    solid_folder(tmp_path / "d" / "test", {"a": 10, "c": 240})
    refused(tmp_path / "d", "test class 'c' is not a training class", "a, b", "matched by name",
            names=str(tmp_path / "d" / "test" / "c"))
    code, out, err = cli("data", "info", tmp_path / "d")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'c'" in err


def test_test_data_folder_beside_train_is_matched_too(tmp_path):
    solid_folder(tmp_path / "d" / "train", {"a": 10, "b": 120, "c": 240})
    solid_folder(tmp_path / "d" / "test", {"b": 120, "c": 240})
    ds = load_dataset(tmp_path / "d" / "train", test_data=tmp_path / "d" / "test")
    assert sorted(set(ds.test.labels.tolist())) == [1, 2]


# ------------------------------------------------------------------ 2. multi-frame images


def frames(n: int = 3, size: int = 8):
    from PIL import Image

    return [Image.fromarray(np.full((size, size), 40 * (i + 1), np.uint8)) for i in range(n)]


@pytest.mark.parametrize("name", ["anim.gif", "pages.tif", "pages.tiff", "anim.png", "anim.webp"])
def test_multi_frame_image_is_refused(tmp_path, name):
    from PIL import features

    if name.endswith(".webp") and not features.check("webp"):
        pytest.skip("Pillow without animated WebP")
    root = write_image_folder(tmp_path / "imgs")
    first, *rest = frames()
    first.save(root / "dog" / name, save_all=True, append_images=rest)
    refused(root, "animated or multi-page image (3 frames)", "one image per file", names=str(root / "dog" / name))


def test_single_frame_gif_and_tiff_are_read(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    frames(1)[0].save(root / "cat" / "one.gif")
    frames(1)[0].save(root / "cat" / "one.tif")
    assert len(load_dataset(root).train) == 20  # 18 PNGs, the GIF and the TIFF


# ------------------------------------------------------------------ 3. ambiguous sources


@pytest.mark.parametrize("keys, sets", [
    ({"images": X, "labels": Y, "x_train": X, "y_train": Y}, ["x_train/y_train", "images/labels"]),
    ({"images": X, "labels": Y, "x_train": X, "y_train": Y, "x_test": X, "y_test": Y},
     ["x_train/y_train/x_test/y_test", "images/labels"]),
    ({"x": X, "y": Y, "images": X, "labels": Y}, ["images/labels", "x/y"]),
])
def test_npz_with_two_key_sets_is_refused(tmp_path, keys, sets):
    np.savez(tmp_path / "d.npz", **keys)
    refused(tmp_path / "d.npz", "candidate datasets", *sets, "one set of keys")


@pytest.mark.parametrize("stem", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"])
def test_idx_raw_and_gz_twins_with_different_contents_are_refused(tmp_path, stem):
    folder = write_idx_folder(tmp_path / "idx", gz=True)
    x, y = make_images(60 if stem.startswith("train") else 30, 8, seed=5)
    write_idx(folder / stem, (y + 1) % 3 if "labels" in stem else x, gz=False)  # other data, not gzipped
    message = refused(folder, "different contents", names=str(folder / f"{stem}.gz"))
    assert str(folder / stem) + ":" in message or str(folder / stem) + " " in message, message
    (folder / stem).write_bytes(gzip.decompress((folder / f"{stem}.gz").read_bytes()))  # the same data: fine
    assert len(load_dataset(folder).train) == 60


@pytest.mark.parametrize("value", ["12.5", "0.5", "254.9", "1e-3"])
def test_fractional_csv_pixel_is_refused(tmp_path, value):
    lines = write_csv(tmp_path / "d.csv", X, Y).read_text().splitlines()
    cells = lines[4].split(",")
    cells[6] = value
    lines[4] = ",".join(cells)
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    refused(tmp_path / "d.csv", f"pixel value '{value}' in row 5, column 'pixel5'", "not a whole number", "integers")
    text = write_csv(tmp_path / "d.csv", X, Y).read_text()
    (tmp_path / "f.csv").write_text(text.replace(",10,", ",10.0,"))  # a whole number written with a decimal point
    assert len(load_dataset(tmp_path / "f.csv").train) == 30
    lines = text.splitlines()
    scaled = [lines[0]] + [",".join([row.split(",")[0]] + [f"{int(v) / 255:.3f}" for v in row.split(",")[1:]])
                           for row in lines[1:]]
    (tmp_path / "s.csv").write_text("\n".join(scaled) + "\n")
    refused(tmp_path / "s.csv", "scaled to 0..1")  # the better explanation for 0..1 floats


def test_folder_beside_train_and_test_is_ignored_with_one_warning(tmp_path, capsys, cli):
    root = tmp_path / "d"
    for split in ("train", "test", "validation"):
        write_image_folder(root / split, n_per_class=5)
    capsys.readouterr()
    ds = load_dataset(root)
    assert len(ds.train) == 15 and len(ds.test) == 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validation" in err[0] and str(root) in err[0] and "ignor" in err[0], err
    code, out, err = cli("data", "info", root)
    assert code == 0 and "validation" in out and "ignor" in out
    assert len(err.strip().splitlines()) == 1 and "validation" in err
    (root / "validation").rename(tmp_path / "validation")
    capsys.readouterr()
    load_dataset(root)
    assert capsys.readouterr().err == ""  # nothing to say without a third folder


def test_images_in_subfolders_of_class_folders_are_included_and_counted(tmp_path, cli):
    root = write_image_folder(tmp_path / "imgs", n_per_class=5)
    write_image_folder(root / "cat" / "batch2", n_per_class=2, classes=("a", "b"))  # cat/batch2/{a,b}/*.png
    write_image_folder(root / "owl", n_per_class=3, classes=("more",))  # owl/more/*.png
    (root / "owl" / ".cache").mkdir()
    write_image_folder(root / "owl" / ".cache", n_per_class=1, classes=("x",))  # hidden: skipped
    ds = load_dataset(root)
    assert ds.class_names == ["cat", "dog", "owl"]
    assert np.bincount(ds.train.labels.numpy()).tolist() == [9, 5, 8]
    code, out, err = cli("data", "info", root, "--val-fraction", "0.3")
    assert code == 0, err
    assert "7 images in subfolders of class folders included" in out
    (root / "cat" / "up").symlink_to(root)  # links to folders are not followed (as in Keras): this one loops
    (root / "dog" / "sib").symlink_to(root / "owl")
    assert np.bincount(load_dataset(root).train.labels.numpy()).tolist() == [9, 5, 8]


def test_subfolders_of_a_train_test_dataset_are_counted(tmp_path, cli):
    root = tmp_path / "d"
    for split in ("train", "test"):
        write_image_folder(root / split, n_per_class=5)
    write_image_folder(root / "train" / "dog", n_per_class=2, classes=("extra",))
    ds = load_dataset(root)
    assert np.bincount(ds.train.labels.numpy()).tolist() == [5, 7, 5]
    code, out, _ = cli("data", "info", root)
    assert code == 0 and "2 images in subfolders of class folders included" in out


# ------------------------------------------------------------------ 4. refused from the header, however big the file


def time_cli(cli, path: Path) -> tuple[float, int, str]:
    start = time.perf_counter()
    code, _, err = cli("data", "info", path)
    return time.perf_counter() - start, code, err


def wide_csv(path: Path, kind: str, columns: int, tail_bytes: int = 0) -> Path:
    if kind == "numbers":  # the file: one row of numbers, no header
        first = ",".join(["0"] * columns)
    elif kind == "not square":
        first = "label," + ",".join(f"p{i}" for i in range(columns - 1))
    else:  # ';'-separated
        first = "label;" + ";".join(f"p{i}" for i in range(columns - 1))
    with open(path, "w") as f:
        f.write(first + "\n")
        f.write(",".join(["7"] * columns) + "\n")
    if tail_bytes:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size + tail_bytes)  # a sparse tail: huge, free to write, slow to read
    return path


@pytest.mark.parametrize("kind, expected", [
    ("not square", "pixels per row is not a square image"),
    ("numbers", "first row holds numbers"),
    ("semicolons", "looks ';'-separated"),
])
def test_wide_csv_refused_from_its_header_about_as_fast_as_a_small_csv_loads(tmp_path, cli, kind, expected):
    small = write_csv(tmp_path / "small.csv", X, Y)
    time_cli(cli, small)  # warm the imports
    t_small, code, _ = time_cli(cli, small)
    assert code == 0
    t_wide, code, err = time_cli(cli, wide_csv(tmp_path / "wide.csv", kind, 100_001))
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err[:500]
    assert t_wide <= t_small + 2.0, f"refusing took {t_wide:.1f} s, loading a small CSV {t_small:.1f} s"


def test_csv_refusal_reads_only_the_first_line(tmp_path, cli):
    small = write_csv(tmp_path / "small.csv", X, Y)
    time_cli(cli, small)
    t_small, _, _ = time_cli(cli, small)
    path = wide_csv(tmp_path / "huge.csv", "numbers", 3_000_000, tail_bytes=1 << 30)  # 6 MB line, 1 GiB after it
    t_huge, code, err = time_cli(cli, path)
    assert code == 2 and "first row holds numbers" in err and len(err.strip().splitlines()) == 1, err[:500]
    assert t_huge <= t_small + 2.0, f"refusing took {t_huge:.1f} s, loading a small CSV {t_small:.1f} s"


def test_gzipped_wide_csv_refused_from_its_header(tmp_path):
    plain = wide_csv(tmp_path / "w.csv", "not square", 100_001)
    (tmp_path / "w.csv.gz").write_bytes(gzip.compress(plain.read_bytes(), 1))
    start = time.perf_counter()
    refused(tmp_path / "w.csv.gz", "100000 pixels per row is not a square image")
    assert time.perf_counter() - start < 5


# ------------------------------------------------------------------ 5. short lines: separators, long values, [labels]


@pytest.mark.parametrize("sep, named", [(";", "';'"), ("\t", "tab"), ("|", "'|'")])
def test_csv_with_another_separator_names_it(tmp_path, sep, named):
    text = write_csv(tmp_path / "c.csv", make_images(30, 28)[0], make_images(30, 28)[1]).read_text()
    (tmp_path / "d.csv").write_text(text.replace(",", sep))
    refused(tmp_path / "d.csv", f"looks {named}-separated", "comma-separated")


def test_csv_rows_with_another_separator_under_a_comma_header(tmp_path):
    lines = write_csv(tmp_path / "c.csv", X, Y).read_text().splitlines()
    (tmp_path / "d.csv").write_text("\n".join([lines[0]] + [row.replace(",", ";") for row in lines[1:]]) + "\n")
    refused(tmp_path / "d.csv", "row 2 looks ';'-separated")


def test_long_values_are_cut_in_messages(tmp_path):
    lines = write_csv(tmp_path / "c.csv", X, Y).read_text().splitlines()
    cells = lines[2].split(",")
    cells[3] = "x" * 3000
    lines[2] = ",".join(cells)
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    message = refused(tmp_path / "d.csv", "non-numeric pixel value 'xxx", "…")
    assert "x" * 81 not in message
    header = lines[0].split(",")
    header[4] = header[5] = "p" * 3000
    (tmp_path / "e.csv").write_text("\n".join([",".join(header)] + lines[1:]) + "\n")
    refused(tmp_path / "e.csv", "appears twice", "…")
    np.savez(tmp_path / "k.npz", **{"k" * 3000: X})
    refused(tmp_path / "k.npz", "images/labels", "…")


@pytest.mark.parametrize("keys, tag", [
    ({"images": X, "labels": Y + 0.5}, "[labels]: labels must be integers"),
    ({"images": X, "labels": Y[:-1]}, "[labels]: 30 images but 29 labels"),
    ({"images": X, "labels": Y - 1}, "[labels]: labels must be 0 or more"),
    ({"x_train": X, "y_train": Y.astype(str)}, "[y_train]: labels must be integers"),
    ({"x_train": X, "y_train": Y, "x_test": X, "y_test": Y[:5]}, "[y_test]: 30 images but 5 labels"),
])
def test_npz_label_problems_are_tagged_with_the_labels(tmp_path, keys, tag):
    np.savez(tmp_path / "d.npz", **keys)
    message = refused(tmp_path / "d.npz", tag)
    assert "[images]" not in message and "[x_train]" not in message and "[x_test]" not in message


@pytest.mark.parametrize("label, expected", [("1.5", "[labels]: labels must be integers, found 1.5"),
                                             ("cat", "[labels]: labels must be integers, found 'cat' in row 3"),
                                             ("-2", "[labels]: labels must be 0 or more")])
def test_csv_label_problems_are_tagged_with_the_labels(tmp_path, label, expected):
    lines = write_csv(tmp_path / "d.csv", X, Y).read_text().splitlines()
    lines[2] = label + lines[2][lines[2].index(","):]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    refused(tmp_path / "d.csv", expected)


def test_idx_label_problems_are_tagged_with_the_labels(tmp_path):
    folder = write_idx_folder(tmp_path / "idx")
    write_idx(folder / "train-labels-idx1-ubyte", make_images(59, 8)[1])
    message = refused(folder, "[labels]: ", "60 images but train-labels-idx1-ubyte.gz has 59 labels",
                      names=str(folder / "train-labels-idx1-ubyte.gz"))
    assert "[images]" not in message


# ------------------------------------------------------------------ 6. formats.py split by format


def test_formats_is_split_by_format_and_keeps_its_names():
    import importlib
    import re

    from cnnlab.data import formats

    data = Path(formats.__file__).parent  # every module of the data package stays under 600 lines
    lengths = {p.name: len(p.read_text().splitlines()) for p in data.glob("*.py")}
    assert all(n < 600 for n in lengths.values()), lengths
    homes = {name: getattr(formats, name).__module__ for name in ("read_idx", "read_npz", "read_csv",
                                                                     "read_image_folder")}
    assert len(set(homes.values())) == 4 and "cnnlab.data.formats" not in homes.values(), homes
    repo = data.parents[2]
    imported = set()
    statement = r"from (?:cnnlab\.data)?\.formats import (?:\(([\w,\s]+)\)|([\w, ]+))"
    for source in [*repo.glob("src/**/*.py"), *repo.glob("tests/*.py"), *repo.glob("bench/**/*.py")]:
        for group in re.findall(statement, source.read_text()):
            imported |= {n.strip() for n in "".join(group).split(",") if n.strip()}
    imported |= {"RawSplit", "validate_arrays", "read_idx", "IDX_IMAGE_MAGIC", "memory_bytes", "one_line"}
    module = importlib.import_module("cnnlab.data.formats")
    missing = [name for name in sorted(imported) if not hasattr(module, name)]
    assert not missing, missing
