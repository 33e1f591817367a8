"""The modern recipe's building blocks (issue 11): schedules, optimizers, augmentation, loss, EMA, models.

Exact checks run in float64 with tolerances derived from the dtype's epsilon; tensors and models are tiny.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.augment_modern import (ModernAugment, apply_modern, crop_at, cutmix, mixup, random_crop, random_erasing,
                                   random_hflip, sample_beta, sample_crop_offsets, sample_erasing_boxes, sample_gamma)
from cnnlab.ema import ModelEMA
from cnnlab.errors import UserError
from cnnlab.losses import classification_loss
from cnnlab.models import count_parameters, create_model, list_models
from cnnlab.optim import OPTIMIZERS, make_optimizer, match_parameter_layouts
from cnnlab.schedules import SCHEDULES, lr_at

EPS64 = sys.float_info.epsilon


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors here are tiny: threads gain nothing, and on a busy shared CPU OpenMP's barriers made a
    two-thread wrn-16-4 step 30x slower than one thread (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def close(a: float, b: float, scale: float = 1.0) -> bool:
    """Equal up to a few float64 roundings of numbers of size `scale`."""
    return abs(a - b) <= 16 * EPS64 * scale


# ------------------------------------------------------------------ schedules


def test_schedule_names():
    assert SCHEDULES == ("constant", "one-cycle", "cosine", "linear")
    with pytest.raises(UserError, match=r"unknown lr_schedule 'step'; choose one of constant, one-cycle, cosine, linear"):
        lr_at("step", 0, 10, 0.1)


def test_constant_with_and_without_warmup():
    assert [lr_at("constant", s, 10, 0.5) for s in (0, 5, 10, 99)] == [0.5] * 4
    assert [lr_at("constant", s, 10, 0.5, warmup_steps=4) for s in (0, 1, 3, 4, 10)] == [0.125, 0.25, 0.5, 0.5, 0.5]


def test_one_cycle_at_known_steps():
    base, total = 2.0, 100  # peak at step 20 (pct_start 0.2), anneal over 80 steps
    lr = [lr_at("one-cycle", s, total, base, pct_start=0.2, div_factor=25.0, final_div_factor=1e4) for s in range(total + 1)]
    assert close(lr[0], base / 25, base)  # start
    assert close(lr[10], base / 25 + (base - base / 25) * 0.5, base)  # halfway up the linear warm-up
    assert close(lr[20], base, base)  # end of warm-up: the peak
    assert close(lr[60], (base + base / 1e4) / 2, base)  # halfway down the cosine
    assert close(lr[40], base / 1e4 + (base - base / 1e4) * (1 + math.cos(math.pi / 4)) / 2, base)  # cosine, not linear
    assert close(lr[100], base / 1e4, base)  # the end value, reached after the last step
    assert lr[99] > lr[100]  # the last step taken still moves
    assert lr_at("one-cycle", 500, total, base, pct_start=0.2) == lr[100]  # clamped past the end
    assert all(a < b for a, b in zip(lr[:20], lr[1:21])) and all(a > b for a, b in zip(lr[20:], lr[21:]))


def test_one_cycle_without_warmup_starts_at_peak():
    assert lr_at("one-cycle", 0, 10, 1.0, pct_start=0.0) == 1.0


def test_cosine_at_known_steps():
    base, floor = 1.0, 0.01
    lr = [lr_at("cosine", s, 110, base, warmup_steps=10, min_lr=floor) for s in range(111)]
    assert close(lr[0], 0.1) and close(lr[4], 0.5) and lr[9] == base and lr[10] == base  # warm-up, never 0
    assert close(lr[60], (base + floor) / 2)
    assert close(lr[110], floor)
    assert lr_at("cosine", 100, 100, 3.0) == 0.0  # default min_lr


def test_linear_at_known_steps():
    lr = [lr_at("linear", s, 110, 1.0, warmup_steps=10) for s in range(111)]
    assert lr[9] == 1.0 and lr[10] == 1.0
    assert close(lr[60], 0.5) and close(lr[109], 0.01) and lr[110] == 0.0


@pytest.mark.parametrize("kwargs,match", [({"total_steps": 0}, "total_steps"), ({"warmup_steps": 11}, "warmup_steps"),
                                          ({"pct_start": 1.0}, "pct_start"), ({"base_lr": -1.0}, "must not be negative")])
def test_schedule_settings_are_checked(kwargs, match):
    args = {"kind": "cosine", "step": 0, "total_steps": 10, "base_lr": 0.1, **kwargs}
    if "pct_start" in kwargs:
        args["kind"] = "one-cycle"
    with pytest.raises(UserError, match=match):
        lr_at(**args)


# ------------------------------------------------------------------ optimizers


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 1).flatten(1))


def ids(params) -> list[int]:
    return [id(p) for p in params]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_skips_batchnorm_and_biases(name):
    m = Tiny()
    opt = make_optimizer(name, m, 0.1, weight_decay=5e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert ids(opt.param_groups[0]["params"]) == ids([m.conv.weight, m.fc.weight])
    assert ids(opt.param_groups[1]["params"]) == ids([m.conv.bias, m.bn.weight, m.bn.bias, m.fc.bias])
    # a list of tensors splits the same way (the engine passes the trainable parameters)
    same = make_optimizer(name, [p for p in m.parameters() if p.requires_grad], 0.1, weight_decay=5e-4)
    assert [ids(g["params"]) for g in same.param_groups] == [ids(g["params"]) for g in opt.param_groups]


def test_without_weight_decay_one_group_in_model_order():
    m = Tiny()
    opt = make_optimizer("adam", m, 1e-3)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.0
    assert ids(opt.param_groups[0]["params"]) == ids(p for p in m.parameters() if p.requires_grad)


def test_optimizer_settings():
    m = Tiny()
    adam = make_optimizer("adam", m, 1e-3)
    assert type(adam) is torch.optim.Adam and adam.defaults["eps"] == 1e-7 and adam.defaults["fused"]
    rms = make_optimizer("rmsprop", m, 1e-3)
    assert type(rms) is torch.optim.RMSprop and (rms.defaults["alpha"], rms.defaults["eps"]) == (0.9, 1e-7)
    adamw = make_optimizer("adamw", m, 1e-3, weight_decay=0.05)
    assert type(adamw) is torch.optim.AdamW and [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    sgd = make_optimizer("sgd", m, 0.1)
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.9, True)
    plain = make_optimizer("sgd", m, 0.1, momentum=0.0)
    assert (plain.defaults["momentum"], plain.defaults["nesterov"]) == (0, False)
    with pytest.raises(UserError, match=r"unknown optimizer 'lion'; choose one of adam, rmsprop, sgd, adamw"):
        make_optimizer("lion", m, 0.1)


def test_adam_is_fused_only_for_dense_parameters():
    dense = nn.Parameter(torch.randn(4, 3))
    strided = nn.Parameter(torch.randn(3, 4).t())  # a model of your own may hold a transposed tensor
    assert make_optimizer("adam", [dense], 1e-3).defaults["fused"]
    assert not make_optimizer("adam", [dense, strided], 1e-3).defaults["fused"]


def test_fused_adam_resumed_from_contiguous_state_equals_the_uninterrupted_run():
    """A checkpoint's state tensors come back contiguous; the conv weights train channels_last. torch's
    fused CPU Adam would mix their elements up unless the state is given its parameter's layout again."""
    def build():
        torch.manual_seed(0)
        return nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)

    grads = [torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last) for _ in range(4)]

    def steps(model, opt, gs):
        for g in gs:
            model.weight.grad, model.bias.grad = g.clone(), g.sum((1, 2, 3))
            opt.step()

    whole = build()
    steps(whole, make_optimizer("adam", whole, 1e-2), grads)
    cut = build()
    opt = make_optimizer("adam", cut, 1e-2)
    steps(cut, opt, grads[:2])
    saved = opt.state_dict()
    saved["state"] = {i: {k: v.contiguous() for k, v in st.items()} for i, st in saved["state"].items()}  # as loaded
    resumed = make_optimizer("adam", cut, 1e-2)
    resumed.load_state_dict(saved)
    match_parameter_layouts(resumed)
    steps(cut, resumed, grads[2:])
    assert torch.equal(cut.weight, whole.weight) and torch.equal(cut.bias, whole.bias)


def test_decay_step_shrinks_weights_only():
    """Behaviour, not just bookkeeping: with zero gradients plain SGD's step is pure decay."""
    m = Tiny().double()
    before = {k: v.clone() for k, v in m.named_parameters()}
    opt = make_optimizer("sgd", m, 0.5, weight_decay=0.1, momentum=0.0)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in m.named_parameters():
        factor = 1 - 0.5 * 0.1 if name in ("conv.weight", "fc.weight") else 1.0
        torch.testing.assert_close(p, before[name] * factor, rtol=4 * EPS64, atol=0)


# ------------------------------------------------------------------ augmentation


def batch(n=4, c=2, h=5, w=6, seed=0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed), dtype=torch.float64)


def test_crop_is_a_shifted_copy():
    x = batch()
    offsets = sample_crop_offsets(4, 2, gen(3), "cpu")
    out = crop_at(x, 2, offsets)
    for i in range(4):  # the obvious per-image loop, with numpy's reflection
        padded = np.pad(x[i].numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect")
        r, c = offsets[i].tolist()
        assert np.array_equal(out[i].numpy(), padded[:, r:r + 5, c:c + 6])


def test_random_crop_draws_offsets_in_range_and_is_seeded():
    offsets = sample_crop_offsets(500, 2, gen(1), "cpu")
    assert offsets.min() == 0 and offsets.max() == 4 and len(offsets.unique()) == 5
    x = batch()
    assert torch.equal(random_crop(x, 2, gen(7)), crop_at(x, 2, sample_crop_offsets(4, 2, gen(7), "cpu")))
    assert torch.equal(random_crop(x, 2, gen(7)), random_crop(x, 2, gen(7)))
    g = gen(7)
    assert random_crop(x, 0, g) is x and torch.equal(g.get_state(), gen(7).get_state())  # off: nothing drawn
    with pytest.raises(UserError, match="crop_padding"):
        random_crop(x, 5, gen())


def test_hflip_per_image():
    x = batch(n=64)
    out = random_hflip(x, gen(2))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    assert all(f or torch.equal(out[i], x[i]) for i, f in enumerate(flipped))
    assert 10 < sum(flipped) < 54  # about half
    assert torch.equal(out, random_hflip(x, gen(2)))
    assert random_hflip(x, gen(2), p=0.0) is x
    assert torch.equal(random_hflip(x, gen(2), p=1.0), x.flip(3))


def test_erasing_boxes_stay_in_range():
    h, w = 28, 20
    box = sample_erasing_boxes(2000, h, w, gen(4), "cpu", p=0.5, scale=(0.02, 0.25), ratio=(0.3, 3.3))
    assert (box["height"] >= 1).all() and (box["width"] >= 1).all()
    assert (box["top"] >= 0).all() and (box["top"] + box["height"] <= h).all()
    assert (box["left"] >= 0).all() and (box["left"] + box["width"] <= w).all()
    area = (box["height"] * box["width"]).double() / (h * w)
    # rounding each side to whole pixels moves the area by at most about one row and one column
    assert area.min() >= 0.02 * 0.5 and area.max() <= 0.25 + (h + w + 1) / (h * w)
    assert 800 < box["apply"].sum() < 1200
    assert (box["top"] + box["height"] == h).any() and (box["top"] == 0).any()  # every position reachable


def test_erasing_fills_exactly_the_box():
    x = batch(n=16, c=2, h=12, w=12) + 1.0  # no pixel equals the fill value
    out = random_erasing(x, gen(5), p=0.5, value=-1.0)
    box = sample_erasing_boxes(16, 12, 12, gen(5), "cpu", p=0.5)
    for i in range(16):
        expect = x[i].clone()
        if box["apply"][i]:
            top, left, hh, ww = (int(box[k][i]) for k in ("top", "left", "height", "width"))
            expect[:, top:top + hh, left:left + ww] = -1.0
        assert torch.equal(out[i], expect)
    assert random_erasing(x, gen(5), p=0.0) is x


@pytest.mark.parametrize("shape", [0.3, 1.0, 4.0])
def test_gamma_and_beta_moments(shape):
    n = 20_000
    g = sample_gamma(shape, n, gen(6), "cpu").double()
    assert (g >= 0).all()
    assert abs(g.mean() - shape) < 5 * math.sqrt(shape / n)  # Gamma(k, 1): mean k, variance k
    assert abs(g.var() / shape - 1) < 0.1
    b = sample_beta(shape, n, gen(6), "cpu").double()
    var = 1 / (4 * (2 * shape + 1))  # Beta(a, a)
    assert (b >= 0).all() and (b <= 1).all()
    assert abs(b.mean() - 0.5) < 5 * math.sqrt(var / n) and abs(b.var() / var - 1) < 0.1


def index_batch(n: int, h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i and has label i, so mixed pixels reveal the partner and the weights."""
    return torch.arange(n, dtype=torch.float64)[:, None, None, None].expand(n, 1, h, w).clone(), torch.arange(n)


def test_mixup_targets_match_the_pixels():
    n = 12
    x, y = index_batch(n)
    mixed, targets = mixup(x, y, n, 0.4, gen(8))
    assert targets.shape == (n, n) and (targets >= 0).all()
    torch.testing.assert_close(targets.sum(1), torch.ones(n, dtype=torch.float64), rtol=0, atol=4 * EPS64)
    # each image is one value, the label-weighted mean of the two images mixed into it
    torch.testing.assert_close(mixed[:, 0, 0, 0], targets @ torch.arange(n, dtype=torch.float64), rtol=0, atol=4 * n * EPS64)
    assert (mixed == mixed[:, :, :1, :1]).all()
    m2, t2 = mixup(x, y, n, 0.4, gen(8))
    assert torch.equal(m2, mixed) and torch.equal(t2, targets)


def test_cutmix_targets_are_the_pasted_areas():
    n = 12
    x, y = index_batch(n, 10, 9)
    mixed, targets = cutmix(x, y, n, 1.0, gen(9))
    share = torch.stack([(mixed == k).double().mean((1, 2, 3)) for k in range(n)], 1)  # fraction of each image's pixels
    torch.testing.assert_close(targets, share, rtol=0, atol=4 * EPS64)
    assert (targets.diagonal() < 1).any()  # something was pasted


def test_mixup_and_cutmix_off_give_one_hot_rows():
    x, y = index_batch(3)
    for op in (mixup, cutmix):
        out, t = op(x, y, 5, 0.0, gen())
        assert out is x and torch.equal(t, F.one_hot(y, 5).double())


def test_apply_modern_off_is_identity_and_on_is_seeded():
    x, y = batch(n=8, c=1, h=10, w=10), torch.arange(8) % 3
    off = ModernAugment(crop_padding=0, hflip=False)
    out, t = apply_modern(x, y, off, gen(), 3)
    assert out is x and t is y
    plain = ModernAugment()  # crop and flip: still integer labels
    out, t = apply_modern(x, y, plain, gen(1), 3)
    assert t is y and out.shape == x.shape and not torch.equal(out, x)
    full = ModernAugment(crop_padding=2, hflip=True, erasing=0.5, mixup=0.2, cutmix=1.0)
    a, ta = apply_modern(x, y, full, gen(1), 3)
    b, tb = apply_modern(x, y, full, gen(1), 3)
    c, _ = apply_modern(x, y, full, gen(2), 3)
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    assert ta.shape == (8, 3) and torch.allclose(ta.sum(1), torch.ones(8, dtype=ta.dtype), rtol=0, atol=8 * EPS64)


@pytest.mark.parametrize("kwargs", [{"crop_padding": -1}, {"erasing": 1.5}, {"mixup": -0.1}])
def test_modern_augment_settings_are_checked(kwargs):
    with pytest.raises(UserError, match="augment"):
        ModernAugment(**kwargs)


# ------------------------------------------------------------------ loss


LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [1.0, 1.0, -2.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 2, 1, 1])
WEIGHTS = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)


def hand_loss(logits, labels, eps, weights):
    """torch's definition written out: smoothing spreads eps over all K classes, the weighted mean divides by
    the weights of the true classes."""
    nll = -torch.log_softmax(logits, 1)
    k = logits.shape[1]
    total, norm = 0.0, 0.0
    for i, c in enumerate(labels.tolist()):
        total += (1 - eps) * weights[c] * nll[i, c] + eps / k * (weights * nll[i]).sum()
        norm += weights[c]
    return total / norm


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_with_int_labels(eps, weighted):
    w = WEIGHTS if weighted else torch.ones(3, dtype=torch.float64)
    expect = hand_loss(LOGITS, LABELS, eps, w)
    got = classification_loss(LOGITS, LABELS, label_smoothing=eps, class_weights=w if weighted else None)
    tol = 16 * EPS64 * float(expect)
    torch.testing.assert_close(got, expect, rtol=0, atol=tol)
    torch.testing.assert_close(got, F.cross_entropy(LOGITS, LABELS, weight=w if weighted else None, label_smoothing=eps),
                               rtol=0, atol=tol)
    # one-hot rows give the same number
    soft = classification_loss(LOGITS, F.one_hot(LABELS, 3).double(), label_smoothing=eps, class_weights=w if weighted else None)
    torch.testing.assert_close(soft, expect, rtol=0, atol=tol)


def test_loss_with_soft_targets_by_hand():
    targets = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]], dtype=torch.float64)
    nll = -torch.log_softmax(LOGITS, 1)
    eps = 0.2
    smoothed = targets * (1 - eps) + eps / 3
    torch.testing.assert_close(classification_loss(LOGITS, targets, label_smoothing=eps), (smoothed * nll).sum(1).mean(),
                               rtol=4 * EPS64, atol=0)
    weighted = (smoothed * WEIGHTS * nll).sum() / (targets * WEIGHTS).sum()
    torch.testing.assert_close(classification_loss(LOGITS, targets, label_smoothing=eps, class_weights=WEIGHTS), weighted,
                               rtol=4 * EPS64 * 4, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loss_computes_in_float32(dtype):
    logits = LOGITS.to(dtype)
    got = classification_loss(logits, LABELS, label_smoothing=0.1)
    assert got.dtype == torch.float32
    expect = F.cross_entropy(logits.double(), LABELS, label_smoothing=0.1)  # the half logits are exact in float32
    torch.testing.assert_close(got.double(), expect, rtol=16 * torch.finfo(torch.float32).eps, atol=0)


# ------------------------------------------------------------------ EMA


def tiny_bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).double()


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_is_the_hand_computed_average(warmup):
    model = tiny_bn_model()
    ema = ModelEMA(model, decay=0.5, warmup=warmup)
    expect = {k: v.clone() for k, v in model.state_dict().items()}
    decays = [min(0.5, (1 + n) / (10 + n)) for n in range(3)] if warmup else [0.5] * 3
    for step, d in enumerate(decays):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen(step), dtype=p.dtype))
        model(torch.randn(4, 2, generator=gen(10 + step), dtype=torch.float64))  # moves BN's running stats
        ema.update(model)
        for k, v in model.state_dict().items():
            expect[k] = d * expect[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    assert ema.updates == 3
    got = ema.module.state_dict()
    for k, v in expect.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=16 * EPS64 * max(1.0, float(v.abs().max())), msg=k)
    assert int(got["1.num_batches_tracked"]) == 3  # copied, not averaged
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_decay_warms_up():
    ema = ModelEMA(nn.Linear(1, 1), decay=0.999)
    assert ema.current_decay() == 0.1
    ema.updates = 10_000
    assert ema.current_decay() == 0.999


def test_ema_checkpoint_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_bn_model()
    ema = ModelEMA(model, decay=0.9)
    for _ in range(2):
        with torch.no_grad():
            model[0].weight.mul_(1.5)
        ema.update(model)
    save_file(ema.state_dict(), str(tmp_path / "ema.safetensors"))
    fresh = ModelEMA(tiny_bn_model(), decay=0.9)
    fresh.load_state_dict(load_file(str(tmp_path / "ema.safetensors")))
    assert fresh.updates == 2
    for k, v in ema.module.state_dict().items():
        assert torch.equal(fresh.module.state_dict()[k], v)
    ema.update(model)
    fresh.update(model)
    assert torch.equal(fresh.module[0].weight, ema.module[0].weight)  # resumes bit for bit


# ------------------------------------------------------------------ models


NEW_MODELS = {"resnet9": {"width": 4}, "wrn-16-4": {"dropout": 0.3}}


def test_new_models_are_registered():
    assert {"resnet9", "wrn-16-4", "wrn-28-10"} <= set(list_models())


@pytest.mark.parametrize("name,options,expected", [("resnet9", {}, 6_571_968), ("resnet9", {"width": 16}, 412_656),
                                                   ("wrn-16-4", {}, 2_748_602), ("wrn-28-10", {}, 36_478_906)])
def test_new_model_sizes(name, options, expected):
    with torch.device("meta"):  # counts without allocating wrn-28-10's weights
        model = create_model(name, num_classes=10, **options)
    assert count_parameters(model) == (expected, 0)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_new_models_logits_and_channels_last(name):
    model = create_model(name, num_classes=7, in_chans=3, image_size=16, **NEW_MODELS[name])
    model = model.to(memory_format=torch.channels_last).eval()
    formats = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: formats.append(out.is_contiguous(memory_format=torch.channels_last)))
    x = torch.rand(3, 3, 16, 16).to(memory_format=torch.channels_last)
    assert model(x).shape == (3, 7)
    assert formats and all(formats)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_one_step_reduces_the_loss(name):
    torch.manual_seed(0)
    options = {**NEW_MODELS[name], "dropout": 0.0} if name != "resnet9" else NEW_MODELS[name]  # dropout would make it noisy
    model = create_model(name, num_classes=3, image_size=16, **options)
    model.train()
    x, y = torch.rand(6, 1, 16, 16, generator=gen(1)), torch.arange(6) % 3  # small: any size of 8 or more works
    opt = make_optimizer("sgd", model, 0.05, weight_decay=5e-4)
    loss = classification_loss(model(x), y, label_smoothing=0.1)
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = classification_loss(model(x), y, label_smoothing=0.1)
    assert after < loss.detach()


def test_resnet9_pools_keep_the_border():
    """28 -> 14 -> 7 -> 4 with ceil-mode pools: a floor pool would end at 3x3, dropping the last row and column."""
    model = create_model("resnet9", width=2).eval()
    sizes = []
    for m in model.modules():
        if isinstance(m, nn.MaxPool2d):
            m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
    model(torch.rand(1, 1, 28, 28))
    assert sizes == [14, 7, 4]
