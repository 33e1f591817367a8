"""A message names a setting the way the user gave it: `--time-budget 45s` on the command line,
`time_budget='45s'` in Python (a notebook user who passed a keyword was told of flags they never typed)."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import cnnlab
from cnnlab import errors
from cnnlab.errors import UserError, option
from conftest import write_npz_dataset

SOURCE = Path(cnnlab.__file__).parent


def test_option_spells_a_flag_on_the_command_line_and_a_keyword_in_python(monkeypatch):
    monkeypatch.delenv(errors.SURFACE, raising=False)
    assert option("time_budget", "45s") == "time_budget='45s'"
    assert option("train_images") == "train_images"
    assert option("tta", True) == "tta=True"
    assert option("epochs", metavar="N") == "epochs=N"
    assert option("space", Path("s.toml")) == "space='s.toml'"
    assert option("mlflow_uri", "sqlite:///m.db") == "mlflow='sqlite:///m.db'"  # the API's one keyword for both flags
    with errors.command_line():
        assert option("time_budget", "45s") == "--time-budget 45s"
        assert option("train_images") == "--train-images"
        assert option("tta", True) == "--tta"
        assert option("epochs", metavar="N") == "--epochs N"
        assert option("mlflow_uri", "sqlite:///m.db") == "--mlflow-uri sqlite:///m.db"
    assert option("train_images") == "train_images"  # the command's end restores Python's spelling


def _no_flags(message: str) -> None:
    assert not re.search(r"(^|[\s(])--[a-z]", message), message


def test_a_search_space_file_is_named_by_the_argument_given(tmp_path, cli):
    missing = tmp_path / "space.toml"
    with pytest.raises(UserError) as caught:
        cnnlab.tune("cnn1", trials=1, data=str(write_npz_dataset(tmp_path / "d.npz", 40, 10)), space=missing,
                    out=tmp_path / "t")
    assert f"space='{missing}': no such file" in str(caught.value)
    _no_flags(str(caught.value))
    code, _, err = cli("tune", "cnn1", "--trials", "1", "--data", tmp_path / "d.npz", "--space", missing,
                       "--out", tmp_path / "t")
    assert code == 2 and f"--space {missing}: no such file" in err


def test_an_lr_find_plot_name_and_a_doubled_model_name_the_keywords(tmp_path):
    with pytest.raises(UserError, match=r"^plot='curve.txt': give a picture's name"):
        cnnlab.lr_find("cnn1", plot="curve.txt")
    with pytest.raises(UserError) as caught:
        cnnlab.study(["cnn1", "cnn1"], data=(np.zeros((20, 8, 8), np.uint8), np.arange(20) % 2), out=tmp_path)
    assert "(repeats sets the runs per model)" in str(caught.value)


def _flags_of_the_cli() -> set[str]:
    text = (SOURCE / "cli.py").read_text()
    return set(re.findall(r'"--([a-z][a-z-]+)', text)) - {"help", "version"}


def _messages(tree: ast.AST):
    """(line, text) of every string piece inside a raise statement or a notice(...) call."""
    for node in ast.walk(tree):
        called = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "notice"
        if isinstance(node, ast.Raise) or called:
            for part in ast.walk(node):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield part.lineno, part.value


def test_no_message_below_the_cli_spells_a_cnnlab_flag():
    """The modules the API shares with the CLI name settings through errors.option (the CLI itself, and advice
    that names a whole command, such as `cnnlab predict RUN --input FILE`, may spell flags)."""
    flags = _flags_of_the_cli()
    assert {"time-budget", "train-images", "space", "out"} <= flags
    spelled = re.compile(r"--(" + "|".join(sorted(map(re.escape, flags), key=len, reverse=True)) + r")\b")
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.name == "cli.py":
            continue
        for line, text in _messages(ast.parse(path.read_text())):
            if spelled.search(text) and "cnnlab " not in text:
                found.append(f"{path.relative_to(SOURCE)}:{line}: {text.strip()}")
    assert not found, "\n".join(found)


def test_advice_names_the_python_call_in_python_and_the_command_on_the_command_line(tmp_path, cli):
    folder = tmp_path / "ens"
    folder.mkdir()
    (folder / "ensemble_settings.json").write_text("{}")  # an ensemble whose vote is not written yet
    with pytest.raises(UserError) as caught:
        cnnlab.load_run(folder)
    assert "run the same cnnlab.ensemble(...) call again" in str(caught.value)
    code, _, err = cli("evaluate", folder)
    assert code == 2 and "run the same 'cnnlab ensemble' command again" in err


def test_a_studys_report_in_the_way_is_named_by_its_path_not_by_a_flag(tmp_path):
    """`study` has no -o, yet a folder where its report goes was '-o OUT/report.html: ... is a folder'."""
    from cnnlab.report import build_report

    (tmp_path / "report.html").mkdir()
    with pytest.raises(UserError, match=rf"^{tmp_path / 'report.html'}: .* is a folder"):
        build_report([tmp_path], tmp_path / "report.html")


def test_a_settings_check_names_the_flag_that_gave_the_value(tmp_path, cli):
    """The checks name config keys ("val_fraction: must lie in [0, 1)"), right in a config file; a value typed as
    a flag is named as typed (found by a regression trial)."""
    code, _, err = cli("train", "cnn1", "--val-fraction", "2", "--out", tmp_path)
    assert code == 2 and err.startswith("cnnlab: error: --val-fraction: must lie in [0, 1), got 2.0"), err
    (tmp_path / "c.toml").write_text("val_fraction = 2\n")
    code, _, err = cli("train", "cnn1", "--config", tmp_path / "c.toml", "--out", tmp_path)
    assert code == 2 and "--val-fraction" not in err and "val_fraction: must lie in [0, 1)" in err, err
    # refused before the progress header named a run directory: nothing to say of one
    code, _, err = cli("train", "cnn1", "--cuda-graphs", "--device", "cpu", "--data", write_npz_dataset(
        tmp_path / "d.npz", 40, 10), "--out", tmp_path / "runs")
    assert code == 2 and err.startswith("cnnlab: error: --cuda-graphs: ") and "nothing was kept" not in err, err
