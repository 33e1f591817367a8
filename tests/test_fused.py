"""Fused ensemble members: the same outputs and gradients as separate models with the same weights.

The comparisons run in float64: fused and separate models sum in different orders (grouped vs plain
convolutions, BatchNorm over K x channels), and in float32 that alone moves a first-layer gradient
through BatchNorm on a small batch by more than 1e-5 relative on some CPUs (issue 16: an AMD EPYC
without AMX failed where an Intel Xeon passed). In float64 the same reordering costs about 1e-13
relative, so torch.testing.assert_close's float64 defaults (rtol 1e-7, atol 1e-7) hold on any
processor with room to spare, while a real layout mistake (a member seeing another's activations)
shows up as an O(1) difference.
"""

from __future__ import annotations

import copy

import pytest
import torch

from cnnlab.fused import MemberAdam, can_fuse, fuse, member_losses, unfuse
from cnnlab.models import create_model


@pytest.mark.parametrize("name", ["cnn1", "cnn2", "cnn4", "tuned-cnn"])
def test_fused_matches_separate_models(name):
    k, n = 3, 6
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = create_model(name, num_classes=4).double()
        for mod in m.modules():  # no dropout, so both sides compute the same thing in training mode
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        models.append(m)
    assert can_fuse(models[0])
    separate = [copy.deepcopy(m) for m in models]
    fused = fuse(models)
    assert all(p.dtype == torch.float64 for p in fused.parameters())
    xs = [torch.rand(n, 1, 28, 28, dtype=torch.float64) for _ in range(k)]
    ys = [torch.randint(0, 4, (n,)) for _ in range(k)]
    for mode in ("eval", "train"):
        fused.train(mode == "train")
        out = fused(torch.cat(xs, 1))
        assert out.shape == (n, k, 4)
        for i, model in enumerate(separate):
            model.train(mode == "train")
            torch.testing.assert_close(out[:, i], model(xs[i]), msg=f"{mode} output of member {i}")
    # gradients: the sum of member losses gives each member exactly its own gradient
    fused.train()
    member_losses(fused(torch.cat(xs, 1)), torch.stack(ys, 1)).sum().backward()
    fused_grads = unfuse_grads(fused, separate[0], k)
    for i, model in enumerate(separate):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(xs[i]), ys[i]).backward()
        for key, p in model.named_parameters():
            torch.testing.assert_close(fused_grads[i][key], p.grad, msg=f"gradient of member {i}, {key}")


def unfuse_grads(fused, template, k):
    """Per-member gradients, split with the same layout rules as the weights."""
    grads = copy.deepcopy(fused)
    with torch.no_grad():
        for p, g in zip(grads.parameters(), fused.parameters()):
            p.copy_(g.grad)
    return unfuse(grads, template, k)


def test_unfuse_round_trips_weights():
    models = [create_model("tuned-cnn", num_classes=3) for _ in range(2)]
    states = unfuse(fuse(models), models[0], 2)
    for model, state in zip(models, states):
        assert state.keys() == model.state_dict().keys()
        assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())


def test_member_adam_equals_torch_adam_per_member():
    torch.manual_seed(0)
    models = [create_model("cnn1", num_classes=3, image_size=12, dropout=0.0).double() for _ in range(2)]
    separate = [copy.deepcopy(m) for m in models]
    fused = fuse(models)
    opt = MemberAdam(fused.parameters(), 2, lr=1e-3)
    opt.lr[1] = 5e-4  # members may have different learning rates
    torch_opts = [torch.optim.Adam(m.parameters(), lr=lr, eps=1e-7) for m, lr in zip(separate, (1e-3, 5e-4))]
    for _ in range(3):
        xs = [torch.rand(4, 1, 12, 12, dtype=torch.float64) for _ in range(2)]
        ys = [torch.randint(0, 3, (4,)) for _ in range(2)]
        opt.zero_grad()
        member_losses(fused(torch.cat(xs, 1)), torch.stack(ys, 1)).sum().backward()
        opt.step()
        for m, o, x, y in zip(separate, torch_opts, xs, ys):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for i, state in enumerate(unfuse(fused, separate[0], 2)):
        for key, value in separate[i].state_dict().items():
            torch.testing.assert_close(state[key], value, msg=f"member {i}, {key}")  # float64 defaults


def test_models_that_cannot_fuse():
    assert not can_fuse(create_model("resnet50"))
    assert not can_fuse(create_model("inception"))
