"""The `cnnlab` command line: parse options, build a config, call the library. No logic of its own."""

import errno
import functools
import inspect
import signal
import sys
import typing
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from cnnlab import api, torchrun
from cnnlab.budget import parse_budget_width
from cnnlab.config import MAX_SEED
from cnnlab.data import BUILTIN, NoLabels, load_dataset, load_unlabeled, pixel_stats, train_val_split
from cnnlab.data.image_folders import image_folder_notes
from cnnlab.errors import UserError, command_line
from cnnlab.models import (REPORT_STUDY_MODELS, count_parameters, create_architecture, keras_shape, list_models,
                           model_info, summarize)
from cnnlab.plots import preview_grid
from cnnlab.report import build_report
from cnnlab.outputs import require_free_output
from cnnlab.runs import RunDir, write_json
from cnnlab.text import visible
from cnnlab.version import __version__

def escape(text) -> str:
    """What the console prints of users' text: rich markup and control characters shown literally."""
    return rich_escape(visible(text))


app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Train, compare, tune and ensemble CNNs on small grayscale image datasets.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets: counts, shapes, example grids.")
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True)  # long lines stay whole in logs

DatasetArg = typer.Argument("fashion-mnist", help="Built-in name (fashion-mnist, mnist) or a path: IDX folder, "
                            ".npz, .npy, Kaggle .csv, or a folder with one subfolder of images per class.")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder holding the built-in dataset's IDX files "
                          "(default: $CNNLAB_DATA, then /usr/share/datasets, then the download cache).")
ClassesOpt = typer.Option(None, "--classes", help="Keep these classes, remapped to 0..k-1: indices or names, "
                          "comma-separated (e.g. 0,1,2,3,4 for the report's 5-class setting).")
KeepRgbOpt = typer.Option(False, "--keep-rgb", help="Keep 3 colour channels instead of converting to grayscale.")

@data_app.command("info")
def data_info(dataset: str = DatasetArg, data_dir: Optional[Path] = DataDirOpt,
              classes: Optional[str] = ClassesOpt, keep_rgb: bool = KeepRgbOpt,
              val_fraction: float = typer.Option(0.2, help="Share of the training pool held out for validation."),
              split_seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed of the stratified train/validation split.")) -> None:
    """Images per split and per class, image shape, pixel mean/std."""
    try:
        ds = load_dataset(dataset, data_dir=data_dir, classes=classes, keep_rgb=keep_rgb)
    except NoLabels:  # a test file: what predict would read of it
        images = load_unlabeled(dataset, keep_rgb=keep_rgb)
        mean, std = pixel_stats(images.images)
        c, h, w = images.images.shape[1:]
        console.print(f"[bold]{escape(str(dataset))}[/bold]: {len(images)} images without labels (to predict: "
                      f"cnnlab predict RUN --input {escape(str(dataset))})", highlight=False)
        console.print(f"images: {c} x {h} x {w} uint8   pixel mean {mean:.4f}  std {std:.4f} (scaled to 0..1)")
        return
    splits = train_val_split(ds, val_fraction, split_seed)
    mean, std = pixel_stats(ds.train.images)
    c, h, w = ds.shape
    console.print(f"[bold]{escape(ds.name)}[/bold] from {escape(ds.source)}" + ("  (checksums verified)" if ds.verified else ""))
    console.print(f"images: {c} x {h} x {w} uint8   pixel mean {mean:.4f}  std {std:.4f} (scaled to 0..1)")
    notes = [] if dataset in BUILTIN else image_folder_notes(Path(dataset).expanduser())
    for note in notes:  # folders ignored beside train/ and test/, images found in subfolders of class folders
        console.print(escape(note), highlight=False)
    table = Table(title=None)
    table.add_column("class")
    table.add_column("name")
    parts = [("train pool", ds.train), ("train", splits.train), ("val", splits.val)]
    if ds.test is not None:
        parts.append(("test", ds.test))
    for label, _ in parts:
        table.add_column(label, justify="right")
    counts = [torch.bincount(s.labels, minlength=ds.num_classes).tolist() if s.labels is not None else None
              for _, s in parts]
    for k, name in enumerate(ds.class_names):
        table.add_row(str(k), escape(name), *[str(cnt[k]) if cnt else "-" for cnt in counts])
    table.add_row("", "[bold]total[/bold]", *[f"[bold]{len(s)}[/bold]" for _, s in parts])
    console.print(table)
    if ds.test is None:
        console.print("no separate test split in this source")


@data_app.command("preview")
def data_preview(dataset: str = DatasetArg,
                 output: Path = typer.Option(Path("preview.png"), "-o", "--output", help="PNG file to write."),
                 per_class: int = typer.Option(8, min=1, max=32, help="Examples per class."),
                 data_dir: Optional[Path] = DataDirOpt, classes: Optional[str] = ClassesOpt,
                 keep_rgb: bool = KeepRgbOpt, seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Which examples to draw.")) -> None:
    """Write a PNG grid with a row of examples per class."""
    if output.suffix.lower() != ".png":
        raise UserError(f"-o {output}: the preview is a PNG; give a file name ending in .png")
    require_free_output(output, inputs=[dataset], what="output")  # not into the dataset's image folders
    ds = load_dataset(dataset, data_dir=data_dir, classes=classes, keep_rgb=keep_rgb)
    path = preview_grid(ds.train.images.numpy(), ds.train.labels.numpy(), ds.class_names, output, per_class, seed)
    console.print(f"wrote {escape(str(path))}", highlight=False)


@app.command("models")
def models_cmd(num_classes: int = typer.Option(10, "--num-classes", min=2,
                                              help="Classes to count parameters at (the report used 5).")) -> None:
    """Every registered model: parameters (1 input channel; learnable and frozen weights, not BatchNorm's running
    statistics, which `cnnlab summary` adds as Keras does), default input size, description."""
    table = Table()
    table.add_column("model", no_wrap=True, min_width=max(map(len, list_models())))  # names are what users copy
    for col, justify in (("parameters", "right"), ("trainable", "right"), ("input", "right"), ("description", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "description")
    for name in list_models():
        info = model_info(name)
        trainable, frozen = count_parameters(create_architecture(name, num_classes=num_classes))
        size = f"{info.image_size}x{info.image_size}"
        table.add_row(name, f"{trainable + frozen:,}", f"{trainable:,}", size, info.description)
    console.print(table)


@app.command("summary")
def summary_cmd(model: str = typer.Argument(..., help="Model name (see `cnnlab models`)."),
                num_classes: int = typer.Option(10, "--num-classes", min=2, help="Output classes."),
                image_size: int = typer.Option(28, "--image-size", min=1, help="Input height and width."),
                in_chans: int = typer.Option(1, "--in-chans", min=1, max=3, help="Input channels."),
                depth: int = typer.Option(1, "--depth", min=1, help="How deep to expand nested modules."),
                channels_first: bool = typer.Option(False, "--channels-first",
                                                    help="Show shapes as (None, C, H, W) instead of Keras's (None, H, W, C).")) -> None:
    """The layer table in the report's form: layer, output shape, parameters, then the totals."""
    net = create_architecture(model, num_classes=num_classes, in_chans=in_chans, image_size=image_size)
    result = summarize(net, (in_chans, image_size, image_size), depth=depth)
    table = Table(title=f"{model} ({num_classes} classes, input {in_chans}x{image_size}x{image_size})")
    table.add_column("Layer (type)")
    table.add_column("Output Shape")
    table.add_column("Param #", justify="right")
    for row in result.rows:
        shape = "(None, " + ", ".join(map(str, row.output_shape)) + ")" if channels_first else keras_shape(row.output_shape)
        table.add_row(f"{row.name} ({row.kind})", shape, f"{row.params:,}")
    console.print(table)
    console.print(f"Total params: {result.total:,}\nTrainable params: {result.trainable:,}\n"
                  f"Non-trainable params: {result.non_trainable:,}")
    console.print("(Keras's count: the totals include BatchNorm's moving mean and variance as non-trainable "
                  "parameters; `cnnlab models` counts learnable and frozen weights only, without them.)", highlight=False)


# ------------------------------------------------------------------ the shared training options
# Defined once: every training command (train, study, ensemble, tune) gets the same options, each
# naming a TrainConfig setting; None means "not given", so the recipe, a --config file and a
# --params file fill what the flags leave open.

TRAINING_OPTIONS: dict[str, tuple[object, typer.models.OptionInfo]] = {
    "recipe": (Optional[str], typer.Option(None, "--recipe", help="Named defaults: report (the 2019 study, default), "
                                           "modern (ResNet-9, SGD one-cycle, crop+flip, smoothing, TTA) or cpu-budget.")),
    "data": (Optional[str], typer.Option(None, "--data", help="Dataset: fashion-mnist (default), mnist, or a path.")),
    "data_dir": (Optional[str], typer.Option(None, "--data-dir", help="Folder holding the built-in dataset's files.")),
    "classes": (Optional[str], typer.Option(None, "--classes", help="Keep these classes, e.g. 0,1,2,3,4.")),
    "train_images": (Optional[int], typer.Option(None, "--train-images", help="Train on a stratified subset of this "
                                                 "many images (default: all).")),
    "val_fraction": (Optional[float], typer.Option(None, "--val-fraction", help="Validation share of the training pool "
                                                  "(report: 0.2; 0 trains on all of it with a fixed schedule).")),
    "split_seed": (Optional[int], typer.Option(None, "--split-seed", min=0, max=MAX_SEED, help="Seed of the "
                                               "train/validation split (default 0: every run shares one validation set).")),
    "epochs": (Optional[int], typer.Option(None, "--epochs", help="Epochs per run (report: 40); with a time "
                                           "budget, the most a run trains.")),
    "time_budget": (Optional[str], typer.Option(None, "--time-budget", help="Time for the whole command, e.g. 900, "
                                                "15m, 1h30m (0 = none): each run measures its speed and picks its "
                                                "epochs to fit; a study or ensemble divides it among its runs, a "
                                                "search stops starting trials (cpu-budget recipe: 15m).")),
    "budget_width": (Optional[str], typer.Option(None, "--budget-width", help="EPOCHS:WIDTH pairs, e.g. 48:16: "
                                                 "where the time budget holds EPOCHS epochs at the configured "
                                                 "width, train at WIDTH instead (cpu-budget: 48:16; off keeps the "
                                                 "width).", callback=lambda text: None if text is None else
                                                 parse_budget_width(text))),
    "batch_size": (Optional[int], typer.Option(None, "--batch-size", help="Batch size (report: 128).")),
    "optimizer": (Optional[str], typer.Option(None, "--optimizer", help="adam (report), sgd, rmsprop or adamw.")),
    "lr": (Optional[float], typer.Option(None, "--lr", help="Learning rate (report: 1e-3).")),
    "momentum": (Optional[float], typer.Option(None, "--momentum", help="SGD momentum (report: 0).")),
    "weight_decay": (Optional[float], typer.Option(None, "--weight-decay", help="Weight decay of conv/dense weights.")),
    "lr_schedule": (Optional[str], typer.Option(None, "--lr-schedule", help="plateau (report), one-cycle, cosine, "
                                                "linear or constant.")),
    "plateau_monitor": (Optional[str], typer.Option(None, "--plateau-monitor", help="What the plateau schedule "
                                                    "watches: val_loss (report; mode min) or val_accuracy (mode max).")),
    "plateau_threshold": (Optional[float], typer.Option(None, "--plateau-threshold", help="Relative change the "
                                                        "plateau schedule counts as better (default 1e-4).")),
    "plateau_cooldown": (Optional[int], typer.Option(None, "--plateau-cooldown", help="Epochs the plateau schedule "
                                                     "waits after a reduction (default 0).")),
    "clip_grad_norm": (Optional[float], typer.Option(None, "--clip-grad-norm", help="Clip the gradients' total L2 norm "
                                                     "to this before each step (0 = off, default).")),
    "label_smoothing": (Optional[float], typer.Option(None, "--label-smoothing", help="Label smoothing (0 = off).")),
    "augment": (Optional[bool], typer.Option(None, "--augment/--no-augment", help="The report's ImageDataGenerator "
                                             "augmentation.")),
    "crop_padding": (Optional[int], typer.Option(None, "--crop-padding", help="Random crops after padding by N pixels.")),
    "hflip": (Optional[bool], typer.Option(None, "--hflip/--no-hflip", help="Random left-right flips (clothing yes, "
                                           "digits no).")),
    "erasing": (Optional[float], typer.Option(None, "--erasing", help="Probability of random erasing per image.")),
    "mixup": (Optional[float], typer.Option(None, "--mixup", help="Mixup Beta alpha (0 = off).")),
    "cutmix": (Optional[float], typer.Option(None, "--cutmix", help="CutMix Beta alpha (0 = off).")),
    "ema": (Optional[float], typer.Option(None, "--ema", help="Average the weights with this decay, e.g. 0.999.")),
    "tta": (Optional[bool], typer.Option(None, "--tta/--no-tta", help="Flip test-time augmentation.")),
    "tta_translate": (Optional[bool], typer.Option(None, "--tta-translate/--no-tta-translate", help="With --tta, "
                                                   "also the flip pair shifted one pixel along each diagonal (final evaluation, predict, export).")),
    "early_stopping": (Optional[int], typer.Option(None, "--early-stopping", help="Stop after N epochs without a "
                                                   "better --monitor (0 = off).")),
    "monitor": (Optional[str], typer.Option(None, "--monitor", help="What early stopping and --restore-best watch: "
                                            "val_loss (default) or val_accuracy.")),
    "restore_best": (Optional[bool], typer.Option(None, "--restore-best/--no-restore-best", help="Keep the best "
                                                  "epoch's weights (on with early stopping).")),
    "deterministic": (Optional[bool], typer.Option(None, "--deterministic/--no-deterministic", help="Deterministic "
                                                   "algorithms (warn where none exists) and cuDNN; recorded in env.json.")),
    "seed": (Optional[int], typer.Option(None, "--seed", help="Seed for init, shuffling, augmentation, dropout.")),
    "device": (Optional[str], typer.Option(None, "--device", help="auto, cpu or cuda.")),
    "precision": (Optional[str], typer.Option(None, "--precision", help="auto (bf16 where fast: CUDA 8.0+, AMX "
                                              "CPUs, CPUs whose measured bf16 products run 1.3x fp32's; fp16 on "
                                              "CUDA 7.x; else fp32), fp32, bf16, fp16 or fp64.")),
    "compile": (Optional[bool], typer.Option(None, "--compile/--no-compile", help="torch.compile, or not (default: a probe decides).")),
    "sync_batchnorm": (Optional[bool], typer.Option(None, "--sync-batchnorm/--no-sync-batchnorm", help="torchrun on "
                                                    "CUDA: BatchNorm statistics over every process's batch.")),
    "cuda_graphs": (Optional[bool], typer.Option(None, "--cuda-graphs/--no-cuda-graphs", help="CUDA: capture the whole "
                                                 "training step in a CUDA graph (adam/adamw; resume not bit-exact).")),
    "weights": (Optional[str], typer.Option(None, "--weights", help="Transfer models: 'imagenet' or a local file.")),
    "config": (Optional[Path], typer.Option(None, "--config", help="TOML file of settings (keys as in config.json).")),
    "params": (Optional[Path], typer.Option(None, "--params", help="JSON of parameters (as `cnnlab tune` writes "
                                            "best.json).")),
}


TRACKING_OPTIONS = {
    "tensorboard": (Optional[bool], typer.Option(None, "--tensorboard/--no-tensorboard", help="Write TensorBoard event "
                                                 "files (OUT/tensorboard/RUN, or --tensorboard-dir).")),
    "tensorboard_dir": (Optional[Path], typer.Option(None, "--tensorboard-dir", help="Folder for TensorBoard event files.")),
    "mlflow": (Optional[bool], typer.Option(None, "--mlflow/--no-mlflow", help="Log to MLflow: a local store beside the "
                                            "output (sqlite OUT/mlflow.db), or --mlflow-uri.")),
    "mlflow_uri": (Optional[str], typer.Option(None, "--mlflow-uri", help="MLflow tracking URI (a server or a database).")),
}

RAY_OPTIONS = {
    "ray": (bool, typer.Option(False, "--ray", help="Train on a Ray cluster: a local one on 127.0.0.1, or --ray-address.")),
    "ray_address": (Optional[str], typer.Option(None, "--ray-address", help="With --ray: 'auto' joins the cluster "
                                                "`ray start` runs here; IP:PORT joins another.")),
}


def training_options(fn):
    """Add TRAINING_OPTIONS to a command; the function receives them as one dict `options`."""
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
           if p.name != "options"]
    shared = {**TRAINING_OPTIONS, **TRACKING_OPTIONS, **(RAY_OPTIONS if "ray" in signature.parameters else {})}
    own = [p for p in own if p.name not in RAY_OPTIONS]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in shared.items()]

    @functools.wraps(fn)
    def command(**kwargs):
        options = {name: kwargs.pop(name) for name in TRAINING_OPTIONS}
        tracking = {name: kwargs.pop(name) for name in TRACKING_OPTIONS}
        given = {name for name, value in options.items() if value is not None}
        options["tensorboard"] = tracking["tensorboard_dir"] or bool(tracking["tensorboard"])
        options["mlflow"] = tracking["mlflow_uri"] or bool(tracking["mlflow"])
        try:
            return fn(**kwargs, options=options)
        except UserError as exc:
            _name_the_flag(exc, given)
            raise

    return _with_signature(command, signature, own + extra)


def _name_the_flag(exc: UserError, given: set[str]) -> None:
    """A setting's check names its key ("val_fraction: must lie in [0, 1)"), as config files spell it; where the
    value came from a flag, the line names the flag (--val-fraction), as the user typed it. In place: the error
    keeps its type and what was attached to it (the run directory, the errno)."""
    key, sep, rest = str(exc).partition(":")
    if sep and key in given and exc.args and exc.args[0] == str(exc):
        exc.args = (f"--{key.replace('_', '-')}{sep}{rest}",) + exc.args[1:]


def _with_signature(command, signature, parameters):

    command.__signature__ = signature.replace(parameters=parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


def _interrupted(message: str) -> None:
    print(f"cnnlab: interrupted; {message}", file=sys.stderr)
    sys.exit(130)


def _say(quiet: bool = False):
    return (lambda text: None) if quiet else (lambda text: console.print(escape(text), highlight=False))


# ------------------------------------------------------------------ commands


@app.command("train")
@training_options
def train_cmd(
    model: Optional[str] = typer.Argument(None, help="Model name (see `cnnlab models`); default tuned-cnn."),
    out: Path = typer.Option(Path("runs"), "--out", help="Folder that receives the run directory."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run directory "
                                          "(or extend a finished one with --epochs)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output: prints only the run directory (for scripts)."),
    options: dict = None,
) -> None:
    """Train a model (default: the report's recipe: Adam, cross-entropy, batch 128, ReduceLROnPlateau)."""
    target = resume
    with torchrun.session(options.get("device") or "auto") as dist:
        try:
            run = api.train(api.DEFAULT if model is None else model, out=out, resume=resume, quiet=quiet, **options)
        except UserError as exc:
            kept = getattr(exc, "run_dir", None)
            if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) and kept and RunDir(kept).has_checkpoint():
                raise UserError(f"{exc}; then continue with: cnnlab train --resume {kept}") from None
            if getattr(exc, "run_dir_named", False) and kept is None:  # the progress header named one, now gone
                raise UserError(f"{exc} (nothing was kept: the run directory was removed)") from None
            raise
        except KeyboardInterrupt as exc:
            if dist is not None and not dist.lead:
                sys.exit(130)  # torchrun: rank 0 alone says what to do next (one line, not one per process)
            target = target or getattr(exc, "run_dir", None)  # None: stopped before anything worth keeping
            if target is None:
                _interrupted("stopped before the first epoch finished; nothing was kept. Run the same command again")
            again = (f"torchrun --nproc-per-node {dist.world_size} -m cnnlab train" if dist is not None
                     else "cnnlab train")  # --resume needs as many processes as before
            _interrupted(f"the run directory holds every finished epoch. Continue with: {again} --resume {target}")
        if dist is None or dist.lead:  # torchrun: rank 0 reports
            _report_run(run, quiet)


@app.command("lr-find")
@training_options
def lr_find_cmd(
    model: Optional[str] = typer.Argument(None, help="Model name (see `cnnlab models`); default tuned-cnn."),
    plot: Path = typer.Option(Path("lr_find.png"), "--plot", help="Where to write the plot (loss against lr)."),
    start_lr: float = typer.Option(1e-7, "--start-lr", help="First rate of the sweep."),
    end_lr: float = typer.Option(10.0, "--end-lr", help="Last rate of the sweep."),
    steps: int = typer.Option(100, "--steps", min=2, help="Batches over which the rate grows exponentially."),
    options: dict = None,
) -> None:
    """fastai's learning-rate finder: sweep the rate up exponentially on real batches until the loss diverges;
    suggest fastai's "valley" rate. Trains nothing permanently, writes no run directory, only the plot."""
    options.pop("tensorboard", None), options.pop("mlflow", None)
    result = api.lr_find(api.DEFAULT if model is None else model, plot=plot, start_lr=start_lr, end_lr=end_lr,
                         steps=steps, **options)
    console.print(f"suggested lr {result.suggestion:.3g} (valley, {len(result.lrs)} steps); plot: "
                  f"{escape(str(result.plot))}", highlight=False)
    console.print(f"use it: {escape(result.command)}", highlight=False)


def _report_run(run, quiet: bool) -> None:
    try:
        figures = run.plot()
    except KeyboardInterrupt:  # training is done and saved; only the figures are missing
        _interrupted(f"the run finished, but some figures were not drawn. Draw them with: cnnlab plot {run.path}")
    metrics = run.metrics
    if quiet:  # one line a script can take: the run directory (nothing at all left it to guess)
        console.print(escape(str(run.path)), highlight=False, soft_wrap=True)
    else:
        line = f"val accuracy {metrics['val_accuracy']:.4f}" if metrics.get("val_accuracy") is not None else "no validation split"
        if "test_accuracy" in metrics:
            line += f", test accuracy {metrics['test_accuracy']:.4f}"
        console.print(f"[bold]done[/bold]: {escape(line)}; {metrics['train_images_per_second']:,.0f} train images/s")
        console.print(f"run directory: {escape(str(run.path))}", highlight=False)
        console.print("figures: " + escape(", ".join(str(f) for f in figures)), highlight=False)


@app.command("evaluate")
def evaluate_cmd(run_dir: Path = typer.Argument(..., help="A run directory written by `cnnlab train`."),
                 split: str = typer.Option("val", "--split", help="val (the 20% holdout) or test (the official test split)."),
                 json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON here.")) -> None:
    """Accuracy, per-class precision/recall/F1 (scikit-learn) and the confusion matrix."""
    if json_out:
        require_free_output(json_out, inputs=[run_dir], what="json")  # not the run's own metrics.json
    m = api.evaluate(run_dir, split)
    console.print(f"[bold]{split}[/bold] accuracy {m['accuracy']:.4f}  loss {m.get('loss', float('nan')):.4f}  "
                  f"macro F1 {m['macro_f1']:.4f}")
    table = Table()
    for col in ("class", "name", "precision %", "recall %", "F1 %", "support"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for row in m["per_class"]:
        table.add_row(str(row["class"]), escape(row["name"]), f"{100 * row['precision']:.2f}",
                      f"{100 * row['recall']:.2f}", f"{100 * row['f1']:.2f}", str(row["support"]))
    console.print(table)
    console.print(f"hardest class: {escape(m['hardest_class'])}; easiest class: {escape(m['easiest_class'])}")
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    ids = [str(row["class"]) for row in m["per_class"]]  # the labels the table above and predict use
    for label in ids:
        cm.add_column(label, justify="right")
    for label, counts in zip(ids, m["confusion_matrix"]):
        cm.add_row(label, *map(str, counts))
    console.print(cm)
    if json_out:
        write_json(json_out, m)


@app.command("predict")
def predict_cmd(run_dir: Path = typer.Argument(..., help="A run or ensemble directory, or an exported .onnx file."),
                input: Path = typer.Option(..., "--input", help="Images to predict: Kaggle test CSV (pixel columns by name, "
                                    "ids from its id/ImageId column), .npz/.npy, an IDX images file or folder, or a folder of "
                                    "images, flat or in subfolders (ids: the file names' stems; sorted 1.png, 2.png, 10.png). "
                                    "A source with a test split, such as the Fashion-MNIST folder, gives that split."),
                output: Path = typer.Option(Path("submission.csv"), "-o", "--output", help="CSV to write (id,label)."),
                device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
                columns: Optional[str] = typer.Option(None, "--columns", help="The header the competition asks for, the "
                                                      "id's column then the label's (default id,label; Kaggle's "
                                                      "Digit Recognizer: ImageId,Label).")) -> None:
    """Write a Kaggle-style submission: id and predicted label per image (ids from the input's id column or file
    names, else 1-based)."""
    result = api.submission(run_dir, input, output, columns=columns, device=device)
    console.print(f"wrote {result['rows']} predictions to {escape(result['output'])} (per class: {result['counts']})",
                  highlight=False)


@app.command("export")
def export_cmd(run_dir: Path = typer.Argument(..., help="A finished run or ensemble directory."),
               format: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
               output: Optional[Path] = typer.Option(None, "-o", "--output", help="File to write (default RUN_DIR/model.onnx).")) -> None:
    """Export for deployment: one ONNX graph (uint8 pixels in, logits or the ensemble's vote out), checked
    with ONNX Runtime against PyTorch's fp32 logits on the run's validation images before it is written."""
    result = api.export(run_dir, output, format=format)
    console.print(escape(f"wrote {result['output']} ({result['bytes']:,} bytes, opset {result['opset']}); checked on "
                         f"{result['images_checked']} images: max |diff| {result['max_abs_diff']:.2e} (tolerance "
                         f"{result['atol']:.2e}), {result['argmax_agreement']:.2%} same predictions"), highlight=False)


@app.command("plot")
def plot_cmd(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Redraw a run's figures from its directory: accuracy/loss curves, confusion matrix, confident mistakes."""
    for path in api.load_run(run_dir).plot():
        console.print(f"wrote {escape(str(path))}", highlight=False)


@app.command("ensemble")
@training_options
def ensemble_cmd(
    model: str = typer.Argument(..., help="Model to train members of, or 'combine' to vote in an existing DIR."),
    directory: Optional[Path] = typer.Argument(None, help="With 'combine': the ensemble directory."),
    members: int = typer.Option(30, "--members", help="Qualified members wanted (report: about 30)."),
    threshold: float = typer.Option(0.91, "--threshold", help="Keep a member if its validation accuracy reaches this."),
    vote: Optional[str] = typer.Option(None, "--vote", help="hard (majority; the report recipe's default) or soft "
                                       "(mean probability; the modern recipes' default)."),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="Give up after this many trained members (default 3 x members)."),
    only_members: Optional[str] = typer.Option(None, "--only-members", help="Train only these attempt indices, e.g. 0-9."),
    fuse: int = typer.Option(0, "--fuse", help="Members trained at once in one fused network (0 = auto, 1 = one at a time)."),
    out: Path = typer.Option(Path("ensemble"), "--out", help="The ensemble directory (created or continued)."),
    quiet: bool = typer.Option(False, "--quiet", help="Only the summary."),
    ray: bool = False, ray_address: Optional[str] = None,
    options: dict = None,
) -> None:
    """The report's threshold-filtered vote of retrained models (write its Kaggle submission with
    `cnnlab predict ENSEMBLE_DIR --input TEST -o submission.csv`).

    Trains members with different seeds, keeps those whose validation accuracy passes --threshold and
    votes. Re-running the command continues an interrupted ensemble; `combine DIR` votes again."""
    if model == "combine":
        if directory is None:
            raise UserError("usage: cnnlab ensemble combine DIR")
        manifest, target = api.combine(directory), directory
    else:
        if directory is not None:
            raise UserError(f"unexpected argument {directory}; the ensemble directory is given with --out")
        try:
            manifest = api.ensemble(model, members, threshold, vote, out=out, max_attempts=max_attempts,
                                    only_members=only_members, fuse=fuse, say=_say(quiet), ray=ray,
                                    ray_address=ray_address, **options)
        except KeyboardInterrupt:
            _interrupted(f"finished members are kept, interrupted ones resume. Continue with the same command (--out {out}).")
        target = out
    console.print(f"[bold]{manifest['qualified']}[/bold] of {manifest['attempts']} trained members qualified "
                  f"(validation accuracy >= {manifest['threshold']}; the test split was not used to choose)", highlight=False)
    if manifest["qualified"]:
        accs = [m["val_accuracy"] for m in manifest["members"]]
        line = f"members' val accuracy {min(accs):.4f}-{max(accs):.4f}; {manifest['vote']} vote: val {manifest['val_accuracy']:.4f}"
        if "test_accuracy" in manifest:
            taccs = [m["test_accuracy"] for m in manifest["members"]]
            line += f"; members' test {min(taccs):.4f}-{max(taccs):.4f}; vote test {manifest['test_accuracy']:.4f}"
        console.print(line, highlight=False)
        console.print(escape(f"ensemble directory: {target} (growth.png: accuracy against members; "
                             f"cnnlab predict {target} --input test.csv -o submission.csv)"), highlight=False)


@app.command("study")
@training_options
def study_cmd(
    models: str = typer.Option(",".join(REPORT_STUDY_MODELS), "--models", help="Comma-separated models to compare."),
    repeats: int = typer.Option(3, "--repeats", help="Runs per model, with seeds seed..seed+N-1."),
    out: Path = typer.Option(Path("study"), "--out", help="Study directory (created or continued)."),
    quiet: bool = typer.Option(False, "--quiet", help="Only the summary."),
    ray: bool = False, ray_address: Optional[str] = None,
    options: dict = None,
) -> None:
    """Section 1.4 of the report: train each model N times, then write report.html and report.md.

    Finished runs are reused, so an interrupted study continues where it stopped."""
    try:
        result = api.study(models, repeats, out=out, say=_say(quiet), ray=ray, ray_address=ray_address, **options)
    except KeyboardInterrupt:
        _interrupted(f"finished runs are kept. Continue with the same command (--out {out}).")
    console.print(escape(f"report: {result['report'].resolve()} (Markdown: {result['markdown'].resolve()})"),
                  highlight=False)


@app.command("report")
def report_cmd(directories: list[Path] = typer.Argument(..., help="Run, study or ensemble directories."),
               output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file; a .md is written beside it."),
               title: str = typer.Option("cnnlab study report", "--title", help="Heading of the report.")) -> None:
    """Rebuild the study report from run directories alone (no training): HTML with embedded images, and Markdown."""
    html_path, md_path = build_report(directories, output, title)
    console.print(escape(f"report: {html_path.resolve()} (Markdown: {md_path.resolve()})"), highlight=False)


@app.command("tune")
@training_options
def tune_cmd(
    model: str = typer.Argument(..., help="Model to tune (its tunable hyperparameters join the search)."),
    trials: int = typer.Option(50, "--trials", help="Finished trials wanted in the study (all workers together)."),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="Another name of --time-budget: no trial starts "
                                          "once this worker's time is spent (900, 15m, 1h30m)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Database URL (e.g. postgresql://...); default a journal file in --out."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Study to create or join (default cnnlab-MODEL)."),
    metric: str = typer.Option("val_accuracy", "--metric", help="val_accuracy (maximized) or val_loss (minimized)."),
    pruner: str = typer.Option("median", "--pruner", help="median, halving (successive halving) or none."),
    space: Optional[Path] = typer.Option(None, "--space", help="TOML/JSON narrowing or replacing the search space."),
    out: Path = typer.Option(Path("tune"), "--out", help="Folder for trials, journal, trials.csv, best.json and plots."),
    ray: bool = False, ray_address: Optional[str] = None,
    options: dict = None,
) -> None:
    """Hyperparameter search with Optuna (the report used hyperas), pruning unpromising trials.

    Searches dropout rates, dense units, optimizer x learning rate and batch size. Start several of
    these on one study to search in parallel."""
    try:
        summary = api.tune(model, trials, out=out, timeout=timeout, storage=storage, study_name=study_name,
                           metric=metric, space=space, pruner=pruner, say=_say(), ray=ray, ray_address=ray_address,
                           **options)
    except KeyboardInterrupt:
        _interrupted("finished trials are kept in the study. Continue with the same command.")
    console.print(f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed trials; "
                  f"pruning saved about {summary['seconds_saved_by_pruning']:.0f} s of training", highlight=False)
    if "best_params" in summary:
        console.print(escape(f"best {metric} {summary['best_value']:.4f} (trial {summary['best_trial']}): "
                             f"{summary['best_params']}"), highlight=False)
        console.print(escape(f"use it: cnnlab train {model} --params {out / 'best.json'}   (table: {out / 'trials.csv'}, "
                             f"page: {out / 'tune.html'})"), highlight=False)


# 2 seeds x 3 epochs x 8,000 images of cnn1, tuned-cnn and cnn4 at the speeds bench/run.py measured on a
# 2-core AMD EPYC (AVX2-only: 5,000, 1,150 and 290 images/s) is about 220 s of training: under 5 minutes
DEMO_TRAIN_IMAGES = 8000


@app.command("demo")
def demo(out: Path = typer.Option(Path("demo"), "--out", help="Folder for everything the demo writes."),
         epochs: int = typer.Option(3, "--epochs", min=1, help="Epochs per run."),
         train_images: int = typer.Option(DEMO_TRAIN_IMAGES, "--train-images", min=5,
                                          help="Training images per run (a stratified subset of the training split; 24,000: all of it).")) -> None:
    """The main job, as `make demo` runs it: a short version of the report's study on Fashion-MNIST.

    5 classes, three of the report's models, two seeds each, every table and figure of the HTML report.
    Its training takes about 4 minutes (under 5) on a 2-core AVX2-only CPU (bench/README.md has the measured speeds)."""
    classes = "0,1,2,3,4"
    data_info("fashion-mnist", None, classes, False, 0.2, 0)
    data_preview("fashion-mnist", out / "preview.png", 8, None, classes, False, 0)
    try:
        result = api.study("cnn1,tuned-cnn,cnn4", 2, "fashion-mnist", out=out / "study", classes=classes,
                           epochs=epochs, train_images=train_images, say=_say())
    except KeyboardInterrupt:
        _interrupted(f"finished runs are kept. Continue with the same command (--out {out}).")
    console.print(f"[bold]demo output:[/bold] {escape(str(out.resolve()))}")
    console.print(escape(f"report: {result['report'].resolve()}"), highlight=False)  # last: what to open


def _version(value: bool) -> None:
    if value:
        console.print(f"cnnlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Train, compare, tune and ensemble CNNs on small grayscale image datasets."""


def _show_flags_as_flags(*typers: typer.Typer) -> None:
    """typer's --help lists a flag as `--quiet <bool>`, as if it took a value: with an empty metavar it reads
    `--quiet` (and `--augment  --no-augment`). Only the help changes; the flags are spelled as before."""
    for group in typers:
        if not group.info.cls or group.info.cls is typer.core.TyperGroup:  # unset: a falsy placeholder
            group.info.cls = _FlagHelpGroup
        callbacks = [group.registered_callback.callback] if group.registered_callback else []
        for command in group.registered_commands:
            if not command.cls or command.cls is typer.core.TyperCommand:
                command.cls = _FlagHelpCommand
            callbacks.append(command.callback)
        for fn in filter(None, callbacks):
            for p in inspect.signature(fn).parameters.values():
                if isinstance(p.default, typer.models.OptionInfo) and p.annotation in (bool, Optional[bool]) \
                        and p.default.metavar is None:
                    p.default.metavar = ""


def _flag_help_option(get_help_option):
    def help_option(self, ctx):
        option = get_help_option(self, ctx)
        if option is not None:
            option.metavar = ""  # --help, not --help <bool>
        return option
    return help_option


class _FlagHelpCommand(typer.core.TyperCommand):
    get_help_option = _flag_help_option(typer.core.TyperCommand.get_help_option)


class _FlagHelpGroup(typer.core.TyperGroup):
    get_help_option = _flag_help_option(typer.core.TyperGroup.get_help_option)


_show_flags_as_flags(app, data_app)


def _usage_error_line(exc: Exception) -> str | None:
    """One line for click's usage errors (bad flag, bad value, unknown command), which are otherwise a box."""
    if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
        return None
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "cnnlab"
    message = " ".join(str(exc.format_message()).split())
    return f"{message} (see '{command} --help')"


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # `kill` stops work the way Ctrl-C does: finished epochs and members are kept


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        _main()
    except SystemExit as exc:
        if torchrun.joined():  # a torchrun rank ends without finalization (torchrun.leave says why)
            torchrun.leave(exc.code)
        raise


def _main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with command_line():  # messages name --flags, not the API's keywords
            result = app(standalone_mode=False)
    except UserError as exc:
        print(f"cnnlab: error: {visible(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        line = _usage_error_line(exc)
        if line is None:
            raise  # a bug: keep the traceback
        if str(exc.format_message()).strip():  # empty: the help was shown instead (no arguments)
            print(f"cnnlab: error: {line}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    sys.exit(result if isinstance(result, int) else 0)
