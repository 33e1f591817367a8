"""Run directories: the only interface between training and everything after it.

Layout of a run directory:
    config.json         resolved training configuration
    env.json            package versions, device, git commit
    history.csv         one row per finished epoch
    metrics.json        final metrics, timing, status
    model.safetensors   weights; model.json beside it says how to rebuild the model
    logits.safetensors  validation/test logits and labels
    checkpoint/         everything needed to resume (weights, optimizer, scheduler, RNG)

Every file is written to a temporary name and renamed, so a killed process never leaves half a
file that looks whole.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cnnlab.errors import UserError


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_target(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def write_csv(path: str | Path, rows: list[dict]) -> None:
    with atomic_target(path) as tmp:
        with open(tmp, "w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


def read_csv_rows(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_target(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle, a truncated file) is refused clearly."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a valid safetensors weights file ({exc}); cnnlab never unpickles files") from None


def require_run_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory")
    if not (path / "model.json").is_file() and not (path / "ensemble.json").is_file():
        raise UserError(f"{path}: not a finished cnnlab run directory (no model.json); train one with 'cnnlab train'")
    return path
