"""Hostile use of the Ray options, on loopback only: an address where nothing answers (or no cluster for
"auto") fails at once in one line instead of Ray's minutes of retries, and a Ray that cannot start or be joined
leaves no settings file behind, so the same folder takes other options next time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_npz_dataset

from cnnlab.distributed import START_HEAD, loopback_only, ray_cluster  # noqa: E402
from cnnlab.errors import UserError

loopback_only()  # tests never bind another address than 127.0.0.1
ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'cnnlab[ray]')")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
HANG_BOUND = 30  # seconds: a hang guard, not a speed test (Ray alone retried a dead address for minutes)


@pytest.fixture(autouse=True)
def no_ray_yet(monkeypatch):
    if ray.is_initialized():  # ray_cluster would reuse it and never reach the address
        pytest.skip("Ray already initialised in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("d") / "d.npz", 120, 30)


def dead_port() -> int:
    """A loopback port where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quick(*extra) -> list[str]:
    return ["--epochs", "1", "--batch-size", "32", "--device", "cpu", "--quiet", *extra]


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_a_dead_address_fails_at_once_and_leaves_no_study_settings(cli, data, tmp_path):
    address = f"127.0.0.1:{dead_port()}"
    started = time.monotonic()
    code, _, err = cli("study", "--models", "cnn1", "--repeats", "1", "--data", data, "--out", tmp_path / "s",
                       *quick("--ray", "--ray-address", address))
    assert time.monotonic() - started < HANG_BOUND
    line = one_line(err)
    assert code == 2 and address in line and "nothing answers" in line and START_HEAD in line
    assert not (tmp_path / "s" / "study.json").exists()
    # nothing trained: the same folder takes other options (here without Ray, 2 epochs)
    code, _, err = cli("study", "--models", "cnn1", "--repeats", "1", "--data", data, "--out", tmp_path / "s",
                       "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "study.json").read_text())["train"]["epochs"] == 2


def test_a_dead_address_leaves_no_ensemble_settings(cli, data, tmp_path):
    code, _, err = cli("ensemble", "cnn1", "--data", data, "--members", "1", "--threshold", "0", "--out", tmp_path / "e",
                       *quick("--ray", "--ray-address", f"127.0.0.1:{dead_port()}"))
    assert code == 2 and "nothing answers" in one_line(err)
    assert not (tmp_path / "e" / "ensemble_settings.json").exists()
    code, _, err = cli("ensemble", "cnn1", "--data", data, "--members", "1", "--threshold", "0.0", "--out",
                       tmp_path / "e", "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--quiet")
    assert code == 0, err


def test_a_dead_address_records_no_search_and_a_refused_one_says_so_before_ray(cli, data, tmp_path):
    """tune --ray: the search's settings are recorded once Ray is up (a failed join recorded them, so the folder
    refused other options); a search that exists is held to its options before Ray is asked."""
    out, space = tmp_path / "t", tmp_path / "space.json"
    space.write_text(json.dumps({"space": {"lr": {"type": "categorical", "choices": [0.001, 0.003]}}, "replace": True}))
    tune = ["tune", "cnn1", "--data", data, "--space", space, "--out", out, "--trials", "1", "--epochs", "1",
            "--batch-size", "32", "--device", "cpu"]
    code, _, err = cli(*tune, "--ray", "--ray-address", f"127.0.0.1:{dead_port()}")
    assert code == 2 and "nothing answers" in one_line(err)
    code, _, err = cli(*tune, "--train-images", "90")  # other options, without Ray: a new search
    assert code == 0, err
    code, _, err = cli(*tune, "--ray", "--ray-address", f"127.0.0.1:{dead_port()}")  # without --train-images
    assert code == 2 and "holds a search with other training options" in one_line(err)


def test_settings_that_existed_stay_and_a_refused_rerun_says_so_before_ray(cli, data, tmp_path):
    out = tmp_path / "s"
    assert cli("study", "--models", "cnn1", "--repeats", "1", "--data", data, "--out", out, *quick())[0] == 0
    before = (out / "study.json").read_bytes()
    code, _, err = cli("study", "--models", "cnn1", "--repeats", "2", "--data", data, "--out", out,
                       *quick("--ray", "--ray-address", f"127.0.0.1:{dead_port()}"))
    assert code == 2 and "nothing answers" in one_line(err)
    assert (out / "study.json").read_bytes() == before  # never removed or changed by a failed join
    code, _, err = cli("study", "--models", "cnn1", "--repeats", "1", "--data", data, "--out", out,
                       *quick("--lr", "0.5", "--ray", "--ray-address", f"127.0.0.1:{dead_port()}"))
    assert code == 2 and "other training options" in one_line(err)  # the folder's refusal, not Ray's


def test_auto_without_a_cluster_fails_at_once(monkeypatch):
    from ray._private import services
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset())  # none running here (other
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)  # sessions' may be) or recorded
    started = time.monotonic()
    with pytest.raises(UserError, match="ray_address='auto' found no running cluster") as info:
        with ray_cluster("auto"):
            pass
    assert time.monotonic() - started < HANG_BOUND and "\n" not in str(info.value) and START_HEAD in str(info.value)


def test_auto_follows_ray_address_and_fails_at_once_where_nothing_answers(monkeypatch):
    address = f"127.0.0.1:{dead_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    started = time.monotonic()
    with pytest.raises(UserError, match=f"nothing answers at auto \\({address}\\)"):
        with ray_cluster("auto"):
            pass
    assert time.monotonic() - started < HANG_BOUND


@pytest.mark.parametrize("server", ["silent", "http"])
def test_another_server_on_the_port_is_named_at_once(server, cli, data, tmp_path):
    """A port that answers but is not Ray's (a socket that says nothing, a web server): Ray retried it for about
    20 s; now one line within the connect timeout, and no settings are recorded."""
    import http.server
    import threading
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # the server's log would land in the captured stderr
            pass

    if server == "http":
        listener = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=listener.serve_forever, daemon=True).start()
        port = listener.server_address[1]
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        code, _, err = cli("study", "--models", "cnn1", "--repeats", "1", "--data", data, "--out", tmp_path / "s",
                           *quick("--ray", "--ray-address", f"127.0.0.1:{port}"))
        assert time.monotonic() - started < HANG_BOUND
    finally:
        (listener.shutdown if server == "http" else listener.close)()
    line = one_line(err)
    assert code == 2 and f"127.0.0.1:{port} answers, but not as a Ray cluster" in line and START_HEAD in line
    assert not (tmp_path / "s" / "study.json").exists()


def test_a_grpc_server_is_recognised_through_a_proxy_setting(monkeypatch):
    """http_proxy set (a company network): the check's channel went through the proxy and called a real gRPC
    server 'not a Ray cluster'; Ray's own channels do not use the proxy, nor does the check now."""
    import grpc
    from concurrent import futures

    from cnnlab.ports import speaks_grpc
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{dead_port()}")
        monkeypatch.setenv("grpc_proxy", f"http://127.0.0.1:{dead_port()}")
        assert speaks_grpc("127.0.0.1", port, 5.0)
    finally:
        server.stop(None)


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999", "127.0.0.1:", ":6379"])
def test_an_address_that_is_not_host_port_is_one_line(address):
    with pytest.raises(UserError, match="expected 'auto' or HOST:PORT"):
        with ray_cluster(address):
            pass


def _processes_under(temp_dir: str) -> list:
    """The processes of the head started with this --temp-dir (and their children): ours alone to stop."""
    import psutil
    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in list(mine):
        try:
            mine += [c for c in proc.children(recursive=True) if c not in mine]
        except psutil.NoSuchProcess:
            continue
    return mine


@pytest.mark.slow
def test_the_advised_head_binds_loopback_only_and_a_study_joins_it(data, tmp_path):
    """START_HEAD (the advice and the README's command), with its own port and temp folder: every listening
    socket of its processes is on 127.0.0.1, and `cnnlab study --ray-address 127.0.0.1:PORT` trains on it."""
    import psutil
    port, temp_dir = dead_port(), f"/tmp/cnnlab-rh-{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in ENV.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    assignment, command = START_HEAD.split(" ", 1)
    env.update([assignment.split("=")])  # the command as a user types it, its environment variable included
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = None
    try:
        head = subprocess.run([ray_cli, *command.split()[1:], f"--port={port}", f"--temp-dir={temp_dir}",
                               "--num-cpus=2", "--disable-usage-stats"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert head.returncode == 0, head.stderr[-3000:]
        time.sleep(2)
        listening = {(c.laddr.ip, c.laddr.port) for p in _processes_under(temp_dir)
                     for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _ in listening), listening
        done = subprocess.run([sys.executable, "-m", "cnnlab", "study", "--models", "cnn1", "--repeats", "2",
                               "--data", str(data), "--out", str(tmp_path / "s"), *quick("--ray", "--ray-address",
                                                                                         f"127.0.0.1:{port}")],
                              # Ray sends its token only to "auto"'s cluster unless told (the head has token auth on)
                              env={**{k: v for k, v in ENV.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"},
                                   "RAY_AUTH_MODE": "token"},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert all(json.loads((run / "metrics.json").read_text())["status"] == "finished"
                   for run in (tmp_path / "s" / "runs").iterdir())
    finally:  # never `ray stop`: it would stop every Ray on the machine
        procs = _processes_under(temp_dir)
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            proc.kill()


@pytest.mark.slow
def test_the_private_cluster_is_started_even_where_ray_address_is_set(data, tmp_path):
    """--ray without --ray-address starts its own loopback cluster; RAY_ADDRESS (here a dead port) is not joined."""
    done = subprocess.run([sys.executable, "-m", "cnnlab", "study", "--models", "cnn1", "--repeats", "1",
                           "--data", str(data), "--out", str(tmp_path / "s"), *quick("--ray")],
                          env={**ENV, "RAY_ADDRESS": f"127.0.0.1:{dead_port()}"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
