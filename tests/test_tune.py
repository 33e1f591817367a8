"""Hyperparameter search: real Optuna studies on a tiny model, shared by several worker processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab.config import build_config
from cnnlab.errors import UserError
from cnnlab.search import read_space_file, run_tune

from conftest import make_images

ROOT = Path(__file__).resolve().parents[1]
SMALL_SPACE = {"space": {"lr": {"type": "categorical", "choices": [0.001, 0.003]},
                         "batch_size": {"type": "categorical", "choices": [32, 64]}},
               "replace": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    x, y = make_images(240, 16, classes=3)
    np.savez(root / "d.npz", images=x, labels=y)
    (root / "space.json").write_text(json.dumps(SMALL_SPACE))
    return root


def cfg(data, **kw):
    return build_config({"model": "cnn1", "data": str(data / "d.npz"), "epochs": 2, "device": "cpu",
                         "precision": "fp32", **kw})


# `cnnlab ARGS` whose trials stall at their first epoch until the process is killed: a worker to kill mid-trial
# with the same options as the survivors (a study continues only with the options it started with)
STALLED = ("import sys, time; import cnnlab.search as s; from cnnlab.callbacks import LambdaCallback; fit = s.fit; "
           "s.fit = lambda cfg, run, cbs, **kw: fit(cfg, run, [*cbs, LambdaCallback(on_epoch_start=lambda *a: "
           "time.sleep(3600))], **kw); sys.argv = ['cnnlab', *sys.argv[1:]]; from cnnlab.cli import main; main()")


def worker(data, out, trials, *extra, stalled=False):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = ["-c", STALLED] if stalled else ["-m", "cnnlab"]
    return subprocess.Popen([sys.executable, *start, "tune", "cnn1", "--data", str(data / "d.npz"),
                             "--trials", str(trials), "--device", "cpu", "--space", str(data / "space.json"),
                             "--out", str(out), *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_three_trial_search_and_best_params_round_trip(data, tmp_path, cli):
    said = []
    summary = run_tune(cfg(data), tmp_path / "t", trials=3, say=said.append)
    assert summary["complete"] + summary["pruned"] == 3 and summary["complete"] >= 1
    rows = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert len(rows) == 3 and {"param_dropout", "param_dense", "param_optimizer", "param_lr", "param_batch_size"} <= set(rows[0])
    best = json.loads((tmp_path / "t" / "best.json").read_text())
    assert set(best["params"]) == {"dropout", "dense", "optimizer", "lr", "batch_size"}
    assert 0 <= best["params"]["dropout"] <= 0.9 and best["params"]["lr"] in (0.001, 0.01, 0.1)
    assert (tmp_path / "t" / "tune.html").read_text().count("<tr>") >= 4
    assert best["setting"]["data"] == str(data / "d.npz") and best["setting"]["model"] == "cnn1"
    # the tuned setting (data, model, epochs) comes with the parameters; explicit options still win
    code, _, err = cli("train", "--params", tmp_path / "t" / "best.json", "--epochs", "1", "--device", "cpu",
                       "--out", tmp_path / "runs", "--quiet")
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    trained = json.loads((run / "config.json").read_text())
    assert trained["data"] == str(data / "d.npz") and trained["model"] == "cnn1" and trained["epochs"] == 1
    assert trained["lr"] == best["params"]["lr"] and trained["batch_size"] == best["params"]["batch_size"]
    assert trained["model_params"] == {"dropout": best["params"]["dropout"], "dense": best["params"]["dense"]}


def test_pruned_trials_stop_early_and_count_time_saved(data, tmp_path):
    import optuna

    summary = run_tune(cfg(data, epochs=4), tmp_path / "t", trials=2, pruner=optuna.pruners.ThresholdPruner(lower=1.5),
                       say=lambda t: None)  # accuracy never reaches 1.5: every trial is pruned at its first epoch
    assert summary["pruned"] == 2 and summary["complete"] == 0 and summary["seconds_saved_by_pruning"] > 0
    rows = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert {r["state"] for r in rows} == {"PRUNED"} and {r["epochs"] for r in rows} == {"1"}


def test_space_file_narrows_and_rejects_nonsense(data, tmp_path):
    space = read_space_file(data / "space.json", "cnn1")
    assert set(space) == {"lr", "batch_size"}
    (tmp_path / "s.toml").write_text('exclude = ["optimizer"]\n[space.lr]\ntype = "categorical"\nchoices = [0.01]\n')
    space = read_space_file(tmp_path / "s.toml", "tuned-cnn")
    assert "optimizer" not in space and space["lr"]["choices"] == [0.01] and "dropout3" in space
    (tmp_path / "bad.toml").write_text('[space.lr]\ntype = "float"\nlow = 1\n')
    with pytest.raises(UserError, match="parameter 'lr' needs"):
        read_space_file(tmp_path / "bad.toml", "cnn1")


def _finished(out: Path) -> list[dict]:
    rows = list(csv.DictReader(open(out / "trials.csv")))
    return [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]


@pytest.mark.slow
def test_two_workers_share_one_journal(data, tmp_path):
    procs = [worker(data, tmp_path / "t", 4) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    rows = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    numbers = [r["number"] for r in rows]
    assert len(numbers) == len(set(numbers))
    assert 4 <= len(_finished(tmp_path / "t")) <= 5  # both may start a trial at the last moment
    trial_dirs = sorted(p.name for p in (tmp_path / "t" / "trials").iterdir())
    assert len(trial_dirs) == len(rows)


@pytest.mark.slow
def test_killed_worker_loses_only_its_trial(data, tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    out = tmp_path / "t"
    victim = worker(data, out, 3, "--epochs", "2", stalled=True)  # killed mid-trial
    journal = out / "optuna.journal"
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "trials").is_dir():
        time.sleep(0.2)
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    running = [t for t in optuna.load_study(study_name="cnnlab-cnn1", storage=storage).trials
               if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == 1
    survivor = worker(data, out, 3, "--epochs", "2")
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err.decode()
    study = optuna.load_study(study_name="cnnlab-cnn1", storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert states[running[0].number] == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == running[0].number]
    assert len(retries) == 1 and retries[0].params == running[0].params
    assert len(_finished(out)) == 3


@pytest.mark.slow
def test_a_running_survivor_notices_a_killed_worker(data, tmp_path):
    """Two workers on one journal; one is killed mid-trial while the other runs. The survivor fails and re-queues
    the dead trial itself (no new worker needed), and the study ends with exactly --trials finished trials."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    out = tmp_path / "t"
    victim = worker(data, out, 4, "--epochs", "2", stalled=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "trials").is_dir():
        time.sleep(0.2)
    survivor = worker(data, out, 4, "--epochs", "2")
    time.sleep(3.0)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err.decode()
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    study = optuna.load_study(study_name="cnnlab-cnn1", storage=storage)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 4, [t.state for t in study.trials]
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert any("retry_of" in t.user_attrs for t in study.trials)
    assert "Warning" not in err.decode()  # Optuna's experimental/deprecation warnings are not shown


POSTGRES = os.environ.get("CNNLAB_TEST_POSTGRES", "postgresql://postgres:cnnlab@127.0.0.1:5432/cnnlab_test")


def _postgres_reachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg not installed (pip install -e '.[dev]')"
    try:
        psycopg.connect(POSTGRES, connect_timeout=3).close()
    except Exception as exc:
        return f"no PostgreSQL server at {POSTGRES.split('@')[-1]} ({str(exc).strip().splitlines()[0]})"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_postgres_reachable() is not None, reason=str(_postgres_reachable()))
def test_two_workers_on_postgresql(data, tmp_path):
    name = f"pg-{os.getpid()}-{time.time_ns()}"
    procs = [worker(data, tmp_path / f"w{i}", 6, "--storage", POSTGRES, "--study-name", name) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    import optuna

    study = optuna.load_study(study_name=name, storage=POSTGRES)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert 6 <= len(finished) <= 7, [t.state for t in study.trials]
    assert len({t.number for t in study.trials}) == len(study.trials)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2, workers  # both processes did trials


OPEN_STORAGE = "import sys; from pathlib import Path; from cnnlab.search import open_storage; open_storage(sys.argv[1], Path('.'))"


@pytest.mark.slow
@pytest.mark.skipif(_postgres_reachable() is not None, reason=str(_postgres_reachable()))
def test_workers_opening_a_new_database_together_all_open_it():
    """PostgreSQL's CREATE TABLE IF NOT EXISTS is not atomic: workers that create Optuna's tables at once fail
    with a duplicate key (search.lost_schema_race), as two `cnnlab tune` workers did once in CI."""
    import psycopg

    name = f"cnnlab_race_{os.getpid()}_{time.time_ns()}"
    admin = psycopg.connect(POSTGRES, autocommit=True)
    try:
        for attempt in range(3):  # the race is not lost every time: three new databases, six openers each
            admin.execute(f'CREATE DATABASE "{name}_{attempt}"')
            url = POSTGRES.rsplit("/", 1)[0] + f"/{name}_{attempt}"
            procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORAGE, url], stderr=subprocess.PIPE)
                     for _ in range(6)]
            errors = [p.communicate(timeout=120)[1].decode() for p in procs]
            assert [p.returncode for p in procs] == [0] * 6, [e.strip().splitlines()[-1:] for e in errors]
    finally:
        for attempt in range(3):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}_{attempt}" WITH (FORCE)')
        admin.close()


def test_a_database_password_is_never_shown(data, tmp_path, cli):
    url = "postgresql://cnnlab:SECRET-PW-123@127.0.0.1:1/nowhere"  # nothing listens on port 1: it cannot open
    code, out, err = cli("tune", "cnn1", "--data", data / "d.npz", "--trials", "1", "--storage", url,
                         "--out", tmp_path / "t")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "SECRET-PW-123" not in out + err and "postgresql://cnnlab:***@127.0.0.1:1/nowhere" in err
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and b"SECRET-PW-123" in p.read_bytes()]
    assert not leaked


def test_search_input_mistakes_fail_before_any_trial(data, tmp_path, cli):
    bad_space = tmp_path / "space.json"
    bad_space.write_text(json.dumps({"space": {"dropout_rate_typo": {"type": "float", "low": 0, "high": 0.5}}}))
    for args, message in ((["--data", tmp_path / "missing.npz"], "no such file or folder"),
                          (["--data", data / "d.npz", "--classes", "0,0"], "listed twice"),
                          (["--data", data / "d.npz", "--space", bad_space], "unknown parameter(s) 'dropout_rate_typo'")):
        code, _, err = cli("tune", "cnn1", "--trials", "2", "--out", tmp_path / "t", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "t").exists()  # no journal, trials.csv or tune.html was written


def test_the_last_worker_to_write_the_results_writes_the_latest_states(tmp_path, monkeypatch):
    """Worker A reads the study (trial 0 running), then worker B's trial finishes and B writes the results while A
    is still writing: B waits for A under the directory's lock and reads again, so trials.csv ends COMPLETE, not
    A's stale RUNNING (a fresh-clone CI run of test_two_workers_share_one_journal saw the stale one)."""
    import threading

    import optuna

    from cnnlab import search

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    a_read, go = threading.Event(), threading.Event()
    table = search.trials_table

    def slow_first_read(*args):
        rows = table(*args)
        if not a_read.is_set():
            a_read.set()
            go.wait(10)  # A holds its stale rows until B has tried to write
        return rows

    monkeypatch.setattr(search, "trials_table", slow_first_read)
    a = threading.Thread(target=search.write_results, args=(study, tmp_path, "val_accuracy"))
    a.start()
    assert a_read.wait(10)
    study.tell(trial, 0.9)
    b = threading.Thread(target=search.write_results, args=(study, tmp_path, "val_accuracy"))
    b.start()
    b.join(1.0)  # without the lock B is done by now; with it, B waits for A
    go.set()
    a.join(10), b.join(10)
    assert [r["state"] for r in csv.DictReader(open(tmp_path / "trials.csv"))] == ["COMPLETE"]


def test_a_summary_while_the_only_trial_runs(tmp_path):
    """A second worker that finds the search full while the first one's only trial runs still writes a summary
    (every duration None: pandas gave that column no .dt, and the summary failed)."""
    import optuna

    from cnnlab.search import write_results

    study = optuna.create_study(direction="maximize")
    study.ask()
    assert write_results(study, tmp_path, "val_accuracy")["complete"] == 0
    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert [(r["state"], r["seconds"]) for r in rows] == [("RUNNING", "")]
