"""compile = "auto" (engine.compile_probe): the rules on numbers, the paths that are never probed, a probe that
leaves training bit-identical and records its figures in env.json, the per-machine cache, resume, the setting.

Most tests stand a wrapper in for torch.compile (`Wrapped`: the same module, called through another one), so
the probe's plumbing is tested in a second; one slow test compiles for real."""

from __future__ import annotations

import json
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import cnnlab.engine.compile_probe as cp
from cnnlab.budget import Budget
from cnnlab.config import build_config
from cnnlab.engine import fit
from cnnlab.errors import UserError
from cnnlab.probe_cache import CACHE_ENV

from conftest import interrupt_at, write_npz_dataset

TIMING = {"train_seconds", "eval_seconds"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("compile") / "data.npz", 160, 40, size=16)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder / cp.CACHE_FILE


class Wrapped(nn.Module):
    """Stands in for torch.compile's wrapper: the module itself, called through another."""

    made = 0

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        Wrapped.made += 1

    def forward(self, x):
        return self.inner(x)


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced by Wrapped, and every run long enough to be worth probing."""
    Wrapped.made = 0
    monkeypatch.setattr(cp, "compile_model", Wrapped)
    monkeypatch.setattr(cp, "TYPICAL_COMPILE_SECONDS", 0.0)
    return Wrapped


def config(data, **kw):
    # dropout (cnn1), crops and flips: the probe's steps draw from every generator a run uses
    base = dict(data=str(data), model="cnn1", epochs=2, batch_size=32, device="cpu", precision="fp32", seed=3,
                crop_padding=2, hflip=True)
    return build_config({**base, **kw})


def env(run: Path) -> dict:
    return json.loads((run / "env.json").read_text())


def history(run: Path) -> list[dict]:
    import csv

    with open(run / "history.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def assert_same_training(a: Path, b: Path) -> None:
    assert history(a) == history(b)
    la, lb = load_file(a / "logits.safetensors"), load_file(b / "logits.safetensors")
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def never(*args, **kwargs):
    raise AssertionError("probed, where nothing should have been")


# ------------------------------------------------------------------ the rules


def test_a_compile_must_be_won_back_at_a_generous_speed_up():
    # 1.5x faster saves a third of the eager time: 60 s save 20 s, a typical compile; under 60 s cannot pay
    assert cp.TYPICAL_COMPILE_SECONDS == 20 and cp.BEST_SPEEDUP == 1.5
    assert not cp.could_pay(59.9) and cp.could_pay(60.5) and not cp.could_pay(10.0)
    assert cp.could_pay(10.0, compile_seconds=3.0) and not cp.could_pay(100.0, speedup=1.2)


@pytest.mark.parametrize("eager, compiled, compile_s, steps, decision", [
    (0.100, 0.095, 1.0, 10**6, "eager"),  # 5% faster: under the 10% margin, however long the run
    (0.100, 0.091, 0.0, 10**6, "eager"),  # 9%: still under it
    (0.100, 0.080, 20.0, 999, "eager"),  # saves 19.98 s, less than the compile
    (0.100, 0.080, 20.0, 1001, "compiled"),  # saves 20.02 s
    (0.100, 0.150, 1.0, 10**6, "eager"),  # slower (this CPU: cnn1 1,534 against 2,709 img/s eager)
])
def test_compiled_must_beat_eager_by_the_margin_and_win_back_its_compile(eager, compiled, compile_s, steps, decision):
    chosen, why = cp.choose(eager, compiled, compile_s, steps)
    assert chosen == decision and "ms a step" in why


def test_a_budget_caps_the_steps_weighed():
    setup = types.SimpleNamespace(config=types.SimpleNamespace(epochs=200), state=types.SimpleNamespace(epoch=50),
                                  steps_per_epoch=10)
    assert cp.run_steps(setup, None, 0.5) == 1500
    assert cp.run_steps(setup, Budget(100.0, clock_fn=lambda: 0.0), 0.5) == 200


# ------------------------------------------------------------------ never probed


@pytest.mark.parametrize("options, reason", [
    ({}, "run too short to amortise a compile"),
    ({"precision": "fp64"}, "fp64"),
    ({"deterministic": True}, "deterministic"),
])
def test_where_a_compile_cannot_pay_nothing_is_probed(data, tmp_path, cache, monkeypatch, options, reason):
    monkeypatch.setattr(cp, "probe", never)
    fit(config(data, epochs=1, **options), tmp_path / "run")
    record = env(tmp_path / "run")["compile"]
    assert record["setting"] == "auto" and record["decision"] == "eager" and record["source"] == "rule"
    assert reason in record["reason"] and not cache.exists()


@pytest.mark.parametrize("setting, decision", [(True, "compiled"), (False, "eager")])
def test_a_setting_decides_without_a_probe(data, tmp_path, cache, monkeypatch, setting, decision):
    monkeypatch.setattr(cp, "probe", never)
    monkeypatch.setattr("cnnlab.engine.setup.torch.compile", Wrapped)  # compile = true compiles in prepare
    fit(config(data, epochs=1, compile=setting), tmp_path / "run")
    record = env(tmp_path / "run")["compile"]
    assert record == {"setting": setting, "decision": decision, "source": "setting",
                      "reason": f"compile = {str(setting).lower()} (set)"}


# ------------------------------------------------------------------ the probe


def test_the_probe_records_its_figures_and_training_is_bit_identical(data, tmp_path, cache, fake_compile, monkeypatch):
    monkeypatch.setattr(cp, "compile_model", lambda module: (time.sleep(0.5), Wrapped(module))[1])  # a slow compile
    metrics = fit(config(data), tmp_path / "auto")
    record = env(tmp_path / "auto")["compile"]
    assert record["source"] == "probe" and record["decision"] == "eager"  # the same module: never 10% faster
    for key in ("eager_step_ms", "compiled_step_ms", "compile_seconds", "decision_seconds"):
        assert record[key] > 0, key
    assert record["probe_steps"] >= 1 and record["run_steps"] == 2 * 4 and Wrapped.made == 1
    assert metrics["warmup_seconds"] >= record["decision_seconds"] >= 0.5  # the probe counts as warm-up
    stored = json.loads(cache.read_text())
    assert [entry["eager_step_ms"] for entry in stored.values()] == [record["eager_step_ms"]]
    fit(config(data, compile=False), tmp_path / "off")
    assert_same_training(tmp_path / "auto", tmp_path / "off")


def test_a_second_run_takes_the_figures_from_the_cache(data, tmp_path, cache, fake_compile, monkeypatch):
    fit(config(data, epochs=1), tmp_path / "first")
    monkeypatch.setattr(cp, "probe", never)
    fit(config(data, epochs=1, seed=4), tmp_path / "second")  # the seed is not part of the key
    first, second = env(tmp_path / "first")["compile"], env(tmp_path / "second")["compile"]
    assert (first["source"], second["source"]) == ("probe", "cache")
    assert {k: second[k] for k in ("eager_step_ms", "compiled_step_ms", "compile_seconds")} == \
        {k: first[k] for k in ("eager_step_ms", "compiled_step_ms", "compile_seconds")}


def test_another_batch_size_probes_again(data, tmp_path, cache, fake_compile):
    fit(config(data, epochs=1), tmp_path / "first")
    fit(config(data, epochs=1, batch_size=16), tmp_path / "second")
    assert env(tmp_path / "second")["compile"]["source"] == "probe" and len(json.loads(cache.read_text())) == 2


def test_a_damaged_cache_is_probed_again_and_rewritten(data, tmp_path, cache, fake_compile):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    fit(config(data, epochs=1), tmp_path / "run")
    assert env(tmp_path / "run")["compile"]["source"] == "probe" and len(json.loads(cache.read_text())) == 1


def test_a_failing_compile_trains_eager(data, tmp_path, cache, monkeypatch):
    class Broken(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            raise RuntimeError("no C++ compiler\nhere")

    monkeypatch.setattr(cp, "compile_model", Broken)
    monkeypatch.setattr(cp, "TYPICAL_COMPILE_SECONDS", 0.0)
    fit(config(data), tmp_path / "auto")
    record = env(tmp_path / "auto")["compile"]
    assert record["decision"] == "eager" and record["reason"] == "torch.compile failed here (RuntimeError: no C++ compiler here)"
    fit(config(data, compile=False), tmp_path / "off")
    assert_same_training(tmp_path / "auto", tmp_path / "off")


def test_compiled_when_it_pays_and_a_resume_takes_the_same_path(data, tmp_path, cache, fake_compile, monkeypatch):
    monkeypatch.setattr(cp, "choose", lambda *args: ("compiled", "faster (test)"))
    seen = []

    def watch(ctx, started, steps):
        seen.append(type(ctx.setup.step_model).__name__)

    from cnnlab.callbacks import LambdaCallback

    cfg = config(data, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "run", [LambdaCallback(on_epoch_start=watch), interrupt_at(2)])
    before = env(tmp_path / "run")["compile"]
    assert before["decision"] == "compiled" and before["source"] == "probe" and Wrapped.made == 1
    monkeypatch.setattr(cp, "probe", never)
    cache.unlink()  # the resume reads its decision from the run, not from the cache
    fit(cfg, tmp_path / "run", [LambdaCallback(on_epoch_start=watch)], resume=True)
    assert seen == ["Wrapped"] * 4 and Wrapped.made == 2 and not cache.exists()  # epochs 1, 2 (interrupted), 2, 3
    assert env(tmp_path / "run")["compile"] == before
    fit(config(data, epochs=3, compile=False), tmp_path / "off")  # the stand-in computes what eager does
    assert_same_training(tmp_path / "run", tmp_path / "off")


def test_an_eager_decision_is_kept_on_resume(data, tmp_path, cache, fake_compile, monkeypatch):
    # the decision is pinned: the stand-in compile runs eager's code, so a timed probe picks either by noise
    monkeypatch.setattr(cp, "choose", lambda *args: ("eager", "slower (test)"))
    cfg = config(data, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "run", [interrupt_at(2)])
    monkeypatch.setattr(cp, "probe", never)
    monkeypatch.setattr(cp, "choose", never)
    fit(cfg, tmp_path / "run", resume=True)
    assert env(tmp_path / "run")["compile"]["decision"] == "eager" and Wrapped.made == 1
    fit(config(data, epochs=3, compile=False), tmp_path / "off")
    assert_same_training(tmp_path / "run", tmp_path / "off")


@pytest.mark.slow
def test_a_real_compile_probe_on_this_cpu_leaves_training_bit_identical(data, tmp_path, cache, monkeypatch):
    """torch.compile for real (inductor; seconds of compile for a tiny cnn1): the figures reach env.json, and a
    run that decides eager trains exactly as compile = false."""
    monkeypatch.setattr(cp, "TYPICAL_COMPILE_SECONDS", 0.0)
    fit(config(data), tmp_path / "auto")
    record = env(tmp_path / "auto")["compile"]
    assert record["source"] == "probe" and "error" not in record, record
    assert record["compile_seconds"] > 0.5 and record["eager_step_ms"] > 0 and record["compiled_step_ms"] > 0
    assert record["decision"] == "eager"  # 8 steps cannot win back seconds of compile
    fit(config(data, compile=False), tmp_path / "off")
    assert_same_training(tmp_path / "auto", tmp_path / "off")


# ------------------------------------------------------------------ the setting


@pytest.mark.parametrize("value", ["maybe", "on", "", 1, 0.5])
def test_a_bad_compile_setting_is_one_line(value):
    with pytest.raises(UserError) as err:
        build_config({"compile": value})
    assert "compile" in str(err.value) and "\n" not in str(err.value)


def test_the_setting_in_a_config_file_and_on_the_command_line(cli, data, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('compile = "maybe"\n')
    base = ["train", "cnn1", "--data", str(data), "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
    code, _, err = cli(*base, "--out", str(tmp_path / "bad"), "--config", str(bad))
    assert code == 2 and err.strip().splitlines() == [
        f"cnnlab: error: {bad}: compile: must be true, false or \"auto\" (measure, the default), got 'maybe'"]
    assert build_config({}).compile == "auto" and build_config({"compile": "auto", "cuda_graphs": True}).cuda_graphs
    for flags, setting in (([], "auto"), (["--no-compile"], False)):
        out = tmp_path / f"out-{setting}"
        code, _, err = cli(*base, "--out", str(out), "--quiet", *flags)
        assert code == 0, err
        (run,) = [p for p in out.iterdir() if (p / "env.json").is_file()]
        assert json.loads((run / "config.json").read_text())["compile"] == setting
        assert env(run)["compile"]["setting"] == setting


def test_compiling_keeps_inductors_cuda_home_warning_off_the_console(monkeypatch, tmp_path):
    """A machine with a CUDA toolkit and no GPU printed "No CUDA runtime is found, using CUDA_HOME=..." on
    stderr in every compiled CPU run (the compile probe's too), about nothing cnnlab uses."""
    import logging

    from torch.utils import cpp_extension

    from cnnlab.device import compiled

    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger("torch.utils.cpp_extension")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logger.level)  # restored after the test
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))  # a toolkit's folder, where torch looks first
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        compiled(torch.nn.Linear(2, 2))  # lazy: compiles on the first call, which this test never makes
        cpp_extension._find_cuda_home()  # what inductor's C++ build calls
    finally:
        logger.removeHandler(handler)
    assert not [r for r in seen if "No CUDA runtime" in r.getMessage()]
