"""Inference from run directories, with nothing of training: rebuild a model from its files, logits
with flip TTA (implemented here once; the engine's evaluation uses it too), in the run's own
precision, and the vote of an ensemble directory's members."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from cnnlab import onnx_route, runs, test_time
from cnnlab.config import EVAL_BATCH_SIZE
from cnnlab.data.prepared import to_input
from cnnlab.device import autocast_for
from cnnlab.errors import UserError
from cnnlab.models import create_architecture
from cnnlab.models.custom import CUSTOM_MODEL, build_custom
from cnnlab.models.layers import Dropout
from cnnlab.runs import RunDir
from cnnlab.voting import vote


def flip_tta(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: bool,
             translate: bool = False) -> torch.Tensor:
    """float32 logits of `forward(x)`; with tta, the mean with the left-right mirror's (images only), and
    with translate also the shifted views' (cnnlab.test_time)."""
    logits = forward(x).float()
    if tta and x.dim() == 4:
        if not translate:
            return (logits + forward(x.flip(-1)).float()) / 2
        logits = test_time.mean([logits] + [forward(view).float() for view in test_time.views(x, translate)[1:]])
    return logits


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                   autocast=contextlib.nullcontext, tta: bool = False, translate: bool = False) -> torch.Tensor:
    """Logits (float32, on the images' device) for uint8 images, in eval mode; tta: mean with the mirror."""
    model.eval()
    dtype = next(model.parameters(), torch.empty(0)).dtype  # float64 for fp64 runs
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], dtype)
        with autocast():
            out.append(flip_tta(model, x, tta, translate))
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
        stacked.append(predict_logits(model, images.to(device), batch_size, autocast, tta=member_meta.get("tta", False),
                                      translate=member_meta.get("tta_translate", False)).cpu().numpy())
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
                                tta=meta.get("tta", False), translate=meta.get("tta_translate", False)).cpu().numpy()
    if not np.isfinite(scores).all():
        raise UserError(f"{run_dir}: the model's outputs are NaN or infinite; the run diverged, retrain it")
    return scores


# ------------------------------------------------------------------ small CPU batches


_PASS_THROUGH = (nn.Dropout, Dropout, nn.Identity)  # identities in eval mode


def _as_function(graph: fx.Graph, node: fx.Node, module: nn.Module, const: Callable) -> fx.Node | None:
    """A call of `module` in eval mode as the torch function it ends in (None: keep the module call)."""
    x, kind = node.args[0], type(module)
    if kind in _PASS_THROUGH:
        return x
    if kind is nn.Conv2d and module.padding_mode == "zeros":
        args = (module.stride, module.padding, module.dilation, module.groups)
        weight = module.weight
        if weight.shape[1] == 1:  # one input channel: channels_last strides would only cost (tuned-cnn: -3%)
            weight = weight.clone(memory_format=torch.contiguous_format)
        return graph.call_function(torch.conv2d, (x, const(weight), const(module.bias), *args))
    if kind is nn.Linear:
        return graph.call_function(torch._C._nn.linear, (x, const(module.weight), const(module.bias)))
    if kind is nn.ReLU:
        return graph.call_function(torch.relu_ if module.inplace else torch.relu, (x,))
    if kind is nn.MaxPool2d and not module.return_indices:
        args = (module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)
        return graph.call_function(torch.max_pool2d, (x, *args))
    if kind is nn.Flatten:
        return graph.call_function(torch.flatten, (x, module.start_dim, module.end_dim))
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d) and module.running_mean is not None:
        stats = (const(module.weight), const(module.bias), const(module.running_mean), const(module.running_var))
        return graph.call_function(torch.batch_norm, (x, *stats, False, 0.0, module.eps, False))
    return None


def _fold_into_next(graph: fx.Graph, modules: dict) -> None:
    """BatchNorm before a linear layer (Keras's order: Dense -> ReLU -> BatchNorm -> Dropout -> Dense) into
    that layer's weights, through dropout, flatten and max-pooling (which commutes with a per-channel affine
    map whose scale is not negative)."""
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in list(graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if type(bn) not in (nn.BatchNorm1d, nn.BatchNorm2d) or bn.running_mean is None:
            continue
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        scale = scale * bn.weight.double() if bn.weight is not None else scale
        shift = -bn.running_mean.double() * scale + (bn.bias.double() if bn.bias is not None else 0)
        user, step, flat = node, None, type(bn) is nn.BatchNorm1d
        while len(user.users) == 1:
            user = next(iter(user.users))
            step = modules.get(user.target) if user.op == "call_module" else None
            if type(step) in _PASS_THROUGH or (type(step) is nn.MaxPool2d and not flat and bool((scale >= 0).all())):
                continue
            flattens = (type(step) is nn.Flatten and (step.start_dim, step.end_dim) == (1, -1)) or \
                (user.op == "call_function" and user.target is torch.flatten and tuple(user.args[1:]) == (1, -1))
            if flattens and not flat:  # nn.Flatten, or models.layers.Flatten as fx traces it: torch.flatten
                flat = True
                continue
            break
        if not (flat and type(step) is nn.Linear and calls[user.target] == 1 and step.in_features % bn.num_features == 0):
            continue
        per = step.in_features // bn.num_features  # flatten keeps channel-major order, channels_last or not
        weight = step.weight.double()
        bias = weight @ shift.repeat_interleave(per) + (step.bias.double() if step.bias is not None else 0)
        step.weight = nn.Parameter((weight * scale.repeat_interleave(per)).to(step.weight.dtype), requires_grad=False)
        step.bias = nn.Parameter(bias.to(step.weight.dtype), requires_grad=False)
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)


def lean_model(model: nn.Module, input_shape: list[int], tolerance: float) -> nn.Module | None:
    """An inference-only copy of a model (put in eval mode) for a handful of images on the CPU: BatchNorm
    folded into the conv or linear layer before it (torch.fx's fuse) or the linear layer after it, dropout
    gone, and the layers called as torch functions on plain tensors, without nn.Module's per-call machinery.
    None where torch.fx cannot trace the model (a model of the user's own with data-dependent control
    flow) or the copy does not reproduce the model's logits on a probe batch within `tolerance`.

    tuned-cnn, one 28x28 image, one thread, interleaved with a 1-thread onnxruntime session on the same
    run (process CPU time, shared 2-core AVX2-only AMD EPYC; ratios to onnxruntime's time): the eager model
    2.64x, torch functions instead of modules 2.03x (conv1's NCHW weight included: -3% in a comparison of
    its own), BatchNorm folded into the next linear layer 1.89x (-8% in a second comparison). Not kept: NCHW everywhere (max-pooling
    at batch 1 is 10x slower in NCHW than channels_last: 166 us against 16, the forward 20% slower),
    torch.jit.optimize_for_inference (2.40x), torch.jit.freeze (1.92x; of this copy 1.82x, but torch.jit
    is deprecated in torch 2.14: FutureWarning), oneDNN's prepacked _convolution_pointwise with the ReLU
    fused (slower for three of the four convolutions: 68 us against 28, 126 against 97, 152 against 130).
    The rest of the gap is PyTorch's batch-1 convolution (its four: ~480 us; onnxruntime's: 322 us)."""
    model.eval()
    try:
        graph_module = fuse(model)  # a deep copy, traced: the run's files stay the only source of weights
        graph, modules = graph_module.graph, dict(graph_module.named_modules())
        _fold_into_next(graph, modules)
        constants = {}

        def const(tensor):  # a plain attribute of the root: `self.c3` is a dict look-up, not Module.__getattr__
            if tensor is None:
                return None
            name = f"c{len(constants)}"
            constants[name] = tensor.detach()
            object.__setattr__(graph_module, name, constants[name])
            with warnings.catch_warnings():  # fx looks for a parameter or buffer of that name: it is neither
                warnings.filterwarnings("ignore", "Attempted to insert a get_attr Node", UserWarning)
                return graph.get_attr(name)

        for node in list(graph.nodes):
            if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
                continue
            with graph.inserting_before(node):
                new = _as_function(graph, node, modules[node.target], const)
            if new is not None:
                node.replace_all_uses_with(new)
                graph.erase_node(node)
        graph.lint()
        graph_module.delete_all_unused_submodules()
        graph_module.recompile()
        graph_module.dtype = dtype = next(model.parameters(), torch.empty(0)).dtype
        probe = torch.randint(0, 256, (2, *input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            x = to_input(probe, dtype)
            expected, got = model(x).float(), graph_module(x).float()
    except Exception:  # noqa: BLE001 - whatever fx makes of a model of the user's own: the eager model stays
        return None
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tolerance,
                                                          atol=tolerance * max(1.0, expected.abs().max().item())):
        return None
    return graph_module


def _stat(path: str) -> tuple:
    try:
        stat = os.stat(path)
    except OSError:
        raise UserError(f"{path}: missing; the run directory changed under this object (retrain or restore it)") from None
    return stat.st_mtime_ns, stat.st_size


# up to this many images on the CPU: the lean model (tuned-cnn, 32 images: 16.6 ms of CPU time against the
# eager model's 18.3-19.2; 1024 images, the eager path as before: 560-590 ms), and the thread count by timing
SMALL_BATCH = 32


class ThreadChoice:
    """The intra-op thread count for small CPU batches, chosen by timing the calls themselves: a block of
    BLOCK calls with all threads, then one with a single thread (blocks, not alternation: a pool woken for
    every other call pays the wake-up each time), the faster median wins, and after RECHECK calls the trial
    runs again, since the machine's load changes. All threads win on a quiet machine (tuned-cnn, one
    image, quiet 2-core AVX2-only AMD EPYC: Run.predict 0.85 ms with 2 threads against 0.99 with 1); one
    thread on a busy one, where handing work to the pool costs more than the work (cnn1, one 16x16 image,
    busy 2-core AVX2-only EPYC: 48 ms with 2 threads, 0.15 ms with 1)."""

    BLOCK = 6
    RECHECK = 2000

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.calls = 0  # small CPU calls since the last trial began
        self.times: dict[int, list[float]] = {}
        self.chosen: int | None = None

    def _threads(self, most: int) -> int:
        if self.calls >= self.RECHECK:  # the load may have changed since the last trial
            self.calls, self.chosen, self.times = 0, None, {}
        if self.chosen is not None:
            return self.chosen
        return most if self.calls < self.BLOCK else 1

    @contextlib.contextmanager
    def use(self, device: torch.device, n: int):
        threads = torch.get_num_threads()
        if device.type != "cpu" or n > SMALL_BATCH or threads == 1:
            yield
            return
        chosen = self._threads(threads)
        self.calls += 1
        if chosen != threads:
            torch.set_num_threads(chosen)
        start = self.clock()
        try:
            yield
        finally:
            if self.chosen is None:
                self.times.setdefault(chosen, []).append(self.clock() - start)
                if self.calls == 2 * self.BLOCK:  # each block's first call is left out: a switch, a first build
                    self.chosen = min(self.times, key=lambda t: statistics.median(self.times[t][1:]))
            if chosen != threads:
                torch.set_num_threads(threads)


# after this many small CPU calls of one model (a predict loop, not a few calls) its lean copy moves to an
# onnxruntime session where onnx and onnxruntime are installed (onnx_route). That one call pays the build:
# 0.9 s the first time in a process (2-core AMX Xeon: importing onnx, 0.85 s of it ml_dtypes' extension,
# which holds the GIL, so a thread would not hide it), 30-110 ms after; each later call saves ~0.5 ms
# (tuned-cnn), so the build pays for itself ~2,000 calls later. 0: never
ONNX_AFTER = 200


@dataclass
class _Member:
    """One loaded model of a run or ensemble directory and how to score with it."""
    model: nn.Module  # as load_model returns it: what big batches (and every non-CPU device) run through
    autocast: Callable
    tta: bool
    input_shape: list[int]
    translate: bool = False  # the shifted views too (cnnlab.test_time), with tta
    lean: nn.Module | None | bool = False  # lean_model's copy for small CPU batches; False: not built yet
    small_calls: int = 0
    onnx: object = None  # onnx_route's session, once ONNX_AFTER small calls were made
    onnx_failed: str | None = None  # why there is none (a graph it cannot write, a mismatch)

    def logits(self, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
        # small CPU batches run in the weights' own dtype (fp32), also for a run trained in bf16 or fp16:
        # autocast at batch 1 is slower there (tuned-cnn, one image, 2-core AMX Xeon: eager 0.85 ms in bf16
        # against 0.61 in fp32), and an exported model is fp32 too; bigger batches keep the run's precision
        if device.type == "cpu" and len(images) <= SMALL_BATCH:
            if self.onnx is not None:
                return onnx_route.session_logits(self.onnx, images, self.tta, self.translate)
            self.small_calls += 1
            if self.small_calls == ONNX_AFTER and isinstance(self.lean, nn.Module) and self.lean.dtype == torch.float32 \
                    and onnx_route.available():
                self.onnx, self.onnx_failed = onnx_route.session_for(self.lean, self.input_shape,
                                                                     1000 * torch.finfo(torch.float32).eps,
                                                                     torch.get_num_threads())
            if self.lean is False:  # built on the first small batch, so big-batch users never pay for the copy
                dtype = next(self.model.parameters(), torch.empty(0)).dtype
                self.lean = lean_model(self.model, self.input_shape, 1000 * torch.finfo(dtype).eps)
            if self.lean is not None:
                return lean_logits(self.lean, images, self.tta, self.translate)
        return predict_logits(self.model, images, batch_size, self.autocast, tta=self.tta, translate=self.translate)


@torch.inference_mode()
def lean_logits(lean: nn.Module, images: torch.Tensor, tta: bool, translate: bool = False) -> torch.Tensor:
    """predict_logits for a batch small enough for one forward, through a model from lean_model. With tta
    the mirror images (and shifted views) go through the same forward: one call of batch 2 for one image,
    not two of batch 1 (tuned-cnn, one image, as in lean_model: 1.44 ms against 1.58, -9%; the eager path's
    TTA 2.2 ms)."""
    x = to_input(images, lean.dtype)
    if not (tta and x.dim() == 4):
        return lean(x).float()
    return test_time.batched(lambda batch: lean(batch).float(), x, translate)


class Predictor:
    """Scores of a run or ensemble directory as `run_scores` computes them, with the model(s) loaded once per
    device and kept until the directory's files change (model.json and the weights of the run or of each
    member, by mtime and size): a single image costs two stat calls (a run) and one forward. Up to
    SMALL_BATCH images on the CPU go in fp32 through lean_model's copy of each model, made on the first such
    call, and from the ONNX_AFTER-th through an onnxruntime session of that copy (onnx_route); changes made
    afterwards to the module that model() returns reach bigger batches only."""

    def __init__(self, run_dir: str | Path, model=None):
        self.run_dir = Path(run_dir)
        self.builder = model  # a model of the user's own (nn.Module or factory); None: the registry's
        self._head = str(self.run_dir / runs.MODEL)
        self._watched: list[str] = []  # the members' model.json and weights, besides the head (model.json)
        self._key = None
        self._loaded = None  # (meta, [_Member], vote method or None)
        self.threads = ThreadChoice()

    def _signature(self) -> tuple:
        head = _stat(self._head)
        if self._key is None or self._key[0][0] != head:  # model.json changed: read the members again
            meta = RunDir(self.run_dir).require_finished().read_model_meta()
            members = [self.run_dir / p for p in meta.get("members", [])] if meta.get("ensemble") else [self.run_dir]
            files = [str(m / name) for m in members for name in (runs.MODEL, runs.WEIGHTS)]
            self._watched = [f for f in files if f != self._head]
        return (head, *map(_stat, self._watched))

    def refresh(self, device: str | torch.device = "cpu") -> dict:
        """Load (or reload, if the files changed) for the device; -> model.json's contents."""
        device = torch.device(device)
        key = (self._signature(), str(device))
        if key != self._key:
            meta = RunDir(self.run_dir).require_finished().read_model_meta()
            dirs = [self.run_dir / p for p in meta["members"]] if meta.get("ensemble") else [self.run_dir]
            members = []
            for path in dirs:
                model, member_meta = load_model(path, device, self.builder)
                members.append(_Member(model, run_autocast(path, device), member_meta.get("tta", False),
                                       member_meta["input_shape"], member_meta.get("tta_translate", False)))
            self._loaded, self._key = (meta, members, meta["vote"] if meta.get("ensemble") else None), key
        return self._loaded[0]

    def model(self, device: str | torch.device = "cpu") -> nn.Module:
        self.refresh(device)
        return self._loaded[1][0].model

    def scores(self, images: torch.Tensor, device: str | torch.device, batch_size: int = EVAL_BATCH_SIZE,
               refresh: bool = True) -> np.ndarray:
        """refresh=False: the caller has just called refresh(device)."""
        device = torch.device(device)
        if refresh or self._key is None or self._key[1] != str(device):
            self.refresh(device)
        _, members, method = self._loaded
        images = images.to(device)
        on_onnx = all(member.onnx is not None for member in members)  # onnxruntime keeps threads of its own
        with contextlib.nullcontext() if on_onnx else self.threads.use(device, len(images)):
            stacked = [member.logits(images, device, batch_size).cpu().numpy() for member in members]
        scores = vote(np.stack(stacked), method) if method else stacked[0]
        if not np.isfinite(scores).all():
            raise UserError(f"{self.run_dir}: the model's outputs are NaN or infinite; the run diverged, retrain it")
        return scores
