"""A hostile user's search: continuing a study with other options, a damaged journal, an --out that cannot be
written, a binary or empty --space. Each ends in one line (what is wrong, how to fix it), exit code 2, no
traceback, and the user's files as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import cnnlab
from cnnlab import search
from cnnlab.config import build_config
from cnnlab.errors import UserError

from conftest import mounted_tmpfs, one_line, snapshot, tune_args, write_tune_data

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tune_data(tmp_path_factory.mktemp("hostile-tune"))


@pytest.fixture(scope="module")
def searched(data):
    """A finished one-trial search (journal, trials, best.json), copied by the tests that damage it."""
    out = data / "searched"
    cnnlab.tune("cnn1", 1, data=str(data / "d.npz"), out=out, device="cpu", epochs=1, space=data / "space.json",
                say=lambda s: None)
    return out


# ------------------------------------------------------------------ continuing a study with other options


def test_continuing_a_search_with_other_training_options_is_refused(data, tmp_path, cli):
    out = tmp_path / "t"
    code, _, err = cli(*tune_args(data, out, "--trials", "1"))
    assert code == 0, err
    before = snapshot(out)
    for extra, named in ((["--epochs", "2"], "(epochs 1 in the study, 2 now)"),
                         (["--classes", "0,1"], "classes None in the study, '0,1' now"),
                         (["--seed", "4", "--train-images", "90"], "seed 0 in the study, 4 now"),
                         (["--metric", "val_loss"], "metric 'val_accuracy' in the study, 'val_loss' now")):
        code, said, err = cli(*tune_args(data, out, "--trials", "3", *extra))
        line = one_line(err)
        assert code == 2 and "holds a search with other training options" in line, err
        assert named in line and "use another output folder (--out) or the same options" in line, line
        assert "trial" not in said  # nothing trained, no summary
        assert snapshot(out) == before  # journal, trials and best.json untouched
    # the same options (searched ones aside: lr is in the space) and options that change no result continue it
    code, _, err = cli(*tune_args(data, out, "--trials", "2", "--lr", "0.1", "--no-compile", "--time-budget", "1h"))
    assert code == 0, err
    best = json.loads((out / "best.json").read_text())
    assert best["setting"]["epochs"] == 1 and best["setting"]["classes"] is None
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-0000", "trial-0001"]


def test_a_study_recorded_before_its_setting_is_checked_against_its_trials(data, tmp_path, monkeypatch):
    """A study from before cnnlab recorded its setting: the first trial's config.json stands for it."""
    options = dict(data=str(data / "d.npz"), out=tmp_path / "t", device="cpu", space=data / "space.json",
                   say=lambda s: None)
    with monkeypatch.context() as m:
        m.setattr(search, "SETTING_ATTR", "not-the-setting")  # as an older cnnlab left it: nothing recorded
        cnnlab.tune("cnn1", 1, epochs=1, **options)
    with pytest.raises(UserError, match=r"other training options \(epochs 1 in the study, 2 now\)"):
        cnnlab.tune("cnn1", 2, epochs=2, **options)
    summary = cnnlab.tune("cnn1", 2, epochs=1, **options)  # the same options: it continues
    assert summary["complete"] + summary["pruned"] == 2


def test_workers_of_one_database_study_are_held_to_its_options(data, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = build_config({"model": "cnn1", "data": str(data / "d.npz"), "epochs": 1, "device": "cpu"})
    space = search.read_space_file(data / "space.json", "cnn1")
    search.run_tune(config, tmp_path / "a", 1, storage=url, space=space, say=lambda s: None)
    other = build_config({**config.to_dict(), "epochs": 2})
    with pytest.raises(UserError, match=r"study cnnlab-cnn1 in sqlite:///.*: holds a search with other training "
                                        r"options \(epochs 1 in the study, 2 now\); use another output folder "
                                        r"\(out and study_name\)"):
        search.run_tune(other, tmp_path / "b", 2, storage=url, space=space, say=lambda s: None)
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ a damaged journal


def damage_and_run(searched, tmp_path, cli, data, damage) -> tuple[Path, str, bytes]:
    out = tmp_path / "t"
    shutil.copytree(searched, out)
    journal = out / "optuna.journal"
    damage(journal)
    damaged = journal.read_bytes()
    code, said, err = cli(*tune_args(data, out, "--trials", "2"))
    assert code == 2, err
    line = one_line(err)
    assert f"{journal}: the search's journal is damaged" in line and f"mv {journal} {journal}.damaged" in line, line
    assert journal.read_bytes() == damaged and "trial" not in said  # nothing appended, nothing trained
    return journal, line, damaged


def test_a_journal_cut_short_is_one_line_and_left_as_it_was(searched, tmp_path, cli, data):
    def cut(journal):
        journal.write_bytes(journal.read_bytes()[:-7])  # what a kill or a full disk leaves

    journal, line, damaged = damage_and_run(searched, tmp_path, cli, data, cut)
    lines = damaged.count(b"\n")
    assert f"its last line, {lines + 1}, is cut short" in line
    assert f"head -n {lines} {journal} > {journal}.fixed && mv {journal}.fixed {journal}" in line
    # the advice works: the whole lines keep the study, which then continues
    journal.write_bytes(b"".join(damaged.splitlines(keepends=True)[:lines]))
    code, _, err = cli(*tune_args(data, tmp_path / "t", "--trials", "2"))
    assert code == 0, err


def test_random_bytes_after_a_journal_are_one_line(searched, tmp_path, cli, data):
    def append(journal):
        with open(journal, "ab") as f:
            f.write(bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)) + b"\n\xff\xfe")

    _, line, _ = damage_and_run(searched, tmp_path, cli, data, append)
    assert "are not Optuna records" in line and "head -n" in line


def test_garbage_inside_a_journal_is_one_line(searched, tmp_path, cli, data):
    def insert(journal):
        lines = journal.read_bytes().splitlines(keepends=True)
        journal.write_bytes(b"".join(lines[:2] + [b'{"op_code": 4, "broken\n'] + lines[2:]))

    _, line, _ = damage_and_run(searched, tmp_path, cli, data, insert)
    assert "line 3 of" in line and "Restore it from a copy" in line and "head -n" not in line


# ------------------------------------------------------------------ an --out that cannot be written


def test_out_naming_a_file_is_one_line(data, tmp_path, cli):
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    for out in (afile, afile / "sub"):
        code, _, err = cli(*tune_args(data, out, "--trials", "1"))
        assert code == 2 and f"{out}: a part of this path is a file, not a folder" in one_line(err), err
    assert afile.read_text() == "mine\n"


def test_out_on_a_read_only_file_system_is_one_line(data, tmp_path, cli):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        for out in (folder, folder / "sub"):
            code, _, err = cli(*tune_args(data, out, "--trials", "1"))
            assert code == 2 and "read-only file system; choose a folder you can write to" in one_line(err), err


# ------------------------------------------------------------------ --space


def test_a_binary_space_file_is_one_line(data, tmp_path, cli):
    for name in ("space.toml", "space.json"):
        path = tmp_path / name
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01binary")
        code, _, err = cli(*tune_args(data, tmp_path / "t", "--trials", "1")[:-4], "--space", path,
                           "--out", tmp_path / "t")
        assert code == 2 and f"--space {path}: not a text file" in one_line(err), err
    code, _, err = cli(*tune_args(data, tmp_path / "t", "--trials", "1")[:-4], "--space", tmp_path,
                       "--out", tmp_path / "t")
    assert code == 2 and f"{tmp_path}:" in one_line(err), err
    assert not (tmp_path / "t").exists()


def test_an_empty_search_space_is_refused(data, tmp_path, cli):
    everything = tmp_path / "none.toml"
    everything.write_text('exclude = ["dropout", "dense", "optimizer", "lr", "batch_size"]\n')
    code, _, err = cli(*tune_args(data, tmp_path / "t", "--trials", "1")[:-4], "--space", everything,
                       "--out", tmp_path / "t")
    line = one_line(err)
    assert code == 2 and "the search space is empty after exclude; keep at least one parameter" in line, err
    assert "dropout, dense, optimizer, lr, batch_size" in line
    assert not (tmp_path / "t").exists()
    (tmp_path / "replaced.json").write_text('{"replace": true}')
    with pytest.raises(UserError, match="the search space is empty after replace = true; keep at least one"):
        search.read_space_file(tmp_path / "replaced.json", "cnn1")
    with pytest.raises(UserError, match="search space: is empty; keep at least one parameter"):
        cnnlab.tune("cnn1", 1, data=str(data / "d.npz"), out=tmp_path / "t", device="cpu", space={})
    assert not (tmp_path / "t").exists()


def test_a_space_file_of_the_wrong_shape_is_one_line(tmp_path):
    for text, message in (("[1, 2]", "expected a JSON object"), ('{"exclude": "lr"}', "exclude must be a list"),
                          ('{"space": [1]}', "space must be a table")):
        (tmp_path / "s.json").write_text(text)
        with pytest.raises(UserError, match=message):
            search.read_space_file(tmp_path / "s.json", "cnn1")
