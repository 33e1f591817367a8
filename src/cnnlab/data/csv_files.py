"""Kaggle-style CSV: a header row, optional `label` and `id` columns, then one column per pixel of a square image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

from .formats import GZIP_MAGIC, RawSplit, _human, gunzip, memory_bytes, one_line, read_file, validate_arrays


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: Path) -> RawSplit:
    """Kaggle layout: a header row, optional `label` column, optional `id` column, then one column per pixel."""
    import pandas as pd

    raw = read_file(path)
    if raw[:2] == GZIP_MAGIC:
        raw = gunzip(raw, path)
        if len(raw) > memory_bytes():
            raise UserError(f"{path}: decompresses to more than this machine's memory ({_human(memory_bytes())}); "
                            "split it or use a machine with more memory")
    try:
        # header=None: the first row is read as data, so rows longer than the header are an error
        # instead of pandas silently turning the first column into an index
        table = pd.read_csv(io.BytesIO(raw), header=None, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the CSV file is empty") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: ragged CSV rows ({one_line(exc)}); every row needs the same number of values") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV file (not UTF-8); save it as CSV text") from None
    except (ValueError, OverflowError, MemoryError) as exc:
        raise UserError(f"{path}: cannot read as CSV ({one_line(exc)})") from None
    header = [str(c).strip().lstrip("\ufeff").strip().lower() for c in table.iloc[0]]
    frame = table.iloc[1:].reset_index(drop=True)
    if header and all(_is_number(c) for c in header):
        raise UserError(f"{path}: the first row holds numbers, not column names; add a header row such as "
                        "label,pixel1,pixel2,... (Kaggle's layout)")
    if len(set(header)) != len(header):
        dup = next(c for c in header if header.count(c) > 1)
        raise UserError(f"{path}: column {dup!r} appears twice in the header; give every column its own name")
    frame.columns = header
    if len(frame) == 0:
        raise UserError(f"{path}: the dataset is empty (header but no rows)")
    labels_col = "label" if "label" in header else None
    id_col = next((c for c in ("id", "imageid", "image_id") if c in header), None)
    pixel_cols = [c for c in header if c not in (labels_col, id_col)]
    if not pixel_cols:
        raise UserError(f"{path}: no pixel columns; after label/id, give one column per pixel")
    empty = frame[pixel_cols] == ""
    if empty.values.any():
        row = int(empty.any(axis=1).values.argmax())
        raise UserError(f"{path}: row {row + 2} has fewer values than the header's {len(header)} columns, or an "
                        "empty cell (ragged rows); every row needs one value per column")
    try:
        pixels = frame[pixel_cols].to_numpy().astype(np.float64)
    except (ValueError, OverflowError):
        numeric = frame[pixel_cols].apply(pd.to_numeric, errors="coerce")
        bad = np.argwhere(numeric.isna().to_numpy())
        row, col = bad[0] if len(bad) else (0, 0)
        raise UserError(f"{path}: non-numeric pixel value {frame[pixel_cols].iat[row, col]!r} "
                        f"in row {row + 2}, column {pixel_cols[col]!r}") from None
    labels = None
    if labels_col:
        numeric = pd.to_numeric(frame[labels_col], errors="coerce")
        if numeric.isna().any():
            row = int(numeric.isna().values.argmax())
            raise UserError(f"{path}: labels must be integers, found {frame[labels_col].iat[row]!r} in row {row + 2}")
        labels = numeric.to_numpy(dtype=np.float64)
    ids = frame[id_col].tolist() if id_col else None
    images, labels = validate_arrays(pixels, labels, str(path))
    return RawSplit(images, labels, ids=ids)
