"""Rerunning a search: "rerun the same command" holds after it finished and after it was killed, from
the CLI and from the Python API; Ctrl-C ends in cnnlab's one line, without Optuna's traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnnlab

from conftest import make_images

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"space": {"lr": {"type": "categorical", "choices": [0.001, 0.003]}}, "replace": True}
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun")
    x, y = make_images(160, 16, classes=3)
    np.savez(root / "d.npz", images=x, labels=y)
    (root / "space.json").write_text(json.dumps(SPACE))
    return root


def tune_args(data, out, *extra):
    return ["tune", "cnn1", "--data", str(data / "d.npz"), "--trials", "2", "--device", "cpu", "--epochs", "1",
            "--space", str(data / "space.json"), "--out", str(out), *extra]


def test_rerunning_a_finished_search_from_the_cli_says_so(data, tmp_path, cli):
    out = tmp_path / "t"
    code, _, err = cli(*tune_args(data, out))
    assert code == 0, err
    code, said, err = cli(*tune_args(data, out))
    assert code == 0, err
    assert "the search is finished" in said and "2 complete" in said and "Traceback" not in err
    assert not any("trial 2" in line for line in said.splitlines())  # nothing trained again


def test_rerunning_a_finished_search_from_the_api(data, tmp_path):
    options = dict(data=str(data / "d.npz"), out=tmp_path / "t", device="cpu", epochs=1, space=data / "space.json")
    first = cnnlab.tune("cnn1", 2, say=lambda s: None, **options)
    said: list[str] = []
    again = cnnlab.tune("cnn1", 2, say=said.append, **options)
    assert any("the search is finished" in s for s in said)
    assert again["complete"] + again["pruned"] == first["complete"] + first["pruned"] == 2


def _started(out: Path) -> bool:
    return any((out / "trials").glob("trial-*/history.csv")) or any((out / "trials").glob("trial-*/config.json"))


def test_a_killed_api_search_continues_when_rerun(data, tmp_path):
    out = tmp_path / "t"
    # the same options as the rerun (a study continues only with those), its trial stalled until it is killed
    code = ("import time; import cnnlab, cnnlab.search as s; from cnnlab.callbacks import LambdaCallback; fit = s.fit; "
            "s.fit = lambda cfg, run, cbs, **kw: fit(cfg, run, [*cbs, LambdaCallback(on_epoch_start=lambda *a: "
            f"time.sleep(3600))], **kw); cnnlab.tune('cnn1', 2, data={str(data / 'd.npz')!r}, out={str(out)!r}, "
            f"device='cpu', epochs=1, space={str(data / 'space.json')!r}, say=print)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not _started(out):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summary = cnnlab.tune("cnn1", 2, data=str(data / "d.npz"), out=out, device="cpu", epochs=1,
                          space=data / "space.json", say=lambda s: None)
    assert summary["complete"] + summary["pruned"] == 2 and summary["failed"] == 1  # the killed trial, redone


def test_ctrl_c_during_a_search_is_one_line(data, tmp_path):
    out = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *tune_args(data, out)[:-2], "--out", str(out),
                             "--epochs", "300"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not _started(out):
        time.sleep(0.2)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == \
        ["cnnlab: interrupted; finished trials are kept in the study. Continue with the same command."]


def test_a_ctrl_c_inside_optunas_journal_lock_is_still_a_ctrl_c(data, tmp_path, monkeypatch, capfd):
    """The race CI met once: SIGINT inside the journal lock's release, whose cleanup then raised FileNotFoundError
    with the KeyboardInterrupt as context. Injected here at the first epoch's report, where it happened."""
    import optuna

    def interrupted_report(self, value, step):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise FileNotFoundError(2, "No such file or directory", "optuna.journal.lock.rename")  # context: the Ctrl-C

    monkeypatch.setattr(optuna.trial.Trial, "report", interrupted_report)
    with pytest.raises(KeyboardInterrupt):
        cnnlab.tune("cnn1", 2, data=str(data / "d.npz"), out=tmp_path / "t", device="cpu", epochs=2,
                    space=data / "space.json", say=lambda s: None)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "FileNotFoundError" not in err, err
