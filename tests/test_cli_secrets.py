"""A password given on the command line (a --storage or --mlflow-uri URL) is never printed or written, wherever
in the URL it sits; a tracking store MLflow cannot use fails in one line before anything is written."""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab.errors import UserError

from conftest import make_images

ROOT = Path(__file__).resolve().parents[1]
SECRET = "SECRETPW"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    x, y = make_images(120, 16, classes=3)
    np.savez(root / "d.npz", images=x, labels=y)
    return root / "d.npz"


def cnnlab(*args, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m cnnlab ...` as a user runs it, stdout and stderr pipes (a log, not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "cnnlab", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def files_holding(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()] if folder.exists() else []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tune_never_shows_a_password_in_the_query_string(data, tmp_path):
    url = f"postgresql://u:{SECRET}@127.0.0.1:1/db?password={SECRET}"  # nothing listens on port 1: it fails fast
    done = cnnlab("tune", "cnn1", "--data", data, "--trials", "1", "--device", "cpu", "--storage", url,
                  "--out", tmp_path / "t")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "postgresql://u:***@127.0.0.1:1/db?password=***" in done.stderr
    assert not files_holding(tmp_path, SECRET)


# ------------------------------------------------------------------ MLflow


mlflow = pytest.importorskip("mlflow", reason="tracking extra not installed (pip install 'cnnlab[tracking]')")


def train_args(data, out, *extra):
    return ("train", "cnn1", "--data", data, "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--precision", "fp32", "--out", out, *extra)


def test_a_file_store_is_one_line_naming_the_fix(data, tmp_path, cli, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (f"file://{tmp_path / 'mlruns'}", str(tmp_path / "mlruns")):
        code, _, err = cli(*train_args(data, tmp_path / "runs", "--mlflow-uri", uri))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--mlflow-uri" in err and "sqlite:///" in err and "MLFLOW_ALLOW_FILE_STORE=true" in err
        assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the fix the line names works
    code, _, err = cli(*train_args(data, tmp_path / "runs", "--quiet", "--mlflow-uri", f"file://{tmp_path / 'mlruns'}"))
    assert code == 0, err
    assert (tmp_path / "mlruns").is_dir()


def test_an_unreachable_server_fails_in_seconds_in_one_line_before_anything_is_written(data, tmp_path):
    uri = f"http://cnnlab:{SECRET}@127.0.0.1:{closed_port()}"
    start = time.monotonic()
    try:
        done = cnnlab(*train_args(data, tmp_path / "runs", "--mlflow-uri", uri), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("still retrying after 60 s")
    assert time.monotonic() - start < 30
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    assert "--mlflow-uri http://cnnlab:***@127.0.0.1:" in done.stderr and SECRET not in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()


def test_mlflow_and_alembic_info_lines_stay_out_of_the_output(data, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a new database: MLflow and Alembic announce its tables at INFO
    done = cnnlab(*train_args(data, tmp_path / "runs", "--mlflow-uri", store))
    assert done.returncode == 0, done.stderr[-3000:]
    noise = [line for line in (done.stdout + done.stderr).splitlines() if re.search(r"\bINFO\b|\[alembic|\bmlflow\.[\w.]+: ", line)]
    assert not noise, noise
    client = mlflow.tracking.MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "cnnlab"]
    assert len(client.search_runs([experiment.experiment_id])) == 1  # it did log


class _Answer(http.server.BaseHTTPRequestHandler):
    status, body = 404, b""

    def do_GET(self):
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local HTTP server answering every GET with (status, body), at http://127.0.0.1:PORT."""
    servers = []

    def start(status: int, body: bytes = b"") -> str:
        handler = type("Handler", (_Answer,), {"status": status, "body": body})
        httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_the_store_check(server, tmp_path):
    from cnnlab.tracking import check_store

    check_store(server(404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no experiment cnnlab"}'))
    check_store(server(200, b'{"experiment": {}}'))
    check_store(server(401, b"login"))  # credentials are MLflow's business
    with pytest.raises(UserError, match="does not answer as an MLflow tracking server"):
        check_store(server(404, b"<html>nginx</html>"))
    with pytest.raises(UserError, match=r"mlflow='http://u:\*\*\*@127\.0\.0\.1:\d+': no MLflow server answers"):
        check_store(f"http://u:{SECRET}@127.0.0.1:{closed_port()}")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = time.monotonic()
        with pytest.raises(UserError, match=r"no answer within 0.5 s"):
            check_store(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        assert time.monotonic() - start < 5
    with pytest.raises(UserError, match=r"the database does not answer at 127\.0\.0\.1:\d+") as exc:
        check_store(f"postgresql://u:{SECRET}@127.0.0.1:{closed_port()}/mlflow?sslpassword={SECRET}")
    assert SECRET not in str(exc.value)
    with pytest.raises(UserError, match="does not exist"):
        check_store(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    check_store(f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.slow
def test_credentials_in_a_tracking_server_uri_are_never_printed(data, tmp_path):
    port = closed_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--default-artifact-root", str(tmp_path / "artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.skip("mlflow server did not start within 90 s")
        out = tmp_path / "runs"
        done = cnnlab(*train_args(data, out, "--mlflow-uri", f"http://cnnlab:{SECRET}@127.0.0.1:{port}"), timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        assert SECRET not in done.stdout + done.stderr, done.stdout  # MLflow's "View run ... at: URI" included
        assert not files_holding(out, SECRET)
        client = mlflow.tracking.MlflowClient(f"http://127.0.0.1:{port}")
        assert client.get_experiment_by_name("cnnlab") is not None
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_hosted_store_names_are_not_taken_for_a_file_store(monkeypatch):
    from cnnlab.tracking import check_store

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    check_store("databricks")
    with pytest.raises(UserError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        check_store("mlruns")
