"""Group directories: the one owner of a study's, an ensemble's or a search's folder, beside RunDir.

A group directory holds a settings file fixed by its first invocation (later ones must agree),
ordinary run directories under one subfolder, and for fused ensembles `groups.json` (which attempts
trained together). Its shared files are changed under one lock (filelock, like run directories).
Whether a run continues is RunDir's answer alone (`RunDir.resumable`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock

from cnnlab import runs
from cnnlab.runs import RunDir

LOCK_FILE = ".lock"
GROUPS_FILE = "groups.json"  # attempt -> the attempts of its fused group


@contextlib.contextmanager
def directory_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on a directory's shared files, across processes (the directory is made if missing)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise runs.os_error(path, exc) from None
    with FileLock(str(path / LOCK_FILE), thread_local=False):
        yield


class GroupDir:
    def __init__(self, path: str | Path, settings_file: str, runs_folder: str):
        self.path = Path(path)
        self.settings_file, self.runs_folder = settings_file, runs_folder

    def __str__(self) -> str:
        return str(self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator["GroupDir"]:
        """An exclusive lock on the directory's shared files."""
        with directory_lock(self.path):
            yield self

    # -------------------------------------------------------------- settings

    @property
    def settings_path(self) -> Path:
        return self.path / self.settings_file

    def has_settings(self) -> bool:
        return self.settings_path.is_file()

    def read_settings(self) -> dict:
        return runs.read_json(self.settings_path)

    def fix_settings(self, wanted: dict, merge: Callable[[dict, dict], dict] | None = None) -> dict:
        """Write `wanted` on the first invocation; later, `merge(stored, wanted)` decides (it raises a
        UserError when they disagree) and its result is written. Returns the settings in force.
        Call it only after the inputs were validated: a refused command leaves no settings behind."""
        with self.locked():
            if self.has_settings():
                stored = self.read_settings()
                settings = merge(stored, wanted) if merge else stored
                if settings == stored:
                    return stored
            else:
                settings = wanted
            runs.write_json(self.settings_path, settings)
        return settings

    # -------------------------------------------------------------- runs

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / self.runs_folder / name)

    def run_dirs(self) -> list[RunDir]:
        return [RunDir(p) for p in sorted((self.path / self.runs_folder).glob("*")) if p.is_dir()]

    def status_summary(self) -> dict[str, int]:
        """How many runs are fresh, running, interrupted, failed and finished."""
        return dict(Counter(run.status() for run in self.run_dirs()))

    # -------------------------------------------------------------- fused groups (ensembles)

    def read_groups(self) -> dict[str, list[int]]:
        path = self.path / GROUPS_FILE
        return runs.read_json(path) if path.is_file() else {}

    def record_group(self, attempts: list[int]) -> None:
        """Record that these attempts train together, so a rerun can resume the group whole."""
        with self.locked():
            groups = self.read_groups()
            groups.update({str(a): attempts for a in attempts})
            runs.write_json(self.path / GROUPS_FILE, groups)
