"""Shared helpers: small datasets in every format, written by the tests themselves."""

from __future__ import annotations

import contextlib
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def make_images(n: int = 60, size: int = 8, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent blobs: class k lights up band k, so a classifier can learn them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 60, size=(n, size, size)).astype(np.uint8)
    band = max(1, size // classes)
    for i, k in enumerate(labels):
        images[i, k * band:(k + 1) * band, :] += 150
    return images, labels.astype(np.int64)


def train_test_images(n: int = 240, n_test: int = 60, classes: int = 3, size: int = 16) -> tuple:
    """(x, y, x_test, y_test) of make_images' blobs, the test images drawn with another seed."""
    return (*make_images(n, size, classes=classes), *make_images(n_test, size, classes=classes, seed=7))


def write_npz_dataset(path: Path, n_train: int, n_test: int, size: int = 16, classes: int = 3) -> Path:
    """A learnable train/test NPZ (the test images come from another seed)."""
    x, y = make_images(n_train, size, classes=classes)
    xt, yt = make_images(n_test, size, classes=classes, seed=7)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def small_cnn1_run(tmp_path_factory, n_train: int, epochs: int, size: int = 16):
    """A finished cnn1 run on a learnable NPZ of n_train images (30 test images): for module-scoped fixtures."""
    data = write_npz_dataset(tmp_path_factory.mktemp("data") / "train.npz", n_train, 30, size=size)
    import cnnlab  # imported where used, as the other helpers here do
    return cnnlab.train("cnn1", str(data), epochs=epochs, batch_size=32, device="cpu", precision="fp32",
                        progress=False, out=tmp_path_factory.mktemp("runs"))


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_idx_folder(folder: Path, n: int = 60, n_test: int = 30, gz: bool = True, size: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x, y = make_images(n, size)
    xt, yt = make_images(n_test, size, seed=1)
    write_idx(folder / "train-images-idx3-ubyte", x, gz)
    write_idx(folder / "train-labels-idx1-ubyte", y, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", xt, gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", yt, gz)
    return folder


def write_csv(path: Path, images: np.ndarray, labels: np.ndarray | None, ids: list | None = None) -> Path:
    flat = images.reshape(len(images), -1)
    header = (["id"] if ids is not None else []) + (["label"] if labels is not None else []) + \
        [f"pixel{i}" for i in range(flat.shape[1])]
    lines = [",".join(header)]
    for i, row in enumerate(flat):
        cells = ([str(ids[i])] if ids is not None else []) + ([str(labels[i])] if labels is not None else [])
        lines.append(",".join(cells + [str(v) for v in row]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_image_folder(root: Path, n_per_class: int = 6, classes=("cat", "dog", "owl"), size: int = 8,
                       rgb: bool = False, suffix: str = ".png") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            shape = (size, size, 3) if rgb else (size, size)
            array = rng.integers(0, 256, size=shape).astype(np.uint8)
            Image.fromarray(array).save(root / name / f"{i}{suffix}")
    return root


def interrupt_at(epoch: int):
    """A callback that presses Ctrl-C (raises KeyboardInterrupt) as `epoch` starts."""
    from cnnlab.callbacks import LambdaCallback

    def press(ctx, started, steps):
        if started == epoch:
            raise KeyboardInterrupt

    return LambdaCallback(on_epoch_start=press)


@pytest.fixture
def cli(capsys):
    """Run the real `cnnlab` entry point in-process; return (exit code, stdout, stderr)."""
    from cnnlab.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        import sys

        old = sys.argv
        sys.argv = ["cnnlab", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = old
        out, err = capsys.readouterr()
        return code, out, err

    return run


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str):
    """A tmpfs mounted at `folder` for the block (e.g. "size=3m" or "ro,size=1m"); skips without root."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (no permission in this container)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(autouse=True)
def compile_probe_cache(tmp_path_factory, monkeypatch):
    """compile = "auto" keeps its probe's figures per machine (engine.compile_probe): in the tests, in a folder of
    their own, never in the user's ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "compile-probe-cache"
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(folder))
    return folder


# ------------------------------------------------------------------ a small search (test_tune_*.py)

TUNE_SPACE = {"space": {"lr": {"type": "categorical", "choices": [0.001, 0.003]}}, "replace": True}


def write_tune_data(root: Path) -> Path:
    """root/d.npz (120 training images, 30 test) and root/space.json (two learning rates): a search's inputs."""
    import json

    write_npz_dataset(root / "d.npz", 120, 30)
    (root / "space.json").write_text(json.dumps(TUNE_SPACE))
    return root


def tune_args(data: Path, out: Path, *extra, space: Path | None = None) -> list[str]:
    """`cnnlab tune cnn1` on write_tune_data's files: one epoch a trial, on the CPU."""
    return ["tune", "cnn1", "--data", str(data / "d.npz"), "--device", "cpu", "--epochs", "1",
            "--space", str(space or data / "space.json"), "--out", str(out), *extra]


def one_line(err: str) -> str:
    """The one line a refused command printed (no traceback): what is wrong and how to fix it."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file below `folder` and its bytes: equal before and after a refusal, nothing was touched."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

