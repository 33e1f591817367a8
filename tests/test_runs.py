"""The run-directory contract: one status definition, one owner at a time, unique names, atomic files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab import runs
from cnnlab.errors import UserError
from cnnlab.runs import RunDir

from conftest import write_npz_dataset

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def test_status_from_fresh_to_finished(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.status() == runs.FRESH  # no directory yet
    run.path.mkdir()
    assert run.status() == runs.FRESH
    run.write_status(runs.RUNNING, epochs_done=0)
    assert run.status() == runs.INTERRUPTED  # it says running, but nobody owns it: its process died
    with run.owned():
        assert RunDir(run.path).status() == runs.RUNNING  # as any other reader sees it
    run.write_status(runs.FAILED, reason="the loss became nan")
    assert run.status() == runs.FAILED
    runs.write_json(run.file(runs.MODEL), {"spec": {"name": "cnn1"}})
    assert run.status() == runs.FINISHED


def test_one_owner_at_a_time(tmp_path):
    a, b = RunDir(tmp_path / "r"), RunDir(tmp_path / "r")
    assert a.try_own()
    assert not b.try_own() and b.is_owned_elsewhere()
    with pytest.raises(UserError, match="another process is training into this run directory"):
        with b.owned():
            pass
    a.release()
    assert b.try_own()
    b.release()


def test_a_killed_owner_frees_the_directory(tmp_path):
    """The owner lock is the kernel's: a process killed with SIGKILL holds nothing afterwards."""
    code = f"from cnnlab.runs import RunDir; import time; run = RunDir({str(tmp_path / 'r')!r}); assert run.try_own(); " \
           "print('owned', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "owned"
    assert RunDir(tmp_path / "r").status() == runs.RUNNING
    proc.kill()
    proc.wait()
    assert RunDir(tmp_path / "r").try_own()


def test_unique_names_even_in_the_same_second(tmp_path):
    made = {RunDir.create(tmp_path, "cnn1").path.name for _ in range(5)}
    assert len(made) == 5


def test_stale_temporaries_are_removed_by_the_next_owner(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    stale = run.path / ".metrics.json.abcd1234.tmp"
    stale.write_text("{half")
    assert run.try_own() and not stale.exists()
    run.release()


def test_damaged_run_files_are_one_clear_line(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.file(runs.MODEL).write_text('{"spec": {"name": "cnn1"}')
    with pytest.raises(UserError, match="model.json: not valid JSON .*edited or damaged"):
        run.read_model_meta()
    run.file(runs.MODEL).write_text('{"spec": "cnn1", "num_classes": 3, "class_names": [], "class_ids": [], '
                                    '"input_shape": [1, 8, 8]}')
    with pytest.raises(UserError, match="'spec' is missing or not a dict"):
        run.read_model_meta()
    run.file(runs.CONFIG).write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        run.read_config()


def test_files_get_the_users_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        runs.write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_writing_into_a_path_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(UserError, match="blocker/x.json: a part of this path is a file, not a folder"):
        runs.write_json(tmp_path / "blocker" / "x.json", {})
    with pytest.raises(UserError, match="this path is a folder"):
        runs.write_json(tmp_path, {})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("d") / "d.npz", 240, 60)


def _train(data, out, seed):
    return subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "cnn1", "--data", str(data), "--epochs", "1",
                             "--batch-size", "32", "--device", "cpu", "--seed", str(seed), "--out", str(out), "--quiet"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_two_trainings_into_one_out_keep_both_runs(tiny, tmp_path):
    procs = [_train(tiny, tmp_path, seed) for seed in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    seeds = sorted(json.loads((p / "config.json").read_text())["seed"] for p in tmp_path.iterdir())
    assert seeds == [1, 2] and all(RunDir(p).status() == runs.FINISHED for p in tmp_path.iterdir())


@pytest.mark.slow
def test_two_studies_on_one_directory_train_each_run_once(tiny, tmp_path):
    command = [sys.executable, "-m", "cnnlab", "study", "--models", "cnn1,tuned-cnn", "--repeats", "2", "--data", str(tiny),
               "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "s")]
    procs = [subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        outputs.append(out)
    trained = sum(line.count(": training") for out in outputs for line in out.splitlines())
    assert trained == 4, outputs  # four runs, each trained by exactly one of the two processes
    assert all(RunDir(p).status() == runs.FINISHED for p in (tmp_path / "s" / "runs").iterdir())
