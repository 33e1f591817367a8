"""Run directories: the only interface between training and everything after it.

Layout of a run directory (the names are the constants below; no other module spells them):
    config.json              resolved training configuration
    env.json                 package versions, device, git commit
    history.csv              one row per finished epoch, written as training goes
    metrics.json             status while training; final metrics, timing and status at the end
    checkpoint.safetensors   everything needed to resume (weights, optimizer, schedules, RNG)
    logits.safetensors       validation/test logits and labels
    model.safetensors        final weights; model.json beside it says how to rebuild the model
    model.json               written last: its presence marks the run finished for every reader
    samples.safetensors      runs on in-memory arrays only: up to 256 validation images (uint8), their
                             labels and their positions in the validation split, for figures and export checks

Every safetensors file written here (weights, checkpoint, logits, samples) carries a SHA-256 of its
content in its own header (`INTEGRITY_KEY`); reading it back recomputes it, so a damaged or edited file is
one line instead of different predictions (files without one, from before, load as they did).

`RunDir.status()` is the one definition of fresh / running / interrupted / failed / finished.
"Running" means a live process holds the directory's owner lock (filelock: the kernel drops the
lock when its process dies, so a killed owner never blocks anyone). Every file is written to a
temporary name and renamed, so a killed process never leaves half a file that looks whole.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cnnlab.errors import UserError, either, option

CONFIG = "config.json"
ENV = "env.json"
HISTORY = "history.csv"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint.safetensors"
LOGITS = "logits.safetensors"
WEIGHTS = "model.safetensors"
MODEL = "model.json"
SAMPLES = "samples.safetensors"
OWNER_LOCK = ".owner.lock"
# the command-line advice beside its Python call (errors.either): quoted commands, kept out of f-strings
ENSEMBLE_COMMAND, RESUME_COMMAND = "'cnnlab ensemble' command", "'cnnlab train --resume RUN'"
COMBINE_COMMAND = "'cnnlab ensemble combine DIR'"

FRESH, RUNNING, INTERRUPTED, FAILED, FINISHED = "fresh", "running", "interrupted", "failed", "finished"
DAMAGED = "If it is damaged, restore it from a copy or train again"
INTEGRITY_KEY = "cnnlab_sha256"  # safetensors metadata entry: content_digest of the file as written
ALTERED = "its bytes differ from what cnnlab wrote (SHA-256 mismatch: the file was damaged or edited)"
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


# ------------------------------------------------------------------ atomic files


def os_error(path: Path, exc: OSError) -> UserError:
    """Operating-system errors a user can fix, as one line naming the path and the fix."""
    reason = {errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
              errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
              errno.EACCES: "permission denied; choose a folder you can write to",
              errno.EPERM: "permission denied; choose a folder you can write to",
              errno.EROFS: "read-only file system; choose a folder you can write to",
              errno.ENOENT: "cannot be created there; choose another path",
              errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
              errno.EEXIST: "a part of this path is a file, not a folder; choose another path",
              errno.EISDIR: "this path is a folder; give a file name"}.get(exc.errno)
    error = UserError(f"{path}: {reason or exc.strerror or exc}")
    error.errno = exc.errno  # a full disk: `cnnlab train` adds how to continue once there is room
    return error


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The file gets the user's normal permissions (umask), not mkstemp's 0600."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise os_error(path, exc) from None
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        raise os_error(path, exc) from None
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
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the file was edited or damaged") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read; give a flat object of settings") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits (Python's int_max_str_digits)
        raise UserError(f"{path}: not usable JSON ({str(exc)[:120]}); give settings of ordinary size") from None
    except OSError as exc:
        raise os_error(path, exc) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}; the file was edited or damaged")
    return data


def write_csv(path: str | Path, rows: list[dict]) -> None:
    with atomic_target(path) as tmp:
        with open(tmp, "w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


def read_csv_rows(path: str | Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None


HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "train_seconds",
                   "eval_seconds")  # what the engine writes for every epoch (NaN where there is no validation split)


def read_history(path: str | Path) -> list[dict]:
    """The one reader of history.csv: its rows as written, after checking every row's epoch is a whole number and
    every column of HISTORY_COLUMNS is there holding a number (nan and inf included); anything else is one line
    naming the file, the row (the header is row 1) and what is wrong."""
    path = Path(path)
    fix = "the file is damaged; restore it from a copy or train the run again"
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames
            if columns is None:  # the engine writes history.csv after an epoch, never empty
                raise UserError(f"{path}: empty (not even a header); {fix}")
            if "epoch" not in columns:
                raise UserError(f"{path}: no epoch column (the header is {_listed(columns)}); {fix}")
            rows = []
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise UserError(f"{path}: row {line}: more values than the header has columns; {fix}")
                epoch = row["epoch"]
                if epoch is None:
                    raise UserError(f"{path}: row {line}: fewer values than the header has columns; {fix}")
                try:
                    whole = int(epoch) >= 1
                except ValueError:
                    whole = False
                if not whole:
                    kind = "not a number" if not _is_number(epoch) else "not an epoch number (1, 2, ...)"
                    raise UserError(f"{path}: row {line}: epoch {_shown(epoch)} is {kind}; {fix}")
                for key in HISTORY_COLUMNS[1:]:
                    value = row.get(key, "")
                    if value is None:
                        raise UserError(f"{path}: row {line}: fewer values than the header has columns; {fix}")
                    if key in row and not _is_number(value):
                        raise UserError(f"{path}: row {line}: {key} {_shown(value)} is not a number; {fix}")
                rows.append(row)
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable CSV file ({exc}); {fix}") from None
    missing = [c for c in HISTORY_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{path}: no {_listed(missing)} {'column' if len(missing) == 1 else 'columns'}; {fix}")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shown(value: str) -> str:
    """A value of a damaged file as a message shows it: quoted, control characters escaped, long ones cut."""
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _listed(names) -> str:
    shown = [_shown(n) if n else "''" for n in names]
    return ", ".join(shown[:12]) + (f" and {len(shown) - 12} more" if len(shown) > 12 else "")


def content_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over what a safetensors file holds: every metadata entry but INTEGRITY_KEY, then every tensor's
    name, dtype, shape and bytes, by name. Of the content, not the raw file: a header cannot hold a hash of
    itself, and a digest inside the file is renamed into place with it (atomic, unlike a sidecar written each
    epoch beside the checkpoint) and travels with it (ensembles copy model.json; users copy the weights).
    Measured, 2-core AMD EPYC (Zen 5, SHA-NI), 28x28 inputs: 1.3 ms for tuned-cnn's 2.5 MB weights (cnn1's 2.8 MB:
    1.4), as fast as sha256 streamed over the file; a 7.4 MB checkpoint 4-8 ms, beside 14-24 ms to save it."""
    digest = hashlib.sha256()
    for key in sorted(k for k in metadata if k != INTEGRITY_KEY):
        digest.update(json.dumps(["meta", key, metadata[key]]).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(json.dumps(["tensor", name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the length follows from dtype and shape
    return digest.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {k: v for k, v in (metadata or {}).items() if k != INTEGRITY_KEY}
    metadata[INTEGRITY_KEY] = content_digest(tensors, metadata)
    with atomic_target(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # safetensors reports OS errors (a full disk) as its own type
            code = re.search(r"os error (\d+)", str(exc))
            if code:
                raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
            raise


def load_tensors(path: str | Path, fix: str = "restore it from a copy or train again") -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle, a truncated file) is refused clearly, and so is a file
    whose content no longer matches the digest it was written with (`fix`: what the user can do then)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), "pt") as f:  # as safetensors' load_file, keeping the metadata
            metadata, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a valid safetensors weights file ({exc}); cnnlab never unpickles files. {DAMAGED}") from None
    recorded = metadata.get(INTEGRITY_KEY)  # None: written before cnnlab recorded one, or by another tool
    if recorded is not None and content_digest(tensors, metadata) != recorded:
        raise UserError(f"{path}: {ALTERED}; {fix}")
    return tensors


def tensor_metadata(path: str | Path) -> dict:
    """The JSON a checkpoint or weights file carries in its safetensors metadata under 'cnnlab'."""
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("cnnlab", "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a valid safetensors file ({exc}). {DAMAGED}") from None


def remove_stale_temporaries(folder: Path) -> int:
    """Temporary files a killed process left behind (atomic_target's .NAME.XXXXXXXX.tmp)."""
    removed = 0
    if folder.is_dir():
        for path in folder.iterdir():
            if TEMP_PATTERN.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


# ------------------------------------------------------------------ the run directory


class RunDir:
    """One run directory: names, status, ownership, writing and reading back."""

    def __init__(self, path: str | Path):
        if not isinstance(path, (str, os.PathLike)):  # None or 5 from the Python API: Path() raised a TypeError
            raise UserError(f"expected a run directory's path (a str or Path), got {type(path).__name__}")
        self.path = Path(path)
        self._lock = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    # -------------------------------------------------------------- naming and ownership

    @classmethod
    def create(cls, out: str | Path, prefix: str) -> "RunDir":
        """A new, empty directory OUT/PREFIX-YYYYmmdd-HHMMSS (then -2, -3, ...), claimed with an atomic
        mkdir, so two processes started in the same second never share one."""
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(out, exc) from None
        base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
        for k in range(1, 10_000):
            path = out / (base if k == 1 else f"{base}-{k}")
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
            except OSError as exc:
                raise os_error(path, exc) from None
        raise UserError(f"{out}: cannot find a free run directory name for {base}")

    def _owner_lock(self):
        if self._lock is None:
            self._lock = FileLock(str(self.file(OWNER_LOCK)), thread_local=False)
        return self._lock

    def try_own(self) -> bool:
        """Take the owner lock without waiting; False if another live process holds it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._owner_lock().acquire(timeout=0)
        except Timeout:
            return False
        except OSError as exc:
            raise os_error(self.path, exc) from None
        remove_stale_temporaries(self.path)  # we own it: any temporary file is a dead writer's
        return True

    def wait_own(self, poll: float = 0.5) -> None:
        """Take the owner lock, waiting for the current owner to finish."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._owner_lock().acquire(poll_interval=poll)
        remove_stale_temporaries(self.path)

    @contextlib.contextmanager
    def owned(self) -> Iterator["RunDir"]:
        """Hold the owner lock for the block (kept if this object holds it already)."""
        if self.holds():
            yield self
            return
        if not self.try_own():
            raise UserError(f"{self.path}: another process is training into this run directory; "
                            "wait for it to finish or choose another directory")
        try:
            yield self
        finally:
            self.release()

    def holds(self) -> bool:
        """Whether this object holds the owner lock."""
        return self._lock is not None and self._lock.is_locked

    def release(self) -> None:
        if self._lock is not None and self._lock.is_locked:
            self._lock.release()

    def is_owned_elsewhere(self) -> bool:
        """A live process (another one, or another RunDir object here) holds the owner lock."""
        if not self.file(OWNER_LOCK).exists() or (self._lock is not None and self._lock.is_locked):
            return False
        probe = FileLock(str(self.file(OWNER_LOCK)), thread_local=False)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:
            return False
        probe.release()
        return False

    # -------------------------------------------------------------- status

    def status(self) -> str:
        """fresh | running | interrupted | failed | finished, defined here only.

        finished: model.json exists (written last). running: a live process owns the directory.
        failed: the run stopped on an error it recorded (e.g. a non-finite loss). interrupted:
        training started and stopped without finishing (Ctrl-C, kill, crash). fresh: nothing yet."""
        if self.file(MODEL).is_file():
            return FINISHED
        if not self.path.is_dir():
            return FRESH
        if self.is_owned_elsewhere():
            return RUNNING
        recorded = self._recorded_status()
        if recorded == FAILED:
            return FAILED
        if recorded is not None or self.file(CHECKPOINT).is_file() or self.file(HISTORY).is_file():
            return INTERRUPTED
        return FRESH

    def _recorded_status(self) -> str | None:
        try:
            return json.loads(self.file(METRICS).read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            return None

    def is_finished(self) -> bool:
        return self.status() == FINISHED

    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).is_file()

    def resumable(self) -> bool:
        """The one answer to "does a rerun continue this run?": it stopped unfinished with a checkpoint."""
        return self.status() == INTERRUPTED and self.has_checkpoint()

    def checkpoint_epoch(self) -> int | None:
        """The epoch its checkpoint was written after (None without one)."""
        if not self.has_checkpoint():
            return None
        return tensor_metadata(self.file(CHECKPOINT)).get("train_state", {}).get("epoch")

    def require_finished(self) -> "RunDir":
        if self.path.is_file():
            raise UserError(f"{self.path}: is a file, not a run directory (a folder that `cnnlab train` wrote)")
        if not self.path.is_dir():
            raise UserError(f"{self.path}: no such run directory")
        if not self.file(MODEL).is_file():
            # the group folders' own files, named here as text: runs sits below studies and ensembles
            if self.file("ensemble_settings.json").is_file():
                raise UserError(f"{self.path}: an ensemble whose vote is not written yet; run the same "
                                f"{either(ENSEMBLE_COMMAND, 'cnnlab.ensemble(...) call')} again to finish "
                                "it")
            if self.file("study.json").is_file():
                raise UserError(f"{self.path}: a study folder, not one run; give one of its runs "
                                f"({self.path / 'runs'}/NAME-seedS)")
            if not self.file(CONFIG).is_file():
                raise UserError(f"{self.path}: not a cnnlab run directory (no {CONFIG}); train one with {_train()}")
            raise UserError(f"{self.path}: not a finished cnnlab run directory (no {MODEL}; status: {self.status()}); "
                            f"train one with {_train()} or resume it with "
                            f"{either(RESUME_COMMAND, 'cnnlab.train(..., resume=run)')}")
        return self

    def clear(self) -> None:
        """Remove what a run wrote (not the owner lock): a run that never finished an epoch starts over."""
        for name in (CONFIG, ENV, HISTORY, METRICS, CHECKPOINT, LOGITS, WEIGHTS, SAMPLES, MODEL):
            self.file(name).unlink(missing_ok=True)

    # -------------------------------------------------------------- writing

    def write_start(self, config: dict, env: dict) -> None:
        self.write_config(config)
        write_json(self.file(ENV), env)

    def write_config(self, config: dict) -> None:
        write_json(self.file(CONFIG), config)

    def write_status(self, status: str, **extra) -> None:
        write_json(self.file(METRICS), {"status": status, **extra})

    def write_history(self, rows: list[dict]) -> None:
        write_csv(self.file(HISTORY), rows)

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        save_tensors(self.file(CHECKPOINT), tensors, {"cnnlab": json.dumps(meta, default=str)})

    def write_result(self, metrics: dict, logits: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                     model_meta: dict) -> None:
        """Final files; model.json last, so 'finished' is atomic for every reader."""
        self.file(MODEL).unlink(missing_ok=True)
        save_tensors(self.file(LOGITS), logits)
        save_tensors(self.file(WEIGHTS), weights, {"cnnlab": json.dumps(model_meta)})
        write_json(self.file(METRICS), metrics)
        write_json(self.file(MODEL), model_meta)

    def write_samples(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """A sample of the validation split kept in the run (uint8 images, labels, positions in the split)."""
        save_tensors(self.file(SAMPLES), {"images": images, "labels": labels, "indices": indices})

    def read_files(self) -> dict[str, bytes]:
        """Every file of the run (a Ray task returns them to the driver); not the lock, not temporaries."""
        return {p.name: p.read_bytes() for p in sorted(self.path.iterdir())
                if p.is_file() and p.name != OWNER_LOCK and not TEMP_PATTERN.match(p.name)}

    def write_files(self, files: dict[str, bytes]) -> None:
        """Write a run's files as read_files returned them, each atomically, model.json last."""
        self.file(MODEL).unlink(missing_ok=True)
        for name in sorted(files, key=lambda n: n == MODEL):
            if "/" in name or name.startswith(".") or name in ("", OWNER_LOCK):
                raise UserError(f"{self.path}: refusing to write a run file named {name!r}")
            with atomic_target(self.file(name)) as tmp:
                tmp.write_bytes(files[name])

    def unfinish(self) -> None:
        """Training is about to change the weights (resume, extend): the old result no longer holds."""
        self.file(MODEL).unlink(missing_ok=True)

    # -------------------------------------------------------------- reading

    def read_config(self) -> dict:
        return _checked(read_json(self.file(CONFIG)), self.file(CONFIG), {"model": str, "data": str, "seed": int})

    def read_env(self) -> dict:
        return read_json(self.file(ENV)) if self.file(ENV).is_file() else {}

    def read_metrics(self) -> dict:
        return _checked(read_json(self.file(METRICS)), self.file(METRICS), {"status": str})

    def read_model_meta(self) -> dict:
        keys = {"num_classes": int, "class_names": list, "class_ids": list, "input_shape": list}
        meta = read_json(self.file(MODEL))
        if not meta.get("ensemble"):
            keys["spec"] = dict
        meta = _checked(meta, self.file(MODEL), keys)
        counts = {len(meta["class_names"]), len(meta["class_ids"]), meta["num_classes"],
                  meta.get("spec", {}).get("num_classes", meta["num_classes"])}
        if len(counts) > 1:
            raise UserError(f"{self.file(MODEL)}: its class count, class names and model spec disagree; "
                            "the file was edited or copied from another run: retrain the run or restore the file")
        return meta

    def history(self) -> list[dict]:
        """history.csv's rows (values as written), checked: every column the engine writes is there and holds
        numbers, so a damaged or edited file is one line naming it, never a KeyError or ValueError later."""
        if not self.file(HISTORY).is_file():
            raise UserError(f"{self.path}: no {HISTORY} (no finished epoch yet)")
        return read_history(self.file(HISTORY))

    def history_frame(self):
        """The history as a pandas DataFrame (numbers as numbers)."""
        if not self.file(HISTORY).is_file():
            return pd.DataFrame()
        self.history()  # checked as every reader checks it: a damaged file is one line, not a frame of strings
        return pd.read_csv(self.file(HISTORY))

    def logits(self, split: str):
        """(logits N x classes float32 numpy, labels numpy) stored for the split."""
        tensors = load_tensors(self.file(LOGITS), logits_fix())
        if f"{split}_logits" not in tensors or f"{split}_labels" not in tensors:
            raise UserError(f"{self.path}: no {split} split in this run (its dataset has no labeled {split} split)")
        logits, labels = tensors[f"{split}_logits"], tensors[f"{split}_labels"]
        damaged = (logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels) or not logits.is_floating_point()
                   or labels.is_floating_point() or not torch.isfinite(logits).all()
                   or (len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1])))
        if damaged:
            raise UserError(f"{self.file(LOGITS)}: the stored {split} logits or labels are inconsistent; the file was "
                            f"edited or damaged (retrain the run, or rerun {either('`cnnlab ensemble combine`', 'cnnlab.combine(dir)')} "
                            "for an ensemble)")
        if self.file(MODEL).is_file() and logits.shape[1] != self.read_model_meta()["num_classes"]:
            raise UserError(f"{self.path}: {MODEL} says {self.read_model_meta()['num_classes']} classes but the stored "
                            f"{split} logits have {logits.shape[1]}; {MODEL} was edited or copied from another run: "
                            "retrain the run or restore the file")
        return logits.float().numpy(), labels.numpy()

    def has_logits(self, split: str) -> bool:
        return f"{split}_logits" in load_tensors(self.file(LOGITS), logits_fix())

    def samples(self) -> tuple | None:
        """(uint8 images N x C x H x W, labels, positions in the validation split) as numpy, or None without them."""
        if not self.file(SAMPLES).is_file():
            return None
        tensors = load_tensors(self.file(SAMPLES), "restore it from a copy or train the run again")
        images, labels, indices = (tensors.get(k) for k in ("images", "labels", "indices"))
        if images is None or labels is None or indices is None or images.dtype != torch.uint8 or images.ndim != 4 \
                or not len(images) == len(labels) == len(indices):
            raise UserError(f"{self.file(SAMPLES)}: the stored validation sample is inconsistent; the file was edited "
                            "or damaged (retrain the run)")
        return images.numpy(), labels.numpy(), indices.numpy()

    def weights(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.file(WEIGHTS), "restore it from a copy or train the run again")

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        path = self.file(CHECKPOINT)
        fix = f"restore it from a copy, or train a new run without {option('resume')} (this one is left as it is)"
        return load_tensors(path, fix), tensor_metadata(path)


def logits_fix() -> str:
    return ("restore it from a copy or train the run again (an ensemble: run "
            f"{either(COMBINE_COMMAND, 'cnnlab.combine(dir)')} again)")


def _train() -> str:
    """How the user trains a run, in the words of the surface they use."""
    return either("'cnnlab train'", "cnnlab.train(...)")


def _checked(data: dict, path: Path, keys: dict[str, type]) -> dict:
    """Schema check of a run file before use: an edited or damaged file is one clear line, not a KeyError."""
    for key, kind in keys.items():
        value = data.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"{path}: {key!r} is missing or not a {kind.__name__} (found {value!r}); "
                            "the file was edited or damaged; retrain the run or restore the file")
    return data


class ReadOnlyRunDir(RunDir):
    """A run directory another process writes (torchrun's rank 0): this one reads it and writes nothing."""

    def owned(self):
        return contextlib.nullcontext(self)

    def _skip(self, *args, **kwargs) -> None:
        return None

    write_start = write_config = write_status = write_history = save_checkpoint = write_result = write_files = _skip
    write_samples = _skip
    clear = unfinish = _skip
