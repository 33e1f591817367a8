"""Predictions for unlabeled images and Kaggle-style submission files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from cnnlab import runs
from cnnlab.config import EVAL_BATCH_SIZE
from cnnlab.data import load_unlabeled
from cnnlab.data.common import shorten
from cnnlab.deploy import onnx_predict_logits, prediction_metadata
from cnnlab.device import resolve_device
from cnnlab.errors import UserError, option
from cnnlab.inference import run_scores
from cnnlab.outputs import require_free_output
from cnnlab.runs import RunDir


COLUMNS = ("id", "label")


def submission_columns(text: str | None) -> tuple[str, str]:
    """`--columns ImageId,Label`: the header a competition asks for (Kaggle's Digit Recognizer: ImageId,Label)."""
    if text is None:
        return COLUMNS
    names = [name.strip() for name in str(text).split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1] or any(c in text for c in "\"\r\n"):
        raise UserError(f"{option('columns', text)}: give two different column names, the id's then the label's, "
                        f"separated by a comma, e.g. {option('columns', 'ImageId,Label')}")
    return names[0], names[1]


def submission_rows(ids: list[str] | None, labels: np.ndarray, columns: tuple[str, str] = COLUMNS) -> list[dict]:
    ids = ids if ids is not None else [str(i) for i in range(1, len(labels) + 1)]  # Kaggle ids start at 1
    id_column, label_column = columns
    return [{id_column: i, label_column: int(label)} for i, label in zip(ids, labels)]


def validate_submission(rows: list[dict], expected: int, allowed_labels: list[int]) -> None:
    if len(rows) != expected:
        raise UserError(f"submission has {len(rows)} rows for {expected} images")
    ids = [next(iter(r.values())) for r in rows]
    if len(set(ids)) != len(ids):
        twice = next(i for i, n in Counter(ids).items() if n > 1)
        raise UserError(f"the input has duplicate ids (id {shorten(twice)!r} is there twice); a submission needs one "
                        "row per id")
    bad = [label for *_, label in (r.values() for r in rows) if label not in allowed_labels]
    if bad:
        raise UserError(f"predicted label {bad[0]} is not one of the classes {allowed_labels}")


def write_submission(path: Path, ids: list[str] | None, predictions: np.ndarray, class_ids: list[int],
                     columns: tuple[str, str] = COLUMNS) -> Path:
    """Map class indices back to the source's labels, check, then write the id and label columns atomically."""
    labels = np.asarray(class_ids)[predictions]
    rows = submission_rows(ids, labels, columns)
    validate_submission(rows, len(predictions), list(class_ids))
    runs.write_csv(path, rows)
    return Path(path)


def load_inputs(path: str | Path, input_shape: list[int]):
    split = load_unlabeled(path, keep_rgb=input_shape[0] == 3)
    if list(split.images.shape[1:]) != list(input_shape):
        raise UserError(f"{path}: images are {'x'.join(map(str, split.images.shape[1:]))} but the model was trained "
                        f"on {'x'.join(map(str, input_shape))}; give images of that size (cnnlab does not resize "
                        "them)")
    return split


def onnx_device(name: str) -> None:
    """--device for an .onnx model: checked as for a run (tpu refused, cuda only where there is CUDA), then cuda
    refused in one line, because deploy runs ONNX models with ONNX Runtime's CPU provider only."""
    if resolve_device(name).type == "cuda" and name != "auto":  # auto: the CPU provider
        raise UserError(f"device {name}: cnnlab runs .onnx models with ONNX Runtime's CPU provider; use "
                        f"{option('device', 'cpu')} or auto, or predict with the run directory on CUDA")


def predict_run(run_dir: Path, input_path: Path, output: Path, device: str = "auto",
                batch_size: int = EVAL_BATCH_SIZE, columns: str | None = None, model=None) -> dict:
    """`model`: the nn.Module or factory of a run of a model of one's own (cnnlab.submission passes a Run's)."""
    header = submission_columns(columns)
    if Path(output).suffix.lower() != ".csv":
        raise UserError(f"{output}: a submission is a CSV; give a file name ending in .csv")
    if Path(output).is_dir():
        raise UserError(f"{output}: is a folder; give a file name ending in .csv")
    require_free_output(output, inputs=[input_path, run_dir], what="output")  # not the input, not a run's files
    if Path(run_dir).suffix.lower() == ".onnx":  # an exported model, run with ONNX Runtime
        onnx_device(device)
        meta = prediction_metadata(run_dir)
        split = load_inputs(input_path, meta["input_shape"])
        predictions = onnx_predict_logits(run_dir, split.images, batch_size).argmax(1)
    else:
        dev = resolve_device(device)
        meta = RunDir(run_dir).require_finished().read_model_meta()
        split = load_inputs(input_path, meta["input_shape"])
        predictions = run_scores(run_dir, split.images, dev, batch_size, model=model).argmax(1)
    write_submission(output, split.ids, predictions, meta["class_ids"], header)
    counts = torch.bincount(torch.from_numpy(predictions), minlength=len(meta["class_ids"])).tolist()
    return {"rows": len(predictions), "output": str(output), "counts": counts}
