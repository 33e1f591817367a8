"""What a run's data files were, so a resume or a continued study or ensemble can tell they changed.

Each file the dataset is read from is recorded by size and SHA-256: of the whole file up to 1 GiB,
of its first and last 64 MiB beyond (a changed middle of a huge file goes unnoticed; its size and
ends almost never stay the same). Built-in datasets are their four IDX files; a folder is every
IDX file or image below it. In-memory arrays carry their own digest in config.data instead.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from cnnlab.errors import UserError, notice, option

from .builtin import BUILTIN, IDX_FILES, locate
from .common import os_error
from .idx import idx_file
from .image_folders import IMAGE_SUFFIXES

WHOLE_LIMIT = 1 << 30  # files up to 1 GiB are hashed whole
END_BYTES = 64 << 20  # beyond, their first and last 64 MiB
CHUNK = 1 << 20
MEMORY_PREFIX = "memory:"  # config.data of in-memory arrays: "memory:sha256=...;train=NxCxHxW"


@lru_cache(maxsize=4096)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file (or of its two ends); cached per size and modification time, so the runs of one
    study hash their shared files once."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_LIMIT:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        else:
            for start in (0, size - END_BYTES):
                f.seek(start)
                left = END_BYTES
                while left and (chunk := f.read(min(CHUNK, left))):
                    digest.update(chunk)
                    left -= len(chunk)
    return digest.hexdigest()


def _source_files(data: str, data_dir: str | None) -> tuple[Path, list[Path]]:
    """(the folder names are relative to, the files the dataset is read from)."""
    if data in BUILTIN:
        folder = locate(BUILTIN[data], data_dir, download=False)
        return folder, [idx_file(folder, stem) for stem in IDX_FILES]
    path = Path(data).expanduser()
    if path.is_dir():  # what the readers take from a folder: IDX files or images (not e.g. runs written inside)
        return path, sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                            and (p.name.startswith(("train-", "t10k-")) or p.suffix.lower() in IMAGE_SUFFIXES))
    return path.parent, [path]


def files_fingerprint(data: str, data_dir: str | None = None) -> dict[str, dict] | None:
    """{file relative to the dataset: {"size": bytes, "sha256": hex}}; None for in-memory arrays."""
    if data.startswith(MEMORY_PREFIX):
        return None
    root, files = _source_files(data, data_dir)
    out = {}
    for file in files:
        try:
            stat = file.stat()
            out[str(file.relative_to(root))] = {"size": stat.st_size, "sha256": _digest(str(file), stat.st_size,
                                                                                       stat.st_mtime_ns)}
        except OSError as exc:
            raise os_error(file, exc) from None
    return out


def what_changed(stored: dict[str, dict], current: dict[str, dict]) -> str | None:
    """One phrase naming the first difference, or None when the files are the same. A single-file dataset is
    compared by content alone: the same file under another name (a link, a renamed copy) is the same data."""
    if len(stored) == len(current) == 1:
        (old_name, old), (new_name, new) = next(iter(stored.items())), next(iter(current.items()))
        if old == new:
            return None
        if old_name != new_name:
            return f"{new_name} is not {old_name}: {old['size']:,} -> {new['size']:,} bytes, another SHA-256"
    for name in sorted(set(stored) | set(current)):
        if name not in current:
            return f"{name} is gone"
        if name not in stored:
            return f"{name} is new"
        if stored[name]["size"] != current[name]["size"]:
            return f"{name} changed size ({stored[name]['size']:,} -> {current[name]['size']:,} bytes)"
        if stored[name]["sha256"] != current[name]["sha256"]:
            return f"{name} changed content (same size, another SHA-256)"
    return None


def require_same_files(stored: dict | None, data: str, data_dir: str | None, what: str) -> None:
    """Refuse to continue `what` on data files that differ from the ones it started on; warn (one line)
    when it recorded none (written before cnnlab kept fingerprints)."""
    if data.startswith(MEMORY_PREFIX):
        return  # the arrays' digest is config.data itself, checked when they are passed again
    if stored is None:
        notice(f"{what}: written before cnnlab recorded data fingerprints; its data cannot be checked")
        return
    changed = what_changed(stored, files_fingerprint(data, data_dir) or {})
    if changed:
        raise UserError(f"{what}: the data differs from what it was trained on ({changed}); restore the data, "
                        f"or start a new run (another {option('out')})")
