"""Experiment tracking as callbacks: TensorBoard event files and MLflow runs, written as training goes.

    cnnlab train cnn4 --tensorboard                 # event files in OUT/tensorboard/RUN (tensorboard --logdir OUT/tensorboard)
    cnnlab study ... --mlflow                       # a local store beside the output: sqlite:///OUT/mlflow.db
    cnnlab ensemble ... --mlflow --mlflow-uri http://server:5000

Studies, ensembles and searches get one parent MLflow run with a child run per run, member or trial.
Where runs train elsewhere (Ray tasks), the driver logs each one from its run directory when it
arrives (`log_run_dir`), so the same metrics reach the same store. Both libraries are optional
extras (`pip install 'cnnlab[tracking]'`); without them the flag fails in one line.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import matplotlib

from cnnlab.callbacks import Callback
from cnnlab.errors import UserError, option
from cnnlab.ports import port_answers
from cnnlab.redact import mask_secrets, mask_url
from cnnlab.runs import RunDir, os_error

matplotlib.use("Agg")  # figures for the logs only; no display needed

EPOCH_SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
                 "val_accuracy": "accuracy/val", "lr": "learning_rate"}
FINAL_METRICS = ("val_loss", "val_accuracy", "test_loss", "test_accuracy", "train_seconds_total",
                 "train_images_per_second", "epochs_done", "weights_epoch")


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{package}: not installed; install the tracking extra: pip install 'cnnlab[tracking]'") from None


def flat_params(config: dict) -> dict[str, str]:
    """A config as flat string parameters (model options as model.NAME)."""
    out = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in config.items() if k != "model_params"}
    out.update({f"model.{k}": str(v) for k, v in (config.get("model_params") or {}).items()})
    return out


def epoch_values(row: dict, train_images: int | None = None) -> dict[str, float]:
    values = {name: float(row[key]) for key, name in EPOCH_SCALARS.items() if row.get(key) not in (None, "")}
    seconds = float(row.get("train_seconds") or 0)
    if train_images and seconds > 0:
        values["images_per_second"] = train_images / seconds
    return {k: v for k, v in values.items() if v == v}  # NaN (no validation split) is left out


def confusion_figure(run_dir: Path, split: str = "val"):
    """scikit-learn's ConfusionMatrixDisplay of a finished run's stored logits (None without that split)."""
    from sklearn.metrics import ConfusionMatrixDisplay  # lazy, as in cnnlab.metrics

    run = RunDir(run_dir)
    try:
        logits, labels = run.logits(split)
    except UserError:
        return None
    names = run.read_model_meta()["class_names"]
    display = ConfusionMatrixDisplay.from_predictions(labels, logits.argmax(1), labels=list(range(len(names))),
                                                      display_labels=names, xticks_rotation=45, colorbar=False)
    display.ax_.set_title(f"{split} confusion matrix")
    return display.figure_


class TensorBoard(Callback):
    """Scalars per epoch (losses, accuracies, learning rate, images/second), the config as hyperparameters
    and the confusion matrix as an image, one event folder per run directory."""

    keeps_best = False  # never calls ctx.keep_best (cnnlab.callbacks.Callback)

    def __init__(self, log_dir: str | Path | None = None, default_dir: str | Path | None = None):
        """log_dir: the user's folder (made now); default_dir: the command's OUT/tensorboard (made with the runs),
        so a study's, ensemble's and search's runs land where `tensorboard --logdir OUT/tensorboard` looks."""
        self.log_dir = Path(log_dir) if log_dir else None
        self.default_dir = Path(default_dir) if default_dir else None
        self.writers = []
        _require("torch.utils.tensorboard", "tensorboard")
        existing = next((p for p in [self.log_dir, *self.log_dir.parents] if p.exists()), None) if self.log_dir else None
        if existing is not None and not existing.is_dir():  # checked before any run directory is made
            raise UserError(f"{option('tensorboard_dir', self.log_dir)}: {existing} is a file, not a folder; "
                            "give a folder for the event files")
        if self.log_dir is not None:  # made now, so a folder that cannot be (/proc/x, read-only) is one line first
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(self.log_dir, exc) from None

    def on_train_start(self, ctx) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        for run in ctx.run_dirs:
            folder = (self.log_dir or self.default_dir or run.path.parent / "tensorboard") / run.path.name
            try:
                self.writers.append(SummaryWriter(str(folder)))
            except OSError as exc:
                raise os_error(folder, exc) from None
        self.train_images = len(ctx.setup.train)

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        for writer, row in zip(self.writers, rows):
            for name, value in epoch_values(row, self.train_images).items():
                writer.add_scalar(name, value, row["epoch"])
            writer.flush()

    def on_train_end(self, ctx, results: list[dict]) -> None:
        for writer, run, metrics, config in zip(self.writers, ctx.run_dirs, results, member_configs(ctx)):
            final = {f"final/{k}": float(metrics[k]) for k in FINAL_METRICS if isinstance(metrics.get(k), (int, float))}
            writer.add_hparams(flat_params(config), final, run_name=".")
            figure = confusion_figure(run.path)
            if figure is not None:
                writer.add_figure("confusion_matrix/val", figure, metrics.get("epochs_done", 0))
            writer.flush()
        self.close()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


def member_configs(ctx) -> list[dict]:
    return [c.to_dict() for c in ctx.member_configs]


class MLflow(Callback):
    """One MLflow run per run directory (a child of `parent_run_id` when given): parameters, per-epoch
    metrics as they come, final metrics, and the run directory's files (the model included) as artifacts."""

    keeps_best = False  # never calls ctx.keep_best (cnnlab.callbacks.Callback)

    def __init__(self, uri: str | None = None, experiment: str = "cnnlab", parent_run_id: str | None = None):
        _require("mlflow", "mlflow")
        quiet_libraries()
        if uri:
            check_store(uri)  # a store MLflow cannot use fails here, in one line, before anything is written
            if mask_url(uri) != uri:  # MLflow prints "View run ... at: URI" with the URI's credentials in clear
                os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        self.uri, self.experiment, self.parent = uri, experiment, parent_run_id
        self.run_ids: list[str] = []

    def client(self, near: Path):
        from mlflow.tracking import MlflowClient

        self.uri = self.uri or default_store(near)
        with store_errors(self.uri):
            return MlflowClient(tracking_uri=self.uri)

    def start(self, client, name: str, config: dict) -> str:
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            self.experiment, artifact_location=local_artifacts(self.uri))
        tags = {"mlflow.runName": name, **({"mlflow.parentRunId": self.parent} if self.parent else {})}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flat_params(config).items()])
        return run_id

    def on_train_start(self, ctx) -> None:
        self._client = self.client(ctx.run_dirs[0].path.parent)
        with store_errors(self.uri):
            self.run_ids = [self.start(self._client, run.path.name, config)
                            for run, config in zip(ctx.run_dirs, member_configs(ctx))]
        self.train_images = len(ctx.setup.train)

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        with store_errors(self.uri):
            for run_id, row in zip(self.run_ids, rows):
                stamp = now_ms()
                self._client.log_batch(run_id, metrics=[Metric(k, v, stamp, row["epoch"])
                                                        for k, v in epoch_values(row, self.train_images).items()])

    def on_train_end(self, ctx, results: list[dict]) -> None:
        with store_errors(self.uri):
            for run_id, run, metrics in zip(self.run_ids, ctx.run_dirs, results):
                finish_mlflow_run(self._client, run_id, run.path, metrics)


def now_ms() -> int:
    """MLflow's timestamps: milliseconds since the epoch."""
    return int(time.time() * 1000)


def default_store(near: Path) -> str:
    """MLflow's current default backend (SQLite), beside the output folder rather than in the working directory."""
    near = Path(near).resolve()
    try:
        near.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # /proc/x, a read-only folder: one line, as the same --out without --mlflow
        raise os_error(near, exc) from None
    return f"sqlite:///{near / 'mlflow.db'}"


def local_artifacts(uri: str) -> str | None:
    """A local SQLite store keeps its artifacts beside it (MLflow's own default is ./mlruns in the working directory)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def finish_mlflow_run(client, run_id: str, run_dir: Path, metrics: dict) -> None:
    from mlflow.entities import Metric

    final = [Metric(f"final_{k}", float(metrics[k]), now_ms(), 0) for k in FINAL_METRICS
             if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)]
    client.log_batch(run_id, metrics=final)
    client.log_artifacts(run_id, str(run_dir), artifact_path="run")  # config, history, metrics, the model's files
    client.set_terminated(run_id)


def log_run_dir(tracker: MLflow, run_dir: Path) -> str:
    """Log a finished run directory (trained elsewhere, e.g. by a Ray task) as if it had been watched."""
    from mlflow.entities import Metric

    run = RunDir(run_dir)
    client = tracker.client(Path(run_dir).parent)
    with store_errors(tracker.uri):
        run_id = tracker.start(client, run.path.name, run.read_config())
        for row in run.history():
            client.log_batch(run_id, metrics=[Metric(k, v, now_ms(), int(row["epoch"])) for k, v in epoch_values(row).items()])
        finish_mlflow_run(client, run_id, run.path, run.read_metrics())
    return run_id


def parent_run(uri: str | None, near: Path, name: str, params: dict, experiment: str = "cnnlab") -> tuple[object, str]:
    """(client, run id) of a parent run grouping a study's, ensemble's or search's runs."""
    tracker = MLflow(uri, experiment)
    client = tracker.client(near)
    with store_errors(tracker.uri):
        return client, tracker.start(client, name, params)


# ------------------------------------------------------------------ the tracking store, checked and quiet

STORE_TIMEOUT = 3.0  # seconds a tracking server or database gets to answer before training starts
DATABASE_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}
NOISY_LOGGERS = ("mlflow", "alembic", "urllib3", "sqlalchemy", "huey", "git", "botocore", "azure", "google")
_checked: set[str] = set()


def quiet_libraries() -> None:
    """MLflow's, Alembic's, urllib3's (...) INFO lines are about those libraries, not about training: warnings
    and errors only (MLFLOW_LOGGING_LEVEL, when set, still rules MLflow's own)."""
    for name in NOISY_LOGGERS:
        if name == "mlflow" and os.environ.get("MLFLOW_LOGGING_LEVEL"):
            continue
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


def _setting(uri: str) -> str:
    return option("mlflow_uri", mask_url(uri))


def check_store(uri: str, timeout: float = STORE_TIMEOUT) -> None:
    """Fail in one line (the URI masked) where MLflow could not use the tracking store: a file store (MLflow 3
    refuses it), a SQLite file in a missing folder, a server or database nobody answers at, at its host or, for a
    database URI without one, at its Unix socket (checked with a connection of at most `timeout` seconds, instead
    of MLflow's retries for minutes)."""
    if uri in _checked:
        return
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise UserError(f"{_setting(uri)}: not a valid URI ({mask_secrets(str(exc), uri)})") from None
    scheme = parts.scheme.lower().split("+")[0]
    if uri.strip().lower() in ("databricks", "databricks-uc", "uc"):
        pass  # hosted stores, configured by their own profiles
    elif scheme in ("", "file") or len(scheme) == 1:  # a plain path (C:\... on Windows): MLflow's old file store
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1"):
            folder = Path(parts.path if scheme == "file" else uri).expanduser()
            database = f"sqlite:///{folder.parent.resolve() / 'mlflow.db'}"
            raise UserError(f"{_setting(uri)}: MLflow 3 no longer writes to a file store (mlruns folder); use a "
                            f"database, e.g. {option('mlflow_uri', database)} (or "
                            f"{option('mlflow', True)} for one beside the output), or set MLFLOW_ALLOW_FILE_STORE=true to keep the file store")
    elif scheme == "sqlite":
        path = uri.partition("://")[2].split("?", 1)[0][1:]  # sqlite:///relative or sqlite:////absolute
        folder = Path(path).expanduser().parent if path and path != ":memory:" else None
        if folder is not None and not folder.is_dir():
            raise UserError(f"{_setting(uri)}: the folder {folder} does not exist; create it or give another path")
    elif scheme in ("http", "https"):
        _check_server(uri, parts, timeout)
    elif scheme in DATABASE_PORTS:
        _check_database(uri, scheme, parts, port, timeout)
    _checked.add(uri)


def _check_server(uri: str, parts, timeout: float) -> None:
    """One request of MLflow's REST API, bounded by `timeout`: fails where nobody answers or where what answers is
    not an MLflow tracking server. Credentials are not sent (they are MLflow's business), so 401 and 403 pass."""
    host = parts.netloc.rpartition("@")[2]
    url = f"{parts.scheme}://{host}{parts.path.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?experiment_name=cnnlab"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return
        try:
            mlflow_error = "error_code" in json.loads(exc.read(65536) or b"{}")
        except (ValueError, OSError):
            mlflow_error = False
        if exc.code == 404 and mlflow_error:  # RESOURCE_DOES_NOT_EXIST: an MLflow server without that experiment yet
            return
        raise UserError(f"{_setting(uri)}: what answers there does not answer as an MLflow tracking server (HTTP "
                        f"{exc.code} for {parts.path.rstrip('/')}/api/2.0/mlflow/...); correct the URI") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return  # it answered; certificates are MLflow's business (MLFLOW_TRACKING_INSECURE_TLS, ...)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            reason = f"no answer within {timeout:g} s"
        raise UserError(f"{_setting(uri)}: no MLflow server answers there ({mask_secrets(str(reason), uri)}); "
                        f"start one (mlflow server --host HOST --port PORT) or correct the URI") from None


def _check_port(uri: str, host: str, port: int, timeout: float) -> None:
    reason = port_answers(host, port, timeout)
    if reason is not None:
        raise UserError(f"{_setting(uri)}: the database does not answer at {mask_secrets(reason, uri)}; "
                        f"start it or correct the URI")


# where libpq and the MySQL clients look for the server's socket where the URI names neither host nor socket
POSTGRES_SOCKET_DIRS = ("/var/run/postgresql", "/run/postgresql", "/tmp")
MYSQL_SOCKETS = ("/var/run/mysqld/mysqld.sock", "/run/mysqld/mysqld.sock", "/tmp/mysql.sock")


def _check_database(uri: str, scheme: str, parts, port: int | None, timeout: float) -> None:
    """A database server, at its host and port or, where the URI names no host, at its Unix socket (the host
    or unix_socket option of the query string, PGHOST and PGPORT, or where the clients look by default)."""
    query = {k.lower(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    if scheme in ("postgresql", "postgres"):
        port = port or _port(uri, query.get("port") or os.environ.get("PGPORT"), DATABASE_PORTS[scheme])
        host = parts.hostname or (query.get("host") or os.environ.get("PGHOST") or "").split(",")[0].strip()
        if host.startswith(("/", "@")):  # libpq: a socket folder ("@name": Linux's abstract namespace)
            return _check_socket(uri, f"{host.rstrip('/')}/.s.PGSQL.{port}", timeout)
        if host:
            return _check_port(uri, host, port, timeout)
        reasons = []
        for folder in POSTGRES_SOCKET_DIRS:
            reason = _socket_answers(f"{folder}/.s.PGSQL.{port}", timeout)
            if reason is None:
                return
            reasons.append(reason)
        raise _no_host(uri, reasons, "postgresql://USER:PASSWORD@HOST/DB", "?host=/path/to/socket/folder")
    if scheme in ("mysql", "mariadb") and query.get("unix_socket"):
        return _check_socket(uri, query["unix_socket"], timeout)
    if parts.hostname:
        return _check_port(uri, parts.hostname, port or DATABASE_PORTS[scheme], timeout)
    if scheme in ("mysql", "mariadb"):  # PyMySQL goes to localhost:3306, mysqlclient to a socket
        reasons = [port_answers("localhost", port or DATABASE_PORTS[scheme], timeout)]
        for path in MYSQL_SOCKETS:
            reasons.append(_socket_answers(path, timeout))
        if None not in reasons:
            raise _no_host(uri, reasons, f"{scheme}://USER:PASSWORD@HOST/DB", "?unix_socket=/path/to/mysqld.sock")
    elif "odbc_connect" not in query:  # SQL Server: its server named in the host or in odbc_connect
        raise UserError(f"{_setting(uri)}: names no database server; give its host ({scheme}://USER:PASSWORD@HOST/DB)")


def _no_host(uri: str, reasons: list[str], host_form: str, socket_form: str) -> UserError:
    return UserError(f"{_setting(uri)}: names no database host, and no database answers where its client then looks "
                     f"({mask_secrets('; '.join(reasons), uri)}); start it, or give its host ({host_form}) or its "
                     f"socket ({socket_form})")


def _port(uri: str, text: str | None, default: int) -> int:
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{_setting(uri)}: the port {mask_secrets(text, uri)!r} is not a number; correct the URI") from None


def _socket_answers(path: str, timeout: float) -> str | None:
    """None where the Unix socket `path` accepts a connection within `timeout` seconds, else why not."""
    abstract = path.startswith("@")
    if not abstract and not os.path.exists(path):
        return f"{path}: no such socket"
    if not hasattr(socket, "AF_UNIX"):
        return f"{path}: Unix sockets are not available on this system"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect("\0" + path[1:] if abstract else path)
        return None
    except OSError as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        return f"{path}: {reason}"


def _check_socket(uri: str, path: str, timeout: float) -> None:
    reason = _socket_answers(path, timeout)
    if reason is not None:
        raise UserError(f"{_setting(uri)}: the database does not answer at its Unix socket "
                        f"({mask_secrets(reason, uri)}); start it or correct the URI")


_STORE_LIBRARIES = ("mlflow", "requests", "urllib3", "sqlalchemy", "alembic", "psycopg", "psycopg2", "pymysql")


@contextlib.contextmanager
def store_errors(uri: str | None):
    """An MLflow store failing mid-way (server gone, database refused) as one line with the URI masked,
    rather than a traceback quoting the URI with its credentials."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if not (isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in _STORE_LIBRARIES):
            raise  # a bug: keep the traceback
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{_setting(uri or '')}: {mask_secrets(text, *([uri] if uri else []))}") from None
