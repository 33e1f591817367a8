"""Inference from run directories, with nothing of training: rebuild a model from its files, logits
with flip TTA (implemented here once; the engine's evaluation uses it too), in the run's own
precision, and the vote of an ensemble directory's members."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cnnlab import runs
from cnnlab.config import EVAL_BATCH_SIZE
from cnnlab.data.prepared import to_input
from cnnlab.device import autocast_for
from cnnlab.errors import UserError
from cnnlab.models import create_architecture
from cnnlab.models.custom import CUSTOM_MODEL, build_custom
from cnnlab.runs import RunDir
from cnnlab.voting import vote


def flip_tta(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: bool) -> torch.Tensor:
    """float32 logits of `forward(x)`; with tta, the mean with the left-right mirror's (images only)."""
    logits = forward(x).float()
    if tta and x.dim() == 4:
        logits = (logits + forward(x.flip(-1)).float()) / 2
    return logits


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                   autocast=contextlib.nullcontext, tta: bool = False) -> torch.Tensor:
    """Logits (float32, on the images' device) for uint8 images, in eval mode; tta: mean with the mirror."""
    model.eval()
    dtype = next(model.parameters(), torch.empty(0)).dtype  # float64 for fp64 runs
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], dtype)
        with autocast():
            out.append(flip_tta(model, x, tta))
    return torch.cat(out) if out else torch.empty(0)


def run_autocast(run_dir: str | Path, device: torch.device):
    """The precision the run trained and evaluated in, so predictions match its stored logits."""
    run = RunDir(run_dir)
    precision = run.read_metrics().get("precision", "fp32") if run.file(runs.METRICS).is_file() else "fp32"
    return autocast_for(torch.device(device), precision)[1]


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", model=None) -> tuple[nn.Module, dict]:
    """Rebuild a run's model from model.json and model.safetensors. A model of the user's own (spec name
    "custom") needs `model`, its nn.Module or factory: a run directory never causes code to be imported."""
    run = RunDir(run_dir).require_finished()
    meta = run.read_model_meta()
    spec = dict(meta["spec"])
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise UserError(f"{run.file(runs.MODEL)}: 'spec' has no model name; the file was edited or damaged")
    builder = model
    try:
        if name == CUSTOM_MODEL:
            if builder is None:
                raise UserError(f"{run_dir}: holds a model of your own ({spec.get('class')}); pass it, e.g. "
                                f"cnnlab.load_run(path, model=MyNet) or cnnlab.export(path, model=MyNet) (a run "
                                f"directory never causes code to be imported; evaluate reads stored logits and works without)")
            spec.pop("class", None)
            model = build_custom(builder, **spec)
        else:
            model = create_architecture(name, **spec)  # every weight, a pretrained base included, is in model.safetensors
    except TypeError as exc:
        raise UserError(f"{run.file(runs.MODEL)}: the model spec does not fit {name} ({exc}); the file was edited") from None
    path = run.file(runs.WEIGHTS)
    state = run.weights()
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit model {name} ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors)")
    for key, value in expected.items():
        if value.shape != state[key].shape:
            raise UserError(f"{path}: tensor {key} has shape {tuple(state[key].shape)}, "
                            f"model {name} expects {tuple(value.shape)}")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise UserError(f"{path}: tensor {key} holds NaN or infinite values; the run diverged, retrain it")
    if any(v.dtype == torch.float64 for v in state.values()):
        model = model.double()  # an fp64 run
    model.load_state_dict(state)
    # the memory format training used, so the same kernels run and logits come out bit-identical
    return model.to(device, memory_format=torch.channels_last).eval(), meta


def ensemble_logits(directory: Path, images: torch.Tensor, device, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """Vote scores of an ensemble directory's members on new images."""
    meta = RunDir(directory).read_model_meta()
    stacked = []
    for path in meta["members"]:
        model, member_meta = load_model(Path(directory) / path, device)
        autocast = run_autocast(Path(directory) / path, device)
        stacked.append(predict_logits(model, images.to(device), batch_size, autocast,
                                      tta=member_meta.get("tta", False)).cpu().numpy())
    return vote(np.stack(stacked), meta["vote"])


def run_scores(run_dir: Path, images: torch.Tensor, device: torch.device, batch_size: int = EVAL_BATCH_SIZE,
               model=None) -> np.ndarray:
    """Scores (N x classes) of a run or an ensemble directory on uint8 images, in the run's own precision
    and test-time augmentation, so they match its stored logits."""
    meta = RunDir(run_dir).require_finished().read_model_meta()
    if meta.get("ensemble"):
        scores = ensemble_logits(run_dir, images, device, batch_size)
    else:
        model, meta = load_model(run_dir, device, model)
        scores = predict_logits(model, images.to(device), batch_size, run_autocast(run_dir, device),
                                tta=meta.get("tta", False)).cpu().numpy()
    if not np.isfinite(scores).all():
        raise UserError(f"{run_dir}: the model's outputs are NaN or infinite; the run diverged, retrain it")
    return scores


def _stat(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError:
        raise UserError(f"{path}: missing; the run directory changed under this object (retrain or restore it)") from None
    return str(path), stat.st_mtime_ns, stat.st_size


SMALL_BATCH = 32  # up to this many images on the CPU: one intra-op thread


@contextlib.contextmanager
def _few_threads(device: torch.device, n: int):
    """One CPU thread for a handful of images: the thread pool's hand-off costs more than the work (cnn1, one
    16x16 image, busy 2-core AMD EPYC: 48 ms with 2 threads, 0.15 ms with 1). Restored afterwards."""
    if device.type != "cpu" or n > SMALL_BATCH or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Predictor:
    """Scores of a run or ensemble directory as `run_scores` computes them, with the model(s) loaded once per
    device and kept until the directory's files change (model.json and the weights of the run or of each
    member, by mtime and size): a single image costs a few stat calls and one forward."""

    def __init__(self, run_dir: str | Path, model=None):
        self.run_dir = Path(run_dir)
        self.builder = model  # a model of the user's own (nn.Module or factory); None: the registry's
        self._key = None
        self._loaded = None  # (meta, [(model, autocast, tta)], vote method or None)

    def _signature(self) -> tuple:
        head = _stat(self.run_dir / runs.MODEL)
        if self._key is None or self._key[0][0] != head:  # model.json changed: read the members again
            meta = RunDir(self.run_dir).require_finished().read_model_meta()
            members = [self.run_dir / p for p in meta.get("members", [])] if meta.get("ensemble") else [self.run_dir]
        else:
            members = self._members
        self._members = members
        return (head, *(_stat(m / name) for m in members for name in (runs.MODEL, runs.WEIGHTS)))

    def refresh(self, device: str | torch.device = "cpu") -> dict:
        """Load (or reload, if the files changed) for the device; -> model.json's contents."""
        device = torch.device(device)
        key = (self._signature(), str(device))
        if key != self._key:
            meta = RunDir(self.run_dir).require_finished().read_model_meta()
            dirs = [self.run_dir / p for p in meta["members"]] if meta.get("ensemble") else [self.run_dir]
            models = []
            for path in dirs:
                model, member_meta = load_model(path, device, self.builder)
                models.append((model, run_autocast(path, device), member_meta.get("tta", False)))
            self._loaded, self._key = (meta, models, meta["vote"] if meta.get("ensemble") else None), key
        return self._loaded[0]

    def model(self, device: str | torch.device = "cpu") -> nn.Module:
        self.refresh(device)
        return self._loaded[1][0][0]

    def scores(self, images: torch.Tensor, device: str | torch.device, batch_size: int = EVAL_BATCH_SIZE,
               refresh: bool = True) -> np.ndarray:
        """refresh=False: the caller has just called refresh(device)."""
        device = torch.device(device)
        if refresh or self._key is None or self._key[1] != str(device):
            self.refresh(device)
        _, models, method = self._loaded
        images = images.to(device)
        with _few_threads(device, len(images)):
            stacked = [predict_logits(model, images, batch_size, autocast, tta=tta).cpu().numpy()
                       for model, autocast, tta in models]
        scores = vote(np.stack(stacked), method) if method else stacked[0]
        if not np.isfinite(scores).all():
            raise UserError(f"{self.run_dir}: the model's outputs are NaN or infinite; the run diverged, retrain it")
        return scores
