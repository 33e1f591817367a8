"""GPU checks (`pytest -m gpu`, run by `make gpu-check`): skipped with a reason where there is no CUDA device.

They use only the command line (in subprocesses) and stable functions (cnnlab.fused.fuse / unfuse /
member_losses, cnnlab.models.create_model), and read run-directory files directly, so they do not
depend on the engine's Python API. Data is small and synthetic, written by the tests; the whole set
is meant to take well under a minute on an H100 (the CLI runs go in parallel).

CNNLAB_GPU_TESTS_DEVICE=cpu runs them on the CPU instead, to check the tests themselves where no
GPU is at hand (slow on 2 cores; bf16 there is the CPU's own).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

DEVICE = os.environ.get("CNNLAB_GPU_TESTS_DEVICE", "cuda")
REPO = Path(__file__).resolve().parents[1]
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7: the spacing of bf16 numbers just above 1

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda.is_available() is False); "
                              "CNNLAB_GPU_TESTS_DEVICE=cpu runs these tests on the CPU"),
]

# The CLI with determinism switched on. The engine turns cudnn.benchmark on, which times candidate
# convolution algorithms in each process and so may pick different ones (with different rounding) in two
# processes; pinned off here, and torch's deterministic algorithms (with cuBLAS's fixed workspace) on.
DETERMINISTIC_CLI = """
import runpy, sys, torch
torch.use_deterministic_algorithms(True, warn_only=True)
cudnn = sys.modules["torch.backends.cudnn"]
type(cudnn).benchmark = property(lambda self: False, lambda self, value: None)
sys.argv = ["cnnlab", *sys.argv[1:]]
runpy.run_module("cnnlab", run_name="__main__", alter_sys=True)
"""


def cli_command(*args, deterministic: bool = False) -> list[str]:
    head = [sys.executable, "-c", DETERMINISTIC_CLI] if deterministic else [sys.executable, "-m", "cnnlab"]
    return head + [str(a) for a in args]


def cli_env() -> dict:
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def run_parallel(commands: dict[str, list[str]], timeout: float = 240) -> dict[str, subprocess.CompletedProcess]:
    """Start every command at once (one GPU, several CPU cores), wait for all; fail with the output of any that failed."""
    procs = {key: subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True) for key, cmd in commands.items()}
    results = {}
    try:
        for key, proc in procs.items():
            out, _ = proc.communicate(timeout=timeout)
            results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out)
    finally:
        for proc in procs.values():  # none outlives the test
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = {k: r for k, r in results.items() if r.returncode != 0}
    assert not failed, "\n\n".join(f"{k}: rc {r.returncode}\n{r.stdout[-3000:]}" for k, r in failed.items())
    return results


def run_dir(folder: Path) -> Path:
    dirs = [p.parent for p in folder.glob("*/config.json")]
    assert len(dirs) == 1, f"expected one run directory in {folder}, found {dirs}"
    return dirs[0]


def history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bf16_roundings(model: torch.nn.Module) -> int:
    """Layers whose output bf16 autocast rounds to bf16 (conv, dense, batch norm); ReLU and max-pool are exact."""
    kinds = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    return sum(isinstance(m, kinds) for m in model.modules())


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def write_noisy_dataset(path: Path, n_train: int = 2400, n_test: int = 1200, classes: int = 10, seed: int = 0) -> Path:
    """28x28 images: a fixed random template per class, faint under heavy noise, so accuracy lands well below 100%
    and differences between runs show."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(classes, 7, 7)).repeat(4, 1).repeat(4, 2)

    def split(n: int):
        labels = rng.integers(0, classes, size=n)
        images = 128 + 20 * templates[labels] + rng.normal(scale=60, size=(n, 28, 28))
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    x, y = split(n_train)
    xt, yt = split(n_test)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


# ---------------------------------------------------------------------------------------------- fused members


def test_fused_members_equal_separate_models_under_bf16():
    """The fused network (grouped convolutions, batched dense layers) against K separate tuned-cnns with the same
    weights, both under bf16 autocast on the device, in training mode (batch statistics), dropout off.

    Tolerance: both sides do the same arithmetic with different kernels, each accumulating in fp32 and rounding
    every conv/dense/batch-norm output to bf16. Two correct roundings of nearly equal values differ by at most one
    bf16 step, eps = 2**-7 of the value, so each rounding layer adds at most about eps to the relative difference
    and L of them at most L * eps in the logits (L = 10 for tuned-cnn: 0.078). The backward pass goes through the
    same L roundings again, so gradients get 2 * L * eps. A member mixed up with another, or a wrong layout in
    fuse/unfuse, gives errors of order 1.
    """
    from cnnlab.fused import fuse, member_losses, unfuse
    from cnnlab.models import create_model

    k, n, classes = 4, 64, 10
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(no_dropout(create_model("tuned-cnn", num_classes=classes)).to(DEVICE))
    separate = [copy.deepcopy(m) for m in models]
    fused = fuse(models).to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(n, 1, 28, 28, generator=gen).to(DEVICE) for _ in range(k)]
    ys = [torch.randint(0, classes, (n,), generator=gen).to(DEVICE) for _ in range(k)]
    levels = bf16_roundings(separate[0])
    out_tol, grad_tol = levels * BF16_EPS, 2 * levels * BF16_EPS

    fused.train()
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        logits = fused(torch.cat(xs, 1))
        loss = member_losses(logits, torch.stack(ys, 1)).sum()
    loss.backward()
    grads = copy.deepcopy(fused)
    with torch.no_grad():
        for p, g in zip(grads.parameters(), fused.parameters()):
            p.copy_(g.grad)
    member_grads = unfuse(grads, separate[0], k)

    worst_out, worst_grad = 0.0, 0.0
    for i, model in enumerate(separate):
        model.train()
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
            out = model(xs[i])
            member_loss = F.cross_entropy(out.float(), ys[i])
        assert out.dtype == torch.bfloat16, "autocast did not run the model in bf16"
        member_loss.backward()
        err = rel_err(logits[:, i], out)
        assert torch.isfinite(logits[:, i]).all() and err <= out_tol, f"member {i}: logits differ by {err:.2e} > {out_tol:.2e}"
        worst_out = max(worst_out, err)
        for key, p in model.named_parameters():
            err = rel_err(member_grads[i][key], p.grad)
            assert err <= grad_tol, f"member {i}, {key}: gradients differ by {err:.2e} > {grad_tol:.2e}"
            worst_grad = max(worst_grad, err)
    print(f"fused vs separate under bf16 on {DEVICE}: logits {worst_out:.2e} (tolerance {out_tol:.2e}), "
          f"gradients {worst_grad:.2e} (tolerance {grad_tol:.2e})")


# ---------------------------------------------------------------------------------------------- resume


def test_resume_equals_uninterrupted_run(tmp_path):
    """3 epochs in one go against 2 epochs, then --resume to 3, for fp32 and the default precision (bf16 on CUDA).

    Both through the CLI with determinism on (see DETERMINISTIC_CLI): the weights must then be equal bit for bit,
    and so must every number of history.csv but the timings. Without it, cuDNN may choose other algorithms in the
    resumed process and the runs would agree only to rounding."""
    data = write_noisy_dataset(tmp_path / "data.npz", n_train=480, n_test=120, classes=4)
    common = ["train", "tuned-cnn", "--data", data, "--batch-size", "32", "--seed", "3", "--device", DEVICE, "--quiet"]
    first = {}
    for precision in ("fp32", "auto"):
        base = common + ["--precision", precision]
        first[f"{precision}-whole"] = cli_command(*base, "--epochs", "3", "--out", tmp_path / f"{precision}-whole",
                                                  deterministic=True)
        first[f"{precision}-split"] = cli_command(*base, "--epochs", "2", "--out", tmp_path / f"{precision}-split",
                                                  deterministic=True)
    run_parallel(first)
    resumed = {p: cli_command("train", "--resume", run_dir(tmp_path / f"{p}-split"), "--epochs", "3", "--device", DEVICE,
                              "--quiet", deterministic=True) for p in ("fp32", "auto")}
    run_parallel(resumed)

    from safetensors.torch import load_file

    for precision in ("fp32", "auto"):
        whole, split = run_dir(tmp_path / f"{precision}-whole"), run_dir(tmp_path / f"{precision}-split")
        mw, ms = json.loads((whole / "metrics.json").read_text()), json.loads((split / "metrics.json").read_text())
        assert mw["status"] == ms["status"] == "finished" and mw["epochs_done"] == ms["epochs_done"] == 3
        assert mw["precision"] == ms["precision"]
        wa, wb = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
        assert wa.keys() == wb.keys()
        different = [key for key in wa if not torch.equal(wa[key], wb[key])]
        assert not different, (f"{precision}: resumed weights differ from the uninterrupted run in {different}; "
                               f"largest difference {max(float((wa[k].double() - wb[k].double()).abs().max()) for k in different):.3e}")
        hw, hs = history(whole), history(split)
        timing = {"train_seconds", "eval_seconds"}
        assert [{k: v for k, v in r.items() if k not in timing} for r in hw] == \
               [{k: v for k, v in r.items() if k not in timing} for r in hs], f"{precision}: history differs"
        for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss"):
            assert mw.get(key) == ms.get(key), (precision, key, mw.get(key), ms.get(key))


# ---------------------------------------------------------------------------------------------- precision


def test_bf16_channels_last_trains_as_well_as_fp32(tmp_path):
    """cnnlab's fast path (bf16 autocast; the engine always trains channels_last) against fp32, three seeds each:
    the mean test accuracies must differ by no more than the seed-to-seed spread (the larger range of the two
    groups, and at least 2 points, since three seeds give only a rough spread)."""
    data = write_noisy_dataset(tmp_path / "data.npz")
    seeds = (0, 1, 2)
    commands = {(precision, seed): cli_command("train", "tuned-cnn", "--data", data, "--epochs", "3", "--seed", seed,
                                               "--precision", precision, "--device", DEVICE, "--quiet",
                                               "--out", tmp_path / f"{precision}-{seed}")
                for precision in ("fp32", "bf16") for seed in seeds}
    run_parallel(commands)
    acc = {}
    for (precision, seed) in commands:
        metrics = json.loads((run_dir(tmp_path / f"{precision}-{seed}") / "metrics.json").read_text())
        assert metrics["precision"] == precision
        acc.setdefault(precision, []).append(metrics["test_accuracy"])
    spread = max(max(a) - min(a) for a in acc.values())
    gap = abs(np.mean(acc["bf16"]) - np.mean(acc["fp32"]))
    print(f"test accuracy on {DEVICE}: fp32 {acc['fp32']}, bf16 {acc['bf16']}; gap {gap:.4f}, spread {spread:.4f}")
    assert min(min(a) for a in acc.values()) > 0.3, f"the runs did not learn: {acc}"  # chance is 0.1
    assert gap <= max(spread, 0.02), f"bf16 {acc['bf16']} vs fp32 {acc['fp32']}: gap {gap:.4f} > spread {spread:.4f}"


def test_fp16_resumes_exactly_and_auto_says_why(tmp_path):
    """fp16 autocast with its gradient scaler on the card: 3 epochs against 2 + --resume (determinism on) are equal
    bit for bit, the scaler's state in the checkpoint; and env.json of an `auto` run names the policy's choice for
    this card's compute capability."""
    from cnnlab.device import AUTO_PRECISION_ENV, cpu_has_amx, precision_policy

    data = write_noisy_dataset(tmp_path / "data.npz", n_train=480, n_test=120, classes=4)
    common = ["train", "tuned-cnn", "--data", data, "--batch-size", "32", "--seed", "3", "--device", DEVICE, "--quiet"]
    run_parallel({"whole": cli_command(*common, "--precision", "fp16", "--epochs", "3", "--out", tmp_path / "whole",
                                       deterministic=True),
                  "split": cli_command(*common, "--precision", "fp16", "--epochs", "2", "--out", tmp_path / "split",
                                       deterministic=True),
                  "auto": cli_command(*common, "--epochs", "1", "--out", tmp_path / "auto")})
    run_parallel({"resumed": cli_command("train", "--resume", run_dir(tmp_path / "split"), "--epochs", "3", "--device",
                                         DEVICE, "--quiet", deterministic=True)})
    from safetensors.torch import load_file

    whole, split = run_dir(tmp_path / "whole"), run_dir(tmp_path / "split")
    assert json.loads((whole / "metrics.json").read_text())["precision"] == "fp16"
    wa, wb = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "fp16: resumed weights differ from the uninterrupted run"
    timing = {"train_seconds", "eval_seconds"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in history(whole)] == \
           [{k: v for k, v in r.items() if k not in timing} for r in history(split)]
    capability = torch.cuda.get_device_capability() if DEVICE == "cuda" else None
    expected = precision_policy(DEVICE, capability, cpu_has_amx(), os.environ.get(AUTO_PRECISION_ENV) or None)
    env = json.loads((run_dir(tmp_path / "auto") / "env.json").read_text())
    print(f"precision auto on {DEVICE} (capability {capability}): {env['precision']} ({env['precision_reason']})")
    assert (env["precision"], env["precision_reason"]) == expected


# ---------------------------------------------------------------------------------------------- torch.compile


def test_compiled_and_eager_steps_agree():
    """Three Adam steps of tuned-cnn (dropout off) eager and torch.compile'd, the way cnnlab trains on CUDA: bf16
    autocast, channels_last. Losses and first-step gradients must agree within the bf16 tolerance of the fused test
    (L * eps for the loss, 2 * L * eps for gradients): inductor fuses the elementwise work and may keep some
    intermediates in fp32 where eager rounds them to bf16, a difference of at most one rounding per layer."""
    from cnnlab.models import create_model

    torch.manual_seed(0)
    eager = no_dropout(create_model("tuned-cnn", num_classes=10)).to(DEVICE, memory_format=torch.channels_last)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)
    levels = bf16_roundings(eager)
    loss_tol, grad_tol = levels * BF16_EPS, 2 * levels * BF16_EPS
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (eager, twin)]
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(128, 1, 28, 28, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (128,), generator=gen).to(DEVICE)) for _ in range(3)]
    for step, (x, y) in enumerate(batches):
        losses = []
        for net, opt in zip((eager, compiled), opts):
            net.train()
            with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
                loss = F.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            losses.append(loss.detach())
        err = rel_err(losses[1], losses[0])
        assert torch.isfinite(losses[1]) and err <= loss_tol, f"step {step}: loss {losses[1]} vs eager {losses[0]}"
        if step == 0:
            for (key, p), q in zip(eager.named_parameters(), twin.parameters()):
                err = rel_err(q.grad, p.grad)
                assert err <= grad_tol, f"{key}: compiled gradient differs by {err:.2e} > {grad_tol:.2e}"
        for opt in opts:
            opt.step()


# ---------------------------------------------------------------------------------------------- CUDA graphs


def test_cuda_graph_step_trains_like_eager_and_resumes_within_tolerance(tmp_path):
    """--cuda-graphs (the whole step, fused capturable Adam included, replayed from one CUDA graph) against the
    default eager path, same seed, fp32: test accuracy within 2 points (kernel choices differ, so the runs
    drift apart by rounding). Resume of a graphed run (2 epochs, then --resume to 3) against 3 epochs in one go:
    the guarantee kept is the bf16 tolerance of the tests above, L * eps relative on every epoch's losses (the
    fast path gives up bit-exact resume: capture re-runs kernel selection in the new process)."""
    data = write_noisy_dataset(tmp_path / "data.npz", n_train=1200, n_test=600, classes=4)
    common = ["train", "tuned-cnn", "--data", data, "--seed", "1", "--device", DEVICE, "--precision", "fp32", "--quiet"]
    run_parallel({"eager": cli_command(*common, "--epochs", "3", "--out", tmp_path / "eager"),
                  "graphs": cli_command(*common, "--epochs", "3", "--cuda-graphs", "--out", tmp_path / "graphs"),
                  "split": cli_command(*common, "--epochs", "2", "--cuda-graphs", "--out", tmp_path / "split")})
    run_parallel({"resume": cli_command("train", "--resume", run_dir(tmp_path / "split"), "--epochs", "3", "--quiet")})
    eager, graphs, split = (json.loads((run_dir(tmp_path / name) / "metrics.json").read_text())
                            for name in ("eager", "graphs", "split"))
    assert graphs["status"] == split["status"] == "finished" and split["epochs_done"] == 3
    assert abs(graphs["test_accuracy"] - eager["test_accuracy"]) <= 0.02, (graphs["test_accuracy"], eager["test_accuracy"])
    tol = bf16_roundings(torch.nn.Sequential(*[torch.nn.Linear(1, 1)] * 10)) * BF16_EPS  # L = 10, as above
    for a, b in zip(history(run_dir(tmp_path / "graphs")), history(run_dir(tmp_path / "split"))):
        for key in ("train_loss", "val_loss"):
            assert abs(float(a[key]) - float(b[key])) <= tol * abs(float(a[key])), (a["epoch"], key, a[key], b[key])


# ---------------------------------------------------------------------------------------------- fused = standalone


def test_fused_members_equal_standalone_runs_on_cuda(tmp_path):
    """`cnnlab ensemble --fuse 2` against `cnnlab train` with each member's seed, on the device in float64
    (precision fp64; dropout 0 so no random masks differ): each member's final weights equal its standalone run's
    within float64's default tolerances (rtol 1e-7): only summation order differs, at ~1e-15."""
    from safetensors.torch import load_file

    data = write_noisy_dataset(tmp_path / "data.npz", n_train=480, n_test=120, classes=4)
    (tmp_path / "p.json").write_text(json.dumps({"params": {"dropout": 0.0}}))
    common = ["--data", data, "--epochs", "1", "--batch-size", "32", "--device", DEVICE, "--precision", "fp64",
              "--params", tmp_path / "p.json", "--quiet"]
    commands = {"fused": cli_command("ensemble", "cnn1", "--members", "2", "--fuse", "2", "--threshold", "0",
                                     "--out", tmp_path / "ens", *common)}
    commands.update({f"alone-{s}": cli_command("train", "cnn1", "--seed", s, "--out", tmp_path / f"alone-{s}", *common)
                     for s in (0, 1)})
    run_parallel(commands)
    for seed in (0, 1):
        fused = load_file(str(tmp_path / "ens" / "members" / f"member-{seed:03d}" / "model.safetensors"))
        alone = load_file(str(run_dir(tmp_path / f"alone-{seed}") / "model.safetensors"))
        for key in alone:
            torch.testing.assert_close(fused[key], alone[key], msg=f"member {seed}, {key}")
