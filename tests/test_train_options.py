"""Issue 21: plateau options under their own names, gradient clipping, deterministic mode; each reaches its target."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.callbacks import LambdaCallback
from cnnlab.config import build_config
from cnnlab.engine import fit, make_plateaus
from cnnlab.errors import UserError
from cnnlab.fused import can_fuse_config

from conftest import write_npz_dataset


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("data") / "small.npz", 96, 30)


def config(data, **kw):
    base = dict(data=str(data), model="cnn1", epochs=2, batch_size=32, device="cpu", precision="fp32", seed=0,
                checkpoint_every=0)
    return build_config({**base, **kw})


def test_plateau_options_reach_reduce_lr_on_plateau(small_npz):
    cfg = config(small_npz, plateau_monitor="val_accuracy", plateau_threshold=0.01, plateau_cooldown=2, lr_patience=3)
    (plateau,), _ = make_plateaus(cfg, [0.1])
    assert (plateau.mode, plateau.threshold, plateau.cooldown, plateau.patience) == ("max", 0.01, 2, 3)
    (default,), _ = make_plateaus(config(small_npz), [0.1])
    assert (default.mode, default.threshold, default.cooldown) == ("min", 1e-4, 0)


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_the_loop_steps_the_plateau_on_its_monitor(small_npz, tmp_path, monitor):
    seen = []

    def check(ctx, rows):
        seen.append(rows[0][monitor])
        best = max(seen) if monitor == "val_accuracy" else min(seen)
        assert ctx.setup.plateaus[0].best == pytest.approx(best)

    fit(config(small_npz, plateau_monitor=monitor), tmp_path / "run", callbacks=[LambdaCallback(on_epoch_end=check)])
    assert len(seen) == 2


def _max_grad_norm(data, tmp_path, **kw) -> float:
    norms = []

    def measure(ctx, done, images, loss, accuracy):  # after the step: the gradients it used are still there
        grads = [p.grad for p in ctx.setup.model.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    fit(config(data, epochs=1, **kw), tmp_path / "run", callbacks=[LambdaCallback(on_step=measure)])
    return max(norms)


def test_clip_grad_norm_bounds_the_gradient_norm(small_npz, tmp_path):
    assert _max_grad_norm(small_npz, tmp_path / "off") > 0.05  # so the bound below is the clipping's doing
    assert _max_grad_norm(small_npz, tmp_path / "on", clip_grad_norm=0.05) <= 0.05 * (1 + 1e-4)


def test_clip_grad_norm_is_refused_where_not_supported(small_npz):
    with pytest.raises(UserError, match="clip_grad_norm and cuda_graphs"):
        config(small_npz, clip_grad_norm=1.0, cuda_graphs=True)
    ok, why = can_fuse_config(config(small_npz, clip_grad_norm=1.0))
    assert not ok and "gradient clipping" in why
    assert can_fuse_config(config(small_npz, clip_grad_norm=0.0))[0]
    with pytest.raises(UserError, match="clip_grad_norm: must lie in"):
        config(small_npz, clip_grad_norm=-1.0)


def test_deterministic_is_set_and_recorded_then_undone(small_npz, tmp_path):
    fit(config(small_npz, epochs=1, deterministic=True), tmp_path / "on")
    env = json.loads((tmp_path / "on" / "env.json").read_text())
    assert env["determinism"]["deterministic_algorithms"] is True
    assert json.loads((tmp_path / "on" / "config.json").read_text())["deterministic"] is True
    fit(config(small_npz, epochs=1), tmp_path / "off")  # a later run in the same process is not deterministic
    assert json.loads((tmp_path / "off" / "env.json").read_text())["determinism"]["deterministic_algorithms"] is False
    assert not torch.are_deterministic_algorithms_enabled()


def test_cli_flags_reach_the_config(small_npz, tmp_path, cli):
    code, out, err = cli("train", "cnn1", "--data", small_npz, "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                         "--out", tmp_path, "--quiet", "--plateau-monitor", "val_accuracy", "--plateau-threshold", "0.01",
                         "--plateau-cooldown", "2", "--clip-grad-norm", "1.5", "--no-deterministic")
    assert code == 0, err
    (cfg_file,) = tmp_path.glob("*/config.json")
    cfg = json.loads(cfg_file.read_text())
    assert (cfg["plateau_monitor"], cfg["plateau_threshold"], cfg["plateau_cooldown"], cfg["clip_grad_norm"],
            cfg["deterministic"]) == ("val_accuracy", 0.01, 2, 1.5, False)
