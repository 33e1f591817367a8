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
console = Console()

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
    from cnnlab.models import count_parameters, create_model, list_models, model_info

    table = Table()
    for col, justify in (("model", "left"), ("total params", "right"), ("trainable", "right"),
                         ("input", "right"), ("description", "left")):
        table.add_column(col, justify=justify)
    for name in list_models():
        info = model_info(name)
        extra = {"weights": "random"} if info.family == "transfer" else {}
        trainable, frozen = count_parameters(create_model(name, num_classes=num_classes, **extra))
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
    from cnnlab.models import create_model, keras_shape, model_info, summarize

    extra = {"weights": "random"} if model_info(model).family == "transfer" else {}
    net = create_model(model, num_classes=num_classes, in_chans=in_chans, image_size=image_size, **extra)
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


@app.command("demo")
def demo(out: Path = typer.Option(Path("demo"), "--out", help="Folder for everything the demo writes.")) -> None:
    """The main job on Fashion-MNIST: what `make demo` runs."""
    out.mkdir(parents=True, exist_ok=True)
    data_info("fashion-mnist", None, "0,1,2,3,4", False, 0.2, 0)
    data_preview("fashion-mnist", out / "preview.png", 8, None, "0,1,2,3,4", False, 0)
    console.print(f"[bold]demo output:[/bold] {out.resolve()}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except UserError as exc:
        print(f"cnnlab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        sys.exit(130)
