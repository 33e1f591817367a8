"""The model zoo, tested from the registry so that a newly registered model is tested at once."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models import (count_parameters, create_architecture, create_model, keras_shape, list_models, model_info,
                           summarize)

def build(name: str, **kw):
    return create_architecture(name, **kw)  # transfer models without downloading ImageNet weights


def small_size(name: str) -> int:
    info = model_info(name)
    return max(info.min_image_size, 28) if info.family != "transfer" else info.min_image_size


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    size = small_size(name)
    model = build(name, num_classes=3, image_size=size)
    model.train()
    x = torch.rand(2, 1, 28, 28) if model_info(name).family == "transfer" else torch.rand(2, 1, size, size)
    logits = model(x)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert any(p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("name", list_models())
def test_other_input_sizes_work_or_fail_clearly(name):
    info = model_info(name)
    for size in (info.min_image_size, info.min_image_size + 11):
        model = build(name, num_classes=4, image_size=size)
        x = torch.rand(1, 1, size, size)
        assert model.eval()(x).shape == (1, 4)
    with pytest.raises(UserError, match=f"model {name} needs inputs of at least {info.min_image_size}x"):
        build(name, image_size=info.min_image_size - 1)


@pytest.mark.parametrize("name,expected", [("cnn1", 693_317), ("cnn2", 13_015_461), ("cnn3", 19_340_453),
                                           ("cnn4", 1_503_749), ("tuned-cnn", 610_661)])
def test_trainable_counts_equal_the_report(name, expected):
    assert count_parameters(create_model(name, num_classes=5)) == (expected, 0)


def test_resnet50_matches_report_with_stacked_gray():
    assert count_parameters(create_model("resnet50", num_classes=5, in_chans=3))[0] == 23_544_837


def test_inception_is_about_report_size():
    trainable, _ = count_parameters(create_model("inception", num_classes=5))
    assert abs(trainable - 3_290_597) / 3_290_597 < 0.02


def test_cnn2_summary_reproduces_report_table():
    s = summarize(create_model("cnn2", num_classes=5), (1, 28, 28))
    shapes = [keras_shape(r.output_shape) for r in s.rows]
    assert shapes == ["(None, 28, 28, 32)"] * 5 + ["(None, 28, 28, 64)", "(None, 14, 14, 64)", "(None, 14, 14, 64)"] + \
        ["(None, 14, 14, 128)"] * 3 + ["(None, 25088)", "(None, 512)", "(None, 512)", "(None, 512)",
                                       "(None, 128)", "(None, 128)", "(None, 128)", "(None, 5)"]
    assert [r.params for r in s.rows if r.params] == [320, 128, 9248, 128, 18496, 73856, 512, 12845568, 2048,
                                                      65664, 512, 645]
    assert (s.total, s.trainable, s.non_trainable) == (13_017_125, 13_015_461, 1_664)


def test_unknown_model_lists_known_ones():
    with pytest.raises(UserError, match="unknown model 'cnn9'; known models are cnn1, cnn2"):
        create_model("cnn9")


def test_unset_options_keep_defaults():
    model = create_model("cnn1", num_classes=None, image_size=None)
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    assert model.cnnlab_spec == {"name": "cnn1"}


def test_vgg19_transfer_freezes_base():
    model = create_model("vgg19-transfer", num_classes=5, weights="random")
    trainable, frozen = count_parameters(model)
    assert trainable == 4 * 4 * 512 * 5 + 5  # one dense layer on the 150x150 feature map
    assert frozen == 20_024_384  # VGG19's convolutional base
    assert model.feature_cacheable and all(not p.requires_grad for p in model.base.parameters())


def test_inceptionv3_transfer_trains_last_layers():
    model = create_model("inceptionv3-transfer", num_classes=5, weights="random", image_size=75)
    layers = [m for m in model.net.modules() if any(True for _ in m.parameters(recurse=False))]
    trainable_layers = [m for m in layers if all(p.requires_grad for p in m.parameters(recurse=False))]
    assert trainable_layers == layers[-10:]
    model.train()
    frozen_bn = [m for m in layers[:-10] if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen_bn and not any(m.training for m in frozen_bn)
    fewer = create_model("inceptionv3-transfer", num_classes=5, weights="random", image_size=75, trainable_layers=1)
    assert count_parameters(fewer)[0] == 2048 * 5 + 5


def _vgg_state() -> dict:
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(1)
    return {f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_weights_from_local_file(tmp_path, suffix):
    state = _vgg_state()
    path = tmp_path / f"vgg19{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    model = create_model("vgg19-transfer", num_classes=5, image_size=32, weights=str(path))
    assert torch.equal(model.base[0].weight, state["features.0.weight"])


def test_foreign_weights_file_is_refused(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not VGG19 weights"):
        create_model("vgg19-transfer", weights=str(tmp_path / "other.pth"), image_size=32)
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a PyTorch state dict"):
        create_model("vgg19-transfer", weights=str(tmp_path / "junk.pth"), image_size=32)
    with pytest.raises(UserError, match="no such file"):
        create_model("vgg19-transfer", weights=str(tmp_path / "missing.pth"), image_size=32)


def test_offline_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):  # what torch.hub raises with no network
        raise urllib.error.URLError("no network")

    import torchvision.models._api as weights_api

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"put vgg19-dcbb9e9d\.pth .* at .*hub/checkpoints/vgg19-dcbb9e9d\.pth"):
        create_model("vgg19-transfer", image_size=32)


def test_models_and_summary_commands(cli):
    code, out, _ = cli("models")
    assert code == 0 and all(name in out for name in list_models())
    code, out, _ = cli("summary", "cnn2", "--num-classes", "5")
    assert code == 0 and "Trainable params: 13,015,461" in out and "(None, 14, 14, 128)" in out
    code, _, err = cli("summary", "cnn4", "--image-size", "10")
    assert code == 2 and "at least 14x14" in err


def test_resnet9s_global_max_pool_matches_adaptive_max_pooling_without_its_indices():
    """resnet9 pools with amax, not nn.AdaptiveMaxPool2d: inductor's CPU argmax for the latter corrupted the heap
    (SIGSEGV in the compile probe, torch 2.14.1, one thread; see small_resnets.GlobalMaxPool). Same values and,
    where the maximum is unique, the same gradients."""
    from cnnlab.models.small_resnets import GlobalMaxPool

    model = create_model("resnet9", num_classes=5, width=8)
    assert not any(isinstance(m, nn.AdaptiveMaxPool2d) for m in model.modules())
    x = torch.randn(4, 16, 4, 4, generator=torch.Generator().manual_seed(0)).to(memory_format=torch.channels_last)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    GlobalMaxPool()(ours).pow(2).sum().backward()
    nn.AdaptiveMaxPool2d(1)(theirs).pow(2).sum().backward()
    assert torch.equal(GlobalMaxPool()(x), nn.AdaptiveMaxPool2d(1)(x))
    assert torch.equal(ours.grad, theirs.grad)
