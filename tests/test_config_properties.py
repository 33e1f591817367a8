"""Property tests: configuration and parameter files, and run-directory files, of any content, end in a valid
result or one UserError line; never another exception, never a file left behind."""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.config import FIELDS, build_config, read_config_file, read_params_file
from cnnlab.errors import UserError
from cnnlab.runs import RunDir

SETTINGS = dict(deadline=5000, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
COUNT = {"examples": 0, "refused": 0}

values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12), st.lists(st.integers(-3, 300), max_size=4),
                   st.dictionaries(st.text(string.ascii_lowercase, max_size=6), st.integers(0, 9), max_size=3))
keys = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(string.ascii_letters + "_-", min_size=1, max_size=12))


def one_line(exc: UserError) -> None:
    message = str(exc)
    assert message and "\n" not in message.strip(), message


def contract(fn):
    COUNT["examples"] += 1
    try:
        return fn()
    except UserError as exc:
        COUNT["refused"] += 1
        one_line(exc)
        return None


@settings(max_examples=300, **SETTINGS)
@given(st.dictionaries(keys, values, max_size=6))
def test_any_settings_are_a_valid_config_or_one_line(options):
    config = contract(lambda: build_config(options))
    if config is not None:  # whatever was accepted is usable and of its field's type
        assert config.epochs >= 1 and config.batch_size >= 1 and 0 <= config.val_fraction < 1
        assert isinstance(config.lr, float) and config.lr > 0 and config.model


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else ("nan" if value != value else "inf")
    if value is None or isinstance(value, dict):
        return '"none"'
    return json.dumps(value)


@settings(max_examples=200, **SETTINGS)
@given(st.dictionaries(keys, values, max_size=5), st.binary(max_size=40), st.booleans())
def test_any_config_file_is_read_or_refused_in_one_line(options, junk, corrupt):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        text = "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in options.items())
        path.write_bytes(junk if corrupt else text.encode())
        before = set(Path(tmp).iterdir())
        contract(lambda: build_config(read_config_file(path)))
        assert set(Path(tmp).iterdir()) == before


@settings(max_examples=200, **SETTINGS)
@given(st.one_of(st.dictionaries(keys, values, max_size=5).map(lambda d: json.dumps({"params": d})),
                 st.dictionaries(keys, values, max_size=5).map(json.dumps), st.text(max_size=30)))
def test_any_params_file_is_read_or_refused_in_one_line(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best.json"
        path.write_text(text)
        contract(lambda: build_config(read_params_file(path)))


RUN_FILES = ["config.json", "metrics.json", "model.json", "history.csv", "logits.safetensors", "model.safetensors"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    import numpy as np

    import cnnlab

    from conftest import make_images

    x, y = make_images(120, 8, classes=3)
    return cnnlab.train("cnn1", (x, y), epochs=1, batch_size=32, device="cpu", precision="fp32",
                        out=tmp_path_factory.mktemp("runs"), progress=False).path, np


@settings(max_examples=150, **SETTINGS)
@given(st.sampled_from(RUN_FILES), st.integers(0, 10**6), st.binary(max_size=64), st.sampled_from(["cut", "flip", "junk"]))
def test_edited_or_damaged_run_files_are_one_line(finished_run, name, offset, junk, how):
    """Every reader of a run directory (evaluate, load, predict, history) on a damaged copy: a result or one line."""
    import shutil

    import cnnlab

    path, np = finished_run
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(path, copy)
        target = copy / name
        data = target.read_bytes()
        at = offset % max(1, len(data))
        if how == "cut":
            target.write_bytes(data[:at])
        elif how == "flip":
            target.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:] if data else b"\xff")
        else:
            target.write_bytes(junk)
        before = set(copy.iterdir())
        run = cnnlab.Run(copy)
        contract(lambda: run.evaluate("val"))
        contract(lambda: run.predict(np.zeros((2, 8, 8), dtype=np.uint8)))
        contract(lambda: RunDir(copy).history())
        contract(lambda: RunDir(copy).status())
        assert set(copy.iterdir()) == before


def test_report_counts(capsys):
    """Not a check: prints how many odd inputs the property tests above generated (the closing note's figure)."""
    print(f"config/params/run-file property tests: {COUNT['examples']} inputs, {COUNT['refused']} refused in one line")
