"""The `cnnlab` command line: parse options, build a config, call the library. No logic of its own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cnnlab.errors import UserError

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

# options shared by train, study, ensemble and tune
DATA_OPT = typer.Option(None, "--data", help="Dataset: fashion-mnist (default), mnist, or a path.")
DATA_DIR_OPT = typer.Option(None, "--data-dir", help="Folder holding the built-in dataset's files.")
CLASSES_OPT = typer.Option(None, "--classes", help="Keep these classes, e.g. 0,1,2,3,4.")
EPOCHS_OPT = typer.Option(None, "--epochs", help="Epochs per run (report: 40).")
BATCH_SIZE_OPT = typer.Option(None, "--batch-size", help="Batch size (report: 128).")
OPTIMIZER_OPT = typer.Option(None, "--optimizer", help="adam (default), sgd or rmsprop.")
LR_OPT = typer.Option(None, "--lr", help="Learning rate (default 1e-3).")
AUGMENT_OPT = typer.Option(None, "--augment/--no-augment", help="The report's ImageDataGenerator augmentation.")
SEED_OPT = typer.Option(None, "--seed", help="Seed for init, shuffling, augmentation, dropout.")
DEVICE_OPT = typer.Option(None, "--device", help="auto, cpu or cuda.")
PRECISION_OPT = typer.Option(None, "--precision", help="auto (bf16 on CUDA and CPUs with native bf16), fp32 or bf16.")
CONFIG_OPT = typer.Option(None, "--config", help="TOML file with training options (keys as in config.json).")


@data_app.command("info")
def data_info(dataset: str = DatasetArg, data_dir: Optional[Path] = DataDirOpt,
              classes: Optional[str] = ClassesOpt, keep_rgb: bool = KeepRgbOpt,
              val_fraction: float = typer.Option(0.2, help="Share of the training pool held out for validation."),
              split_seed: int = typer.Option(0, help="Seed of the stratified train/validation split.")) -> None:
    """Images per split and per class, image shape, pixel mean/std."""
    import torch

    from cnnlab.data import load_dataset, pixel_stats, train_val_split

    ds = load_dataset(dataset, data_dir=data_dir, classes=classes, keep_rgb=keep_rgb)
    splits = train_val_split(ds, val_fraction, split_seed)
    mean, std = pixel_stats(ds.train.images)
    c, h, w = ds.shape
    console.print(f"[bold]{ds.name}[/bold] from {ds.source}" + ("  (checksums verified)" if ds.verified else ""))
    console.print(f"images: {c} x {h} x {w} uint8   pixel mean {mean:.4f}  std {std:.4f} (scaled to 0..1)")
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
        table.add_row(str(k), name, *[str(cnt[k]) if cnt else "-" for cnt in counts])
    table.add_row("", "[bold]total[/bold]", *[f"[bold]{len(s)}[/bold]" for _, s in parts])
    console.print(table)
    if ds.test is None:
        console.print("no separate test split in this source")


@data_app.command("preview")
def data_preview(dataset: str = DatasetArg,
                 output: Path = typer.Option(Path("preview.png"), "-o", "--output", help="PNG file to write."),
                 per_class: int = typer.Option(8, min=1, max=32, help="Examples per class."),
                 data_dir: Optional[Path] = DataDirOpt, classes: Optional[str] = ClassesOpt,
                 keep_rgb: bool = KeepRgbOpt, seed: int = typer.Option(0, help="Which examples to draw.")) -> None:
    """Write a PNG grid with a row of examples per class."""
    from cnnlab.data import load_dataset
    from cnnlab.plots import preview_grid

    if output.suffix.lower() != ".png":
        raise UserError(f"-o {output}: the preview is a PNG; give a file name ending in .png")
    ds = load_dataset(dataset, data_dir=data_dir, classes=classes, keep_rgb=keep_rgb)
    path = preview_grid(ds.train.images.numpy(), ds.train.labels.numpy(), ds.class_names, output, per_class, seed)
    console.print(f"wrote {path}")


@app.command("models")
def models_cmd(num_classes: int = typer.Option(10, "--num-classes", min=2,
                                              help="Classes to count parameters at (the report used 5).")) -> None:
    """Every registered model: parameters (1 input channel), default input size, description."""
    from cnnlab.models import count_parameters, create_architecture, list_models, model_info

    table = Table()
    table.add_column("model", no_wrap=True, min_width=max(map(len, list_models())))  # names are what users copy
    for col, justify in (("total params", "right"), ("trainable", "right"), ("input", "right"), ("description", "left")):
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
    from cnnlab.models import create_architecture, keras_shape, summarize

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


def _run_dir(out: Path, model: str) -> Path:
    """A fresh run directory under `out`: MODEL-YYYYmmdd-HHMMSS (a suffix if taken)."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out / f"{model}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = out / f"{base.name}-{k}"
    return path


@app.command("train")
def train_cmd(
    model: Optional[str] = typer.Argument(None, help="Model name (see `cnnlab models`); default tuned-cnn."),
    data: Optional[str] = DATA_OPT,
    data_dir: Optional[str] = DATA_DIR_OPT,
    classes: Optional[str] = CLASSES_OPT,
    epochs: Optional[int] = EPOCHS_OPT,
    batch_size: Optional[int] = BATCH_SIZE_OPT,
    optimizer: Optional[str] = OPTIMIZER_OPT,
    lr: Optional[float] = LR_OPT,
    augment: Optional[bool] = AUGMENT_OPT,
    seed: Optional[int] = SEED_OPT,
    device: Optional[str] = DEVICE_OPT,
    precision: Optional[str] = PRECISION_OPT,
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    early_stopping: Optional[int] = typer.Option(None, "--early-stopping", help="Stop after N epochs without a better val loss (0 = off)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Transfer models: 'imagenet' or a local weights file."),
    params: Optional[Path] = typer.Option(None, "--params", help="JSON of parameters (as `cnnlab tune` writes best.json)."),
    config: Optional[Path] = CONFIG_OPT,
    out: Path = typer.Option(Path("runs"), "--out", help="Folder that receives the run directory."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run directory."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """Train a model with the report's recipe (Adam, cross-entropy, batch 128, ReduceLROnPlateau)."""
    from cnnlab.config import build_config, read_config_file, read_params_file
    from cnnlab.engine import train
    from cnnlab.evaluation import plot_run
    from cnnlab.progress import ConsoleReporter
    from cnnlab.runs import read_json

    flags = dict(model=model, data=data, data_dir=data_dir, classes=classes, epochs=epochs, batch_size=batch_size,
                 optimizer=optimizer, lr=lr, augment=augment, seed=seed, device=device, precision=precision,
                 compile=compile, early_stopping=early_stopping, weights=weights)
    from_checkpoint = False
    if resume is not None:
        if not (resume / "config.json").is_file():
            raise UserError(f"--resume {resume}: not a cnnlab run directory (no config.json); nothing to resume")
        # interrupted before its first epoch finished: no checkpoint yet, so start it over in place
        from_checkpoint = (resume / "checkpoint.safetensors").is_file()
        stored = read_json(resume / "config.json")
        changed = {k: v for k, v in flags.items() if v is not None and k not in ("epochs", "device")}
        if changed:
            raise UserError(f"--resume continues the stored configuration; only --epochs and --device may change "
                            f"(got {', '.join('--' + k.replace('_', '-') for k in changed)})")
        cfg = build_config(stored, {"epochs": epochs, "device": device})
        run_dir = resume
    else:
        cfg = build_config(read_config_file(config) if config else {}, read_params_file(params) if params else {}, flags)
        run_dir = _run_dir(out, cfg.model)
    reporter = ConsoleReporter(console, quiet=quiet)
    try:
        metrics = train(cfg, run_dir, reporter, resume=from_checkpoint)
    except KeyboardInterrupt:
        print(f"cnnlab: interrupted; the run directory holds every finished epoch. Continue with: "
              f"cnnlab train --resume {run_dir}", file=sys.stderr)
        sys.exit(130)
    figures = plot_run(run_dir)
    if not quiet:
        line = f"val accuracy {metrics['val_accuracy']:.4f}"
        if "test_accuracy" in metrics:
            line += f", test accuracy {metrics['test_accuracy']:.4f}"
        console.print(f"[bold]done[/bold]: {line}; {metrics['train_images_per_second']:,.0f} train images/s")
        console.print(f"run directory: {run_dir}")
        console.print("figures: " + ", ".join(str(f) for f in figures))


@app.command("evaluate")
def evaluate_cmd(run_dir: Path = typer.Argument(..., help="A run directory written by `cnnlab train`."),
                 split: str = typer.Option("val", "--split", help="val (the 20% holdout) or test (the official test split)."),
                 json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON here.")) -> None:
    """Accuracy, per-class precision/recall/F1 (scikit-learn) and the confusion matrix."""
    from cnnlab.evaluation import evaluate_run
    from cnnlab.runs import write_json

    m = evaluate_run(run_dir, split)
    console.print(f"[bold]{split}[/bold] accuracy {m['accuracy']:.4f}  loss {m.get('loss', float('nan')):.4f}  "
                  f"macro F1 {m['macro_f1']:.4f}")
    table = Table()
    for col in ("class", "name", "precision %", "recall %", "F1 %", "support"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for row in m["per_class"]:
        table.add_row(str(row["class"]), row["name"], f"{100 * row['precision']:.2f}", f"{100 * row['recall']:.2f}",
                      f"{100 * row['f1']:.2f}", str(row["support"]))
    console.print(table)
    console.print(f"hardest class: {m['hardest_class']}; easiest class: {m['easiest_class']}")
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for k in range(len(m["per_class"])):
        cm.add_column(str(k), justify="right")
    for k, counts in enumerate(m["confusion_matrix"]):
        cm.add_row(str(k), *map(str, counts))
    console.print(cm)
    if json_out:
        write_json(json_out, m)


@app.command("predict")
def predict_cmd(run_dir: Path = typer.Argument(..., help="A run (or ensemble) directory."),
                input: Path = typer.Option(..., "--input", help="Unlabeled images: Kaggle test CSV, .npz/.npy, IDX or image folder."),
                output: Path = typer.Option(Path("submission.csv"), "-o", "--output", help="CSV to write (id,label)."),
                device: str = typer.Option("auto", "--device", help="auto, cpu or cuda.")) -> None:
    """Write a Kaggle-style submission: id and predicted label per image (ids as in the input, else 1-based)."""
    from cnnlab.predict import predict_run

    result = predict_run(run_dir, input, output, device)
    console.print(f"wrote {result['rows']} predictions to {result['output']} (per class: {result['counts']})")


@app.command("plot")
def plot_cmd(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Redraw a run's figures from its directory: accuracy/loss curves, confusion matrix, confident mistakes."""
    from cnnlab.evaluation import plot_run

    for path in plot_run(run_dir):
        console.print(f"wrote {path}")


@app.command("ensemble")
def ensemble_cmd(
    model: str = typer.Argument(..., help="Model to train members of, or 'combine' to vote in an existing DIR."),
    directory: Optional[Path] = typer.Argument(None, help="With 'combine': the ensemble directory."),
    members: int = typer.Option(30, "--members", help="Qualified members wanted (report: about 30)."),
    threshold: float = typer.Option(0.91, "--threshold", help="Keep a member if its validation accuracy reaches this."),
    vote: str = typer.Option("hard", "--vote", help="hard (majority) or soft (mean probability)."),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="Give up after this many trained members (default 3 x members)."),
    only_members: Optional[str] = typer.Option(None, "--only-members", help="Train only these attempt indices, e.g. 0-9 (for several machines)."),
    fuse: int = typer.Option(0, "--fuse", help="Members trained at once in one fused network (0 = auto, 1 = one at a time)."),
    data: Optional[str] = DATA_OPT,
    data_dir: Optional[str] = DATA_DIR_OPT,
    classes: Optional[str] = CLASSES_OPT,
    epochs: Optional[int] = EPOCHS_OPT,
    batch_size: Optional[int] = BATCH_SIZE_OPT,
    lr: Optional[float] = LR_OPT,
    augment: Optional[bool] = AUGMENT_OPT,
    seed: Optional[int] = SEED_OPT,
    device: Optional[str] = DEVICE_OPT,
    precision: Optional[str] = PRECISION_OPT,
    config: Optional[Path] = CONFIG_OPT,
    out: Path = typer.Option(Path("ensemble"), "--out", help="The ensemble directory (created or continued)."),
    quiet: bool = typer.Option(False, "--quiet", help="Only the summary."),
) -> None:
    """The report's threshold-filtered vote of retrained models, written out as a Kaggle submission.

    Trains members with different seeds, keeps those whose validation accuracy passes --threshold and
    votes. Re-running the command continues an interrupted ensemble; `combine DIR` votes again."""
    from cnnlab.config import build_config, read_config_file
    from cnnlab.ensemble import combine, parse_member_range, train_ensemble
    from cnnlab.progress import ConsoleReporter

    if model == "combine":
        if directory is None:
            raise UserError("usage: cnnlab ensemble combine DIR")
        manifest = combine(directory)
        target = directory
    else:
        if directory is not None:
            raise UserError(f"unexpected argument {directory}; the ensemble directory is given with --out")
        flags = dict(model=model, data=data, data_dir=data_dir, classes=classes, epochs=epochs, batch_size=batch_size,
                     lr=lr, augment=augment, seed=seed, device=device, precision=precision)
        cfg = build_config(read_config_file(config) if config else {}, flags)
        reporter = ConsoleReporter(console, quiet=True)
        say = (lambda text: None) if quiet else (lambda text: console.print(text, highlight=False))
        try:
            manifest = train_ensemble(cfg, out, members, threshold, vote, max_attempts, parse_member_range(only_members),
                                      fuse, reporter, say)
        except KeyboardInterrupt:
            print(f"cnnlab: interrupted; finished members are kept. Continue with the same command "
                  f"(--out {out}).", file=sys.stderr)
            sys.exit(130)
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
        console.print(f"ensemble directory: {target} (growth.png: accuracy against members; "
                      f"cnnlab predict {target} --input test.csv -o submission.csv)", highlight=False)


@app.command("study")
def study_cmd(
    models: str = typer.Option("cnn1,cnn2,cnn3,cnn4,inception,resnet50", "--models", help="Comma-separated models to compare."),
    repeats: int = typer.Option(3, "--repeats", help="Runs per model, with seeds seed..seed+N-1."),
    data: Optional[str] = DATA_OPT,
    data_dir: Optional[str] = DATA_DIR_OPT,
    classes: Optional[str] = CLASSES_OPT,
    epochs: Optional[int] = EPOCHS_OPT,
    batch_size: Optional[int] = BATCH_SIZE_OPT,
    optimizer: Optional[str] = OPTIMIZER_OPT,
    lr: Optional[float] = LR_OPT,
    augment: Optional[bool] = AUGMENT_OPT,
    seed: Optional[int] = SEED_OPT,
    device: Optional[str] = DEVICE_OPT,
    precision: Optional[str] = PRECISION_OPT,
    config: Optional[Path] = CONFIG_OPT,
    out: Path = typer.Option(Path("study"), "--out", help="Study directory (created or continued)."),
    quiet: bool = typer.Option(False, "--quiet", help="Only the summary."),
) -> None:
    """Section 1.4 of the report: train each model N times, then write report.html and report.md.

    Finished runs are reused, so an interrupted study continues where it stopped."""
    from cnnlab.config import build_config, read_config_file
    from cnnlab.progress import ConsoleReporter
    from cnnlab.report import build_report
    from cnnlab.study import run_study

    names = [m.strip() for m in models.split(",") if m.strip()]
    flags = dict(data=data, data_dir=data_dir, classes=classes, epochs=epochs, batch_size=batch_size,
                 optimizer=optimizer, lr=lr, augment=augment, seed=seed, device=device, precision=precision)
    cfg = build_config(read_config_file(config) if config else {}, flags, {"model": names[0] if names else None})
    say = (lambda text: None) if quiet else (lambda text: console.print(text, highlight=False))
    try:
        run_dirs = run_study(cfg, names, repeats, out, ConsoleReporter(console, quiet=True), say)
    except KeyboardInterrupt:
        print(f"cnnlab: interrupted; finished runs are kept. Continue with the same command (--out {out}).",
              file=sys.stderr)
        sys.exit(130)
    html_path, md_path = build_report(run_dirs, out / "report.html")
    console.print(f"report: {html_path.resolve()} (Markdown: {md_path.resolve()})", highlight=False)


@app.command("report")
def report_cmd(directories: list[Path] = typer.Argument(..., help="Run, study or ensemble directories."),
               output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file; a .md is written beside it."),
               title: str = typer.Option("cnnlab study report", "--title", help="Heading of the report.")) -> None:
    """Rebuild the study report from run directories alone (no training): HTML with embedded images, and Markdown."""
    from cnnlab.report import build_report

    html_path, md_path = build_report(directories, output, title)
    console.print(f"report: {html_path} (Markdown: {md_path})", highlight=False)


@app.command("tune")
def tune_cmd(
    model: str = typer.Argument(..., help="Model to tune (its tunable hyperparameters join the search)."),
    trials: int = typer.Option(50, "--trials", help="Finished trials wanted in the study (all workers together)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop this worker after this many seconds."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Database URL (e.g. postgresql://...); default a journal file in --out."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Study to create or join (default cnnlab-MODEL)."),
    metric: str = typer.Option("val_accuracy", "--metric", help="val_accuracy (maximized) or val_loss (minimized)."),
    pruner: str = typer.Option("median", "--pruner", help="median, halving (successive halving) or none."),
    space: Optional[Path] = typer.Option(None, "--space", help="TOML/JSON narrowing or replacing the search space."),
    data: Optional[str] = DATA_OPT,
    data_dir: Optional[str] = DATA_DIR_OPT,
    classes: Optional[str] = CLASSES_OPT,
    epochs: Optional[int] = EPOCHS_OPT,
    augment: Optional[bool] = AUGMENT_OPT,
    seed: Optional[int] = SEED_OPT,
    device: Optional[str] = DEVICE_OPT,
    precision: Optional[str] = PRECISION_OPT,
    config: Optional[Path] = CONFIG_OPT,
    out: Path = typer.Option(Path("tune"), "--out", help="Folder for trials, journal, trials.csv, best.json and plots."),
) -> None:
    """Hyperparameter search with Optuna (the report used hyperas), pruning unpromising trials.

    Searches dropout rates, dense units, optimizer x learning rate and batch size. Start several of
    these on one study to search in parallel."""
    from cnnlab.config import build_config, read_config_file
    from cnnlab.tune import read_space_file, run_tune

    flags = dict(model=model, data=data, data_dir=data_dir, classes=classes, epochs=epochs, augment=augment,
                 seed=seed, device=device, precision=precision)
    cfg = build_config(read_config_file(config) if config else {}, flags)
    search = read_space_file(space, cfg.model) if space else None
    say = lambda text: console.print(text, highlight=False)  # noqa: E731
    try:
        summary = run_tune(cfg, out, trials, timeout, storage, study_name, metric, search, pruner, say)
    except KeyboardInterrupt:
        print("cnnlab: interrupted; finished trials are kept in the study. Continue with the same command.",
              file=sys.stderr)
        sys.exit(130)
    console.print(f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed trials; "
                  f"pruning saved about {summary['seconds_saved_by_pruning']:.0f} s of training", highlight=False)
    if "best_params" in summary:
        console.print(f"best {metric} {summary['best_value']:.4f} (trial {summary['best_trial']}): {summary['best_params']}",
                      highlight=False)
        console.print(f"use it: cnnlab train {cfg.model} --params {out / 'best.json'}   (table: {out / 'trials.csv'}, "
                      f"page: {out / 'tune.html'})", highlight=False)


@app.command("demo")
def demo(out: Path = typer.Option(Path("demo"), "--out", help="Folder for everything the demo writes."),
         epochs: int = typer.Option(3, "--epochs", min=1, help="Epochs per run.")) -> None:
    """The main job, as `make demo` runs it: a short version of the report's study on Fashion-MNIST.

    5 classes, three fast models, two seeds each, ending with the HTML report (a few minutes on 2 CPU cores)."""
    out.mkdir(parents=True, exist_ok=True)
    data_info("fashion-mnist", None, "0,1,2,3,4", False, 0.2, 0)
    data_preview("fashion-mnist", out / "preview.png", 8, None, "0,1,2,3,4", False, 0)
    study_cmd(models="cnn1,tuned-cnn,cnn4", repeats=2, data="fashion-mnist", data_dir=None, classes="0,1,2,3,4",
              epochs=epochs, batch_size=None, optimizer=None, lr=None, augment=None, seed=None, device=None,
              precision=None, config=None, out=out / "study", quiet=False)
    console.print(f"[bold]demo output:[/bold] {out.resolve()}")


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
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = app(standalone_mode=False)
    except UserError as exc:
        print(f"cnnlab: error: {exc}", file=sys.stderr)
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
