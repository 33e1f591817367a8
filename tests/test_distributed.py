"""Scale-out on real engines, on loopback only: a local Ray cluster (127.0.0.1, dashboard off, usage stats
off) trains ensembles, searches and studies; torchrun trains one model on two processes (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cnnlab
from cnnlab import runs
from cnnlab.runs import RunDir

from conftest import make_images, write_npz_dataset

from cnnlab.distributed import loopback_only  # noqa: E402

loopback_only()  # before Ray starts anything: tests never bind another address than 127.0.0.1
ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'cnnlab[ray]')")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of two worker CPUs for the module, bound to 127.0.0.1 (never another address)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(_node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="WARNING")
    assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("d") / "d.npz", 240, 60)


def settings(**kw):
    return {**dict(epochs=1, batch_size=32, device="cpu", precision="fp32", progress=False, say=lambda text: None), **kw}


@pytest.mark.slow
def test_ensemble_on_ray_writes_ordinary_member_directories(cluster, data, tmp_path):
    manifest = cnnlab.ensemble("cnn1", 4, 0.0, "hard", str(data), out=tmp_path / "ens", ray=True, **settings())
    assert manifest["qualified"] == 4 and manifest["attempts"] == 4 and "test_accuracy" in manifest
    members = sorted((tmp_path / "ens" / "members").iterdir())
    assert [m.name for m in members] == [f"member-{i:03d}" for i in range(4)]
    for member in members:
        run = RunDir(member)
        assert run.status() == runs.FINISHED
        assert {runs.CONFIG, runs.ENV, runs.HISTORY, runs.METRICS, runs.LOGITS, runs.WEIGHTS, runs.MODEL} <= \
            {p.name for p in member.iterdir()}
    assert sorted(json.loads((m / runs.CONFIG).read_text())["seed"] for m in members) == [0, 1, 2, 3]
    x, y = make_images(60, 16, classes=3, seed=7)
    assert np.mean(cnnlab.predict(tmp_path / "ens", x) == y) > 0.8  # the vote, usable like any run
    again = cnnlab.ensemble("cnn1", 4, 0.0, "hard", str(data), out=tmp_path / "ens", ray=True, **settings())
    assert again["attempts"] == 4  # a rerun trains nothing: every member is finished


def _task_processes(name: str = "ray::cnnlab-train") -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().replace(b"\0", b" ").startswith(name.encode()):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_every_member_trains_once(cluster, data, tmp_path):
    result, killed = {}, []

    def run():
        result["manifest"] = cnnlab.ensemble("cnn1", 4, 0.0, "hard", str(data), out=tmp_path / "ens", ray=True,
                                             **settings(epochs=15))

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not killed:
        pids = _task_processes()
        if pids:
            time.sleep(1.0)  # let it train a little
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        time.sleep(0.2)
    thread.join(timeout=300)
    assert killed, "no Ray worker was seen training"
    manifest = result["manifest"]
    assert manifest["qualified"] == 4 and manifest["attempts"] == 4
    members = sorted((tmp_path / "ens" / "members").iterdir())
    assert len(members) == 4 and all(RunDir(m).status() == runs.FINISHED for m in members)
    histories = [len((m / runs.HISTORY).read_text().splitlines()) for m in members]
    assert histories == [16] * 4  # header + 15 epochs each: nothing half-written, nothing trained twice into a dir


@pytest.mark.slow
def test_search_on_ray_with_a_journal(cluster, data, tmp_path):
    import optuna

    (tmp_path / "space.json").write_text(json.dumps({"replace": True, "space": {
        "dropout": {"type": "float", "low": 0.0, "high": 0.5}, "lr": {"type": "categorical", "choices": [0.001, 0.003]}}}))
    summary = cnnlab.tune("cnn1", 2, str(data), out=tmp_path / "t", space=tmp_path / "space.json", ray=True,
                          epochs=2, batch_size=32, device="cpu", say=lambda text: None)
    assert summary["complete"] + summary["pruned"] == 2
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "t" / "optuna.journal")))
    study = optuna.load_study(study_name="cnnlab-cnn1", storage=storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == 2  # no duplicate trial
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)  # epochs reached the study through the driver
    assert sorted(p.name for p in (tmp_path / "t" / "trials").iterdir()) == ["trial-0000", "trial-0001"]
    assert (tmp_path / "t" / "best.json").is_file()


@pytest.mark.slow
def test_study_on_ray(cluster, data, tmp_path):
    result = cnnlab.study(["cnn1", "tuned-cnn"], 1, str(data), out=tmp_path / "s", ray=True, **settings())
    assert [r.status for r in result["runs"]] == ["finished", "finished"] and result["report"].is_file()


def test_without_ray_the_flag_is_one_line(monkeypatch, data, tmp_path, cli):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    code, _, err = cli("ensemble", "cnn1", "--data", data, "--members", "2", "--ray", "--out", tmp_path / "e")
    assert code == 2 and "pip install 'cnnlab[ray]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_torchrun_two_processes_train_one_model(data, tmp_path):
    """torchrun --nproc-per-node 2 (gloo, CPU): rank 0 alone writes a run directory like a single process's."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", "29517", "-m", "cnnlab", "train", "cnn1", "--data", str(data), "--epochs", "3",
               "--batch-size", "32", "--device", "cpu", "--precision", "fp32", "--out", str(tmp_path / "ddp"), "--quiet"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "cnnlab", *command[command.index("train"):-3],
                             "--out", str(tmp_path / "one"), "--quiet"], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    (ddp,), (one,) = (tmp_path / "ddp").iterdir(), (tmp_path / "one").iterdir()
    assert {p.name for p in ddp.iterdir()} == {p.name for p in one.iterdir()}
    metrics = json.loads((ddp / runs.METRICS).read_text())
    assert metrics["status"] == "finished" and metrics["world_size"] == 2 and metrics["test_accuracy"] > 0.8
    assert len((ddp / runs.HISTORY).read_text().splitlines()) == 4


@pytest.mark.slow
def test_the_cli_starts_its_own_loopback_cluster(data, tmp_path):
    """`cnnlab ensemble --ray` in a fresh process: its private cluster on 127.0.0.1, ordinary member directories."""
    done = subprocess.run([sys.executable, "-m", "cnnlab", "ensemble", "cnn1", "--data", str(data), "--members", "2",
                           "--threshold", "0", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--ray",
                           "--out", str(tmp_path / "ens")], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 of 2 trained members qualified" in done.stdout and "on Ray" in done.stdout
    assert all(RunDir(m).status() == runs.FINISHED for m in (tmp_path / "ens" / "members").iterdir())
