"""ONNX export of a finished run (or an ensemble directory), checked against PyTorch before it counts.

The exported graph is self-contained for deployment:

    input   images   uint8, N x C x H x W (N dynamic), raw pixels 0..255
    inside  float32(images) * (1/255)   -- the same scaling as cnnlab.engine.to_input
    output  logits   float32, N x classes            (a run)
            scores   float32, N x classes            (an ensemble: the vote; argmax = prediction)

The same facts are written into the model's metadata_props (see `read_onnx_metadata`), with the
class names and the source's class ids, so a consumer needs nothing from cnnlab, and a SHA-256 of the
model as written (`DIGEST_KEY`), which cnnlab checks before it runs the file.

Export runs in fp32 on the CPU, whatever precision the run trained in. Before the file is put in
place it is run with onnxruntime (CPUExecutionProvider) on real images and compared with PyTorch's
fp32 logits; a file that fails the check is never left behind.

Tolerance (`DEFAULT_TOLERANCE`, 1000 float32 epsilons ~= 1.2e-4): ONNX Runtime and PyTorch compute the
same float32 arithmetic with different kernels (MLAS vs oneDNN: other blockings, summation orders,
FMA use, Winograd convolutions), so each logit differs by rounding only. A length-K dot product summed in
another order differs by about sqrt(K) * eps relative to the magnitude of its terms (K = 3*3*64 = 576
to 64*4*4 = 1024 here, a few thousand in VGG19), and the differences of a stack of L layers add up
(about sqrt(L) of them when independent). For a 20-layer network with K ~ 5000 that is ~300 eps;
1000 eps leaves a margin of 3 for the largest models and of 100 or more for the report's CNNs.
Measured (2-core Xeon, onnxruntime 1.32, torch 2.14): tuned-cnn after 1 epoch on Fashion-MNIST, all 12,000
validation images, max abs diff 7.6e-6 = 2.6 eps x logit scale 24.5, every prediction equal; randomly
initialized cnn2-4, inception, resnet50, vgg19-transfer 0.1-11 eps of their logit scale,
inceptionv3-transfer 21. The comparison is relative to the logit scale of the batch:

    |onnx - torch| <= atol + rtol * |torch|,   rtol = tolerance,  atol = tolerance * max(1, max|torch|)

A mistake in the graph is far larger: leaving out the /255 or exporting in training mode moves logits
by whole units. Predictions must agree except on near-ties: images whose top-2 PyTorch logits are
within 2 * (atol + rtol * |top1|) of each other (each of the two may move by that much), which are
counted and reported. For an ensemble the reference is cnnlab.ensembles.vote of the members' PyTorch
fp32 logits, and an image is also a near-tie when any member's own top-2 logits are that close (its
vote may flip).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab import runs, test_time
from cnnlab.config import EVAL_BATCH_SIZE
from cnnlab.data.arrays import tensor_numpy
from cnnlab.errors import UserError, either
from cnnlab.evaluation import validation_sample
from cnnlab.inference import load_model, predict_logits
from cnnlab.runs import RunDir
from cnnlab.version import __version__
from cnnlab.voting import vote

EXTRA_HINT = "ONNX export needs the export extra: pip install 'cnnlab[export]'"
EPS32 = float(np.finfo(np.float32).eps)
DEFAULT_TOLERANCE = 1000 * EPS32  # see the module docstring
PIXEL_SCALE = 1 / 255  # as cnnlab.engine.to_input; inside the graph
CHECK_HINT = ("pass images to check on: cnnlab.export(run, check_images=images) with uint8 images "
              "N x C x H x W (or N x H x W)")
CHECK_IMAGES = 512  # validation images used for the check when none are given
INPUT_NAME = "images"
INPUT_LAYOUT = "NCHW uint8"
INPUT_SCALE = "pixels / 255"
DIGEST_KEY = "cnnlab_sha256"  # metadata_props entry: _digest of the model as exported
EXPORT_COMMAND = "'cnnlab export RUN_DIR -o FILE'"  # beside its Python call (errors.either)


class ExportCheckError(UserError):
    """The exported graph does not reproduce PyTorch within the tolerance (the file was removed)."""


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError(EXTRA_HINT) from None
    return onnx, onnxruntime


# ------------------------------------------------------------------ the graphs


class PixelModel(nn.Module):
    """uint8 N x C x H x W pixels -> the model's logits; the scaling lives in the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(torch.float32) * PIXEL_SCALE)


class FlipTTA(nn.Module):
    """A run trained with flip test-time augmentation predicts the mean of the plain and mirrored logits
    (and, with translate, of the shifted views: cnnlab.test_time)."""

    def __init__(self, model: nn.Module, translate: bool = False):
        super().__init__()
        self.model, self.translate = model, translate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return test_time.mean([self.model(view) for view in test_time.views(x, self.translate)])


def _with_tta(model: nn.Module, meta: dict) -> nn.Module:
    return FlipTTA(model, meta.get("tta_translate", False)).eval() if meta.get("tta") else model


class VoteModel(nn.Module):
    """uint8 pixels -> the ensemble's vote scores, as cnnlab.ensembles.vote computes them.

    soft: mean of the members' softmax. hard: one vote per member for its top class, plus the summed
    probability / (k + 1), which (being below 1) only breaks ties between classes with equal votes;
    argmax then picks the lower class index among exact ties, as numpy does.
    """

    def __init__(self, members: list[nn.Module], method: str):
        super().__init__()
        if method not in ("hard", "soft"):
            raise UserError(f"ensemble vote must be hard or soft, got {method!r}")
        self.members = nn.ModuleList(members)
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) * PIXEL_SCALE
        probs = torch.stack([torch.softmax(m(x), dim=-1) for m in self.members])  # k x N x C
        if self.method == "soft":
            return probs.mean(0)
        k, classes = probs.shape[0], probs.shape[-1]
        top = probs.argmax(-1, keepdim=True)  # k x N x 1
        onehot = (top == torch.arange(classes, device=images.device)).to(probs.dtype)  # k x N x C
        return onehot.sum(0) + probs.sum(0) / (k + 1)


# ------------------------------------------------------------------ loading what to export


def _load_source(run_dir: Path, model=None) -> dict:
    """The model(s) of a finished run or ensemble directory, on the CPU in fp32, in eval mode. `model`: the
    nn.Module or factory of a model of the user's own (inference.load_model)."""
    run_dir = Path(run_dir)
    meta = RunDir(run_dir).require_finished().read_model_meta()
    if meta.get("ensemble"):
        paths = [run_dir / p for p in meta.get("members", [])]
        if not paths:
            raise UserError(f"{run_dir}: an ensemble without members ({runs.MODEL})")
        members = [_with_tta(*load_model(p, "cpu", model)).float().eval() for p in paths]
        return {"meta": meta, "members": members, "member_dirs": paths, "vote": meta.get("vote", "hard"),
                "module": VoteModel(members, meta.get("vote", "hard")).eval(), "data_dir": paths[0]}
    model, meta = load_model(run_dir, "cpu", model)
    model = _with_tta(model.float().eval(), meta)
    return {"meta": meta, "members": [model], "member_dirs": [run_dir], "vote": None,
            "module": PixelModel(model).eval(), "data_dir": run_dir}


def _check_batch(images, input_shape: list[int], what: str) -> np.ndarray:
    images = tensor_numpy(images) if torch.is_tensor(images) else np.asarray(images)
    if images.dtype != np.uint8:
        raise UserError(f"{what}: images must be uint8 pixels (0..255), got {images.dtype}")
    if images.ndim == 3 and input_shape[0] == 1:
        images = images[:, None]
    if images.ndim != 4 or list(images.shape[1:]) != list(input_shape):
        raise UserError(f"{what}: images are {_shape_text(images.shape[1:])} but the model takes "
                        f"{_shape_text(input_shape)} (N x C x H x W uint8)")
    return np.ascontiguousarray(images)


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape)


def _reference_images(source: dict, check_images) -> np.ndarray:
    shape = source["meta"]["input_shape"]
    if check_images is not None:
        images = _check_batch(check_images, shape, "check_images")
    else:
        try:
            sample = validation_sample(source["data_dir"])
        except (UserError, OSError, KeyError) as exc:
            raise UserError(f"{source['data_dir']}: cannot rebuild the run's validation images to check the "
                            f"export ({exc}); {CHECK_HINT}") from None
        if sample is None:
            raise UserError(f"{source['data_dir']}: the run was trained on in-memory arrays and keeps no sample of "
                            f"them ({runs.SAMPLES}, written by runs since cnnlab kept one); {CHECK_HINT}")
        images = _check_batch(sample[0][:CHECK_IMAGES], shape, f"{source['data_dir']} validation images")
    if len(images) == 0:
        raise UserError("the export check needs at least one image")
    return images


# ------------------------------------------------------------------ exporting


def _dynamo_export(module: nn.Module, example: torch.Tensor, path: Path, output_name: str, opset: int | None) -> None:
    kwargs = {} if opset is None else {"opset_version": opset}
    torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[output_name],
                      dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1)}},
                      dynamo=True, external_data=False, verbose=False, **kwargs)


def _torchscript_export(module: nn.Module, example: torch.Tensor, path: Path, output_name: str,
                        opset: int | None) -> None:
    kwargs = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice; the fallback is reported in the result
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[output_name],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
                          dynamo=False, **kwargs)


def _export_graph(module: nn.Module, example: torch.Tensor, path: Path, output_name: str,
                  opset: int | None) -> tuple[str, str | None]:
    """torch.onnx's dynamo exporter; the TorchScript exporter when that fails. -> (exporter, why it fell back)."""
    try:
        with torch.no_grad():
            _dynamo_export(module, example, path, output_name, opset)
        return "dynamo", None
    except Exception as exc:  # any failure of the new exporter: try the old one
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    try:
        with torch.no_grad():
            _torchscript_export(module, example, path, output_name, opset)
    except Exception as exc:
        raise UserError(f"ONNX export failed with both exporters (dynamo: {reason}; TorchScript: "
                        f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc
    return "torchscript", reason


def _metadata(source: dict, output_name: str, exporter: str) -> dict[str, str]:
    meta = source["meta"]
    props = {
        "cnnlab_version": __version__,
        "model": meta["spec"]["name"],
        "class_names": json.dumps(meta["class_names"]),
        "class_ids": json.dumps(meta["class_ids"]),
        "input_name": INPUT_NAME,
        "input_layout": INPUT_LAYOUT,
        "input_shape": json.dumps(list(meta["input_shape"])),
        "scale": INPUT_SCALE,
        "output_name": output_name,
        "output": "vote scores, argmax = prediction" if source["vote"] else "logits (softmax gives probabilities)",
        "dataset": str(meta.get("dataset", "")),
        "exporter": exporter,
        "precision": "fp32",
    }
    if source["vote"]:
        props.update(ensemble="true", vote=source["vote"], members=str(len(source["members"])))
    return props


def _digest(model) -> str:
    """SHA-256 of a ModelProto without its DIGEST_KEY entry: graph, weights, opsets and every other metadata
    entry (the class ids predict writes out). In metadata_props, not a sidecar, so it travels with the one file
    that gets deployed; over the parsed model (deterministic serialization), since the file cannot hash itself.
    Measured, 2-core AMD EPYC (Zen 5): 1.5 ms for tuned-cnn's 2.5 MB export (28x28), beside 5-9 ms to open a session."""
    kept = [(e.key, e.value) for e in model.metadata_props if e.key != DIGEST_KEY]
    if len(kept) == len(model.metadata_props):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    copy = type(model)()
    copy.CopyFrom(model)
    del copy.metadata_props[:]
    for key, value in kept:
        entry = copy.metadata_props.add()
        entry.key, entry.value = key, value
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _verify(model, path: Path) -> None:
    """A file whose recorded digest no longer matches is refused (one without one, e.g. exported before
    cnnlab recorded it, is run as it is)."""
    recorded = [e.value for e in model.metadata_props if e.key == DIGEST_KEY]
    if recorded and recorded != [_digest(model)]:
        raise UserError(f"{path}: its bytes differ from what cnnlab exported (SHA-256 mismatch: the file was damaged "
                        f"or edited); export it again with {either(EXPORT_COMMAND, 'cnnlab.export(run, file)')} "
                        "or restore it from a copy")


def _finish_file(onnx, path: Path, props: dict[str, str]) -> int:
    """Write the metadata (and the digest) into the exported file and validate it; -> the opset."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "cnnlab (torch.onnx)"
    digest = _digest(model)  # the last change before saving
    entry = model.metadata_props.add()
    entry.key, entry.value = DIGEST_KEY, digest
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# ------------------------------------------------------------------ the parity check


def _tolerance(reference: np.ndarray, tolerance: float) -> tuple[float, float]:
    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    return tolerance * scale, tolerance  # atol, rtol


def _near_ties(values: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Rows whose top-2 values are close enough that rounding may swap them."""
    if values.shape[1] < 2:
        return np.zeros(len(values), dtype=bool)
    top2 = np.sort(values, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] <= 2 * (atol + rtol * np.abs(top2[:, 1]))


def _compare(onnx_out: np.ndarray, source: dict, images: np.ndarray, tolerance: float,
             batch_size: int) -> dict:
    x = torch.from_numpy(images)
    member_logits = np.stack([predict_logits(m, x, batch_size).cpu().numpy() for m in source["members"]])
    flips = np.zeros(len(images), dtype=bool)  # rows where a member's vote may flip under rounding
    if source["vote"]:
        for logits in member_logits:
            flips |= _near_ties(logits, *_tolerance(logits, tolerance))
        reference = vote(member_logits, source["vote"])
    else:
        reference = member_logits[0].astype(np.float64)
    atol, rtol = _tolerance(reference, tolerance)
    if onnx_out.shape != reference.shape:
        raise ExportCheckError(f"the ONNX graph gives {onnx_out.shape} outputs, PyTorch {reference.shape}")
    diff = np.abs(onnx_out.astype(np.float64) - reference)
    finite = np.isfinite(onnx_out).all()
    ties = _near_ties(reference, atol, rtol) | flips
    compared = ~flips  # a flipped member vote moves a hard-vote score by a whole vote
    within = diff <= atol + rtol * np.abs(reference)
    rel = diff / np.maximum(np.abs(reference), atol)
    agree = onnx_out.argmax(1) == reference.argmax(1)
    return {
        "images_checked": int(len(images)),
        "max_abs_diff": float(diff[compared].max()) if compared.any() else 0.0,
        "max_rel_diff": float(rel[compared].max()) if compared.any() else 0.0,
        "max_abs_diff_eps": float(diff[compared].max() / max(1.0, float(np.abs(reference).max())) / EPS32)
        if compared.any() else 0.0,
        "logit_scale": float(np.abs(reference).max()),
        "atol": atol, "rtol": rtol, "tolerance": tolerance,
        "values_within_tolerance": bool(finite and within[compared].all()),
        "argmax_agreement": float(agree.mean()),
        "argmax_disagreements": int((~agree).sum()),
        "disagreements_outside_near_ties": int((~agree & ~ties).sum()),
        "near_ties": int(ties.sum()),
    }


# ------------------------------------------------------------------ public API


def export_onnx(run_dir: str | Path, output: str | Path | None = None, *, opset: int | None = None,
                check_images=None, tolerance: float | None = None, model=None) -> dict:
    """Export a finished run or ensemble directory to ONNX, check it with onnxruntime, then put it in place.

    output: default RUN_DIR/model.onnx. opset: the ONNX opset (default: torch.onnx's).
    check_images: uint8 N x C x H x W (or N x H x W for one channel) to check on; default the first
    CHECK_IMAGES of the run's validation images. tolerance: relative to the logit scale (see module
    docstring); default DEFAULT_TOLERANCE = 1000 float32 epsilons. model: the nn.Module or factory a run (or
    the members) of a model of the user's own trained with; without it such a directory is refused.
    Returns the check's figures and the file's path, size, exporter and opset:
        output, bytes, exporter ('dynamo', or 'torchscript' with dynamo_failure saying why), opset, ensemble
        (+ vote, members), images_checked, max_abs_diff, max_rel_diff (per value; values below atol count as
        atol), max_abs_diff_eps (max_abs_diff / max(1, logit_scale) in float32 epsilons), logit_scale, atol,
        rtol, tolerance, values_within_tolerance, argmax_agreement (fraction), argmax_disagreements,
        disagreements_outside_near_ties (0 on success), near_ties.
    An ensemble is checked on its first member's validation images by default. Raises ExportCheckError
    (a UserError) if the graph does not reproduce PyTorch; the output file is then not written.
    """
    onnx, _ = _require_onnx()
    run_dir = Path(run_dir)
    output = Path(output) if output is not None else run_dir / "model.onnx"
    if output.suffix.lower() != ".onnx":  # as predict insists on .csv: out.txt held an ONNX graph no one would look for
        raise UserError(f"{output}: an ONNX file is written; give a name ending in .onnx")
    tolerance = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    if not tolerance >= 0:
        raise UserError(f"tolerance must be 0 or more, got {tolerance}")
    source = _load_source(run_dir, model)
    images = _reference_images(source, check_images)
    output_name = "scores" if source["vote"] else "logits"
    example = torch.from_numpy(images[:2]).clone()
    if len(example) < 2:  # a batch of 2 keeps the batch dimension symbolic (1 would be specialized)
        example = torch.cat([example, example])
    if output.is_dir():
        raise UserError(f"{output}: is a directory; give a file name ending in .onnx")
    with runs.atomic_target(output) as tmp:
        exporter, fallback = _export_graph(source["module"], example, tmp, output_name, opset)
        opset_used = _finish_file(onnx, tmp, _metadata(source, output_name, exporter))
        onnx_out = onnx_predict_logits(tmp, images, batch_size=256)
        figures = _compare(onnx_out, source, images, tolerance, batch_size=256)
        if not figures["values_within_tolerance"] or figures["disagreements_outside_near_ties"]:
            raise ExportCheckError(
                f"{output}: the exported graph does not match PyTorch (max abs diff {figures['max_abs_diff']:.3g} "
                f"against atol {figures['atol']:.3g}, {figures['disagreements_outside_near_ties']} of "
                f"{figures['images_checked']} predictions differ outside near-ties); nothing was written")
    result = {"output": str(output), "bytes": output.stat().st_size, "exporter": exporter, "opset": opset_used,
              "ensemble": bool(source["vote"]), **figures}
    if fallback:
        result["dynamo_failure"] = fallback  # why the TorchScript exporter was used
    if source["vote"]:
        result.update(vote=source["vote"], members=len(source["members"]))
    return result


def _session(path: str | Path):
    _, ort = _require_onnx()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a valid ONNX model ({first[:200]})") from None
    _verify(_load_proto(path), path)
    return session


def _load_proto(path: Path):
    onnx, _ = _require_onnx()
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and kin
        raise UserError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from None


def onnx_predict_logits(onnx_path: str | Path, uint8_images, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """The first output (logits, or an ensemble's vote scores) of an ONNX model for uint8 N x C x H x W
    images (numpy or torch; N x H x W is accepted for one-channel models), as float32 N x classes."""
    session = _session(onnx_path)
    inp = session.get_inputs()[0]
    if inp.type != "tensor(uint8)" or len(inp.shape) != 4:
        raise UserError(f"{onnx_path}: its input {inp.name!r} is {inp.type} {inp.shape}, not uint8 N x C x H x W "
                        "(was it exported by cnnlab?)")
    shape = [d if isinstance(d, int) else None for d in inp.shape[1:]]  # None: a symbolic dimension
    images = tensor_numpy(uint8_images) if torch.is_tensor(uint8_images) else np.asarray(uint8_images)
    if images.ndim == 3 and shape[0] == 1:
        images = images[:, None]
    if images.dtype != np.uint8:
        raise UserError(f"{onnx_path}: images must be uint8 pixels (0..255), got {images.dtype}")
    if images.ndim != 4 or any(d is not None and d != s for d, s in zip(shape, images.shape[1:])):
        expected = "x".join("?" if d is None else str(d) for d in shape)
        raise UserError(f"{onnx_path}: images are {_shape_text(images.shape[1:])} but the model takes {expected} "
                        "(N x C x H x W uint8)")
    if batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size}")
    images = np.ascontiguousarray(images)
    outputs = [session.run(None, {inp.name: images[i:i + batch_size]})[0]
               for i in range(0, len(images), batch_size)]
    if not outputs:
        width = session.get_outputs()[0].shape[-1]
        return np.empty((0, width if isinstance(width, int) else 0), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32, copy=False)


def prediction_metadata(path: str | Path) -> dict:
    """read_onnx_metadata of a file cnnlab exported, with the facts predicting needs checked: input_shape
    (C, H, W) and class_ids; one line where another tool wrote the file (a KeyError in predict)."""
    meta = read_onnx_metadata(path)
    shape, ids = meta.get("input_shape"), meta.get("class_ids")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) for d in shape)) or \
            not isinstance(ids, list) or not ids:
        raise UserError(f"{path}: its metadata has no input_shape or class_ids; cnnlab predicts with models written "
                        "by cnnlab export")
    return meta


def read_onnx_metadata(path: str | Path) -> dict:
    """The model's metadata_props, JSON values decoded (class_names, class_ids, input_shape), plus
    'opset', 'inputs' and 'outputs' (name, element type, shape; symbolic dimensions as strings)."""
    onnx, _ = _require_onnx()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    model = _load_proto(path)
    if not model.graph.node or not model.graph.input or not model.opset_import:
        raise UserError(f"{path}: not a valid ONNX model (no graph)")  # protobuf parses many bytes as empty
    _verify(model, path)
    out: dict = {}
    for entry in model.metadata_props:
        value = entry.value
        if entry.key in ("class_names", "class_ids", "input_shape"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[entry.key] = value

    def describe(values):
        rows = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
            rows.append({"name": v.name, "type": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims})
        return rows

    initializers = {i.name for i in model.graph.initializer}
    out["inputs"] = describe([v for v in model.graph.input if v.name not in initializers])
    out["outputs"] = describe(model.graph.output)
    out["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return out
