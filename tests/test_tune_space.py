"""A hostile user's search, second round: best.json that must repeat the best trial, two models in one --out,
a --space with bad values, every trial failing, choices changed under a study, an in-memory database. Each
refusal is one line (what is wrong, how to fix it), exit code 2, before any trial, with nothing recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cnnlab
from cnnlab import search
from cnnlab.config import RESULT_NEUTRAL, differing_settings
from cnnlab.errors import UserError

from conftest import one_line, snapshot, tune_args, write_tune_data

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tune_data(tmp_path_factory.mktemp("tune-space"))


def space_file(tmp_path: Path, space: dict, name: str = "s.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"space": space, "replace": True}))
    return path


# ------------------------------------------------------------------ best.json repeats the best trial


def test_train_with_best_json_repeats_the_tuned_setting(data, tmp_path, cli):
    out = tmp_path / "t"
    options = ["--label-smoothing", "0.2", "--hflip", "--lr-schedule", "cosine", "--mixup", "0.4",
               "--weight-decay", "0.01", "--train-images", "90", "--precision", "fp32", "--time-budget", "1h"]
    code, _, err = cli(*tune_args(data, out, "--trials", "1", *options))
    assert code == 0, err
    best = json.loads((out / "best.json").read_text())
    code, _, err = cli("train", "cnn1", "--params", out / "best.json", "--device", "cpu", "--out", tmp_path / "runs",
                       "--quiet")
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    trial = out / "trials" / f"trial-{best['trial']:04d}"
    tuned, trained = (json.loads((d / "config.json").read_text()) for d in (trial, run))
    assert differing_settings(tuned, trained) == [], {k: (tuned[k], trained.get(k)) for k in tuned
                                                      if k not in RESULT_NEUTRAL and tuned[k] != trained.get(k)}
    # fp32 on the CPU is deterministic here (same seed, same split): the retrain is the best trial
    tuned_metrics, trained_metrics = (json.loads((d / "metrics.json").read_text()) for d in (trial, run))
    assert trained_metrics["val_loss"] == tuned_metrics["val_loss"]
    assert trained_metrics["val_accuracy"] == tuned_metrics["val_accuracy"] == best["val_accuracy"]
    setting = best["setting"]
    assert setting["label_smoothing"] == 0.2 and setting["hflip"] is True and setting["mixup"] == 0.4
    assert not {"device", "compile", "checkpoint_every", "time_budget"} & set(setting)  # the machine's, not the result's


def test_a_recipes_time_budget_stays_off_in_the_retrain():
    config = cnnlab.config.build_config({"recipe": "cpu-budget", "epochs": 3})
    assert search.tuned_setting(config)["time_budget"] == 0.0  # the trials trained their epochs, unbudgeted


# ------------------------------------------------------------------ one --out, one study


def test_a_second_search_in_one_out_is_refused(data, tmp_path, cli):
    out = tmp_path / "t"
    code, _, err = cli(*tune_args(data, out, "--trials", "1"))
    assert code == 0, err
    before = snapshot(out)
    for args in (["tune", "cnn2", *tune_args(data, out, "--trials", "1")[2:]],
                 tune_args(data, out, "--trials", "1", "--study-name", "other")):
        code, said, err = cli(*args)
        line = one_line(err)
        assert code == 2 and f"{out}: holds the search cnnlab-cnn1 (model cnn1)" in line, line
        assert line.endswith("use another --out"), line
        assert "trial" not in said
        assert snapshot(out) == before  # cnn1's trials, best.json, trials.csv and journal untouched


# ------------------------------------------------------------------ --space mistakes, before any trial

BAD_SPACES = [
    ({"optimizer": {"type": "categorical", "choices": "adam"}}, "'optimizer' needs choices as a non-empty list"),
    ({"optimizer": {"type": "categorical", "choices": []}}, "'optimizer' needs choices as a non-empty list"),
    ({"optimizer": {"type": "categorical", "choices": ["adam", "adamx"]}},
     "'optimizer': choice 'adamx' cannot train (optimizer: must be one of adam, sgd, rmsprop, adamw"),
    ({"batch_size": {"type": "categorical", "choices": [0, 64]}}, "'batch_size': choice 0 cannot train"),
    ({"batch_size": {"type": "float", "low": 16, "high": 64}}, "'batch_size': low 16.0 cannot train"),
    ({"dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "'dropout': high 1.5 cannot train"),
    ({"dense": {"type": "categorical", "choices": [0, 128]}}, "'dense': choice 0 cannot train"),
    ({"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}, "'lr': log = true needs low > 0"),
    ({"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": "yes"}}, "'lr': log must be true or false"),
    ({"lr": {"type": "float", "low": "0.001", "high": 0.1}}, "'lr': low must be a finite number, got '0.001'"),
    ({"lr": {"type": "float", "low": False, "high": 0.1}}, "'lr': low must be a finite number, got False"),
    ({"lr": {"type": "float", "low": 0.001, "high": 1e999}}, "'lr': high must be a finite number, got inf"),
    ({"lr": {"type": "float", "low": 0.1, "high": 0.001}}, "'lr' needs low <= high"),
    ({"dense": {"type": "int", "low": 16.5, "high": 64}}, "'dense': type int needs integer low"),
    ({"lr": {"type": "float", "low": 0.001, "high": 0.1, "lgo": True}},
     "'lr': unknown key(s) 'lgo' for type float; its keys are type, low, high, log, step"),
    ({"lr": {"type": "categorical", "choices": [0.1], "log": True}},
     "'lr': unknown key(s) 'log' for type categorical; its keys are type, choices"),
    ({"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True, "step": 0.01}}, "step and log = true"),
    ({"classes": {"type": "categorical", "choices": [[0, 1]]}}, "'classes': each choice must be a finite number"),
]


@pytest.mark.parametrize("space, message", BAD_SPACES, ids=[m.split(":")[0][:40] for _, m in BAD_SPACES])
def test_space_mistakes_fail_before_any_trial(data, tmp_path, cli, space, message):
    out = tmp_path / "t"
    code, said, err = cli(*tune_args(data, out, "--trials", "1", space=space_file(tmp_path, space)))
    line = one_line(err)
    assert code == 2 and message in line, line
    assert not out.exists() and "trial" not in said  # no journal, no trial


def test_space_file_mistakes_are_one_line(data, tmp_path, cli):
    (tmp_path / "s.yaml").write_text("space:\n  lr:\n    type: categorical\n    choices: [0.01]\n")
    (tmp_path / "x.json").write_text(json.dumps({"exclude": ["optimiser"]}))
    for path, message in ((tmp_path / "s.yaml", "a YAML file; --space reads TOML (.toml) or JSON (.json)"),
                          (tmp_path / "x.json", "exclude names 'optimiser', not in the search space (dropout, "
                                                "dense, optimizer, lr, batch_size)")):
        code, _, err = cli(*tune_args(data, tmp_path / "t", "--trials", "1", space=path))
        assert code == 2 and message in one_line(err), err
        assert not (tmp_path / "t").exists()


def test_a_value_valid_beside_another_searched_one_passes(data):
    config = cnnlab.config.build_config({"model": "cnn1", "data": str(data / "d.npz"), "device": "cpu"})
    search.check_space_values({"tta": {"type": "categorical", "choices": [True]},
                               "tta_translate": {"type": "categorical", "choices": [True, False]}}, config)
    with pytest.raises(UserError, match="'tta_translate': choice True cannot train"):
        search.check_space_values({"tta_translate": {"type": "categorical", "choices": [True, False]}}, config)


def test_step_reaches_optuna(data, tmp_path):
    space = {"batch_size": {"type": "int", "low": 16, "high": 48, "step": 16},
             "dropout": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}}
    summary = cnnlab.tune("cnn1", 2, data=str(data / "d.npz"), out=tmp_path / "t", device="cpu", epochs=1,
                          space=space, say=lambda s: None)
    assert summary["complete"] + summary["pruned"] == 2
    rows = (tmp_path / "t" / "trials.csv").read_text().splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        assert int(values["param_batch_size"]) in (16, 32, 48)
        assert round(float(values["param_dropout"]), 6) in (0.1, 0.2, 0.3)


# ------------------------------------------------------------------ every trial failing


def test_a_search_where_every_trial_fails_exits_2_and_a_rerun_trains(data, tmp_path, cli, monkeypatch):
    out = tmp_path / "t"

    def broken(*args, **kwargs):
        raise UserError("disk on fire")

    with monkeypatch.context() as m:
        m.setattr(search, "fit", broken)
        code, said, err = cli(*tune_args(data, out, "--trials", "1"))
        line = one_line(err)
        assert code == 2 and "no trial finished: 1 failed, the first (trial 0) with: disk on fire" in line, line
        assert said.count("failed (disk on fire)") == 1  # --trials 1 tries once
        code, said, err = cli(*tune_args(data, out, "--trials", "5"))  # nothing trains: it ends after 3
        assert code == 2 and said.count("failed (disk on fire)") == 3, said + err
    code, said, err = cli(*tune_args(data, out, "--trials", "1"))  # failed trials do not count toward --trials
    assert code == 0 and "1 complete" in said and "nothing to train" not in said, said + err
    assert json.loads((out / "tune.json").read_text())["failed"] == 4


# ------------------------------------------------------------------ the study's space


def test_changing_a_parameters_choices_or_log_scale_is_refused(data, tmp_path, cli):
    out = tmp_path / "t"
    code, _, err = cli(*tune_args(data, out, "--trials", "1"))
    assert code == 0, err
    before = snapshot(out)
    for space, old, new in (({"lr": {"type": "categorical", "choices": [0.01, 0.001]}},
                             "choices [0.001, 0.003]", "choices [0.01, 0.001]"),
                            ({"lr": {"type": "float", "low": 0.001, "high": 0.01}},
                             "choices [0.001, 0.003]", "a float range")):
        code, said, err = cli(*tune_args(data, out, "--trials", "2", space=space_file(tmp_path, space)))
        line = one_line(err)
        assert code == 2 and f"the study searched lr over {old}, the search space now gives {new}" in line, line
        assert f"use another --out, or keep {old} for lr" in line and "trial" not in said
        assert snapshot(out) == before


def test_a_float_range_may_change_but_not_its_log_scale(data, tmp_path):
    options = dict(data=str(data / "d.npz"), out=tmp_path / "t", device="cpu", epochs=1, say=lambda s: None)
    cnnlab.tune("cnn1", 1, space={"lr": {"type": "float", "low": 0.001, "high": 0.01}}, **options)
    summary = cnnlab.tune("cnn1", 2, space={"lr": {"type": "float", "low": 0.002, "high": 0.02}}, **options)
    assert summary["complete"] + summary["pruned"] == 2  # Optuna takes a new range
    with pytest.raises(UserError, match="over a float range, the search space now gives a float range on a log scale"):
        cnnlab.tune("cnn1", 3, space={"lr": {"type": "float", "low": 0.002, "high": 0.02, "log": True}}, **options)


# ------------------------------------------------------------------ storage


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://",
                                 "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_database_is_refused(data, tmp_path, cli, url):
    code, said, err = cli(*tune_args(data, tmp_path / "t", "--trials", "1", "--storage", url))
    line = one_line(err)
    assert code == 2 and "in-memory SQLite database" in line and "sqlite:///path/to/study.db" in line, line
    assert not (tmp_path / "t").exists() and "trial" not in said


def test_best_json_names_its_data_so_a_retrain_elsewhere_finds_it(data, tmp_path, cli, monkeypatch):
    """Tuned with --data d.npz from the data's folder, `train --params t/best.json` from another folder failed:
    best.json kept the relative path."""
    monkeypatch.chdir(data)
    out = tmp_path / "t"
    code, _, err = cli("tune", "cnn1", "--data", "d.npz", "--device", "cpu", "--epochs", "1", "--space", "space.json",
                       "--out", out, "--trials", "1")
    assert code == 0, err
    assert json.loads((out / "best.json").read_text())["setting"]["data"] == str(data / "d.npz")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "cnn1", "--params", out / "best.json", "--device", "cpu", "--out", "runs", "--quiet")
    assert code == 0, err
