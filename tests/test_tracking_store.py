"""The tracking store checked before training, by a hostile user's URIs: a database URI with no host (a Unix
socket) fails in one line within seconds instead of MLflow's minutes of retries, and a secret that is the whole
user info (https://TOKEN@host) is never printed, in --mlflow-uri or --storage."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cnnlab import tracking
from cnnlab.errors import UserError

from conftest import write_npz_dataset

ROOT = Path(__file__).resolve().parents[1]
SECRET = "S3cretTok"


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    """No URI counts as checked before (check_store remembers those that passed), no libpq variables of the
    machine running the tests, and no default socket folder of its own (a PostgreSQL may run on it)."""
    monkeypatch.setattr(tracking, "_checked", set())
    for name in ("PGHOST", "PGPORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking, "POSTGRES_SOCKET_DIRS", ("/nonexistent-cnnlab-a", "/nonexistent-cnnlab-b"), raising=False)
    monkeypatch.setattr(tracking, "MYSQL_SOCKETS", ("/nonexistent-cnnlab-a/mysqld.sock",), raising=False)


@pytest.fixture
def sockets():
    """A short folder (a Unix socket's path has at most 107 bytes) with `listen(name)` and `stale(name)`: a socket
    file something accepts connections on, and one whose server is gone (the file left behind)."""
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-sock-", dir="/tmp"))
    opened = []

    class Sockets:
        path = folder

        @staticmethod
        def listen(name: str) -> Path:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(folder / name))
            server.listen(4)
            opened.append(server)
            return folder / name

        @staticmethod
        def stale(name: str) -> Path:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
                server.bind(str(folder / name))
            return folder / name

    yield Sockets
    for server in opened:
        server.close()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def refused(uri: str, *expected: str) -> str:
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        tracking.check_store(uri, timeout=0.5)
    message = str(exc.value)
    assert time.monotonic() - start < 5
    assert SECRET not in message and "\n" not in message, message
    for text in expected:
        assert text in message, message
    return message


def test_a_postgresql_uri_without_a_host_is_checked_at_its_socket(sockets, monkeypatch):
    refused(f"postgresql:///db?user=u&password={SECRET}", "mlflow='postgresql:///db?user=u&password=***'",
            "names no database host", "/nonexistent-cnnlab-a/.s.PGSQL.5432: no such socket",
            "give its host (postgresql://USER:PASSWORD@HOST/DB) or its socket (?host=/path/to/socket/folder)")
    refused(f"postgresql://user:{SECRET}@/db?host=/nonexistent", "postgresql://user:***@/db?host=/nonexistent",
            "does not answer at its Unix socket (/nonexistent/.s.PGSQL.5432: no such socket)")
    refused(f"postgresql+psycopg://user:{SECRET}@/db?host={sockets.path}", f"{sockets.path}/.s.PGSQL.5432")
    sockets.stale(".s.PGSQL.5433")
    refused(f"postgresql://user:{SECRET}@:5433/db?host={sockets.path}", "Connection refused")
    refused(f"postgresql://user:{SECRET}@/db?host={sockets.path}&port=x", "the port 'x' is not a number")
    sockets.listen(".s.PGSQL.5432")  # a server answers there: passes, in either spelling of its folder
    tracking.check_store(f"postgresql://user:{SECRET}@/db?host={sockets.path}", timeout=0.5)
    tracking.check_store(f"postgresql://user:{SECRET}@/db?host={str(sockets.path).replace('/', '%2F')}", timeout=0.5)
    monkeypatch.setenv("PGHOST", str(sockets.path))  # where libpq itself looks without a host in the URI
    tracking.check_store(f"postgresql:///db?user=u&password={SECRET}", timeout=0.5)
    monkeypatch.setenv("PGPORT", "5433")
    refused(f"postgresql:///db?user=u&password={SECRET}&sslmode=disable", ".s.PGSQL.5433: Connection refused")
    monkeypatch.delenv("PGHOST")
    monkeypatch.delenv("PGPORT")
    monkeypatch.setattr(tracking, "POSTGRES_SOCKET_DIRS", ("/nonexistent-cnnlab-a", str(sockets.path)))
    tracking.check_store(f"postgresql:///mlflow?password={SECRET}", timeout=0.5)  # the client's default folders


def test_a_mysql_uri_without_a_host_is_checked_at_its_socket(sockets):
    refused(f"mysql+pymysql://u:{SECRET}@/db?unix_socket=/nonexistent/mysqld.sock",
            "mysql+pymysql://u:***@/db?unix_socket=/nonexistent/mysqld.sock", "/nonexistent/mysqld.sock: no such socket")
    path = sockets.listen("mysqld.sock")
    tracking.check_store(f"mysql+pymysql://u:{SECRET}@/db?unix_socket={path}", timeout=0.5)


def test_a_sql_server_uri_without_a_server_is_refused():
    refused(f"mssql+pyodbc://u:{SECRET}@/db", "names no database server")
    tracking.check_store("mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC%7D%3BSERVER%3Dx", timeout=0.5)


def test_a_lone_token_as_the_user_info_is_masked_in_the_store_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(f"https://{SECRET}@127.0.0.1:{port}/", f"mlflow='https://***@127.0.0.1:{port}/': no MLflow server")
    refused(f"postgresql://{SECRET}@127.0.0.1:{port}/db", f"mlflow='postgresql://***@127.0.0.1:{port}/db': the "
            "database does not answer")


# ------------------------------------------------------------------ as a user runs it


needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="tracking extra not installed (pip install 'cnnlab[tracking]')")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("store") / "d.npz", 60, 20, size=8)


def train_args(data, out, uri):
    return ("train", "cnn1", "--data", data, "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--precision", "fp32", "--out", out, "--mlflow-uri", uri)


@needs_mlflow
def test_a_database_uri_without_a_host_fails_in_seconds_in_one_line(data, tmp_path):
    """It retried for minutes (WARNING mlflow.store.db.utils: SQLAlchemy engine could not be created ... retried in
    51.1 seconds), quoting the store's error."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PGHOST": "/nonexistent-cnnlab-socket-folder"}
    env.pop("PGPORT", None)
    for uri in (f"postgresql:///db?user=u&password={SECRET}", f"postgresql://user:{SECRET}@/db?host=/nonexistent"):
        start = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-m", "cnnlab", *map(str, train_args(data, tmp_path / "runs", uri))],
                                  env=env, capture_output=True, text=True, timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{uri}: still retrying after 45 s")
        assert time.monotonic() - start < 30
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "Unix socket" in lines[0], done.stderr[-3000:]
        assert SECRET not in done.stdout + done.stderr
        assert not (tmp_path / "runs").exists()  # refused before a run directory is made


@needs_mlflow
def test_a_lone_token_is_never_printed_by_train_or_tune(data, tmp_path, cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for uri, shown in ((f"https://{SECRET}@127.0.0.1:{port}/", f"https://***@127.0.0.1:{port}/"),
                       (f"postgresql://{SECRET}@127.0.0.1:{port}/db", f"postgresql://***@127.0.0.1:{port}/db")):
        code, out, err = cli(*train_args(data, tmp_path / "runs", uri))
        assert code == 2 and len(err.strip().splitlines()) == 1 and shown in err, err
        assert SECRET not in out + err
    pytest.importorskip("optuna", reason="optuna not installed")
    code, out, err = cli("tune", "cnn1", "--data", data, "--trials", "1", "--device", "cpu", "--storage",
                         f"postgresql://{SECRET}@127.0.0.1:{port}/db", "--out", tmp_path / "t")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "postgresql://***@127.0.0.1" in err, err
    assert SECRET not in out + err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


@needs_mlflow
def test_mlflow_does_not_print_a_uri_holding_a_lone_token(monkeypatch):
    """MLflow prints "View run ... at: URI" itself; for a URI with a credential cnnlab turns that off."""
    monkeypatch.setattr(tracking, "check_store", lambda uri, timeout=None: None)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")  # restored after the test
    tracking.MLflow(f"https://{SECRET}@mlflow.example.com/")
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
