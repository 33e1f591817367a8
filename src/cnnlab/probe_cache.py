"""The figures of this machine's timed probes (the compile and layout probes, the CPU's bf16 products), kept per
machine in $CNNLAB_CACHE_DIR (default ~/.cache/cnnlab/) so a later run reads them instead of timing again."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from cnnlab import runs
from cnnlab.data.builtin import cache_dir
from cnnlab.errors import UserError

CACHE_ENV = "CNNLAB_CACHE_DIR"  # where the probes' figures are kept (tests: a temporary folder)


def cache_path(name: str) -> Path:
    return Path(os.environ.get(CACHE_ENV) or cache_dir()) / name


def read_cache(name: str) -> dict:
    try:
        data = json.loads(cache_path(name).read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: probe again
    return data if isinstance(data, dict) else {}


def remember(key: str, figures: dict, name: str) -> None:
    data = read_cache(name)
    data[key] = figures
    try:
        runs.write_json(cache_path(name), data)  # atomically: a reader sees the old file or the new one
    except UserError:
        pass  # a cache that cannot be written costs the next run a probe, nothing more


def positive_numbers(entry, keys: tuple[str, ...]) -> bool:
    """Whether a cached entry holds every figure named, each a finite positive number (else: probe again)."""
    if not isinstance(entry, dict):
        return False
    values = [entry.get(k) for k in keys]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values)
