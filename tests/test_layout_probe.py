"""Flatten's gradient layout (models.layers.Flatten, engine.layout_probe): the same numbers either way at
the layer, a decision measured per model and machine, recorded in env.json, cached, undone after the
probe, and taken again on resume so that resume stays bit-exact."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.callbacks import LambdaCallback
from cnnlab.config import build_config
from cnnlab.engine import fit, prepare
from cnnlab.engine import layout_probe as lp
from cnnlab.engine.compile_probe import cache_key
from cnnlab.models.layers import Flatten
from cnnlab.probe_cache import cache_path
from cnnlab.runs import RunDir

from conftest import interrupt_at, write_npz_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("layout") / "data.npz", 160, 40, size=16)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    return cache_path(lp.CACHE_FILE)


def config(data, **kw):
    base = dict(data=str(data), model="cnn1", epochs=3, batch_size=32, device="cpu", precision="fp32", seed=5,
                hflip=True, compile=False)
    return build_config({**base, **kw})


def seed_cache(cfg, channels_last_faster: bool) -> None:
    """Figures in the cache that make the decision: the engine then reads them instead of probing."""
    fast, slow = 1.0, 2.0
    figures = {"as_computed_step_ms": slow if channels_last_faster else fast,
               "channels_last_step_ms": fast if channels_last_faster else slow,
               "step_time_ratio": fast / slow if channels_last_faster else slow / fast, "timed_pairs": 8}
    path = cache_path(lp.CACHE_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({cache_key(prepare(cfg)): figures}))


def history(run):
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "eval_seconds")}
            for r in csv.DictReader(open(run / "history.csv"))]


def weights(run):
    return load_file(str(run / "model.safetensors"))


def assert_same_training(a, b):
    assert history(a) == history(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_layer_gives_the_same_numbers_and_a_channels_last_gradient():
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(200, 3)
    grads = {}
    for on in (False, True):
        layer, leaf = Flatten(), x.clone().requires_grad_()
        layer.channels_last_grad = on
        inner = leaf * 2  # the gradient as the layer hands it back (a leaf's .grad takes the leaf's layout)
        inner.register_hook(lambda grad, on=on: grads.__setitem__(on, grad))
        out = layer(inner)
        assert torch.equal(out, torch.flatten(2 * x, 1))
        (out @ weight).square().sum().backward()
    assert grads[True].is_contiguous(memory_format=torch.channels_last) and grads[False].is_contiguous()
    assert torch.equal(grads[True], grads[False])  # only the layout differs
    with torch.no_grad():  # inference: plain flatten, whatever the setting
        assert torch.equal(layer(x), torch.flatten(x, 1))


@pytest.mark.parametrize("on_faster, decision", [(True, lp.ON), (False, lp.OFF)])
def test_the_rule(on_faster, decision):
    ratio = 0.96 if on_faster else 0.98  # 4% faster, 2% faster: the margin is 3%
    assert lp.choose(ratio, 10.0, 10.0 * ratio)[0] == decision


def test_a_run_probes_records_and_caches_and_the_probe_leaves_no_trace(data, tmp_path, cache):
    fit(config(data), tmp_path / "probed")
    record = RunDir(tmp_path / "probed").read_env()["flatten_grad"]
    assert record["source"] == "probe" and record["decision"] in (lp.ON, lp.OFF)
    assert record["as_computed_step_ms"] > 0 and record["channels_last_step_ms"] > 0 and record["decision_seconds"] > 0
    assert json.loads(cache.read_text())  # the figures are kept for the next run
    fit(config(data), tmp_path / "cached")
    again = RunDir(tmp_path / "cached").read_env()["flatten_grad"]
    assert again["source"] == "cache" and again["decision"] == record["decision"]
    assert_same_training(tmp_path / "probed", tmp_path / "cached")  # the probe's steps were undone


def test_a_resume_takes_the_recorded_decision_and_equals_the_uninterrupted_run(data, tmp_path, cache):
    cfg = config(data)
    seed_cache(cfg, channels_last_faster=True)
    fit(cfg, tmp_path / "full")
    assert RunDir(tmp_path / "full").read_env()["flatten_grad"]["decision"] == lp.ON
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "cut", [interrupt_at(2)])
    seed_cache(cfg, channels_last_faster=False)  # the machine would now decide otherwise: the run keeps its own
    flags = []
    seen = LambdaCallback(on_epoch_start=lambda ctx, epoch, steps: flags.append(
        [layer.channels_last_grad for layer in ctx.setup.model.modules() if isinstance(layer, Flatten)]))
    fit(cfg, tmp_path / "cut", [seen], resume=True)
    assert flags == [[True], [True]]  # the two epochs left trained as the run began
    assert RunDir(tmp_path / "cut").read_env()["flatten_grad"]["decision"] == lp.ON
    assert_same_training(tmp_path / "full", tmp_path / "cut")


def test_a_drifting_machine_does_not_decide_the_probe(data, monkeypatch):
    """Each timed step 10% slower than the one before (a busy host), channels_last 5% faster throughout:
    pairs of adjacent steps in alternating order still find it faster; best-of-rounds timings did not."""
    setup = prepare(config(data))
    ways = []

    def drifting(setup, idx, steps):
        on = lp.flatten_layers(setup)[0].channels_last_grad
        ways.append(on)
        return (0.95 if on else 1.0) * 1.1 ** len(ways)

    monkeypatch.setattr(lp, "timed_steps", drifting)
    figures = lp.probe(setup)
    assert ways[:4] == [False, True, True, False] and len(ways) == 2 * lp.PAIRS
    assert figures["step_time_ratio"] == pytest.approx((0.95 * 1.1 + 0.95 / 1.1) / 2, rel=1e-3)
    decision, reason = lp.choose(figures["step_time_ratio"], figures["as_computed_step_ms"],
                                 figures["channels_last_step_ms"])
    assert decision == lp.ON and "3% faster" in reason


def test_a_cache_entry_without_the_paired_ratio_is_measured_again(data, tmp_path, cache):
    cfg = config(data, epochs=1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({cache_key(prepare(cfg)): {"as_computed_step_ms": 2.0, "channels_last_step_ms": 1.0}}))
    fit(cfg, tmp_path / "run")
    record = RunDir(tmp_path / "run").read_env()["flatten_grad"]
    assert record["source"] == "probe" and record["step_time_ratio"] > 0


def test_fp64_is_never_probed_and_a_model_without_the_layer_has_no_record(data, tmp_path, cache):
    fit(config(data, precision="fp64", epochs=1), tmp_path / "fp64")
    record = RunDir(tmp_path / "fp64").read_env()["flatten_grad"]
    assert record["source"] == "rule" and record["decision"] == lp.OFF and "fp64" in record["reason"]
    assert not cache.exists()
    fit(config(data, model="resnet9", epochs=1), tmp_path / "resnet")
    assert "flatten_grad" not in RunDir(tmp_path / "resnet").read_env()


def test_the_compile_probe_keeps_its_figures_apart_per_gradient_layout(data):
    """The compile probe measures after this decision, so its cached figures hold for one layout only."""
    setup = prepare(config(data))
    keys = set()
    for decision in (None, lp.OFF, lp.ON):
        setup.flatten_grad = None if decision is None else {"decision": decision}
        keys.add(cache_key(setup))
    assert len(keys) == 3


def test_figures_measured_under_narrowed_cpu_kernels_are_kept_apart(data, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (the README's way to approximate an AVX2-only CPU) runs other kernels on the
    same processor: figures cached without it must not decide a run with it, nor the other way round."""
    setup = prepare(config(data))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native = cache_key(setup)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cache_key(setup) != native and '"onednn_max_isa": "AVX2"' in cache_key(setup)
