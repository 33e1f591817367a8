"""Run.predict's fast path for a handful of images (issue 21): the lean copy of the model (BatchNorm folded,
dropout gone, torch functions instead of modules) gives today's scores within fp32 rounding, big batches
keep the eager path (the stored logits exactly), and a resumed run is picked up."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cnnlab
from cnnlab import inference, onnx_route
from cnnlab.metrics import softmax
from cnnlab.models import create_architecture

from conftest import train_test_images

FAST = dict(batch_size=32, device="cpu", precision="fp32", progress=False)
CPU = torch.device("cpu")
# fp32 rounding: folding BatchNorm into a layer reorders a few products and sums per logit
RTOL = 64 * torch.finfo(torch.float32).eps


def close(a, b) -> bool:
    scale = max(1.0, float(np.abs(b).max()))
    return np.allclose(a, b, rtol=RTOL, atol=RTOL * scale)


def with_batchnorm_statistics(model: nn.Module, negative: bool = False) -> nn.Module:
    """Running statistics and affine weights far from the identity, so folding them is not a no-op."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                if negative:  # a negative scale must not be moved across max-pooling
                    module.weight[::2].neg_()
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.to(memory_format=torch.channels_last).eval()


def images(n: int, size: int = 16, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["tuned-cnn", "cnn2", "resnet9"])
@pytest.mark.parametrize("negative", [False, True])
def test_the_lean_model_gives_the_eager_scores(name, negative):
    model = with_batchnorm_statistics(create_architecture(name, num_classes=5, image_size=16), negative)
    lean = inference.lean_model(model, [1, 16, 16], 1000 * torch.finfo(torch.float32).eps)
    assert lean is not None
    calls = {node.op for node in lean.graph.nodes}
    assert "call_module" not in calls
    if name == "tuned-cnn" and not negative:  # its three BatchNorms folded into the linear layers after them
        assert torch.batch_norm not in {node.target for node in lean.graph.nodes}
    for n in (1, 2, 32):
        x = images(n)
        for tta in (False, True):
            expected = inference.predict_logits(model, x, tta=tta).numpy()
            got = inference.lean_logits(lean, x, tta).numpy()
            assert close(got, expected), (n, tta, np.abs(got - expected).max())
            assert close(softmax(got), softmax(expected)) and (got.argmax(1) == expected.argmax(1)).all()


class Branchy(nn.Module):
    """A model of the user's own that torch.fx cannot trace: data-dependent control flow."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16 * 16, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


class Noisy(nn.Dropout):
    """A dropout subclass that is no identity in eval mode: it must stay what it is."""

    def forward(self, x):
        return x * 2


class Shared(nn.Module):
    """One linear layer called twice, once after a BatchNorm: folding it there would change the other call."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.fc(self.bn(self.fc(x.flatten(1)[:, :8]))))


@pytest.mark.parametrize("model, lean", [(Branchy(), False), (nn.Sequential(nn.Flatten(), nn.Linear(256, 3), Noisy()), True),
                                         (Shared(), False)], ids=["untraceable", "dropout-subclass", "shared-layer"])
def test_models_of_ones_own_get_their_own_scores(model, lean):
    """What fx cannot trace, or traces into something else (torch's fuse folds a BatchNorm into a layer that
    is also called elsewhere), is caught by lean_model's probe batch and scored eagerly."""
    model = with_batchnorm_statistics(model)
    member = inference._Member(model, contextlib.nullcontext, False, [1, 16, 16])
    x = images(4)
    assert close(member.logits(x, CPU, 1024).numpy(), inference.predict_logits(model, x).numpy())
    assert (member.lean is not None) == lean


@pytest.fixture(scope="module")
def arrays():
    return train_test_images()


@pytest.fixture(scope="module")
def run(arrays, tmp_path_factory):
    x, y, xt, yt = arrays
    return cnnlab.train("tuned-cnn", (x, y, xt, yt), epochs=1, out=tmp_path_factory.mktemp("runs"), **FAST)


def uncached(run, x) -> np.ndarray:
    """The scores as run_scores computes them: the model loaded afresh, eager, no cache."""
    return inference.run_scores(run.path, torch.from_numpy(x[:, None].copy()), CPU)


def test_one_image_and_a_big_batch_match_the_uncached_path(run, arrays):
    xt = arrays[2]
    fresh = cnnlab.load_run(run.path)
    for n in (1, 5):
        assert close(fresh.logits(xt[:n]), uncached(run, xt[:n]))
        assert close(fresh.predict_proba(xt[:n]), softmax(uncached(run, xt[:n])))
        assert (fresh.predict(xt[:n]) == uncached(run, xt[:n]).argmax(1)).all()
    member = fresh._predictor._loaded[1][0]
    assert isinstance(member.lean, nn.Module)  # the small batches did take the lean path
    assert np.array_equal(fresh.logits(xt), uncached(run, xt))  # 60 images: the eager path, bit for bit
    assert np.array_equal(fresh.logits(xt), run.dir.logits("test")[0])


def test_a_resumed_run_is_reloaded(arrays, tmp_path):
    x, y, xt, _ = arrays
    run = cnnlab.train("tuned-cnn", (x, y), epochs=1, out=tmp_path, **FAST)
    before = run.logits(xt[:1])
    lean = run._predictor._loaded[1][0].lean
    cnnlab.train(data=(x, y), resume=run.path, epochs=2, progress=False)
    after = run.logits(xt[:1])  # the same Run object: its cache sees the new weights
    assert run._predictor._loaded[1][0].lean is not lean
    assert not np.allclose(after, before) and close(after, uncached(run, xt[:1]))


def test_flip_tta_goes_through_one_forward_with_the_same_scores(arrays, tmp_path):
    x, y, xt, _ = arrays
    run = cnnlab.train("tuned-cnn", (x, y), epochs=1, tta=True, out=tmp_path, **FAST)
    assert run._predictor.refresh(CPU) and run._predictor._loaded[1][0].tta
    for n in (1, 3):
        assert close(run.logits(xt[:n]), uncached(run, xt[:n]))


class FakeClock:
    """Time that moves only by what a call costs, so the thread choice is tested without timing anything."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("faster", [1, 2])
def test_the_thread_choice_keeps_the_faster_count_and_restores_the_pool(two_threads, faster):
    clock = FakeClock()
    choice = inference.ThreadChoice(clock)
    used = []
    for _ in range(2 * choice.BLOCK + 5):
        with choice.use(CPU, 1):
            used.append(torch.get_num_threads())
            clock.now += 1e-3 if torch.get_num_threads() == faster else 3e-3
        assert torch.get_num_threads() == 2  # the caller's setting is back after every call
    assert sorted(set(used[:2 * choice.BLOCK])) == [1, 2]  # both were tried
    assert choice.chosen == faster and set(used[2 * choice.BLOCK:]) == {faster}
    with choice.use(CPU, inference.SMALL_BATCH + 1):  # a big batch keeps every thread
        assert torch.get_num_threads() == 2


def test_the_thread_choice_is_made_again_after_recheck_calls(two_threads):
    clock = FakeClock()
    choice = inference.ThreadChoice(clock)
    choice.RECHECK = 3 * choice.BLOCK
    faster = 2
    for call in range(choice.RECHECK + 2 * choice.BLOCK):
        if call == choice.RECHECK:
            assert choice.chosen == 2
            faster = 1  # the machine got busy: one thread is now the faster
        with choice.use(CPU, 1):
            clock.now += 1e-3 if torch.get_num_threads() == faster else 5e-2
    assert choice.chosen == 1


def test_the_pool_is_restored_when_the_call_fails(two_threads):
    choice = inference.ThreadChoice(FakeClock())
    choice.chosen = 1
    with pytest.raises(RuntimeError), choice.use(CPU, 1):
        raise RuntimeError("a failing forward")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 1, 16, 16), (3, 16, 16, 1)])
def test_uint8_images_in_the_models_shape_take_the_short_check_with_the_same_result(shape):
    from cnnlab.api import as_images
    from cnnlab.data.common import validate_arrays
    x = np.random.default_rng(0).integers(0, 256, size=shape).astype(np.uint8)
    readonly = np.frombuffer(x.tobytes(), dtype=np.uint8).reshape(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warns on a read-only array
        got = as_images(readonly, [1, 16, 16])
    assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), validate_arrays(x, None, "x")[0])
    with pytest.raises(cnnlab.UserError, match="every pixel is 0 or 1"):
        as_images((x > 127).astype(np.uint8), [1, 16, 16])
    with pytest.raises(cnnlab.UserError, match="trained on 1x12x12"):
        as_images(x, [1, 12, 12])


# ------------------------------------------------------------------ the onnxruntime route of a predict loop

needs_onnx = pytest.mark.skipif(not onnx_route.available(), reason="the onnxruntime route needs onnx and onnxruntime "
                                "(the export extra)")


class Counting:
    """The real onnxruntime session, counting its runs: proof that it, not a PyTorch path, answered."""

    def __init__(self, session):
        self.session, self.calls = session, 0

    def run(self, *args):
        self.calls += 1
        return self.session.run(*args)


@needs_onnx
@pytest.mark.parametrize("tta", [False, True])
def test_a_predict_loop_moves_to_an_onnxruntime_session_with_the_same_scores(arrays, tmp_path, monkeypatch, tta):
    monkeypatch.setattr(inference, "ONNX_AFTER", 3)
    x, y, xt, _ = arrays
    run = cnnlab.train("tuned-cnn", (x, y), epochs=1, tta=tta, out=tmp_path, **FAST)
    member = None
    for _ in range(3):
        run.predict(xt[:1])
        member = member or run._predictor._loaded[1][0]
        assert member.onnx is None or member.small_calls == 3  # built at the third call, not before
    assert member.onnx is not None, member.onnx_failed
    member.onnx = session = Counting(member.onnx)
    for n in (1, 5):
        assert close(run.logits(xt[:n]), uncached(run, xt[:n])), n
        assert (run.predict(xt[:n]) == uncached(run, xt[:n]).argmax(1)).all()
    assert session.calls == 4  # one run of the session a call, the mirror images in the same batch
    assert np.array_equal(run.logits(xt), uncached(run, xt))  # 60 images: the eager path, bit for bit


@needs_onnx
@pytest.mark.parametrize("name", ["cnn1", "cnn2", "cnn3", "cnn4", "tuned-cnn", "inception", "resnet50", "resnet9", "wrn-16-4"])
def test_every_built_in_models_lean_graph_becomes_a_session_with_its_scores(name):
    model = with_batchnorm_statistics(create_architecture(name, num_classes=5, image_size=28))
    lean = inference.lean_model(model, [1, 28, 28], 1000 * torch.finfo(torch.float32).eps)
    session, why = onnx_route.session_for(lean, [1, 28, 28], 1000 * torch.finfo(torch.float32).eps, 1)
    assert session is not None, why
    for n, tta in ((1, False), (3, True)):
        x = images(n, 28)
        expected = inference.predict_logits(model, x, tta=tta).numpy()
        assert close(onnx_route.session_logits(session, x, tta).numpy(), expected)


class Gelu(nn.Module):
    """A model of the user's own with an op the ONNX writer does not translate (GELU)."""

    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(16 * 16, 3), nn.GELU()

    def forward(self, x):
        return self.act(self.fc(torch.flatten(x, 1)))


@needs_onnx
def test_a_graph_the_writer_cannot_take_keeps_the_lean_copy_and_says_why(monkeypatch):
    monkeypatch.setattr(inference, "ONNX_AFTER", 2)
    model = Gelu().eval()
    member = inference._Member(model, contextlib.nullcontext, False, [1, 16, 16])
    x = images(2)
    for _ in range(3):
        got = member.logits(x, CPU, 1024)
    assert member.onnx is None and "GELU" in member.onnx_failed and isinstance(member.lean, nn.Module)
    assert close(got.numpy(), inference.predict_logits(model, x).numpy())


class ComputedWeight(nn.Module):
    """A linear layer whose weight is computed in the forward: no constant for the ONNX writer to take."""

    def __init__(self):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(3, 16 * 16)), nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return nn.functional.linear(torch.flatten(x, 1), self.weight * 2, self.bias)


@needs_onnx
def test_a_computed_weight_is_not_translated_and_the_call_still_answers(monkeypatch):
    monkeypatch.setattr(inference, "ONNX_AFTER", 2)
    model = ComputedWeight().eval()
    member = inference._Member(model, contextlib.nullcontext, False, [1, 16, 16])
    for _ in range(2):
        got = member.logits(images(2), CPU, 1024)
    assert member.onnx is None and "computed weight" in member.onnx_failed
    assert close(got.numpy(), inference.predict_logits(model, images(2)).numpy())


def test_no_session_is_built_with_onnx_after_zero_or_before_the_count(monkeypatch):
    model = with_batchnorm_statistics(create_architecture("tuned-cnn", num_classes=3, image_size=16))
    member = inference._Member(model, contextlib.nullcontext, False, [1, 16, 16])
    monkeypatch.setattr(inference, "ONNX_AFTER", 5)
    for _ in range(4):
        member.logits(images(1), CPU, 1024)
    assert member.onnx is None  # a few calls are no loop
    monkeypatch.setattr(inference, "ONNX_AFTER", 0)
    for _ in range(4):
        member.logits(images(1), CPU, 1024)
    assert member.onnx is None


def test_a_bf16_run_scores_small_cpu_batches_in_fp32(arrays, tmp_path):
    """bf16 autocast is slower than fp32 at batch 1 on the CPU; a handful of images takes fp32 (the run's
    weights are fp32), more keep the run's own precision and its stored logits."""
    x, y, xt, yt = arrays
    run = cnnlab.train("tuned-cnn", (x, y, xt, yt), epochs=1, out=tmp_path, **{**FAST, "precision": "bf16"})
    model, _ = inference.load_model(run.path, CPU)
    fp32 = inference.predict_logits(model, torch.from_numpy(xt[:3, None].copy())).numpy()
    assert close(run.logits(xt[:3]), fp32)
    assert np.array_equal(run.logits(xt), run.dir.logits("test")[0])  # 60 images: bf16, as stored
    bf16 = run.dir.logits("test")[0][:3]
    eps = torch.finfo(torch.bfloat16).eps  # the two precisions differ by bf16's rounding, no more
    assert np.allclose(fp32, bf16, rtol=16 * eps, atol=16 * eps * max(1.0, float(np.abs(bf16).max())))
