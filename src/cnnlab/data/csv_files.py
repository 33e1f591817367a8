"""Kaggle-style CSV: a header row, optional `label` and `id` columns, then one column per pixel of a square image.

Pixel columns named pixel0..pixelN-1 or pixel1..pixelN are taken in the order of their numbers, wherever they
stand in the file (a tool that sorted the columns as text put pixel10 before pixel2); other names keep their
order in the file. The id column is `id` or `ImageId` (any case).

The header is checked on its own, before the rows are read or parsed: a file whose first line cannot be a
header of a square image (its width, numbers for names, a ';' or tab separator) is refused after reading
that line, however large the rest is. Pixels must be whole numbers 0..255; label problems are tagged
`file[labels]`; values quoted in messages are cut short.
"""

from __future__ import annotations

import collections
import csv
import gzip
import io
import math
import re
import zlib
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

from .common import (GZIP_MAGIC, RawSplit, human_size, gunzip, gzip_check, memory_bytes, one_line, os_error, shorten,
                      validate_arrays)

HEADER_LIMIT = 1 << 26  # bytes of the first line read for the header check (64 MiB: some 7 million columns)
ID_COLUMNS = ("id", "imageid", "image_id")
_SEPARATORS = {";": "';'", "\t": "tab", "|": "'|'", " ": "space"}


def _all_numbers(cells: list[str]) -> bool:
    """Whether every cell reads as a number (map and deque: C speed for a header of millions of cells)."""
    try:
        collections.deque(map(float, cells), maxlen=0)
    except (ValueError, TypeError):
        return False
    return bool(cells)


def _names(cells) -> list[str]:
    """Header cells as column names: stripped, lower case, a byte-order mark dropped."""
    names = [str(c).lower().strip() for c in cells]  # one call per cell: a header may have millions
    if names:
        names[0] = names[0].lstrip("\ufeff").strip()
    return names


def _foreign_separator(line: str) -> str | None:
    """';', tab, '|' or ' ' when `line` holds no comma but splits on one of these (quoted text aside)."""
    bare = re.sub(r'"[^"]*"', "", line) if '"' in line else line
    if "," in bare:
        return None
    counts = {sep: bare.count(sep) for sep in (";", "\t", "|")}
    best = max(counts, key=counts.get)
    if counts[best]:
        return best
    return " " if len(bare.split()) >= 3 else None


def _separator_error(path: Path, where: str, sep: str, line: str) -> UserError:
    return UserError(f"{path}: {where} looks {_SEPARATORS[sep]}-separated ({shorten(line)!r}); cnnlab reads "
                     "comma-separated CSV: save it with ',' between values")


def _numbers_error(path: Path) -> UserError:
    return UserError(f"{path}: the first row holds numbers, not column names; add a header row such as "
                     "label,pixel1,pixel2,... (Kaggle's layout)")


def _check_unique(header: list[str], path: Path) -> None:
    if len(set(header)) != len(header):
        seen: set[str] = set()
        for name in header:  # a set, not header.count: a header may have millions of columns
            if name in seen:
                raise UserError(f"{path}: column {shorten(name)!r} appears twice in the header; give every column "
                                "its own name")
            seen.add(name)


def _pixel_count(header: list[str], path: Path) -> tuple[str | None, int]:
    """The id column (or None) and the number of pixel columns, which must not be 0."""
    id_col = next((c for c in ID_COLUMNS if c in header), None)
    pixels = len(header) - ("label" in header) - (id_col is not None)
    if pixels <= 0:
        raise UserError(f"{path}: no pixel columns; after label/id, give one column per pixel")
    return id_col, pixels


def _check_names(header: list[str], path: Path) -> str | None:
    """The checks a header's names get whoever parsed them; returns the id column (or None)."""
    if _all_numbers(header):
        raise _numbers_error(path)
    _check_unique(header, path)
    return _pixel_count(header, path)[0]


def check_csv_header(first: bytes, path: Path) -> None:
    """Refuse a first line (bytes, as read) that cannot head a CSV of square images; the rows are not needed."""
    if len(first) >= HEADER_LIMIT and not first.endswith(b"\n"):
        return  # not all of it was read: the full parse judges it
    try:
        text = first.rstrip(b"\n").rstrip(b"\r").decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV file (not UTF-8); save it as CSV text") from None
    text = text.split("\r", 1)[0]  # old Mac line ends: the first line ends at the first CR
    if not text.strip() or text.count('"') % 2:
        return  # a blank first line (skipped by the parser) or a quoted cell spanning lines
    sep = _foreign_separator(text)
    if sep:
        raise _separator_error(path, "the header", sep, text)
    try:
        cells = next(csv.reader([text])) if '"' in text else text.split(",")
    except (csv.Error, StopIteration):
        return
    # cheap checks first, at C speed where possible: the file is one row of 3,000,000 numbers
    if _all_numbers(cells):
        raise _numbers_error(path)
    plain = text.lower() == text and not re.search(r"\s", text)  # names already as _names makes them
    names = cells if plain else _names(cells)
    _, pixels = _pixel_count(names, path)
    side = math.isqrt(pixels)
    if side * side != pixels:
        raise UserError(f"{path}: {pixels} pixels per row is not a square image (the header has {len(cells)} "
                        f"columns); give one column per pixel of a square H x W image, plus label/id")
    _check_unique(names, path)


def _check_first_row(raw: bytes, start: int, path: Path) -> None:
    """A first data row without commas but with ';' or tabs, under a comma-separated header: say so."""
    if b"," not in raw[:start]:
        return
    end = raw.find(b"\n", start, start + HEADER_LIMIT)
    line = raw[start: end if end >= 0 else start + HEADER_LIMIT].rstrip(b"\r")
    text = line.decode("utf-8", errors="replace")
    sep = _foreign_separator(text)
    if sep and sep != " ":
        raise _separator_error(path, "row 2", sep, text)


def _first_line_gz(packed: bytes, path: Path) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(packed)) as stream:
            return stream.readline(HEADER_LIMIT)
    except (EOFError, OSError, zlib.error) as exc:
        raise UserError(f"{path}: corrupt or truncated gzip file ({one_line(exc)}); download it again") from None


def _read_checked(path: Path) -> bytes:
    """The file's bytes (decompressed), its header checked before the rest is read."""
    try:
        with open(path, "rb") as fp:
            gzipped = fp.read(2) == GZIP_MAGIC
            fp.seek(0)
            if gzipped:
                packed = fp.read()
            else:
                first = fp.readline(HEADER_LIMIT)
                check_csv_header(first, path)
                raw = first + fp.read()
    except OSError as exc:
        raise os_error(path, exc) from None
    if gzipped:
        first = _first_line_gz(packed, path)
        try:
            check_csv_header(first, path)
        except UserError:
            gzip_check(packed, path)  # a damaged stream is the better explanation of a garbled header
            raise
        raw = gunzip(packed, path)
        if len(raw) > memory_bytes():
            raise UserError(f"{path}: decompresses to more than this machine's memory ({human_size(memory_bytes())}); "
                            "split it or use a machine with more memory")
    _check_first_row(raw, len(first), path)
    return raw


_PIXEL_NAME = re.compile(r"pixel([0-9]+)")


def _pixel_order(pixel_cols: list[str], path: Path) -> list[str]:
    """The pixel columns in image order: by number when they are named pixel<number>, else as in the file."""
    numbers = [m and int(m.group(1)) for m in map(_PIXEL_NAME.fullmatch, pixel_cols)]
    if not any(n is not None for n in numbers):
        return pixel_cols
    odd = next((c for c, n in zip(pixel_cols, numbers) if n is None), None)
    if odd is not None:  # guessing where it goes would shift every pixel after it
        raise UserError(f"{path}: column {shorten(odd)!r} is neither id, label nor a pixel<number> column like the "
                        "others; rename or remove it")
    ordered = sorted(zip(numbers, pixel_cols), key=lambda pair: pair[0])  # stable: ties named in file order
    for (n, first), (m, second) in zip(ordered, ordered[1:]):
        if n == m:
            raise UserError(f"{path}: columns {shorten(first)!r} and {shorten(second)!r} are both pixel {n}; give "
                            "each pixel one column")
    numbers = [n for n, _ in ordered]
    if numbers[0] not in (0, 1):
        raise UserError(f"{path}: the pixel columns start at {shorten(ordered[0][1])!r}; number them from pixel0 "
                        "or pixel1, one column per pixel")
    if numbers[-1] - numbers[0] + 1 != len(numbers):
        have = set(numbers)
        missing = next(n for n in range(numbers[0], numbers[-1]) if n not in have)
        raise UserError(f"{path}: column 'pixel{missing}' is missing between {shorten(ordered[0][1])!r} and "
                        f"{shorten(ordered[-1][1])!r}; give one column per pixel")
    return [c for _, c in ordered]


def read_csv(path: Path, with_labels: bool = True) -> RawSplit:
    """Kaggle layout: a header row, optional `label` column, optional `id` column, then one column per pixel.

    with_labels=False (images to predict on): a label column is left out, unread."""
    raw = _read_checked(path)
    import pandas as pd  # after the header check: a refusal need not wait for the import

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
    header = _names(table.iloc[0])
    frame = table.iloc[1:].reset_index(drop=True)
    id_col = _check_names(header, path)
    frame.columns = header
    if len(frame) == 0:
        raise UserError(f"{path}: the dataset is empty (header but no rows)")
    labels_col = "label" if "label" in header else None
    pixel_cols = _pixel_order([c for c in header if c not in (labels_col, id_col)], path)
    empty = frame[pixel_cols] == ""
    if empty.values.any():
        row = int(empty.any(axis=1).values.argmax())
        raise UserError(f"{path}: row {row + 2} has fewer values than the header's {len(header)} columns, or an "
                        "empty cell (ragged rows); every row needs one value per column")

    def cell(row: int, col: int) -> str:
        return f"{shorten(frame[pixel_cols].iat[row, col])!r} in row {row + 2}, column {shorten(pixel_cols[col])!r}"

    try:
        pixels = frame[pixel_cols].to_numpy().astype(np.float64)
    except (ValueError, OverflowError):
        numeric = frame[pixel_cols].apply(pd.to_numeric, errors="coerce")
        bad = np.argwhere(numeric.isna().to_numpy())
        raise UserError(f"{path}: non-numeric pixel value {cell(*(bad[0] if len(bad) else (0, 0)))}") from None
    finite = np.isfinite(pixels)
    fractional = finite & (pixels != np.round(pixels))
    if fractional.any() and pixels[finite].max() > 1:  # all in 0..1: validate_arrays says "scaled to 0..1"
        raise UserError(f"{path}: pixel value {cell(*np.argwhere(fractional)[0])} is not a whole number; CSV pixels "
                        "are integers 0..255, save them without decimals")
    labels = None
    if labels_col and with_labels:
        numeric = pd.to_numeric(frame[labels_col], errors="coerce")
        if numeric.isna().any():
            row = int(numeric.isna().values.argmax())
            raise UserError(f"{path}[labels]: labels must be integers, found {shorten(frame[labels_col].iat[row])!r} "
                            f"in row {row + 2}")
        labels = numeric.to_numpy(dtype=np.float64)
    ids = frame[id_col].tolist() if id_col else None
    images, labels = validate_arrays(pixels, labels, str(path), labels_source=f"{path}[labels]")
    return RawSplit(images, labels, ids=ids)
