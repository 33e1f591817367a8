"""The Python API: what the CLI does, for notebooks and scripts.

    import cnnlab
    run = cnnlab.train("cnn4", classes=[0, 1, 2, 3, 4], epochs=20)
    run.history            # pandas DataFrame, one row per epoch
    run.metrics["test_accuracy"]
    run.predict(images)    # labels for a numpy array or tensor of images
    cnnlab.load_run("runs/cnn4-...").evaluate("test")

Every function takes the training settings of `cnnlab.TrainConfig` as keyword arguments (a recipe's
defaults first, then a TOML `config` file, then a `params` JSON, then the keywords), and `data` as a
built-in name, a path, or in-memory arrays: (x, y), (x_train, y_train, x_test, y_test) or a dict with
those keys and optionally class_names. The CLI calls these functions and holds no policy of its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cnnlab import budget as budgets
from cnnlab import runs, torchrun, tracking
from cnnlab.callbacks import Callback
from cnnlab.config import RECIPES, TrainConfig, build_config, read_config_file, read_params_file, shorten
from cnnlab.data.arrays import dataset_from_arrays, tensor_numpy, validate_memory
from cnnlab.data.common import grayscale
from cnnlab.data.fingerprint import MEMORY_PREFIX
from cnnlab.data.prepared import data_fingerprint, preflight
from cnnlab.deploy import export_onnx, onnx_predict_logits, prediction_metadata
from cnnlab.display import EnsembleResult, Evaluation, StudyResult, run_html, run_text, show_files
from cnnlab.device import resolve_device
from cnnlab.engine import config_for_resume, fit, prepare, refuse_lost_checkpoint
from cnnlab.ensembles import combine as combine_members
from cnnlab.ensembles import parse_member_range, require_builder, train_ensemble
from cnnlab.errors import UserError, notice, option
from cnnlab.evaluation import evaluate_run, plot_run
from cnnlab.inference import Predictor
from cnnlab.lr_find import LRFind
from cnnlab.lr_find import plot as plot_lr_find
from cnnlab.lr_find import sweep as lr_sweep
from cnnlab.metrics import softmax
from cnnlab.models import REPORT_STUDY_MODELS, create_architecture, keras_shape, model_info, summarize
from cnnlab.models.custom import CUSTOM_MODEL, PASS_AGAIN, build_custom, is_custom, model_name
from cnnlab.outputs import require_free_output
from cnnlab.progress import ConsoleProgress
from cnnlab.report import build_report
from cnnlab.runs import RunDir
from cnnlab.search import read_space_file, run_tune
from cnnlab.submissions import predict_run
from cnnlab.studies import require_models, run_study, study_dir


# ------------------------------------------------------------------ configuration and data


class _Default:
    """The default of an argument left out, told apart from an explicit None."""

    def __repr__(self) -> str:
        return "default"


DEFAULT = _Default()


def output_folder(out) -> Path:
    """`out` as a Path; None or 5 from the Python API is one line (Path() raised a TypeError)."""
    if not isinstance(out, (str, os.PathLike)):
        raise UserError(f"out: expected a folder's path (a str or Path), got {type(out).__name__}")
    return Path(out)
MAX_LR_FIND_STEPS = 10_000  # the sweep spans start_lr to end_lr in this many batches; fastai's default is 100


def make_config(model=DEFAULT, data=None, config: str | Path | dict | TrainConfig | None = None,
                params: str | Path | None = None, trains: str | None = "run", **options) -> tuple[TrainConfig, object]:
    """(TrainConfig, in-memory Dataset or None) from the layers a user gives. `trains`: what the command trains
    with it ("run", "trial": said where a budget recipe then trains its most epochs; None: nothing)."""
    if isinstance(config, TrainConfig):
        config = config.to_dict()
    base = read_config_file(config) if isinstance(config, (str, Path)) else dict(config or {})
    if model is None and not (base.get("model") or base.get("recipe") or options.get("recipe") or params):
        raise UserError("model: None names no model; give a name (see cnnlab.list_models()), a model in "
                        "config or a recipe, or leave the argument out for the default (tuned-cnn)")
    model = None if model is DEFAULT else model
    dataset = None
    class_names = options.pop("class_names", None)
    if class_names is not None and (data is None or isinstance(data, (str, Path))):
        raise UserError("class_names: names the classes of in-memory arrays (data=(x, y), ...); a dataset file or "
                        "name brings its own class names")
    if data is not None and not isinstance(data, (str, Path)):
        dataset = dataset_from(data, options.get("classes") if "classes" in options else base.get("classes"),
                               class_names)
        data = data_fingerprint(dataset)
    if isinstance(options.get("classes"), (list, tuple)):
        options["classes"] = ",".join(map(str, options["classes"]))
    layers = [base, read_params_file(params) if params else {},
              {**options, "model": model, "data": str(data) if data is not None else None}]
    try:
        built = build_config(*layers)
    except UserError as exc:
        raise _name_the_file(exc, config, base, layers[1:]) from None
    say_recipe_cap(built, trains, any(layer.get("epochs") is not None for layer in layers))
    return built, dataset


def say_recipe_cap(config: TrainConfig, trains: str | None, epochs_given: bool) -> None:
    """A budget recipe (cpu-budget) without its budget trains its cap of epochs, 200: about 40 minutes on a
    2-core AVX2-only CPU, which ran without a word (a search's trials always train without one)."""
    recipe = RECIPES.get(config.recipe, {})
    if not recipe.get("time_budget") or epochs_given or trains is None:
        return
    fewer = f"give {option('epochs', metavar='N')} for fewer"
    if trains == "trial":
        notice(f"recipe {config.recipe}: each trial trains its most epochs, {config.epochs} (trials run without a "
               f"time budget); {fewer}")
    elif not config.time_budget:
        notice(f"recipe {config.recipe} without a time budget trains its most epochs, {config.epochs} (its budget "
               f"chooses fewer); {fewer}")


def _name_the_file(exc: UserError, config, base: dict, later: list[dict]) -> UserError:
    """An error about a value that came from the config file names the file (later layers did not set it)."""
    key = str(exc).split(":", 1)[0].split(" ", 1)[0]
    from_file = key in base and all(layer.get(key) is None for layer in later)
    return UserError(f"{config}: {exc}") if isinstance(config, (str, Path)) and from_file else exc


def dataset_from(data, classes=None, class_names=None):
    """In-memory arrays -> a Dataset, checked like a file's arrays (same messages). class_names: one name per
    label (the keyword; a dict's class_names key works too, and both must agree when both are given)."""
    if class_names is not None:
        if isinstance(class_names, str) or not hasattr(class_names, "__iter__"):
            raise UserError(f"class_names: give a list of names, one per label, got {type(class_names).__name__}")
        class_names = [str(name) for name in class_names]
    if isinstance(data, dict):
        unknown = set(data) - {"x_train", "y_train", "x_test", "y_test", "class_names"}
        if unknown or "x_train" not in data or "y_train" not in data:
            raise UserError("data: a dict needs x_train and y_train (optionally x_test, y_test, class_names)"
                            + (f"; unknown key(s) {', '.join(sorted(unknown))}" if unknown else ""))
        given = data.get("class_names")
        if given is not None and class_names is not None and [str(n) for n in given] != class_names:
            raise UserError("class_names: the keyword and the data dict's class_names differ; give them once")
        return dataset_from_arrays(data["x_train"], data["y_train"], data.get("x_test"), data.get("y_test"),
                                   class_names if class_names is not None else given, classes)
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        return dataset_from_arrays(*data, classes=classes, class_names=class_names) if len(data) == 2 else \
            dataset_from_arrays(data[0], data[1], data[2], data[3], class_names=class_names, classes=classes)
    raise UserError(f"data: expected a dataset name, a path, (x, y), (x_train, y_train, x_test, y_test) or a dict "
                    f"of arrays, got {type(data).__name__}")


def _tracking(tensorboard, mlflow, out: Path, parent_run_id: str | None = None) -> list:
    """Tracking callbacks: tensorboard=True or a folder; mlflow=True (a local store beside `out`) or a URI."""
    out = Path(out)
    extra = []
    if tensorboard:
        extra.append(tracking.TensorBoard(None if tensorboard is True else tensorboard, default_dir=out / "tensorboard"))
    if mlflow:
        extra.append(tracking.MLflow(mlflow_uri(mlflow, out), parent_run_id=parent_run_id))
    return extra


def mlflow_uri(mlflow, out: Path) -> str:
    return tracking.default_store(out) if mlflow is True else str(mlflow)


class Grouped:
    """A parent MLflow run for a study, an ensemble or a search (a no-op without --mlflow)."""

    def __init__(self, mlflow, out: Path, name: str, params: dict):
        self.client = self.run_id = None
        if mlflow:
            self.uri = mlflow_uri(mlflow, out)
            self.client, self.run_id = tracking.parent_run(self.uri, out, name, params)

    def log_dirs(self, run_dirs) -> None:
        """Children for runs trained elsewhere (Ray tasks): logged by the driver from their directories."""
        if self.client is not None:
            tracker = tracking.MLflow(self.uri, parent_run_id=self.run_id)
            for run_dir in run_dirs:
                tracking.log_run_dir(tracker, Path(run_dir))

    def close(self, metrics: dict) -> None:
        if self.client is not None:
            from mlflow.entities import Metric

            values = [Metric(k, float(v), tracking.now_ms(), 0) for k, v in metrics.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)]
            with tracking.store_errors(self.uri):  # a store failing at the very end: one masked line
                self.client.log_batch(self.run_id, metrics=values)
                self.client.set_terminated(self.run_id)


def _progress(progress: bool, quiet: bool = False):
    return [ConsoleProgress(quiet=quiet)] if progress else []


# ------------------------------------------------------------------ runs


class Run:
    """A run directory as an object: its settings, history, metrics, model and predictions. In a notebook it
    shows itself (model, data, status, key metrics and a small accuracy/loss curve)."""

    def __init__(self, path: str | Path, model=None):
        self.dir = RunDir(path)
        self.path = self.dir.path
        self._builder = model  # a model of the user's own: its nn.Module or factory (never imported from the run)
        self._predictor = Predictor(self.path, model)  # the model(s) loaded once, reloaded when the files change

    def __repr__(self) -> str:
        return run_text(self.path)

    def _repr_html_(self) -> str:
        return run_html(self.path)

    @property
    def status(self) -> str:
        return self.dir.status()

    @property
    def config(self) -> dict:
        return self.dir.read_config()

    @property
    def metrics(self) -> dict:
        return self.dir.read_metrics()

    @property
    def history(self):
        """One row per finished epoch (pandas DataFrame)."""
        return self.dir.history_frame()

    @property
    def class_names(self) -> list[str]:
        return self.dir.read_model_meta()["class_names"]

    @property
    def model(self) -> torch.nn.Module:
        """The trained model (CPU, eval mode): N x C x H x W floats in 0..1 -> logits."""
        self.dir.require_finished()
        if self.dir.read_model_meta().get("ensemble"):
            raise UserError(f"{self.path}: an ensemble directory has no single model; load a member under members/")
        return self._predictor.model("cpu")

    def predict_proba(self, images, device: str = "cpu", batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (N x classes) for images as the data readers accept them (pixels 0..255;
        N x H x W, N x H x W x C or N x C x H x W; numpy, torch, nested lists or PIL images). One image of
        exactly the model's shape (H x W, C x H x W or H x W x C, or a PIL image) is a batch of one: 1 x classes."""
        return softmax(self.logits(images, device, batch_size))

    def logits(self, images, device: str = "cpu", batch_size: int = 1024) -> np.ndarray:
        """The model's raw scores (N x classes, float32; an ensemble's vote scores) for images as
        predict_proba takes them, in the run's own precision and test-time augmentation."""
        return self._scores(images, device, batch_size)[0]

    def _scores(self, images, device, batch_size) -> tuple[np.ndarray, dict]:
        device = resolve_device(device)
        meta = self._predictor.refresh(device)  # loaded once; again only when the run's files change
        return self._predictor.scores(as_images(images, meta["input_shape"]), device, batch_size, refresh=False), meta

    def predict(self, images, device: str = "cpu", batch_size: int = 1024) -> np.ndarray:
        """Predicted labels (the source's class ids), one per image, for images as predict_proba takes them;
        one image of exactly the model's shape gives an array of length 1."""
        scores, meta = self._scores(images, device, batch_size)
        return np.asarray(meta["class_ids"])[scores.argmax(1)]

    def evaluate(self, split: str = "val") -> Evaluation:
        """Accuracy, loss, per-class precision/recall/F1 and the confusion matrix of a stored split: a dict,
        with .per_class, .confusion_matrix(_normalized), .plot_confusion_matrix() and .plot_top_losses()."""
        return Evaluation(evaluate_run(self.path, split), self.path, split)

    def export(self, output: str | Path | None = None, format: str = "onnx", *, check_images=None) -> dict:
        """cnnlab.export of this run, with the model of your own it was loaded (or trained) with."""
        return export(self, output, format, check_images=check_images)

    def plot(self) -> list[Path]:
        """Write the run's figures into its directory and return their paths; in a notebook, show them too."""
        paths = plot_run(self.path)
        show_files(paths)
        return paths


def as_images(images, input_shape: list[int]) -> torch.Tensor:
    """Images as predict takes them -> uint8 N x C x H x W of the model's input shape. One image of exactly the
    model's shape (H x W, C x H x W, H x W x C, H*W pixels flat for one channel, or a PIL image) is a batch
    of one: a 28x28 array given to a model of 28x28 images is one image, not 28 rows of pixels."""
    shape = tuple(input_shape)
    if torch.is_tensor(images):
        images = tensor_numpy(images)
    elif not isinstance(images, np.ndarray):
        images = _python_images(images, shape[0])
    given = images.shape
    fast = _model_shaped(images, shape)
    if not fast:
        images = _one_image(images, shape)
        fast = _model_shaped(images, shape)
    if fast:
        # uint8 already in the model's shape, which validate_arrays would pass unchanged: a predict loop's
        # case (one 28x28 image, 2-core AVX2-only EPYC: 8 us a call against its 34)
        array = np.ascontiguousarray(images).reshape(len(images), *shape)
    else:
        array, _ = validate_memory(images, None, "images")
        if array.shape[1] == 3 and shape[0] == 1:  # RGB for a grayscale model: converted as training converts it
            array = grayscale(array)
    if not array.flags.writeable:  # read-only input (np.frombuffer): torch.from_numpy would warn
        array = array.copy()
    if list(array.shape[1:]) != list(input_shape):
        one = len(given) == 3 and (given[0] in (1, 3) or given[-1] in (1, 3))  # it may have been one image
        raise UserError(f"images: shape {_shape(array.shape[1:])} per image, but the model was trained on "
                        f"{_shape(input_shape)}" + ("; one image? pass images[None] (N x H x W)" if one else ""))
    return torch.from_numpy(array)


def _model_shaped(images: np.ndarray, shape: tuple) -> bool:
    """uint8 N x C x H x W (or N x H x W for one channel) of the model's shape, not all 0 and 1."""
    return images.dtype == np.uint8 and images.ndim > 1 and len(images) > 0 and \
        images.shape[1:] in (shape, shape[1:] if shape[0] == 1 else None) and images.max() != 1


def _one_image(images: np.ndarray, shape: tuple) -> np.ndarray:
    """One image of exactly the model's shape as a batch of one; flattened rows as N x C x H x W; a 2-D array
    that is neither refused (validate_arrays would read it as rows of a square image: not what was meant)."""
    channels, height, width = shape
    given = images.shape
    if given == (height, width, channels) and given != shape:
        images = np.moveaxis(images, -1, 0)  # channels last -> first (one channel: the reshape below does it)
    if channels == 1 and given == (height, width, 3):
        return images[None]  # one RGB image (H x W x 3) for a grayscale model: converted as a batch is
    if images.shape in (shape, (height, width), (height * width,)) and images.size == height * width * channels:
        return images.reshape(1, *shape)
    if images.ndim == 2 and images.shape[1] == height * width * channels == height * width:
        return images.reshape(len(images), *shape)  # also rows of an image that is not square
    if images.ndim == 2:
        rows = f" nor rows of {height * width} pixels" if channels == 1 else ""
        raise UserError(f"images: shape {_shape(given)} is neither one image of the model's {_shape(shape)}{rows}; "
                        f"one image? pass images[None] (N x H x W), of {height}x{width} pixels (cnnlab does not "
                        "resize)")
    return images


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def _python_images(images, channels: int) -> np.ndarray:
    """A PIL image, a list of PIL images or tensors, or nested lists -> numpy."""
    if isinstance(images, (str, os.PathLike)):
        raise UserError(f"images: {str(images)!r} is a path; predict takes pixels (numpy, torch, PIL): open the file "
                        "with PIL.Image.open, or use the CLI: cnnlab predict RUN --input FILE")
    pil = sys.modules.get("PIL.Image")  # imported already wherever a PIL image exists
    if pil is not None and isinstance(images, pil.Image):
        return _pil_array(images, channels)
    items = images if isinstance(images, (list, tuple)) else ()
    try:
        if items and any(torch.is_tensor(i) or (pil is not None and isinstance(i, pil.Image)) for i in items):
            return np.stack([tensor_numpy(i) if torch.is_tensor(i) else
                             _pil_array(i, channels) if pil is not None and isinstance(i, pil.Image) else np.asarray(i)
                             for i in items])
        return np.asarray(images)
    except ValueError:  # numpy refuses ragged lists
        raise UserError("images: not a rectangular array (images of different sizes?); give N x H x W pixels "
                        "of one size") from None


def _pil_array(image, channels: int) -> np.ndarray:
    """A PIL image as the data readers read a file: gray ("L") for a one-channel model, else RGB."""
    if image.mode.split(";")[0] in ("I", "F"):  # 16/32-bit or float pixels: checked against 0..255, never clipped
        return np.asarray(image)
    return np.asarray(image.convert("L" if channels == 1 else "RGB"))


def _is_onnx_file(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() == ".onnx" and not Path(path).is_dir()


def _refuse_onnx(path, what: str) -> None:
    """An exported .onnx file given where a run directory goes: one line naming what takes it."""
    if _is_onnx_file(path):
        raise UserError(f"{path}: an exported ONNX model, not a run directory; {what} (for labels: "
                        f"cnnlab.predict({str(path)!r}, images))")


def _own_model_class(run: RunDir) -> str | None:
    """The import path of the model of the user's own a run (or an ensemble's members) holds; None: a
    registered model."""
    meta = run.read_model_meta()
    if meta.get("ensemble") and meta.get("members"):
        meta = RunDir(run.path / meta["members"][0]).read_model_meta()
    spec = meta.get("spec", {})
    return str(spec.get("class", "?")) if spec.get("name") == CUSTOM_MODEL else None


def _check_model_argument(run: RunDir, model) -> None:
    """load_run's `model` fits the run: a module or factory for a model of the user's own, nothing otherwise."""
    own = _own_model_class(run)
    if own is not None and not is_custom(model):
        got = f"the name {model!r}" if isinstance(model, str) else f"a value of type {type(model).__name__}"
        raise UserError(f"model: {run.path} holds a model of your own ({own}); pass the nn.Module or factory it was "
                        f"trained with, e.g. cnnlab.load_run(path, model=MyNet), not {got}")
    if own is None:
        spec = run.read_model_meta().get("spec") or {}
        holds = spec.get("name") or "an ensemble of registered models"
        if is_custom(model):  # ignored before: predictions came from the run's model, not this one
            raise UserError(f"model: {run.path} holds {holds}, not a model of your own; load it without model=: "
                            "cnnlab.load_run(path)")
        raise UserError(f"model: load_run's model= takes a model of your own (an nn.Module or factory), not "
                        f"{model!r}; {run.path} holds {holds}, which needs none: cnnlab.load_run(path)")


def load_run(path: str | Path, model=None) -> Run:
    """A finished run (or ensemble) directory; `model` is the nn.Module or factory a run of a model of your
    own was trained with (needed to predict or export; a run directory never causes code to be imported).
    A run of a registered model takes no `model`. An exported .onnx file is no run: cnnlab.predict takes it."""
    _refuse_onnx(path, "load the run directory it was exported from")
    run = RunDir(path).require_finished()
    if model is not None:
        _check_model_argument(run, model)
    return Run(path, model)


def callback_list(callbacks) -> list[Callback]:
    """`callbacks` as a list: one Callback or any iterable of them (as Lightning's Trainer takes)."""
    if isinstance(callbacks, Callback):
        return [callbacks]
    iterable = isinstance(callbacks, Iterable) and not isinstance(callbacks, (str, bytes, Mapping))
    items = list(callbacks) if iterable else None
    wrong = [cb for cb in items if not isinstance(cb, Callback)] if iterable else [callbacks]
    if wrong:
        raise UserError(f"callbacks: expected cnnlab.callbacks.Callback objects (subclass it), got {wrong[0]!r} "
                        f"({type(wrong[0]).__name__})")
    return items


def custom_model(model) -> tuple[object, object]:
    """(builder, model name): an nn.Module or a factory becomes model "custom" with the object beside it."""
    if is_custom(model) and not isinstance(model, _Default):
        return model, CUSTOM_MODEL
    return None, model


def train(model=DEFAULT, data=None, *, config=None, params=None, out: str | Path = "runs",
          resume: str | Path | None = None, callbacks=(), progress: bool = True, quiet: bool = False,
          tensorboard: bool | str = False, mlflow: bool | str = False, **options) -> Run:
    """Train one model; returns the finished Run. `resume=RUN_DIR` continues an interrupted (or extends a
    finished) run: only `epochs` and `device` may change then (in-memory data and a model of your own must be
    passed again).
    `time_budget` (seconds or "15m") counts from this call; a resume continues to the epochs it chose."""
    started = budgets.clock()
    out = output_folder(out)
    with torchrun.session(options.get("device") or "auto") as dist:  # torchrun: rank 0 names the run, reports
        lead = dist is None or dist.lead
        extra = callback_list(callbacks) + (_tracking(tensorboard, mlflow, Path(resume).parent if resume else Path(out))
                                   if lead else [])
        extra += _progress(progress and lead, quiet)
        builder, model = custom_model(model)
        if resume is not None:
            run, cfg, dataset = resume_setting(resume, model=model if builder is None else DEFAULT, data=data,
                                               config=config, params=params, **options)
            if (cfg.model == CUSTOM_MODEL) != (builder is not None):
                raise UserError(f"{resume}: holds a model of your own; pass it again: cnnlab.train(MyNet, resume=path) "
                                f"({PASS_AGAIN})" if builder is None else
                                f"{resume}: holds model {cfg.model}, not one of your own; resume without a model")
            fit(cfg, run, extra, resume=run.has_checkpoint(), dataset=dataset, builder=builder)
            return Run(run.path, builder)
        cfg, dataset = make_config(model, data, config, params, **options)
        dataset = preflight(cfg, dataset)  # bad data fails before a directory is made; loaded once
        out_was_there = Path(out).exists()
        run = RunDir.create(out, cfg.model) if lead else None
        if dist is not None:
            run = RunDir(dist.share(str(run.path) if run else None))
        try:
            fit(cfg, run, extra, dataset=dataset, builder=builder,
                budget=budgets.Budget.starting(cfg.time_budget, started))
        except BaseException as exc:
            kept = not (run.status() == runs.FRESH and dist is None)
            if not kept:  # nothing worth keeping was written: leave no empty directory
                shutil.rmtree(run.path, ignore_errors=True)
                if not out_was_there:  # nor the folder made for it
                    with contextlib.suppress(OSError):
                        Path(out).rmdir()
            if isinstance(exc, (KeyboardInterrupt, UserError)):  # what the CLI names to continue (None: nothing kept)
                exc.run_dir = run.path if kept else None
                exc.run_dir_named = any(getattr(cb, "named_run_dir", False) for cb in extra)  # by the progress header
            raise
        return Run(run.path, builder)


def lr_find(model=DEFAULT, data=None, *, config=None, params=None, plot: str | Path | None = "lr_find.png",
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100, **options) -> LRFind:
    """fastai's learning-rate range test on the model and data these settings give: an exponential sweep from
    `start_lr` to `end_lr` over `steps` batches, stopped when the smoothed loss diverges; returns the rates,
    losses and the "valley" suggestion (usable as `lr`), and writes the plot to `plot` (None: no file; a
    notebook shows the result's plot inline either way). Trains nothing permanently and writes no run
    directory."""
    if not math.isfinite(end_lr):  # inf passed 0 < start_lr < end_lr and suggested start_lr after 2 steps
        raise UserError(f"lr_find: end_lr must be a finite rate (e.g. 10), got {end_lr:g}")
    if plot is not None and Path(plot).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):  # refused by matplotlib after the sweep
        raise UserError(f"{option('plot', plot)}: give a picture's name ending in .png, .pdf, .svg or .jpg")
    if not (0 < start_lr < end_lr) or not 2 <= steps <= MAX_LR_FIND_STEPS:
        raise UserError(f"lr_find: needs 0 < start_lr < end_lr and steps from 2 to {MAX_LR_FIND_STEPS:,}, got "
                        f"{start_lr:g}, {end_lr:g}, {shorten(str(steps))}")
    builder, model = custom_model(model)
    cfg, dataset = make_config(model, data, config, params, trains=None, **options)
    if plot is not None:
        require_free_output(plot, inputs=[cfg.data], what="plot")  # not among the images it trains on
    setup = prepare(cfg, preflight(cfg, dataset), builder=builder)
    result = lr_sweep(setup, start_lr, end_lr, steps)
    result.model, result.custom = (model_name(builder), True) if builder is not None else (cfg.model, False)
    if result.suggestion is None:
        raise UserError(f"lr_find: the loss was not finite from the first step at lr {start_lr:g}; check the data "
                        "or lower start_lr")
    result.plot = plot_lr_find(result, plot) if plot is not None else None
    return result


class ModelSummary:
    """Keras's `model.summary()` table: `rows` (name, kind, output_shape channels first, params), the totals
    (BatchNorm's moving statistics count as non-trainable, as in Keras), `frame` (a pandas DataFrame) and a
    text repr in Keras's layout."""

    def __init__(self, title: str, input_shape: tuple, result):
        self.title, self.input_shape, self.rows = title, tuple(input_shape), result.rows
        self.total, self.trainable, self.non_trainable = result.total, result.trainable, result.non_trainable

    @property
    def frame(self):
        return pd.DataFrame([{"layer": r.name, "type": r.kind, "output_shape": keras_shape(r.output_shape),
                              "params": r.params} for r in self.rows])

    def __str__(self) -> str:
        cells = [(f"{r.name} ({r.kind})", keras_shape(r.output_shape), f"{r.params:,}") for r in self.rows]
        widths = [max([len(h)] + [len(c[i]) for c in cells]) + 2 for i, h in enumerate(("Layer (type)", "Output Shape"))]
        line = lambda a, b, c: f" {a:<{widths[0]}}{b:<{widths[1]}}{c}"  # noqa: E731
        rule = max(65, sum(widths) + 12)
        out = [f'Model: "{self.title}"', "_" * rule, line("Layer (type)", "Output Shape", "Param #"), "=" * rule]
        out += [line(*c) for c in cells]
        out += ["=" * rule, f"Total params: {self.total:,}", f"Trainable params: {self.trainable:,}",
                f"Non-trainable params: {self.non_trainable:,}", "_" * rule]
        return "\n".join(out)

    __repr__ = __str__


def summary(model_or_run, *, num_classes: int = 10, in_chans: int = 1, image_size: int | None = None,
            depth: int = 1, **model_params) -> ModelSummary:
    """The Keras-style layer table of a model name (built with `num_classes`, `in_chans`, `image_size`,
    `model_params`), an nn.Module (input `in_chans` x `image_size`, default 28), or a run directory / Run
    (its model as saved, at its input shape)."""
    _refuse_onnx(model_or_run, "summarize the run directory it came from")  # not an unknown model's name
    if isinstance(model_or_run, torch.nn.Module) or (callable(model_or_run) and not isinstance(model_or_run, Run)):
        size = image_size or 28  # a class or factory of one's own is built as a run builds it
        net = model_or_run if isinstance(model_or_run, torch.nn.Module) else build_custom(
            model_or_run, num_classes=num_classes, in_chans=in_chans, image_size=size, **model_params)
        return ModelSummary(model_name(model_or_run), (in_chans, size, size),
                            summarize(net, (in_chans, size, size), depth=depth))
    if isinstance(model_or_run, Run) and model_or_run._builder is not None:  # trained or loaded with its model
        meta = model_or_run.dir.read_model_meta()
        return ModelSummary(model_name(model_or_run._builder), tuple(meta["input_shape"]),
                            summarize(model_or_run.model, tuple(meta["input_shape"]), depth=depth))
    if isinstance(model_or_run, (Run, Path)) or (isinstance(model_or_run, str) and Path(model_or_run).is_dir()):
        run = model_or_run.dir if isinstance(model_or_run, Run) else RunDir(model_or_run)
        meta = run.read_model_meta()
        spec = dict(meta["spec"])
        name = spec.pop("name", None)
        if not isinstance(name, str) or "class" in spec:
            raise UserError(f"{run.file(runs.MODEL)}: a model of your own; summarize the Run loaded with it, "
                            "cnnlab.summary(cnnlab.load_run(path, model=MyNet)), or the model itself")
        net = create_architecture(name, **spec)
        return ModelSummary(name, tuple(meta["input_shape"]), summarize(net, tuple(meta["input_shape"]), depth=depth))
    if not isinstance(model_or_run, str):
        raise UserError(f"summary: expected a model name, an nn.Module or a run directory, got "
                        f"{type(model_or_run).__name__}")
    size = image_size or model_info(model_or_run).image_size
    net = create_architecture(model_or_run, num_classes=num_classes, in_chans=in_chans, image_size=size, **model_params)
    return ModelSummary(model_or_run, (in_chans, size, size), summarize(net, (in_chans, size, size), depth=depth))


def resume_setting(resume, *, model=DEFAULT, data=None, config=None, params=None, epochs=None, device=None, **options):
    """(RunDir, config, dataset) to continue a run; refuses settings a resume cannot change."""
    run = RunDir(resume)
    if not run.file(runs.CONFIG).is_file():
        raise UserError(f"{resume}: not a cnnlab run directory (no config.json); nothing to resume")
    class_names = options.pop("class_names", None)  # part of the data, passed again with it
    stored = run.read_config()
    if isinstance(model, str) and model == stored.get("model"):
        model = DEFAULT  # the run's own model named again, as cnnlab.train("cnn1", data, resume=path) reads
    recorded = str(stored.get("data", ""))
    if isinstance(data, (str, Path)) and recorded.startswith(MEMORY_PREFIX):
        raise UserError(f"{resume}: trained on in-memory arrays; pass the same arrays again, data=(x, y)")
    if data is not None and not isinstance(data, (str, Path)) and not recorded.startswith(MEMORY_PREFIX):
        raise UserError(f"{resume}: trained on {recorded}; pass that path (or leave data out), not arrays")
    changed = [k for k, v in {"model": None if model is DEFAULT else model, "config": config, "params": params,
                              **options}.items() if v is not None]
    if changed:
        raise UserError(f"{option('resume')} continues the stored configuration; only {option('epochs')} and "
                        f"{option('device')} may change (got {', '.join(map(option, changed))})")
    cfg = config_for_resume(run, epochs, device)
    if isinstance(data, (str, Path)) and str(data) != recorded:
        # the same data named otherwise (another working folder, a moved copy): the run's data-file fingerprints
        # decide, in fit, before anything changes; another dataset is refused there
        cfg = replace(cfg, data=str(data))
    refuse_lost_checkpoint(run)
    dataset = dataset_from(data, cfg.classes, class_names) if data is not None and not isinstance(data, (str, Path)) \
        else None
    return run, cfg, dataset


def export(run: str | Path | Run, output: str | Path | None = None, format: str = "onnx", *, check_images=None,
           model=None) -> dict:
    """Write the run's (or ensemble's) model as ONNX, checked against PyTorch; returns the parity figures.
    check_images: uint8 images (N x C x H x W, or N x H x W) to check on; default the run's validation images
    (for a run on in-memory arrays, the sample of them it keeps). model: the nn.Module or factory of a run of
    a model of your own (default: the one a Run was loaded or trained with)."""
    if format != "onnx":
        raise UserError(f"format: must be onnx, got {format!r}")
    if model is None and isinstance(run, Run):
        model = run._builder
    if not isinstance(run, Run):
        _refuse_onnx(run, "export the run directory it came from")
    if torch.is_tensor(check_images):  # a bfloat16 tensor's .numpy() raised a TypeError, not the uint8 line
        check_images = tensor_numpy(check_images)
    return export_onnx(run.path if isinstance(run, Run) else run, output, check_images=check_images, model=model)


def evaluate(run: str | Path | Run, split: str = "val") -> dict:
    """Run.evaluate of a run directory or Run: metrics of a stored split (read from its stored logits)."""
    if not isinstance(run, Run):
        _refuse_onnx(run, "evaluate reads a run directory's stored logits: give the run directory it was "
                          "exported from")
    return (run if isinstance(run, Run) else load_run(run)).evaluate(split)


def predict(run: str | Path | Run, images, device: str = "cpu") -> np.ndarray:
    """Predicted labels (the source's class ids) for images as Run.predict takes them (one image of the
    model's shape: an array of length 1), from a Run, a run or ensemble directory, or an exported .onnx file
    (run by onnxruntime on the CPU, whatever `device`; class ids and input shape from its metadata)."""
    if _is_onnx_file(run):
        return _onnx_predict(Path(run), images)
    return (run if isinstance(run, Run) else load_run(run)).predict(images, device)


def submission(run: str | Path | Run, input: str | Path, output: str | Path = "submission.csv", *,
               columns: str | None = None, device: str = "auto", model=None) -> dict:
    """`cnnlab predict RUN --input FILE -o OUTPUT` from Python (a Kaggle notebook): the input file or folder read
    as the CLI reads it (ids from its id column or file names), one row per image, written atomically; `columns`
    "ImageId,Label" for the header a competition asks for. A Run trained or loaded with a model of your own
    brings it (or pass `model=`). Returns the rows written, the file and the counts per class."""
    path = Path(run.path if isinstance(run, Run) else run)
    if model is None and isinstance(run, Run):
        model = run._builder
    if model is not None:
        if _is_onnx_file(path):
            raise UserError(f"model: {path} is an exported ONNX model, which needs none; leave model= out")
        load_run(path, model=model)  # its checks: a model given for a run of a built-in one is refused
    return predict_run(path, Path(input), Path(output), device, columns=columns, model=model)


def _onnx_predict(path: Path, images) -> np.ndarray:
    meta = prediction_metadata(path)
    shape, ids = meta["input_shape"], meta["class_ids"]
    logits = onnx_predict_logits(path, as_images(images, shape))
    if logits.ndim != 2 or logits.shape[1] != len(ids):
        raise UserError(f"{path}: the model gives {_shape(logits.shape[1:])} scores per image but its metadata names "
                        f"{len(ids)} classes; the file was edited, export it again")
    return np.asarray(ids)[logits.argmax(1)]


# ------------------------------------------------------------------ studies, ensembles, searches


def study(models: list[str] | str = REPORT_STUDY_MODELS, repeats: int = 3,
          data=None, *, out: str | Path = "study", config=None, params=None, callbacks=(), progress: bool = True,
          say=print, report: bool = True, ray: bool = False, ray_address: str | None = None,
          tensorboard: bool | str = False, mlflow: bool | str = False, **options) -> StudyResult:
    """Train each model `repeats` times; returns {"runs": [Run...], "report": path or None, "markdown": path}
    (a dict that shows its comparison tables and figures in a notebook); the report covers every finished run
    in `out`, also those of models a rerun did not ask for. `time_budget` covers every run of
    the study (from this call to the report, which it does not count). `models`: names, and nn.Modules or
    factories of your own (named by class or factory; copied or called per seed; passed again to continue)."""
    started = budgets.clock()
    out = output_folder(out)
    names, builders = study_models(models)
    require_models(Path(out), names, builders)  # a directory's models of your own come again, by name alone it refuses
    first = (CUSTOM_MODEL if names[0] in builders else names[0]) if names else DEFAULT
    cfg, dataset = make_config(first, data, config, params, **options)
    group = Grouped(mlflow, Path(out), f"study {Path(out).name}", {"models": ",".join(names), "repeats": repeats,
                                                                    **{k: v for k, v in cfg.to_dict().items() if k != "model"}})
    tracked = _tracking(tensorboard, mlflow and not ray, Path(out), group.run_id)
    dirs = run_study(cfg, names, repeats, Path(out), callback_list(callbacks) + tracked + _progress(progress, quiet=True), say,
                     dataset, ray, ray_address, budgets.Budget.starting(cfg.time_budget, started), builders)
    if ray:
        group.log_dirs(dirs)
    # runs are named MODEL-seedS: a run of a model of your own comes with it, so it predicts and exports
    result = StudyResult(runs=[Run(d, builders.get(Path(d).name.rsplit("-seed", 1)[0])) for d in dirs], report=None,
                         markdown=None)
    group.close({})
    if report:  # the study's report covers all its finished runs: a rerun asking fewer models rewrote it with those
        every = [run.path for run in study_dir(Path(out)).run_dirs()]  # these runs among them
        left = [run.path.name for run in result["runs"] if not run.dir.is_finished()]  # named in the report
        result["report"], result["markdown"] = build_report(every, Path(out) / "report.html", not_started=left)
    return result


def study_models(models) -> tuple[list[str], dict]:
    """(names, name -> builder): model names (a list, or one string separated by commas), nn.Modules and
    factories, each of the user's own named by its class or factory."""
    if not isinstance(models, (str, list, tuple)) and not is_custom(models):  # 5: list() raised a TypeError
        raise UserError(f"models: give model names ('cnn1,cnn2' or a list), nn.Modules or factories; got "
                        f"{type(models).__name__}")
    entries = models.split(",") if isinstance(models, str) else [models] if is_custom(models) else list(models)
    names, builders = [], {}
    for entry in entries:
        name = model_name(entry) if is_custom(entry) else str(entry).strip()
        if not name:
            continue
        if name in names and (is_custom(entry) or name in builders):
            raise UserError(f"models: {name} is named twice (a model of your own is named by its class or factory); "
                            "give each model its own name, e.g. a subclass or a factory function")
        if name in names:  # cnn1,cnn1 trained its runs once and listed them twice
            raise UserError(f"models: {name} is named twice; name each model once ({option('repeats')} sets the runs "
                            "per model)")
        names.append(name)
        if is_custom(entry):
            builders[name] = entry
    return names, builders


def ensemble(model="tuned-cnn", members: int = 30, threshold: float = 0.91, vote: str | None = None, data=None, *,
             out: str | Path = "ensemble", max_attempts: int | None = None, only_members: str | None = None,
             fuse: int = 0, config=None, params=None, callbacks=(), progress: bool = True, say=print, ray: bool = False,
             ray_address: str | None = None, tensorboard: bool | str = False, mlflow: bool | str = False,
             **options) -> EnsembleResult:
    """The report's threshold-filtered vote; returns the manifest (members, vote accuracy, growth: a dict that
    shows the vote's accuracy, per-class scores and growth figure in a notebook). `model`: a
    name, or an nn.Module or factory of your own (copied or called per member; passed again to continue).
    ray: members train as Ray tasks (a local cluster on 127.0.0.1, or ray_address="auto" / "IP:PORT").
    `time_budget` covers every member (divided among those still wanted); no attempt starts once it is spent."""
    started = budgets.clock()
    out = output_folder(out)
    builder, model = custom_model(model)
    require_builder(Path(out), builder)  # an ensemble of a model of your own continues with it passed again
    cfg, dataset = make_config(model, data, config, params, **options)
    vote = vote or ("hard" if cfg.recipe == "report" else "soft")  # the report voted by majority; modern members by probability
    group = Grouped(mlflow, Path(out), f"ensemble {Path(out).name}", {"members": members, "threshold": threshold,
                                                                      "vote": vote, **cfg.to_dict()})
    tracked = _tracking(tensorboard, mlflow and not ray, Path(out), group.run_id)
    manifest = train_ensemble(cfg, Path(out), members, threshold, vote, max_attempts, parse_member_range(only_members),
                              fuse, callback_list(callbacks) + tracked + _progress(progress, quiet=True), say, dataset, ray,
                              ray_address, budgets.Budget.starting(cfg.time_budget, started), builder)
    if ray:
        group.log_dirs([Path(out) / m["path"] for m in manifest["members"] + manifest["discarded"]])
    group.close({f"vote_{k}": manifest[k] for k in ("val_accuracy", "test_accuracy") if k in manifest})
    return EnsembleResult(manifest, out)


def combine(directory: str | Path) -> EnsembleResult:
    return EnsembleResult(combine_members(Path(directory)), directory)


def tune(model: str = "tuned-cnn", trials: int = 50, data=None, *, out: str | Path = "tune",
         timeout: float | str | None = None,
         storage: str | None = None, study_name: str | None = None, metric: str = "val_accuracy",
         space: str | Path | dict | None = None, pruner: str = "median", config=None, params=None, say=print,
         progress: bool = True, ray: bool = False, ray_address: str | None = None, tensorboard: bool | str = False,
         mlflow: bool | str = False, **options) -> dict:
    """Optuna search; returns the summary (complete/pruned/failed, best value and parameters).

    `time_budget` (or its alias `timeout`, seconds or "15m") is this worker's time: no trial starts once it
    is spent or when a trial like the finished ones would not fit in what is left; trials keep their epochs."""
    started = budgets.clock()
    out = output_folder(out)
    if is_custom(model):
        raise UserError(f"model {model_name(model)}: a search takes a registered model; decorate its builder with "
                        "@cnnlab.register_model('mynet') and give the name")
    if data is not None and not isinstance(data, (str, Path)):
        raise UserError("data: a search reloads its data in every trial; give a dataset name or path")
    if timeout is not None:  # the same setting under its older name
        seconds = budgets.parse_duration(timeout, "timeout")
        if options.get("time_budget") is not None and budgets.parse_duration(options["time_budget"]) != seconds:
            raise UserError(f"timeout: is another name of time_budget; give one of them (got timeout {timeout!r} "
                            f"and time_budget {options['time_budget']!r})")
        options["time_budget"] = seconds
    cfg, _ = make_config(model, data, config, params, trains="trial", **options)
    if isinstance(space, (str, Path)):
        space = read_space_file(Path(space), cfg.model)
    group = Grouped(mlflow, Path(out), f"search {Path(out).name}", {"trials": trials, "metric": metric, **cfg.to_dict()})
    tracked = _tracking(tensorboard, mlflow and not ray, Path(out), group.run_id) + _progress(progress and not ray,
                                                                                           quiet=True)
    summary = run_tune(cfg, Path(out), trials, budgets.Budget.starting(cfg.time_budget, started), storage, study_name,
                       metric, space, pruner, say, ray, ray_address, tracked)
    if ray:
        group.log_dirs(sorted((Path(out) / "trials").glob("trial-*")))
    group.close({"best_value": summary["best_value"]} if "best_value" in summary else {})
    return summary
