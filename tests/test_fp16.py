"""fp16 (issue 20.5): what "auto" picks on each kind of card and why, the gradient scaler in the train
step and the checkpoint (resume stays exact), env.json's record of the choice, the paths that refuse it."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from cnnlab.config import build_config
from cnnlab import device
from cnnlab.device import (AUTO_PRECISION_ENV, BF16_PROBE_FILE, BF16_SPEEDUP_NEEDED, auto_precision, bf16_probe_key,
                           choose_precision, precision_policy)
from cnnlab.engine import fit, load_model, predict_logits, prepare, run_autocast
from cnnlab.errors import UserError
from cnnlab.probe_cache import CACHE_ENV, cache_path, read_cache, remember
from cnnlab.progress import ConsoleProgress
from cnnlab.runs import RunDir, tensor_metadata

from conftest import interrupt_at, write_npz_dataset

TIMING = {"train_seconds", "eval_seconds"}


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("data") / "small.npz", 480, 90)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):  # fp16 convolution backward is slow on CPUs (cnnlab.device.CPU_FP16_NOTE)
    return write_npz_dataset(tmp_path_factory.mktemp("tiny") / "tiny.npz", 192, 60)


def config(data, **kw):
    base = dict(data=str(data), model="cnn1", epochs=3, batch_size=32, device="cpu", precision="fp16", seed=0)
    return build_config({**base, **kw})


def _history(run):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(open(run / "history.csv"))]


# ------------------------------------------------------------------ the policy (a pure function)


@pytest.mark.parametrize("capability, precision, words", [
    ((9, 0), "bf16", "compute capability 9.0: native bf16"),
    ((8, 0), "bf16", "compute capability 8.0: native bf16"),
    ((8, 6), "bf16", "native bf16"),
    ((7, 5), "fp16", "compute capability 7.5: no native bf16; fp16 autocast with a gradient scaler"),
    ((7, 0), "fp16", "compute capability 7.0: no native bf16; fp16 autocast"),
    ((6, 1), "fp32", "compute capability 6.1: no native bf16 and slow fp16; fp32"),
    ((5, 2), "fp32", "compute capability 5.2"),
])
def test_cuda_policy_follows_the_compute_capability(capability, precision, words):
    chosen, reason = precision_policy("cuda", capability, cpu_amx=True)  # the CPU's bf16 does not count
    assert chosen == precision and words in reason


def products(speedup: float) -> dict:
    """Figures of the CPU's bf16 probe (device.cpu_bf16_figures): bf16 products `speedup` times fp32's."""
    return {"fp32_flop_per_s": 300e9, "bf16_flop_per_s": speedup * 300e9, "speedup": speedup}


def test_cpu_policy_follows_amx_the_measured_bf16_products_and_the_override():
    assert precision_policy("cpu", None, True) == ("bf16", "CPU with AMX: native bf16 matrix units")
    chosen, reason = precision_policy("cpu", None, False)  # AVX2-only: nothing to measure
    assert chosen == "fp32" and "without AMX or AVX512-BF16" in reason
    # AVX512-BF16 without AMX: the measured products decide (Zen 5: 1.94x, the AVX-512 Xeon: 0.59x)
    assert precision_policy("cpu", None, False, cpu_bf16=products(1.94)) == (
        "bf16", "CPU with AVX512-BF16, no AMX: bf16 products measured 1.94x fp32's (582 against 300 GFLOP/s), "
                "at least 1.3x: bf16")
    assert precision_policy("cpu", None, False, cpu_bf16=products(BF16_SPEEDUP_NEEDED))[0] == "bf16"
    assert precision_policy("cpu", None, False, cpu_bf16=products(BF16_SPEEDUP_NEEDED - 0.01))[0] == "fp32"
    chosen, reason = precision_policy("cpu", None, False, cpu_bf16=products(0.59))
    assert chosen == "fp32" and "measured 0.59x" in reason and "under 1.3x" in reason
    for forced in ("fp32", "bf16", "fp16"):
        assert precision_policy("cuda", (9, 0), True, forced) == (forced, f"${AUTO_PRECISION_ENV}={forced}")
        assert precision_policy("cpu", None, False, forced, products(2.0))[0] == forced
    with pytest.raises(UserError, match=f"{AUTO_PRECISION_ENV}: must be fp32, bf16 or fp16, got 'fp8'"):
        precision_policy("cpu", None, True, "fp8")


def test_auto_precision_takes_fp16_from_the_environment(monkeypatch):
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp16")
    assert auto_precision(torch.device("cpu")) == "fp16"


@pytest.fixture
def fresh_probe(tmp_path, monkeypatch):
    """An empty cache of probe figures and a process that has measured nothing yet; the CPU's facts as set."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(device, "_BF16_PROBED", {})
    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)

    def cpu(amx: bool, avx512_bf16: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    return cpu


@pytest.mark.parametrize("amx, avx512_bf16, speedup, expected", [
    (True, True, 0.5, "bf16"),     # AMX: always bf16, whatever the products say
    (False, True, 1.94, "bf16"),   # Zen 5's figure
    (False, True, 0.59, "fp32"),   # the AVX-512 Xeon's
    (False, False, 1.94, "fp32"),  # AVX2-only: bf16 is never measured, so no figure counts
])
def test_auto_precision_on_a_cpu_reads_amx_then_the_measured_products(fresh_probe, amx, avx512_bf16, speedup,
                                                                      expected):
    fresh_probe(amx, avx512_bf16)
    remember(bf16_probe_key(), products(speedup), BF16_PROBE_FILE)  # as an earlier run on this machine left it
    assert auto_precision(torch.device("cpu")) == expected


def test_the_bf16_probe_measures_once_per_machine_and_keeps_its_figures(fresh_probe, monkeypatch):
    fresh_probe(False, True)
    assert not cache_path(BF16_PROBE_FILE).exists()
    chosen, reason = choose_precision(torch.device("cpu"), "auto")
    figures = read_cache(BF16_PROBE_FILE)[bf16_probe_key()]
    assert all(figures[k] > 0 for k in ("fp32_flop_per_s", "bf16_flop_per_s", "speedup", "seconds"))
    assert figures["speedup"] == pytest.approx(figures["bf16_flop_per_s"] / figures["fp32_flop_per_s"])
    assert chosen == ("bf16" if figures["speedup"] >= BF16_SPEEDUP_NEEDED else "fp32")
    assert f"measured {figures['speedup']:.2f}x" in reason
    # a later process reads the figures instead of timing again, and a damaged file is measured again
    monkeypatch.setattr(device, "_BF16_PROBED", {})
    assert device.cpu_bf16_figures() == figures
    monkeypatch.setattr(device, "_BF16_PROBED", {})
    cache_path(BF16_PROBE_FILE).write_text("{not json")
    again = device.cpu_bf16_figures()
    assert again["measured_at"] and read_cache(BF16_PROBE_FILE)[bf16_probe_key()] == again


def test_a_set_precision_or_the_override_measures_nothing(fresh_probe, monkeypatch):
    fresh_probe(False, True)
    assert choose_precision(torch.device("cpu"), "fp32") == ("fp32", "precision = fp32 (set)")
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp32")
    assert choose_precision(torch.device("cpu"), "auto")[0] == "fp32"
    assert not cache_path(BF16_PROBE_FILE).exists()


# ------------------------------------------------------------------ training in fp16


def test_fp16_resume_equals_uninterrupted_run(tiny_npz, tmp_path):
    # tuned-cnn: its fp16 activation gradients overflow, so the scaler's state changes and a resume that
    # lost it differs (with cnn1 none overflow, and a lost state would go unseen)
    cfg = config(tiny_npz, model="tuned-cnn", epochs=3, augment=True, lr_patience=1)
    fit(cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "cut", [interrupt_at(2)])
    scaler = tensor_metadata(tmp_path / "cut" / "checkpoint.safetensors")["scaler"]
    assert set(scaler) >= {"scale", "_growth_tracker"}
    fit(cfg, tmp_path / "cut", resume=True)
    assert _history(tmp_path / "cut") == _history(tmp_path / "full")
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_without_the_scaler_state_is_refused(small_npz, tmp_path):
    from cnnlab.runs import save_tensors

    cfg = config(small_npz, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "cut", [interrupt_at(2)])
    path = tmp_path / "cut" / "checkpoint.safetensors"
    meta = tensor_metadata(path)
    del meta["scaler"]
    save_tensors(path, load_file(str(path)), {"cnnlab": json.dumps(meta)})
    with pytest.raises(UserError, match="does not fit"):
        fit(cfg, tmp_path / "cut", resume=True)


def test_fp16_run_learns_records_why_and_predicts_in_fp16(small_npz, tmp_path):
    from cnnlab.evaluation import validation_images

    run, printed = tmp_path / "run", io.StringIO()
    metrics = fit(config(small_npz, epochs=3), run, [ConsoleProgress(Console(file=printed, width=400))])
    assert "note: fp16 training on a CPU is slow" in printed.getvalue()  # the user is told, once
    assert printed.getvalue().count("note:") == 1
    assert metrics["precision"] == "fp16" and metrics["val_accuracy"] > 0.8  # chance is 1/3
    env = RunDir(run).read_env()
    assert env["precision"] == "fp16" and env["precision_reason"] == "precision = fp16 (set)"
    assert {"torch", "device", "git_commit"} <= env.keys()
    model, _ = load_model(run)
    logits = predict_logits(model, torch.from_numpy(validation_images(run)), autocast=run_autocast(run, "cpu"))
    assert torch.equal(logits, load_file(str(run / "logits.safetensors"))["val_logits"])


def test_env_json_says_why_auto_chose_its_precision(small_npz, tmp_path, monkeypatch):
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp16")
    setup = prepare(config(small_npz, precision="auto"))
    assert setup.precision == "fp16" and isinstance(setup.scaler, torch.amp.GradScaler)
    assert setup.precision_reason == f"${AUTO_PRECISION_ENV}=fp16"
    monkeypatch.delenv(AUTO_PRECISION_ENV)
    printed = io.StringIO()
    fit(config(small_npz, precision="auto", epochs=1), tmp_path / "run", [ConsoleProgress(Console(file=printed))])
    assert "note:" not in printed.getvalue()  # bf16 or fp32 on a CPU: nothing to say
    env = RunDir(tmp_path / "run").read_env()
    assert env["precision"] in ("fp32", "bf16") and env["precision_reason"].startswith("CPU with")
    assert prepare(config(small_npz, precision="fp32")).scaler is None


# ------------------------------------------------------------------ paths without fp16


def test_fused_groups_and_cuda_graphs_refuse_fp16(small_npz, tmp_path, monkeypatch):
    from cnnlab.ensembles import training_path
    from cnnlab.fused import can_fuse_config, prepare_fused

    ok, why = can_fuse_config(config(small_npz))
    assert not ok and why == "precision fp16 (use bf16 or fp32)"
    assert training_path(config(small_npz), fuse=2)[0] == 1  # an fp16 ensemble trains one member after another
    with pytest.raises(UserError, match="^precision fp16: not available with cuda_graphs"):
        config(small_npz, cuda_graphs=True)
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp16")  # "auto" chose fp16: these paths fall back to fp32
    setup = prepare_fused(config(small_npz, precision="auto"), [0, 1])
    assert setup.precision == "fp32" and setup.scaler is None
    assert setup.precision_reason.endswith("fused ensemble groups cannot use fp16: fp32")
