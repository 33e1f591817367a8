"""Hyperparameter search with Optuna (the report used hyperas/hyperopt, section 1.4.3).

Each trial is an ordinary training run (DIR/trials/trial-NNNN) whose per-epoch validation accuracy
is reported to Optuna, so unpromising trials are pruned early. Studies live in a journal file by
default (several processes on one machine) or in any database Optuna accepts (PostgreSQL for
workers on several machines). A worker killed mid-trial loses only that trial: a database's
heartbeat marks it failed and retries it; with a journal file, the next worker on the same machine
sees the dead process, marks the trial failed and queues its parameters again.
"""

from __future__ import annotations

import base64
import contextlib
import html
import inspect
import json
import math
import os
import re
import socket
import tempfile
import time
import tomllib
import warnings
from dataclasses import replace
from pathlib import Path

from cnnlab import runs
from cnnlab.budget import Budget, budget_spent_first, format_seconds
from cnnlab.callbacks import Callback
from cnnlab.config import (FIELDS, RECIPES, RESULT_NEUTRAL, TrainConfig, build_config, differing_settings,
                           require_validation)
from cnnlab.data import BUILTIN
from cnnlab.data.fingerprint import files_fingerprint, require_same_files
from cnnlab.data.prepared import preflight
from cnnlab.distributed import TASK_RETRIES, cluster_has_gpus, cpu_slots, dispatch, put_dataset, ray_cluster
from cnnlab.engine import fit
from cnnlab.errors import UserError, option
from cnnlab.groups import directory_lock
from cnnlab.models import create_architecture, model_info
from cnnlab.models.custom import CUSTOM_MODEL
from cnnlab.redact import mask_secrets, mask_url
from cnnlab.report import CSS, html_table
from cnnlab.runs import RunDir

# The report's search space; each model adds its own tunable hyperparameters (dropout rates, units).
TRAINING_SPACE = {
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd", "rmsprop"]},
    "lr": {"type": "categorical", "choices": [0.001, 0.01, 0.1]},
    "batch_size": {"type": "categorical", "choices": [128, 256]},
}
METRICS = ("val_accuracy", "val_loss")


def default_space(model: str) -> dict:
    return {**model_info(model).tunable, **TRAINING_SPACE}


def read_space_file(path: Path, model: str) -> dict:
    """TOML or JSON: [space] entries override the default's, `exclude` drops names, `replace = true` starts empty."""
    path = Path(path)
    kind = "JSON" if path.suffix == ".json" else "TOML"
    named = option("space", path)
    if path.suffix.lower() in (".yaml", ".yml"):  # read as TOML it failed with a parse error that named no cause
        raise UserError(f"{named}: a YAML file; {option('space')} reads TOML (.toml) or JSON (.json): write the same "
                        "[space] table in one of those")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise UserError(f"{named}: no such file") from None
    except UnicodeDecodeError:
        raise UserError(f"{named}: not a text file (not UTF-8); give a TOML or JSON search space") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{named}: cannot parse as {kind} ({exc}); {option('space')} reads TOML, or JSON from a .json "
                        "file") from None
    except RecursionError:
        raise UserError(f"{named}: nested too deeply to read; give a {kind} search space") from None
    except OSError as exc:
        raise runs.os_error(path, exc) from None
    if not isinstance(data, dict):
        raise UserError(f"{named}: expected a {'JSON object' if kind == 'JSON' else 'TOML table'} with "
                        f"space, exclude or replace, found {type(data).__name__}")
    unknown = set(data) - {"space", "exclude", "replace"}
    if unknown:
        raise UserError(f"{named}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                        "use space, exclude, replace")
    if not isinstance(data.get("space", {}), dict):
        raise UserError(f"{named}: space must be a table of parameters, got {data['space']!r}")
    exclude = data.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(name, str) for name in exclude):
        raise UserError(f"{named}: exclude must be a list of parameter names, got {exclude!r}")
    if not isinstance(data.get("replace", False), bool):
        raise UserError(f"{named}: replace must be true or false, got {data['replace']!r}")
    space = {} if data.get("replace") else default_space(model)
    space.update(data.get("space", {}))
    stray = [name for name in exclude if name not in space]
    if stray:  # a typo would silently keep the parameter it meant to drop
        raise UserError(f"{named}: exclude names {', '.join(map(repr, stray))}, not in the search space "
                        f"({', '.join(space) or 'empty'}); fix the name or remove it")
    for name in exclude:
        space.pop(name, None)
    if not space:
        how = " and ".join(w for w, used in (("replace = true", data.get("replace")), ("exclude", exclude)) if used)
        raise UserError(f"{named}: the search space is empty after {how or 'reading it'}; keep at least one "
                        f"parameter (the default space of {model}: {', '.join(default_space(model))})")
    validate_space(space, str(path))
    return space


def check_space_names(space: dict, model: str) -> None:
    """Every searched name is a training setting or one of the model's own hyperparameters."""
    info = model_info(model)
    own = set(info.tunable) | set(inspect.signature(info.builder).parameters)
    unknown = sorted(name for name in space if name not in FIELDS and name not in own)
    if unknown:
        raise UserError(f"search space: unknown parameter(s) {', '.join(map(repr, unknown))}; use training settings "
                        f"or {model}'s own hyperparameters ({', '.join(sorted(info.tunable)) or 'none'})")


# the keys each kind of parameter takes (what Optuna's suggest_categorical / suggest_int / suggest_float take)
SPEC_KEYS = {"categorical": ("type", "choices"), "float": ("type", "low", "high", "log", "step"),
             "int": ("type", "low", "high", "log", "step")}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_space(space: dict, source: str) -> None:
    """The shape of each parameter's spec, before any trial: Optuna would fail (or, worse, iterate a string's
    letters as choices) only once a trial asks for it."""
    for name, spec in space.items():
        where = f"{source}: parameter {name!r}"
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in SPEC_KEYS:
            raise UserError(f"{where} needs type categorical (with choices) or float/int (with low <= high), got "
                            f"{_short(spec)}")
        unknown = [key for key in spec if key not in SPEC_KEYS[kind]]
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for type {kind}; its keys are "
                            f"{', '.join(SPEC_KEYS[kind])}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise UserError(f"{where} needs choices as a non-empty list, e.g. choices = [0.001, 0.01], got "
                                f"{_short(choices)}")
            bad = [c for c in choices if not (c is None or isinstance(c, (bool, str)) or _number(c))]
            if bad:
                raise UserError(f"{where}: each choice must be a finite number, a string or true/false, got "
                                f"{_short(bad[0])}")
            continue
        if spec.get("low") is None or spec.get("high") is None:
            raise UserError(f"{where} needs low and high (low <= high), got {_short(spec)}")
        for key in ("low", "high", "step"):
            value = spec.get(key)
            if value is None:
                continue
            if not _number(value):
                raise UserError(f"{where}: {key} must be a finite number, got {_short(value)}")
            if kind == "int" and not isinstance(value, int):
                raise UserError(f"{where}: type int needs integer {key}, got {value!r} (type float for real values)")
        if spec["low"] > spec["high"]:
            raise UserError(f"{where} needs low <= high, got low {spec['low']!r}, high {spec['high']!r}")
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise UserError(f"{where}: log must be true or false, got {_short(log)}")
        if log and spec["low"] <= 0:
            raise UserError(f"{where}: log = true needs low > 0 (a log scale has no 0 or below), got low {spec['low']!r}")
        if step is not None and step <= 0:
            raise UserError(f"{where}: step must be positive, got {step!r}")
        if step is not None and log:
            raise UserError(f"{where}: step and log = true do not go together in Optuna; give one of them")


def _candidates(spec: dict) -> list:
    """The values a parameter's spec can give a trial, as far as validity goes: each choice, or both ends."""
    if spec["type"] == "categorical":
        return list(spec["choices"])
    cast = int if spec["type"] == "int" else float
    return [cast(spec["low"]), cast(spec["high"])]


def _value_error(base: dict, values: dict) -> str | None:
    """Why a trial with `values` (searched names) over `base` (a config dict) could not train, or None."""
    train, own = split_params(values)
    try:
        cfg = build_config(base, train, {"model_params": own})
        if own and cfg.model != CUSTOM_MODEL:  # the model's own checks (e.g. a dropout rate in [0, 1])
            create_architecture(cfg.model, image_size=cfg.image_size, **cfg.model_params)
    except UserError as exc:
        return str(exc)
    return None


def check_space_values(space: dict, config: TrainConfig) -> None:
    """Each choice (each end of a range) is a value the training config and the model accept, so a typo fails
    here in one line, not in every trial. A value valid only beside another searched one (tta_translate = true
    with tta = true) passes."""
    base = config.to_dict()
    candidates = {name: _candidates(spec) for name, spec in space.items()}
    for name, values in candidates.items():
        for value in values:
            error = _value_error(base, {name: value})
            if error is None or any(_value_error(base, {name: value, other: v}) is None
                                    for other, vs in candidates.items() if other != name for v in vs):
                continue
            what = "choice" if space[name]["type"] == "categorical" else \
                ("low" if value == _candidates(space[name])[0] else "high")
            raise UserError(f"search space: parameter {name!r}: {what} {_short(value)} cannot train ({error}); "
                            "fix the search space")


def suggest(trial, space: dict) -> dict:
    params = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step") or 1,
                                             log=spec.get("log", False))
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                               log=spec.get("log", False))
    return params


def distribution(spec: dict):
    """The Optuna distribution suggest() asks for with this spec."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if spec["type"] == "categorical":
        return CategoricalDistribution(spec["choices"])
    if spec["type"] == "int":
        return IntDistribution(spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step") or 1)
    return FloatDistribution(spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step"))


def _describe(dist) -> str:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return f"choices {list(dist.choices)}"
    kind = "an int" if type(dist).__name__.startswith("Int") else "a float"
    return f"{kind} range" + (" on a log scale" if dist.log else "")  # its bounds may change


def require_same_space(study, space: dict, where: str, fix: str) -> None:
    """Optuna refuses, inside a trial (a traceback, a failed trial), another kind, other choices or another log
    scale for a parameter its study has sampled; ranges may change. Refused here, before any trial."""
    from optuna.distributions import check_distribution_compatibility

    wanted = {name: distribution(spec) for name, spec in space.items()}
    seen = set()
    for trial in study.get_trials(deepcopy=False):
        for name, old in trial.distributions.items():
            if name in seen or name not in wanted:
                continue
            seen.add(name)
            try:
                check_distribution_compatibility(old, wanted[name])
            except ValueError:
                raise UserError(f"{where}: the study searched {name} over {_describe(old)}, the search space now "
                                f"gives {_describe(wanted[name])}, which Optuna cannot change within a study; {fix}, "
                                f"or keep {_describe(old)} for {name}") from None


def split_params(params: dict) -> tuple[dict, dict]:
    """Training options vs the model's own hyperparameters."""
    train = {k: v for k, v in params.items() if k in FIELDS}
    return train, {k: v for k, v in params.items() if k not in FIELDS}


# Workers that open a new database together all run Optuna's CREATE TABLE IF NOT EXISTS, which PostgreSQL does not
# make atomic: a loser fails with 23505 on pg_type_typname_nsp_index or 42P07 "already exists" (psycopg issue 1036).
# The tables exist by then, so opening again succeeds. Seen once in CI: two `cnnlab tune` workers on a fresh database.
SCHEMA_RACE_ATTEMPTS = 5
SCHEMA_RACE_SIGNS = ("pg_type_typname_nsp_index", "already exists", "UniqueViolation", "DuplicateTable")


def lost_schema_race(exc: Exception) -> bool:
    return any(sign in str(exc) for sign in SCHEMA_RACE_SIGNS)


def open_storage(storage: str | None, directory: Path):
    import optuna

    if storage is None:
        from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

        journal = directory / JOURNAL
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise runs.os_error(directory, exc) from None
        try:
            backend = JournalFileBackend(str(journal))  # creates an empty journal if there is none
            lock = JournalFileSymlinkLock(str(journal))  # the lock Optuna's writers hold: no record is half-written
            lock.acquire()
            try:
                check_journal(journal)
            finally:
                lock.release()
            return optuna.storages.JournalStorage(backend)
        except OSError as exc:
            raise runs.os_error(journal, exc) from None
        except (ValueError, UnicodeDecodeError) as exc:  # damaged after check_journal looked (JSONDecodeError too)
            raise damaged_journal(journal, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                  "Restore it from a copy") from None
    check_storage(storage)  # run_tune checked it before loading data; here for callers of open_storage alone
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback  # renamed in Optuna 4.9
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=90,
                                              failed_trial_callback=retry(max_retry=1))
        except Exception as exc:  # driver missing, server down, bad credentials
            if attempt + 1 < SCHEMA_RACE_ATTEMPTS and lost_schema_race(exc):
                time.sleep(0.2 * (attempt + 1))  # the winner is creating the tables: open them once it has
                continue
            reason = hide_secret(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, storage)
            raise UserError(f"storage {mask_url(storage)}: cannot open ({reason})") from None


JOURNAL = "optuna.journal"
# sqlite:// and sqlite:///:memory: (SQLAlchemy's in-memory database): the study would vanish when the command ends
IN_MEMORY_SQLITE = re.compile(r"sqlite(\+\w+)?://(/(:memory:)?)?(\?.*)?|sqlite.*mode=memory.*", re.IGNORECASE)


def check_storage(storage: str | None) -> None:
    if storage is None:
        return
    if "://" not in storage:
        raise UserError(f"storage {mask_url(storage)}: expected a database URL such as postgresql://user:pass@host/db")
    if IN_MEMORY_SQLITE.fullmatch(storage.strip()):
        raise UserError(f"storage {mask_url(storage)}: an in-memory SQLite database, lost when this command ends and "
                        f"closed to other workers; give a file, e.g. sqlite:///path/to/study.db (or leave {option('storage')} "
                        "out: a journal in the output folder)")


def require_one_study(opened, name: str, directory: Path, storage: str | None) -> None:
    """One --out holds one study: trials/trial-NNNN, best.json, trials.csv and tune.html are named per folder, so
    a second study there (another model's default cnnlab-MODEL, or another --study-name) would overwrite the
    first's. Refusing is simpler to explain than per-study folders, and another --out costs nothing."""
    import optuna

    if storage is None:  # the journal lists every study written to this folder
        others = [n for n in optuna.get_all_study_names(storage=opened) if n != name]
    else:  # a database holds many studies; the folder's last summary says which one wrote there
        try:
            summary = runs.read_json(directory / "tune.json") if (directory / "tune.json").is_file() else {}
        except (UserError, OSError):
            summary = {}
        others = [summary["study"]] if isinstance(summary, dict) and summary.get("study") not in (None, name) else []
    if not others:
        return
    model = None
    if storage is None:
        setting = optuna.load_study(storage=opened, study_name=others[0]).user_attrs.get(SETTING_ATTR)
        model = setting.get("train", {}).get("model") if isinstance(setting, dict) else None
    raise UserError(f"{directory}: holds the search {others[0]}{f' (model {model})' if model else ''}, whose "
                    f"trials and results the search {name} would overwrite; use another {option('out')}")


def damaged_journal(path: Path, what: str, keep: str) -> UserError:
    return UserError(f"{path}: the search's journal is damaged ({what}); nothing was changed. {keep}, or start "
                     f"the search afresh in this folder: mv {path} {path}.damaged")


def check_journal(path: Path) -> None:
    """Refuse a journal Optuna would fail on (a traceback) or, worse, append to: one cut short by a kill or a
    full disk (Optuna skips a last line without its newline, then writes its next record onto it), or one with
    foreign bytes. Every line must be a JSON object ending in a newline."""
    data = path.read_bytes()
    lines = data.split(b"\n")  # the piece after the last newline is b"" in a whole journal
    bad = []
    for number, line in enumerate(lines[:-1], 1):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) or "op_code" not in record:
            bad.append(number)
    if lines[-1]:
        bad.append(len(lines))
    if not bad:
        return
    first, total = bad[0], len(lines) - (not lines[-1])
    if bad == list(range(first, total + 1)):  # the damage is the journal's end: the lines before it are whole
        if first == total and lines[-1] and _text(lines[-1]):
            what = f"its last line, {first}, is cut short, as a killed process or a full disk leaves it"
        elif first == total:
            what = f"its last line, {first}, is not an Optuna record"
        else:
            what = f"lines {first}-{total} of {total} are not Optuna records"
        keep = f"Keep the trials recorded before line {first}: head -n {first - 1} {path} > {path}.fixed && " \
               f"mv {path}.fixed {path}"
    else:
        what = f"line {first} of {total} is not an Optuna record"
        keep = "Restore it from a copy"
    raise damaged_journal(path, what, keep)


def _text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def hide_secret(text: str, url: str) -> str:
    """`text` with the URL and its credentials masked wherever a library repeated them (decoded ones included)."""
    return mask_secrets(text, url)


def quiet_optuna_warnings() -> None:
    """Optuna's experimental and deprecation warnings are about Optuna, not about the user's search."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="optuna")


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_trials(study) -> int:
    """Journal storage has no heartbeat: fail trials whose worker process on this machine is gone, retry them."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        name, _, pid = worker.rpartition(":")
        if name != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue  # another worker got there first
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        failed += 1
    return failed


SETTING_ATTR = "cnnlab_setting"  # the study's user attribute: the training options its trials run with


def _unsearched(settings: dict, searched) -> dict:
    """`settings` without what the search sets in every trial (training options and model hyperparameters)."""
    out = {k: v for k, v in settings.items() if k not in searched}
    if isinstance(out.get("model_params"), dict):
        out["model_params"] = {k: v for k, v in out["model_params"].items() if k not in searched}
    return out


def _trial_settings(study, directory: Path) -> dict | None:
    """A study written before cnnlab recorded its setting: the options its first readable trial ran with."""
    for trial in study.get_trials(deepcopy=False):
        path = Path(trial.user_attrs.get("run_dir") or directory / "trials" / f"trial-{trial.number:04d}") / runs.CONFIG
        try:
            if path.is_file():
                return runs.read_json(path)
        except (UserError, OSError):
            continue
    return None


def require_same_setting(study, base: TrainConfig, space: dict, metric: str, directory: Path,
                         storage: str | None) -> None:
    """A study continues with the training options it started with (the searched ones aside), its metric, and
    on the same data files, as `study` and `ensemble` do; its first worker records them in the study itself, so
    workers on other machines (one database) are held to them too."""
    import optuna

    where = f"{directory}" if storage is None else f"study {study.study_name} in {mask_url(storage)}"
    # workers sharing the journal's folder: the first records, the others compare (a database: no folder to lock)
    with directory_lock(directory) if storage is None else contextlib.nullcontext():
        stored = study.user_attrs.get(SETTING_ATTR)
        wanted = {"train": base.to_dict(), "metric": metric}
        if isinstance(stored, dict) and isinstance(stored.get("train"), dict):
            train = stored["train"]
        else:  # no setting recorded yet: a new study, or one started before cnnlab recorded it
            stored, train = None, _trial_settings(study, directory)
        old, new = _unsearched(train or {}, space), _unsearched(wanted["train"], space)
        diff = differing_settings(old, new) if train is not None else []
        # the study's direction says which metric a study of any age was searched for
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        old_metric = (stored or {}).get("metric") or ("val_accuracy" if maximize else "val_loss")
        if old_metric != metric:
            diff, old["metric"], new["metric"] = ["metric", *diff], old_metric, metric
        if diff:
            shown = "; ".join(f"{k} {_short(old.get(k))} in the study, {_short(new.get(k))} now" for k in diff)
            raise UserError(f"{where}: holds a search with other training options ({shown}); use another "
                            f"output folder ({option('out')}{'' if storage is None else ' and ' + option('study_name')}) or the "
                            "same options")
        if stored is not None:
            if stored.get("data_files") is not None:
                require_same_files(stored["data_files"], base.data, base.data_dir, f"continuing the search in {where}")
            return
        files = files_fingerprint(base.data, base.data_dir)
        study.set_user_attr(SETTING_ATTR, {**wanted, **({"data_files": files} if files is not None else {})})


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Pruning(Callback):
    """Hands each epoch's metric to Optuna and stops the run, with a reason, when the trial is pruned."""

    keeps_best = False  # never calls ctx.keep_best (cnnlab.callbacks.Callback)

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        self.epochs_done = 0
        self.epoch_seconds: list[float] = []
        self.pruned = False

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        row = rows[0]
        self.epochs_done = row["epoch"]
        self.epoch_seconds.append(row["train_seconds"] + row["eval_seconds"])
        self.trial.report(row[self.metric], row["epoch"])
        if self.trial.should_prune():
            self.pruned = True
            ctx.stop(f"pruned by Optuna after epoch {row['epoch']}")


def run_tune(config: TrainConfig, directory: Path, trials: int = 50, budget: Budget | float | None = None,
             storage: str | None = None, study_name: str | None = None, metric: str = "val_accuracy",
             space: dict | None = None, pruner: str = "median", say=print, ray: bool = False,
             ray_address: str | None = None, callbacks=()) -> dict:
    """budget: this worker's time (a Budget, or seconds from now; default config.time_budget from now): no
    trial starts once it is spent, nor when one like this worker's finished trials would not fit in what is
    left (Optuna's timeout, plus that check). Trials train their configured epochs, unbudgeted."""
    import optuna
    from optuna.trial import TrialState

    if metric not in METRICS:
        raise UserError(f"metric: must be one of {', '.join(METRICS)}, got {metric!r}")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UserError(f"trials: must be a positive integer, got {trials!r}")
    require_validation(config, "a search", "a search scores trials on the validation split")
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
               "halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner}
    if isinstance(pruner, str) and pruner not in pruners:
        raise UserError(f"pruner: must be one of {', '.join(pruners)}, got {pruner!r}")
    space = default_space(config.model) if space is None else space
    if not space:
        raise UserError("search space: is empty; keep at least one parameter to search (or give none for "
                        f"{config.model}'s default space)")
    validate_space(space, "search space")
    check_space_names(space, config.model)
    check_space_values(space, config)
    check_storage(storage)
    dataset = preflight(config)  # input mistakes fail before any trial starts; loaded once for every trial
    directory = Path(directory)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_optuna_warnings()
    opened, name = open_storage(storage, directory), study_name or f"cnnlab-{config.model}"
    chosen = pruners[pruner]() if isinstance(pruner, str) else pruner
    base = replace(config, checkpoint_every=0, time_budget=0.0)  # the search has the budget, not each trial
    require_one_study(opened, name, directory, storage)

    where = f"{directory}" if storage is None else f"study {name} in {mask_url(storage)}"
    fix = f"use another {option('out')}" + ("" if storage is None else f" and {option('study_name')}")

    def existing_study():
        """The study already in the storage (held to its settings), or None; loading writes nothing (create_study
        appends a record even for a study that exists)."""
        try:
            found = optuna.load_study(storage=opened, study_name=name, pruner=chosen)
        except KeyError:
            return None
        require_same_setting(found, base, space, metric, directory, storage)
        require_same_space(found, space, where, fix)
        return found

    def opened_study():
        study = existing_study()
        if study is None:  # a new study (several new workers at once: one creates it, the others load it)
            study = optuna.create_study(storage=opened, study_name=name, load_if_exists=True, pruner=chosen,
                                        direction="maximize" if metric == "val_accuracy" else "minimize")
            require_same_setting(study, base, space, metric, directory, storage)  # records them, or compares
            require_same_space(study, space, where, fix)  # another worker's new study may hold trials already
        return study

    if not isinstance(budget, Budget):
        budget = Budget.starting(budget if budget is not None else config.time_budget)
    now = budget.clock if budget is not None else time.monotonic
    trial_seconds: list[float] = []  # this worker's finished (not pruned) trials
    said: list[str] = []

    def no_time(in_flight: int = 0) -> bool:
        """Whether the time budget forbids starting another trial (never without a budget)."""
        if budget is None:
            return False
        typical = sum(trial_seconds) / len(trial_seconds) if trial_seconds else 0.0
        if budget.left() > typical:
            return False
        if not said:
            said.append(f"stopping: {format_seconds(budget.left())} of the time budget ({format_seconds(budget.seconds)})"
                        " left" + (f", less than a trial takes here (about {format_seconds(typical)})" if typical else "")
                        + (f"; waiting for {in_flight} running trial(s)" if in_flight else ""))
            say(said[0])
        return True

    failures: list[tuple[int, str]] = []  # this worker's failed trials (number, reason): not counted toward --trials
    finished: list[int] = []  # this worker's complete and pruned trials

    def check_outcome(summary: dict) -> dict:
        """A search whose every trial of this call failed is an error (exit 2), named by its first reason."""
        if failures and not finished:
            number, reason = failures[0]
            raise UserError(f"no trial finished: {len(failures)} failed, the first (trial {number}) with: {reason}; "
                            f"fix that and run the same command again (failed trials do not count toward {option('trials')})")
        return summary

    if ray:
        existing_study()  # a refused rerun says so before Ray starts
        with ray_cluster(ray_address) as cluster:  # up before a new study records its settings: a failed start records none
            study = opened_study()
            run_trials_on_ray(study, base, space, metric, trials, directory, say, cluster, dataset, no_time,
                              trial_seconds, failures, finished)
        return check_outcome(write_results(study, directory, metric, config))
    study = opened_study()

    def objective(trial) -> float:
        trial.set_user_attr("worker", _worker_id())
        params = suggest(trial, space)
        try:
            value = train_trial(trial, params)
        except UserError as exc:  # the study records the trial failed (optimize's catch); said here in one line
            failures.append((trial.number, str(exc)))
            say(f"trial {trial.number}: failed ({exc}) {params}")
            raise
        finished.append(trial.number)
        return value

    def train_trial(trial, params: dict) -> float:
        train_part, model_part = split_params(params)
        cfg = build_config(base.to_dict(), train_part, {"model_params": model_part})
        run_dir = directory / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        pruning = Pruning(trial, metric)
        started = now()
        metrics = fit(cfg, run_dir, [pruning, *callbacks], dataset=dataset if same_data(cfg, base) else None)
        if pruning.pruned:
            finished.append(trial.number)
            epoch_time = sum(pruning.epoch_seconds) / max(1, len(pruning.epoch_seconds))
            trial.set_user_attr("seconds_saved", (cfg.epochs - pruning.epochs_done) * epoch_time)
            say(f"trial {trial.number}: pruned after epoch {pruning.epochs_done} {params}")
            raise optuna.TrialPruned(metrics["stop_reason"])
        trial_seconds.append(now() - started)
        say(f"trial {trial.number}: {metric} {metrics[metric]:.4f} {params}")
        return metrics[metric]

    def enough(study) -> bool:
        """--trials counts finished trials of the whole study: this worker's, live workers' running ones, and
        none of a dead worker's (noticed here by the survivors too, after each of their trials)."""
        revived = fail_dead_trials(study)
        if revived:
            say(f"{revived} trial(s) of a stopped worker marked failed and queued again")
        counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        if too_many_failures(failures, finished, trials):  # a search where nothing trains must end, not loop
            say(f"stopping: {len(failures)} trial(s) failed (see the messages above); check the search space and data")
            return True
        return len(counted) >= trials or no_time()

    def stop_when_enough(study, trial) -> None:
        if enough(study):
            study.stop()  # only valid inside optimize: a finished search is told apart before it

    if enough(study):
        if budget is not None and budget.spent and not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise budget_spent_first(budget, "trial")  # no trial finished: an error, not an empty summary, exit 0
        say(f"{study.study_name}: the search is finished or out of time ({trials} trials wanted); nothing to train. "
            "Its summary:")
    else:
        if budget is not None:  # unlike train's, it does not cut a trial short: said before a first trial runs past it
            say(f"time budget {format_seconds(budget.seconds)}: no trial starts once it is spent or when a trial like "
                "the finished ones would not fit; each trial trains its epochs in full, so the last may end after it")
        handlers = optuna.logging.get_logger("optuna").handlers  # filters act on handlers for child loggers' records
        for handler in handlers:
            handler.addFilter(no_interrupt_traceback)
        try:
            study.optimize(objective, timeout=budget.left() if budget is not None else None,
                           callbacks=[stop_when_enough], catch=(UserError,))
        except Exception as exc:
            if during_ctrl_c(exc):
                raise KeyboardInterrupt from None
            raise
        finally:
            for handler in handlers:
                handler.removeFilter(no_interrupt_traceback)
    return check_outcome(write_results(study, directory, metric, config))


def too_many_failures(failures: list, finished: list, trials: int) -> bool:
    """This worker's failures (not the study's: a rerun after a fix must train) end it: min(3, --trials) when none
    of its trials finished (so --trials 1 tries once), --trials once some did (a space with a few bad corners)."""
    return len(failures) >= (trials if finished else min(3, trials))


def during_ctrl_c(exc: BaseException | None) -> bool:
    """Whether `exc` is a Ctrl-C, or was raised while one was being handled: a Ctrl-C inside optuna's journal
    lock release (between its unlink and its cleanup) surfaces as FileNotFoundError with the KeyboardInterrupt
    as its context (a CI run of tests/test_tune_rerun.py, 2026-12-07), which is still the user's Ctrl-C."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__
    return False


def no_interrupt_traceback(record) -> bool:
    """Optuna logs a trial stopped by Ctrl-C as a failure with its traceback; cnnlab says it in one line."""
    message = record.getMessage()
    said = record.exc_info and isinstance(record.exc_info[1], UserError)  # the objective said it in one line
    return not (record.exc_info and during_ctrl_c(record.exc_info[1])) and not said and \
        "KeyboardInterrupt" not in message and not re.fullmatch(r"Trial \d+ failed with value None\.", message)


# ------------------------------------------------------------------ trials on Ray
# Optuna stays on the driver: it asks for each trial's parameters and is told the result (ask/tell),
# and every epoch's metric travels back through a small Ray actor, where the driver reports it to the
# trial and posts the pruner's decision, which the worker waits for. So workers never open the
# study's storage, and any storage the driver can open works (a journal file included), while
# pruning behaves exactly as with local workers.


class PruningBoard:
    """A Ray actor: workers post (trial, epoch, value) and read the driver's prune decision."""

    def __init__(self):
        self.reports: list[tuple[int, int, float]] = []
        self.decisions: dict[tuple[int, int], bool] = {}

    def report(self, number: int, epoch: int, value: float) -> None:
        self.reports.append((number, epoch, value))

    def decision(self, number: int, epoch: int):
        return self.decisions.get((number, epoch))

    def drain(self) -> list[tuple[int, int, float]]:
        out, self.reports = self.reports, []
        return out

    def decide(self, number: int, epoch: int, prune: bool) -> None:
        self.decisions[(number, epoch)] = prune


class RemotePruning(Callback):
    """The worker side of PruningBoard: report each epoch, wait for the driver's decision, stop if pruned."""

    keeps_best = False  # never calls ctx.keep_best (cnnlab.callbacks.Callback)

    def __init__(self, board, number: int, metric: str):
        self.board, self.number, self.metric = board, number, metric
        self.pruned, self.epochs_done = False, 0

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        import ray

        epoch = rows[0]["epoch"]
        self.epochs_done = epoch
        ray.get(self.board.report.remote(self.number, epoch, rows[0][self.metric]))
        while (decision := ray.get(self.board.decision.remote(self.number, epoch))) is None:
            time.sleep(0.05)
        if decision:
            self.pruned = True
            ctx.stop(f"pruned by Optuna after epoch {epoch}")


def trial_task(config: dict, number: int, metric: str, board, dataset) -> dict:
    """Runs on a Ray worker: one trial's training in a temporary folder; returns its metrics and files."""
    pruning = RemotePruning(board, number, metric)
    with tempfile.TemporaryDirectory(prefix="cnnlab-trial-") as tmp:
        run = RunDir(Path(tmp) / "trial")
        metrics = fit(build_config(config), run, [pruning], dataset=dataset)
        return {"metrics": metrics, "pruned": pruning.pruned, "epochs_done": pruning.epochs_done,
                "files": run.read_files()}


def same_data(cfg: TrainConfig, base: TrainConfig) -> bool:
    """Whether a trial reads the data the pre-flight loaded (a search space may change the classes)."""
    return (cfg.data, cfg.data_dir, cfg.classes) == (base.data, base.data_dir, base.classes)


def run_trials_on_ray(study, base: TrainConfig, space: dict, metric: str, trials: int, directory: Path, say,
                      ray, dataset, no_time=lambda in_flight=0: False, trial_seconds=None, failures=None,
                      finished=None) -> None:
    """Trials as Ray tasks on `ray` (started or joined by the caller). no_time(in_flight): whether the time
    budget forbids starting a trial; trial_seconds: finished trials' durations, appended here (what no_time
    judges by); failures, finished: as in run_tune, appended here."""
    failures = [] if failures is None else failures
    finished = [] if finished is None else finished
    from optuna.trial import TrialState

    board = ray.remote(PruningBoard).options(num_cpus=0).remote()
    task = ray.remote(trial_task).options(num_cpus=1, num_gpus=0.25 if cluster_has_gpus(ray) else 0,
                                           max_retries=TASK_RETRIES)
    data_ref = put_dataset(ray, dataset)
    running: dict = {}  # trial number -> trial
    started: dict = {}  # trial number -> when it was submitted

    def counted(*states) -> int:
        return len(study.get_trials(deepcopy=False, states=states))

    def next_job(in_flight: int):
        # more trials to start (not when everything fails: a broken search must end)
        settled = counted(TrialState.COMPLETE, TrialState.PRUNED)
        if settled + in_flight >= trials or too_many_failures(failures, finished, trials) or no_time(in_flight):
            return None
        trial = study.ask()
        trial.set_user_attr("worker", f"ray:{_worker_id()}")
        params = suggest(trial, space)
        train_part, model_part = split_params(params)
        cfg = build_config(base.to_dict(), train_part, {"model_params": model_part})
        running[trial.number] = trial
        started[trial.number] = time.monotonic()
        return (trial, params, cfg), (cfg.to_dict(), trial.number, metric, board, data_ref)

    def report_epochs() -> None:  # pruning decisions, as the trials report
        for number, epoch, value in ray.get(board.drain.remote()):
            trial = running[number]
            trial.report(value, epoch)
            board.decide.remote(number, epoch, trial.should_prune())

    def on_error(job, exc) -> None:
        trial, params, _ = job
        running.pop(trial.number, None)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        failures.append((trial.number, reason))
        say(f"trial {trial.number}: failed ({reason}) {params}")
        study.tell(trial, state=TrialState.FAIL)

    def on_result(job, result) -> None:
        trial, params, cfg = job
        running.pop(trial.number, None)
        RunDir(directory / "trials" / f"trial-{trial.number:04d}").write_files(result["files"])
        finished.append(trial.number)
        if result["pruned"]:
            epoch_time = result["metrics"]["train_seconds_total"] / max(1, result["epochs_done"])
            trial.set_user_attr("seconds_saved", (cfg.epochs - result["epochs_done"]) * epoch_time)
            study.tell(trial, state=TrialState.PRUNED)
            say(f"trial {trial.number}: pruned after epoch {result['epochs_done']} {params}")
        else:
            study.tell(trial, result["metrics"][metric])
            say(f"trial {trial.number}: {metric} {result['metrics'][metric]:.4f} {params}")
            if trial_seconds is not None:
                trial_seconds.append(time.monotonic() - started.pop(trial.number))

    dispatch(ray, task, next_job, on_result, cpu_slots(ray), on_error, poll=report_epochs)


def trials_table(study, metric: str) -> list[dict]:
    """trials.csv from Optuna's trials_dataframe, with readable columns: number, state, the metric's value,
    epochs reported, seconds, then param_NAME for each searched parameter."""
    import pandas as pd

    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params"))
    if frame.empty:
        return []
    epochs = {t.number: (max(t.intermediate_values) if t.intermediate_values else 0)
              for t in study.get_trials(deepcopy=False)}
    frame = frame.rename(columns={"value": metric, **{c: "param_" + c[len("params_"):] for c in frame.columns
                                                      if c.startswith("params_")}})
    frame["state"] = frame["state"].astype(str)
    # to_timedelta: with only running trials every duration is None, an object column without .dt
    frame["seconds"] = pd.to_timedelta(frame.pop("duration")).dt.total_seconds()
    frame.insert(3, "epochs", frame["number"].map(epochs))
    frame = frame[["number", "state", metric, "epochs", "seconds"] + [c for c in frame.columns if c.startswith("param_")]]
    return [{k: (None if v != v else v) for k, v in row.items()} for row in frame.to_dict("records")]


def tuned_setting(config: TrainConfig) -> dict:
    """What best.json records of the setting the trials trained in, so `train --params best.json` repeats the best
    trial: every option that changes what a run learns (the result-neutral ones aside, data_dir kept: where the
    data is). The trials train unbudgeted: a recipe's time budget (cpu-budget) is turned off as in them."""
    setting = {k: v for k, v in config.to_dict().items() if k not in RESULT_NEUTRAL or k == "data_dir"}
    if RECIPES.get(config.recipe, {}).get("time_budget"):
        setting["time_budget"] = 0.0
    # a path as given (d.npz) named nothing from another folder: `train --params t/best.json` elsewhere failed
    for key in ("data", "data_dir"):
        value = setting.get(key)
        if isinstance(value, str) and value not in BUILTIN and Path(value).expanduser().exists():
            setting[key] = os.path.abspath(Path(value).expanduser())
    return setting


def write_results(study, directory: Path, metric: str, config: TrainConfig | None = None) -> dict:
    """trials.csv, best.json (for `cnnlab train --params`), Optuna's plots and an HTML page.

    Workers sharing a study each write these when they stop; under the directory's lock, each reads the study
    and writes as one step, so the last to write has the latest states (without it, a worker that read before
    another's last trial finished could write after it: a fresh-clone CI run left a COMPLETE trial RUNNING)."""
    with directory_lock(Path(directory)):
        return _write_results(study, directory, metric, config)


def _write_results(study, directory: Path, metric: str, config: TrainConfig | None) -> dict:
    from optuna.trial import TrialState

    rows = trials_table(study, metric)
    runs.write_csv(directory / "trials.csv", rows)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    summary = {"study": study.study_name, "metric": metric, "complete": len(complete), "pruned": len(pruned),
               "failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
               "seconds_saved_by_pruning": sum(t.user_attrs.get("seconds_saved", 0.0) for t in pruned)}
    if complete:
        best = study.best_trial
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params)
        setting = tuned_setting(config) if config else {}
        runs.write_json(directory / "best.json", {"params": best.params, "setting": setting, metric: best.value,
                                                  "trial": best.number, "study": study.study_name})
    figures = _plots(study, directory) if len(complete) >= 2 else []
    _html(directory, summary, rows, figures)
    runs.write_json(directory / "tune.json", summary)
    return summary


def _plots(study, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, draw in (("optimization_history.png", ovm.plot_optimization_history),
                           ("param_importances.png", ovm.plot_param_importances)):
            try:
                ax = draw(study)
            except (ValueError, RuntimeError):
                continue  # e.g. importances need at least two distinct parameter values
            fig = ax.figure if hasattr(ax, "figure") else plt.gcf()
            with runs.atomic_target(directory / name) as tmp:
                fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            out.append(directory / name)
    return out


def _html(directory: Path, summary: dict, rows: list[dict], figures: list[Path]) -> None:
    header = list(rows[0]) if rows else []
    table = html_table("Trials", header, [[("" if v is None else (f"{v:.4g}" if isinstance(v, float) else v))
                                            for v in r.values()] for r in rows])
    lines = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in summary.items())
    images = "".join(f"<figure><img alt='{p.stem}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
                     f"<figcaption>{p.stem.replace('_', ' ')}</figcaption></figure>" for p in figures)
    runs.write_text(directory / "tune.html", f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cnnlab tune</title>"
                    f"<style>{CSS}</style></head><body><h1>Hyperparameter search</h1><ul>{lines}</ul>{table}"
                    f"{images}</body></html>")

