"""Hostile inputs, second round (issue 22): each case ends in one clear line, or is handled correctly and
says what was done. The data readers' cases are in test_data_hostile.py."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cnnlab
from cnnlab.errors import UserError
from cnnlab.runs import RunDir

from conftest import mounted_tmpfs, write_image_folder, write_npz_dataset

FAST = dict(model="cnn1", epochs=1, batch_size=32, device="cpu", precision="fp32", progress=False)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("data") / "small.npz", 120, 30)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: "), err
    return lines[0]


def test_train_none_names_no_model(npz, tmp_path):
    with pytest.raises(UserError, match="model: None names no model"):
        cnnlab.train(None, data=str(npz), out=tmp_path, **{k: v for k, v in FAST.items() if k != "model"})
    assert not any(tmp_path.iterdir())
    cfg, _ = cnnlab.api.make_config(data=str(npz))  # left out: the default model, as before
    assert cfg.model == "tuned-cnn"
    cfg, _ = cnnlab.api.make_config(None, data=str(npz), recipe="modern")  # None with a recipe naming one
    assert cfg.model == "resnet9"


def test_a_validation_split_that_leaves_no_training_images(npz, tmp_path, cli):
    code, _, err = cli("train", "cnn1", "--data", npz, "--val-fraction", "0.999", "--out", tmp_path, "--device", "cpu")
    assert code == 2 and "val_fraction 0.999 leaves" in one_line(err) and "lower val_fraction" in err
    assert not any(tmp_path.iterdir())


def test_a_seed_beyond_32_bits(npz, tmp_path, cli):
    code, _, err = cli("train", "cnn1", "--data", npz, "--seed", str(2**70), "--out", tmp_path)
    assert code == 2 and "seed: must be an integer from 0 to 4294967295" in one_line(err)


@pytest.mark.parametrize("content", ['{"params": ' + "[" * 5000 + "]" * 5000 + "}",
                                     '{"params": {"epochs": ' + "9" * 5000 + "}}"])
def test_absurd_params_files(npz, tmp_path, cli, content):
    params = tmp_path / "p.json"
    params.write_text(content)
    code, _, err = cli("train", "cnn1", "--data", npz, "--params", params, "--out", tmp_path / "o")
    assert code == 2 and str(params) in one_line(err) and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def read_only_folder(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        yield folder


def test_report_into_a_read_only_folder(npz, tmp_path, cli, read_only_folder):
    run = cnnlab.train(data=str(npz), out=tmp_path / "runs", **FAST)
    code, _, err = cli("report", run.path, "-o", read_only_folder / "report.html")
    assert code == 2 and "read-only file system" in one_line(err)


def test_a_model_json_from_another_run_is_refused_by_every_reader(tmp_path, cli):
    three = write_npz_dataset(tmp_path / "three.npz", 120, 30, classes=3)
    four = write_npz_dataset(tmp_path / "four.npz", 120, 30, classes=4)
    a = cnnlab.train(data=str(three), out=tmp_path / "a", **FAST)
    b = cnnlab.train(data=str(four), out=tmp_path / "b", **FAST)
    (a.path / "model.json").write_bytes((b.path / "model.json").read_bytes())
    for command in (["evaluate", a.path], ["evaluate", a.path, "--split", "test"], ["plot", a.path]):
        code, _, err = cli(*command)
        assert code == 2 and "model.json" in one_line(err), command


def test_control_characters_in_names_are_shown_not_obeyed(tmp_path, cli):
    root = write_image_folder(tmp_path / "imgs", n_per_class=10, classes=("cat\r# injected", "dog\x07", "owl"))
    run = cnnlab.train(data=str(root), out=tmp_path / "runs", **FAST)
    code, _, err = cli("report", run.path, "-o", tmp_path / "report.html")
    assert code == 0, err
    md = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    for text in (md, html):
        assert "\r" not in text and "\x07" not in text
        assert "cat\\r# injected" in text.replace("\\\\", "\\").replace("\\#", "#")
    assert not any(line.startswith("# injected") for line in md.splitlines())
    code, out, _ = cli("data", "info", root)
    assert "\r" not in out and "\x07" not in out and "dog\\x07" in out


def test_csv_outputs_quote_what_needs_quoting(tmp_path):
    from cnnlab.runs import read_csv_rows, write_csv

    rows = [{"name": 'a,"b"\nc', "value": 1}]
    write_csv(tmp_path / "t.csv", rows)
    assert read_csv_rows(tmp_path / "t.csv") == [{"name": 'a,"b"\nc', "value": "1"}]


def test_a_second_ensemble_process_starts_no_member_beyond_the_target(npz, tmp_path):
    """Member 1 is held by 'another process' (its owner lock, taken here): an ensemble of 2 trains member 0,
    then waits for member 1 instead of starting member 2; once the lock is free it trains member 1."""
    out = tmp_path / "e"
    held = RunDir(out / "members" / "member-001")
    taken = threading.Event()
    said: list[str] = []

    def release_when_member_0_is_done():  # a thread of its own holds the lock, as another process would
        assert held.try_own()
        taken.set()
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "members" / "member-000" / "model.json").is_file():
            time.sleep(0.05)
        time.sleep(3.0)  # the ensemble decides what to start next within milliseconds
        held.release()

    releaser = threading.Thread(target=release_when_member_0_is_done)
    releaser.start()
    taken.wait(10)
    try:
        manifest = cnnlab.ensemble("cnn1", 2, 0.0, data=str(npz), out=out, say=said.append,
                                   **{k: v for k, v in FAST.items() if k != "model"})
    finally:
        releaser.join()
    assert not (out / "members" / "member-002").exists(), said
    assert manifest["qualified"] == 2 and manifest["attempts"] == 2
    assert any("in training by another process" in s for s in said)


# ------------------------------------------------------------------ the data changed under a run


def changed_copy(path: Path) -> None:
    """The same shape, other pixels: what a replaced data file of the same size looks like."""
    data = dict(np.load(path))
    data["x_train"] = (255 - data["x_train"]).astype(np.uint8)
    np.savez(path, **data)


def interrupted_run(data: Path, out: Path) -> Path:
    from conftest import interrupt_at

    with pytest.raises(KeyboardInterrupt):
        cnnlab.train(data=str(data), out=out, callbacks=[interrupt_at(2)], **{**FAST, "epochs": 3})
    (run,) = out.iterdir()
    return run


def test_resume_refuses_data_that_changed(tmp_path, cli):
    data = write_npz_dataset(tmp_path / "d.npz", 120, 30)
    run = interrupted_run(data, tmp_path / "runs")
    changed_copy(data)
    code, _, err = cli("train", "--resume", run)
    assert code == 2 and "the data differs from what it was trained on (d.npz changed content" in one_line(err)
    assert cnnlab.runs.RunDir(run).status() == "interrupted"  # nothing of the run was touched


def test_runs_from_before_fingerprints_resume_with_a_warning(tmp_path, capsys):
    data = write_npz_dataset(tmp_path / "d.npz", 120, 30)
    run = interrupted_run(data, tmp_path / "runs")
    env = json.loads((run / "env.json").read_text())
    del env["data_files"]
    (run / "env.json").write_text(json.dumps(env))
    capsys.readouterr()
    resumed = cnnlab.train(resume=run, progress=False)
    err = capsys.readouterr().err
    assert resumed.metrics["epochs_done"] == 3
    assert "its data cannot be checked" in err and len(err.strip().splitlines()) == 1


def test_ensemble_and_study_continuations_refuse_changed_data(tmp_path):
    data = write_npz_dataset(tmp_path / "d.npz", 120, 30)
    options = {k: v for k, v in FAST.items() if k != "model"}
    cnnlab.ensemble("cnn1", 1, 0.0, data=str(data), out=tmp_path / "e", say=lambda s: None, **options)
    cnnlab.study("cnn1", 1, str(data), out=tmp_path / "s", report=False, say=lambda s: None, **options)
    changed_copy(data)
    with pytest.raises(UserError, match="continuing the ensemble .* the data differs"):
        cnnlab.ensemble("cnn1", 2, 0.0, data=str(data), out=tmp_path / "e", say=lambda s: None, **options)
    with pytest.raises(UserError, match="continuing the study .* the data differs"):
        cnnlab.study("cnn1", 2, str(data), out=tmp_path / "s", report=False, say=lambda s: None, **options)


def test_huge_files_are_fingerprinted_by_size_and_ends(tmp_path, monkeypatch):
    from cnnlab.data import fingerprint

    monkeypatch.setattr(fingerprint, "WHOLE_LIMIT", 1000)
    monkeypatch.setattr(fingerprint, "END_BYTES", 100)
    path = tmp_path / "big.npz"
    path.write_bytes(bytes(5000))
    before = fingerprint.files_fingerprint(str(path))
    path.write_bytes(bytes(2500) + b"x" + bytes(2499))  # the middle: not read
    fingerprint._digest.cache_clear()
    assert fingerprint.what_changed(before, fingerprint.files_fingerprint(str(path))) is None
    path.write_bytes(bytes(4999) + b"x")  # the last bytes: read
    fingerprint._digest.cache_clear()
    assert "changed content" in fingerprint.what_changed(before, fingerprint.files_fingerprint(str(path)))


def test_tensorboard_dir_that_is_a_file(npz, tmp_path, cli):
    pytest.importorskip("torch.utils.tensorboard")
    target = tmp_path / "events"
    target.write_text("not a folder")
    for where in (target, target / "sub"):
        code, _, err = cli("train", "cnn1", "--data", npz, "--tensorboard-dir", where, "--out", tmp_path / "o",
                           "--epochs", "1", "--device", "cpu")
        assert code == 2 and "is a file, not a folder" in one_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("params, says", [
    ({"dropout": 5}, "model cnn1 cannot be built with dropout=5: dropout probability has to be between 0 and 1"),
    ({"dense": -5}, "model cnn1 cannot be built with dense=-5: "),
    ({"dense": 0}, "model cnn1 with dense=0 has a layer with no weights; sizes must be at least 1"),
    ({"dropout": "x"}, "model cnn1: dropout must be a number (its default is 0.5), got 'x'"),
    ({"dense": 1.5}, "model cnn1: dense must be a whole number (its default is 128), got 1.5"),
    ({"bogus": 1}, "model cnn1 has no parameter 'bogus'; its parameters are num_classes, in_chans, image_size, "
                   "dropout, dense")])
def test_model_parameters_out_of_range_or_of_the_wrong_kind(npz, tmp_path, cli, params, says):
    file = tmp_path / "p.json"
    file.write_text(json.dumps(params))
    code, _, err = cli("train", "cnn1", "--data", npz, "--params", file, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 2 and says in one_line(err)
    assert not (tmp_path / "o").exists()  # neither a run directory nor the folder made for it is left
    with pytest.raises(UserError, match="^model cnn1"):  # the API says the same
        cnnlab.train(data=str(npz), out=tmp_path / "api", model_params=params, **FAST)
    assert not (tmp_path / "api").exists()


@pytest.mark.parametrize("callbacks", [5, [5], "on_epoch_end", [object()]])
def test_callbacks_that_are_not_callbacks(npz, tmp_path, callbacks):
    with pytest.raises(UserError, match=r"^callbacks: expected cnnlab.callbacks.Callback objects \(subclass it\)"):
        cnnlab.train(data=str(npz), out=tmp_path, callbacks=callbacks, **FAST)
    with pytest.raises(UserError, match="^callbacks: "):
        cnnlab.study(["cnn1"], 1, str(npz), out=tmp_path / "s", callbacks=callbacks, epochs=1, device="cpu",
                     progress=False)


def test_ctrl_c_while_the_figures_are_drawn_says_how_to_draw_them(npz, tmp_path, cli, monkeypatch):
    def press_ctrl_c(run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(cnnlab.api, "plot_run", press_ctrl_c)  # Ctrl-C lands after the last epoch was saved
    code, _, err = cli("train", "cnn1", "--data", npz, "--epochs", "1", "--out", tmp_path, "--device", "cpu")
    line = [line for line in err.splitlines() if line.startswith("cnnlab: interrupted")]
    assert code == 130 and line and "the run finished, but some figures were not drawn" in line[0]
    run_dir = line[0].split("cnnlab plot ")[1]
    assert RunDir(run_dir).status() == "finished"
    monkeypatch.undo()
    code, out, _ = cli("plot", run_dir)
    assert code == 0 and "acc_loss.png" in out and (Path(run_dir) / "acc_loss.png").is_file()


def test_classes_as_a_list_in_toml_and_in_the_api(npz, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('classes = [0, 2]\n')
    cfg, _ = cnnlab.api.make_config("cnn1", data=str(npz), config=str(toml))
    assert cfg.classes == "0,2"
    cfg, _ = cnnlab.api.make_config("cnn1", data=str(npz), classes=[1, 2])
    assert cfg.classes == "1,2"
    toml.write_text('classes = [0, "x"]\n')
    with pytest.raises(UserError, match=r"c\.toml: classes: give class numbers as a string or a list"):
        cnnlab.api.make_config("cnn1", data=str(npz), config=str(toml))
    for value in (3, {0, 1}):
        with pytest.raises(UserError, match=r"classes: give class numbers as a string or a list, e\.g\. '0,2' or \[0, 2\]"):
            cnnlab.api.make_config("cnn1", data=str(npz), classes=value)
    toml.write_bytes(b"\xef\xbb\xbfclasses = [0, 2]\n")  # a byte-order mark, as Windows editors save: was 'not valid TOML'
    assert cnnlab.api.make_config("cnn1", data=str(npz), config=str(toml))[0].classes == "0,2"


def test_an_out_folder_that_cannot_be_created(npz, cli):
    code, _, err = cli("train", "cnn1", "--data", npz, "--out", "/proc/cnnlab-cannot-be-here", "--device", "cpu")
    assert code == 2 and "/proc/cnnlab-cannot-be-here: cannot be created there; choose another path" in one_line(err)


def test_resuming_a_damaged_checkpoint_says_what_to_do(npz, tmp_path, cli):
    code, _, _ = cli("train", "cnn1", "--data", npz, "--epochs", "1", "--out", tmp_path, "--device", "cpu")
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    checkpoint = run_dir / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    code, _, err = cli("train", "--resume", run_dir, "--epochs", "2")
    line = one_line(err)
    assert code == 2 and "not a valid safetensors file" in line and "restore it from a copy or train again" in line


def test_a_bad_value_in_a_config_file_names_the_file(npz, tmp_path, cli):
    toml = tmp_path / "d.toml"
    toml.write_text('epochs = "two"\nbatch_size = 32\n')
    code, _, err = cli("train", "cnn1", "--data", npz, "--config", toml, "--out", tmp_path / "o")
    assert code == 2 and f"{toml}: epochs: must be an integer" in one_line(err)
    toml.write_text('epochs = 2\n')
    code, _, err = cli("train", "cnn1", "--data", npz, "--config", toml, "--batch-size", "0", "--out", tmp_path / "o")
    assert code == 2 and one_line(err).startswith("cnnlab: error: --batch-size: ")  # the flag's value, not the file's


# ------------------------------------------------------------------ resuming, third round (session 16's trial)


def test_resume_without_the_checkpoint_refuses_and_keeps_the_history(npz, tmp_path, cli):
    # It used to take the fresh-run path: history cleared, retrained from scratch, exit 0
    run = interrupted_run(npz, tmp_path / "runs")  # one finished epoch, checkpointed
    (run / "checkpoint.safetensors").unlink()
    history = (run / "history.csv").read_text()
    code, _, err = cli("train", "--resume", run)
    assert code == 2 and "1 finished epoch(s) but no checkpoint.safetensors to continue from" in one_line(err)
    assert (run / "history.csv").read_text() == history and RunDir(run).status() == "interrupted"
    finished = cnnlab.train(data=str(npz), out=tmp_path / "done", **FAST).path  # finished, then its checkpoint deleted
    (finished / "checkpoint.safetensors").unlink()
    with pytest.raises(UserError, match="restore that file, or train a new run without resume "):
        cnnlab.train(resume=finished, epochs=2, progress=False)
    assert RunDir(finished).status() == "finished" and (finished / "model.safetensors").is_file()


def test_an_interrupted_extension_continues_to_its_new_total(npz, tmp_path):
    from conftest import interrupt_at

    run = cnnlab.train(data=str(npz), out=tmp_path, **FAST).path  # 1 epoch, finished
    with pytest.raises(KeyboardInterrupt):  # extended to 4, Ctrl-C as epoch 3 starts
        cnnlab.train(resume=run, epochs=4, callbacks=[interrupt_at(3)], progress=False)
    assert json.loads((run / "config.json").read_text())["epochs"] == 4
    cnnlab.train(resume=run, progress=False)  # what the interrupted line says: --resume alone
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs_done"] == 4  # was: finished at 2


def test_ctrl_c_before_the_run_directory_exists_names_no_other_run(npz, tmp_path, cli, monkeypatch):
    cnnlab.train(data=str(npz), out=tmp_path, **FAST)  # an older finished run in the same --out

    def pressed(*args, **kwargs):  # Ctrl-C while the data loads, before the run directory is made
        raise KeyboardInterrupt

    monkeypatch.setattr(cnnlab.api, "preflight", pressed)
    code, _, err = cli("train", "cnn1", "--data", npz, "--epochs", "1", "--device", "cpu", "--out", tmp_path)
    assert code == 130 and "--resume" not in err, err
    assert "stopped before the first epoch finished; nothing was kept. Run the same command again" in err
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("args, says", [
    (["study", "--models", "cnn1", "--repeats", "2", "--seed", "4294967295"],
     "seed: 4294967295 + 2 repeats passes the largest seed, 4294967295; use a seed of at most 4294967294"),
    (["study", "--models", "cnn1", "--repeats", "1000000000"], "repeats: must be at most 10,000 runs per model"),
    (["ensemble", "cnn1", "--members", "2", "--seed", "4294967295"],
     "seed: 4294967295 + 6 attempts passes the largest seed, 4294967295; use a seed of at most 4294967290"),
    (["ensemble", "cnn1", "--members", "99999999"], "members: must be at most 10,000"),
    (["ensemble", "cnn1", "--members", "2", "--fuse", "-1"], "fuse: must be 0 (chosen for you) or a positive integer, got -1"),
    (["train", "cnn1", "--epochs", "99999999999999999999"], "epochs: must be at most 100,000, got 9999999999999"),
    (["lr-find", "cnn1", "--steps", "99999999999999"], "steps from 2 to 10,000, got 1e-07, 10, 99999999999999"),
])
def test_runaway_counts_and_seeds_are_one_line(npz, tmp_path, cli, args, says):
    # Seeds past 32 bits trained a run no resume accepted; 1e9 repeats planned until memory ran out; 1e14
    # lr-find steps never ended
    out = ["--plot", tmp_path / "out" / "lr.png"] if args[0] == "lr-find" else ["--out", tmp_path / "out"]
    code, _, err = cli(*args, "--data", npz, "--device", "cpu", *out)
    assert code == 2 and says in one_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_model_parameter_is_one_line(npz, tmp_path, value):
    with pytest.raises(UserError, match=f"model_params: dropout must be a finite number, got {value!r}"):
        cnnlab.train(data=str(npz), out=tmp_path, model_params={"dropout": value}, **FAST)
    assert not any(tmp_path.iterdir())


def test_a_model_too_large_for_memory_is_one_line_before_it_is_built(tmp_path, cli):
    # cnn1's dense layer grows with the image: on 2000x2000 images 4.1 billion parameters, which the kernel's OOM
    # killer ended with no message (exit 137), leaving a directory whose resume was killed again
    np.savez(tmp_path / "huge.npz", x_train=np.zeros((10, 2000, 2000), np.uint8), y_train=np.arange(10) % 2)
    code, _, err = cli("train", "cnn1", "--data", tmp_path / "huge.npz", "--epochs", "1", "--device", "cpu",
                       "--out", tmp_path / "runs")
    assert code == 2 and "model cnn1 on 1x2000x2000 images has 4.1 billion parameters: training needs about 61 GiB" \
        in one_line(err)
    assert not (tmp_path / "runs").exists()


def test_the_memory_check_compares_with_what_is_free(npz, tmp_path, monkeypatch):
    from cnnlab.engine import model_size

    monkeypatch.setattr(model_size, "free_memory", lambda device: 1_000_000)  # 1 MB free: cnn1 on 28x28 needs more
    with pytest.raises(UserError, match=r"model cnn1 on 1x16x16 images has \d\.\d million parameters: training needs "
                                        r"about \d+ MiB and this machine has 1 MiB free"):
        cnnlab.train(data=str(npz), out=tmp_path, **FAST)
    monkeypatch.undo()
    assert cnnlab.train(data=str(npz), out=tmp_path, **FAST).metrics["epochs_done"] == 1


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_data_variable_that_names_no_folder_is_one_line(tmp_path, cli, monkeypatch, kind):
    # $CNNLAB_DATA naming nothing was passed over in silence (the system's copy was used); --data-dir was refused
    target = tmp_path / "nope"
    if kind == "file":
        target.write_text("")
    monkeypatch.setenv("CNNLAB_DATA", str(target))
    code, _, err = cli("data", "info", "fashion-mnist")
    says = "folder does not exist; point the variable at the folder" if kind == "missing" else \
        "is a file, but a folder is expected"
    assert code == 2 and f"CNNLAB_DATA={target}: {says}" in one_line(err)


def test_predict_on_a_group_folder_says_what_it_is(npz, tmp_path, cli):
    # Both were "not a finished cnnlab run directory (status: fresh) ... resume it with 'cnnlab train --resume'"
    from conftest import interrupt_at

    with pytest.raises(KeyboardInterrupt):
        cnnlab.ensemble(data=str(npz), out=tmp_path / "ens", members=2, threshold=0.0, callbacks=[interrupt_at(1)],
                        progress=False, say=lambda text: None, **{k: v for k, v in FAST.items() if k != "progress"})
    cnnlab.study(["cnn1"], 1, data=str(npz), out=tmp_path / "study", report=False, progress=False,
                 say=lambda text: None, **{k: v for k, v in FAST.items() if k not in ("model", "progress")})
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((2, 28, 28), np.uint8))
    for folder, says in ((tmp_path / "ens", "an ensemble whose vote is not written yet; run the same 'cnnlab "
                                            "ensemble' command again to finish it"),
                         (tmp_path / "study", "a study folder, not one run; give one of its runs")):
        code, _, err = cli("predict", folder, "--input", images, "-o", tmp_path / "p.csv")
        assert code == 2 and says in one_line(err)


def test_api_values_of_the_wrong_type_are_one_line(npz, tmp_path):
    # Each raised a TypeError from inside pathlib or list()
    for call, says in ((lambda: cnnlab.train(data=str(npz), out=5, **FAST), "out: expected a folder's path"),
                       (lambda: cnnlab.evaluate(None), r"expected a run directory's path \(a str or Path\), got NoneType"),
                       (lambda: cnnlab.study(5, 1, data=str(npz)), "models: give model names"),
                       (lambda: cnnlab.study("cnn1,cnn1", 1, data=str(npz), out=tmp_path / "s"),
                        "models: cnn1 is named twice; name each model once")):
        with pytest.raises(UserError, match=says):
            call()
    assert not (tmp_path / "s").exists()


def test_predict_on_a_source_with_a_test_split_predicts_the_test_split(npz, tmp_path, cli):
    # It predicted x_train: a Kaggle submission of the wrong images (60,000 rows for the Fashion-MNIST folder)
    run = cnnlab.train(data=str(npz), out=tmp_path / "runs", **FAST).path
    code, out, err = cli("predict", run, "--input", npz, "-o", tmp_path / "p.csv")
    assert code == 0, err
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "id,label" and len(rows) - 1 == len(np.load(npz)["x_test"]) == 30


def test_a_ray_address_with_a_password_is_masked(npz, tmp_path, cli):
    pytest.importorskip("ray", reason="ray extra not installed (pip install 'cnnlab[ray]')")
    code, out, err = cli("study", "--models", "cnn1", "--repeats", "1", "--data", npz, "--epochs", "1", "--ray",
                         "--ray-address", "http://user:s3cretPW@127.0.0.1:6379", "--out", tmp_path / "s")
    line = one_line(err)  # masked, and never the host part either (the check before Ray printed it whole)
    assert code == 2 and "http://user:***@127.0.0.1:6379" in line and ("nothing answers" in line or "cannot start" in line)
    assert "s3cretPW" not in out + err


@pytest.mark.parametrize("device", ["tpu", "", "meta", "mps"])
def test_predict_on_a_device_cnnlab_does_not_run_on_is_one_line(npz, tmp_path, cli, device):
    run = cnnlab.train(data=str(npz), out=tmp_path / "runs", **FAST).path
    code, _, err = cli("predict", run, "--input", npz, "-o", tmp_path / "p.csv", "--device", device)
    assert code == 2 and f"device: must be auto, cpu or cuda (or cuda:N), got {device!r}" in one_line(err)


@pytest.mark.parametrize("args, says", [
    (["--end-lr", "inf"], "lr_find: end_lr must be a finite rate (e.g. 10), got inf"),
    (["--plot", "lr.txt"], "lr.txt: give a picture's name ending in .png, .pdf, .svg or .jpg"),
])
def test_lr_find_refuses_what_it_cannot_use_before_the_sweep(npz, tmp_path, cli, args, says):
    code, _, err = cli("lr-find", "cnn1", "--data", npz, "--device", "cpu", "--steps", "10", *args)
    assert code == 2 and says in one_line(err)


@pytest.mark.parametrize("args", [["data", "preview", "fashion-mnist", "--seed", "-1"],
                                  ["data", "info", "fashion-mnist", "--split-seed", "-1"],
                                  ["data", "info", "fashion-mnist", "--split-seed", "99999999999"]])
def test_data_commands_refuse_seeds_out_of_range(cli, tmp_path, args):
    # numpy's and scikit-learn's tracebacks before
    code, _, err = cli(*args)
    assert code == 2 and "Invalid value for '--" in one_line(err)
    assert "greater than or equal to 0" in err or "less than or equal to 4294967295" in err


def test_an_ensemble_rerun_with_another_vote_is_refused_and_may_try_more_attempts(npz, tmp_path):
    # --members 4, --threshold 0.7 or --vote soft on a rerun printed the old result and trained nothing
    rng = np.random.default_rng(0)  # noise: no member comes near the threshold
    np.savez(tmp_path / "noise.npz", x_train=rng.integers(0, 256, (120, 16, 16), dtype=np.uint8),
             y_train=np.arange(120) % 3)
    settings = dict(data=str(tmp_path / "noise.npz"), out=tmp_path / "ens", progress=False, say=lambda text: None,
                    **{k: v for k, v in FAST.items() if k != "progress"})
    manifest = cnnlab.ensemble(members=2, threshold=0.99, max_attempts=2, **settings)  # none can qualify
    assert manifest["qualified"] == 0 and manifest["attempts"] == 2
    for change, says in (({"members": 3}, "holds an ensemble of members 2 (asked: members 3)"),
                         ({"vote": "soft"}, "holds an ensemble of vote hard (asked: vote soft)")):
        with pytest.raises(UserError, match=re.escape(says)):
            cnnlab.ensemble(**{"members": 2, "threshold": 0.99, "max_attempts": 2, **change}, **settings)
    manifest = cnnlab.ensemble(members=2, threshold=0.99, max_attempts=3, **settings)  # was ignored: still 2
    assert manifest["attempts"] == 3
