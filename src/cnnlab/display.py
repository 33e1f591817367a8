"""Results that display themselves in a notebook: a run, an evaluation and a study as HTML (tables and
small inline PNG figures), built from run directories alone. Nothing here is needed outside a notebook:
plain Python sees ordinary dicts and file paths."""

from __future__ import annotations

import base64
import html
import io
import re
import sys
from pathlib import Path
from urllib.parse import unquote

import matplotlib
import numpy as np
import pandas as pd

from cnnlab import plots, runs
from cnnlab.config import build_config
from cnnlab.data.prepared import load_data
from cnnlab.errors import UserError
from cnnlab.evaluation import validation_sample
from cnnlab.metrics import softmax
from cnnlab.models.custom import spec_label
from cnnlab.report import group_runs, load_run, tables
from cnnlab.runs import RunDir
from cnnlab.text import visible

plt = plots.plt

# ------------------------------------------------------------------ notebook plumbing


def _ipython():
    """The running IPython shell if it has a kernel (Jupyter, VS Code, nbclient), else None. IPython is only
    looked at when something imported it already: plain Python never pays for importing it."""
    if "IPython" not in sys.modules:
        return None
    try:
        shell = sys.modules["IPython"].get_ipython()
    except Exception:  # noqa: BLE001 - an odd IPython is not a reason to fail a plot
        return None
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def in_notebook() -> bool:
    return _ipython() is not None


def show_files(paths) -> None:
    """Show PNG files inline when running in a notebook; nothing otherwise."""
    if not in_notebook():
        return
    from IPython.display import Image, display

    for path in paths:
        if Path(path).suffix.lower() == ".png":
            display(Image(filename=str(path)))


def figure_png(fig, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _figure(fig):
    """A figure handed to the user: labels made safe, closed in pyplot (no state kept), and shown as PNG by a
    notebook (plots uses the Agg backend, so the kernel's inline backend does not register it)."""
    plots.shown_safely(fig)
    plt.close(fig)
    shell = _ipython()
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(matplotlib.figure.Figure, figure_png)
    return fig


def img_tag(png: bytes, alt: str, width: int | None = None) -> str:
    size = f" width='{width}'" if width else ""
    return (f"<img alt='{_h(alt)}'{size} src='data:image/png;base64,{base64.b64encode(png).decode()}'>")


def _h(text) -> str:
    return html.escape(visible(str(text)), quote=True)


def _rows(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th style='text-align:left'>{_h(k)}</th><td style='text-align:left'>{_h(v)}</td></tr>"
                   for k, v in rows if v not in (None, ""))
    return f"<table>{body}</table>"


def _pct(value) -> str | None:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _num(value, fmt: str = "{:.4f}") -> str | None:
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ------------------------------------------------------------------ a run


def curve_png(history: pd.DataFrame, title: str) -> bytes | None:
    """A small accuracy-and-loss figure of a history (None without a finished epoch)."""
    if history is None or history.empty or "epoch" not in history:
        return None
    # constrained layout: the title above the two panels' own titles, not over them
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(6.4, 2.4), layout="constrained")
    marker = "o" if len(history) < 15 else None
    for ax, key in ((acc, "accuracy"), (loss, "loss")):
        for split in ("train", "val"):
            column = f"{split}_{key}"
            if column in history and history[column].notna().any():  # val_fraction = 0: no validation curve
                ax.plot(history["epoch"], history[column], marker=marker, markersize=3,
                        label="training" if split == "train" else "validation")
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        plots.epoch_axis(ax, history["epoch"])
        ax.grid(alpha=0.3)
    acc.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    plots.shown_safely(fig)
    png = figure_png(fig)
    plt.close(fig)
    return png


def run_summary(run_dir: str | Path) -> dict:
    """What a run's display shows, as plain values: model, data, status, key metrics."""
    run = RunDir(run_dir)
    status = run.status()
    out = {"path": str(run.path), "status": status}
    try:
        config = run.read_config()
        out.update(model=config.get("model"), data=config.get("data"), epochs=config.get("epochs"),
                   seed=config.get("seed"))
        spec = run.read_env().get("model_spec")
        if spec:  # an unfinished run of a model of one's own shows its class, not "custom"
            out["model"] = spec_label(out["model"], spec)
    except UserError:
        pass
    if status == runs.FINISHED:
        meta = run.read_model_meta()
        metrics = run.read_metrics() if run.file(runs.METRICS).is_file() else {}
        out.update(classes=", ".join(map(str, meta["class_names"])), dataset=meta.get("dataset"))
        if meta.get("ensemble"):  # no metrics.json: the vote's accuracies from its stored scores
            out.update(model=f"ensemble of {len(meta.get('members', []))} ({meta.get('vote')} vote)")
            for split in ("val", "test"):
                if run.has_logits(split):
                    logits, labels = run.logits(split)
                    metrics[f"{split}_accuracy"] = float((logits.argmax(1) == labels).mean())
        else:
            out.update(params=meta.get("trainable_params"), model=spec_label(out.get("model"), meta.get("spec", {})))
        for key in ("val_accuracy", "test_accuracy", "val_loss", "test_loss", "epochs_done", "weights_epoch",
                    "train_seconds_total", "device", "precision", "stop_reason"):
            if metrics.get(key) is not None:
                out[key] = metrics[key]
    return out


def run_text(run_dir: str | Path) -> str:
    """The plain repr: Run('PATH', status='finished'), then the model and accuracies when known."""
    s = run_summary(run_dir)
    extra = "".join(f", {k}={s[k]!r}" for k in ("model",) if s.get(k))
    extra += "".join(f", {k}={round(s[k], 4)!r}" for k in ("val_accuracy", "test_accuracy") if k in s)
    return f"Run({s['path']!r}, status={s['status']!r}{extra})"


def run_html(run_dir: str | Path) -> str:
    s = run_summary(run_dir)
    rows = [("Model", s.get("model")), ("Trainable parameters", f"{s['params']:,}" if s.get("params") else None),
            ("Data", s.get("data")), ("Classes", s.get("classes")), ("Status", s["status"]),
            ("Epochs", f"{s['epochs_done']} of {s['epochs']}" if "epochs_done" in s else s.get("epochs")),
            ("Validation accuracy", _pct(s.get("val_accuracy"))), ("Test accuracy", _pct(s.get("test_accuracy"))),
            ("Validation loss", _num(s.get("val_loss"))), ("Test loss", _num(s.get("test_loss"))),
            ("Training time", _num(s.get("train_seconds_total"), "{:.1f} s")),
            ("Device / precision", f"{s['device']} / {s.get('precision')}" if s.get("device") else None),
            ("Stopped", s.get("stop_reason"))]
    run = RunDir(run_dir)
    png = curve_png(run.history_frame(), f"{s.get('model') or ''} accuracy and loss".strip())
    figure = img_tag(png, "accuracy and loss against epochs", 480) if png else ""
    return (f"<div><b>Run</b> <code>{_h(s['path'])}</code>"
            f"<div style='display:flex;gap:1em;align-items:flex-start'>{_rows(rows)}{figure}</div></div>")


# ------------------------------------------------------------------ an evaluation


class Evaluation(dict):
    """evaluate_run's metrics (still a dict: ["accuracy"], ["hardest_class"], json.dumps) with tables and
    figures: .per_class, .confusion_matrix, .confusion_matrix_normalized, .plot_confusion_matrix(),
    .plot_top_losses(k)."""

    def __init__(self, metrics: dict, run_dir: str | Path, split: str):
        super().__init__(metrics)
        self.run_dir, self.split = Path(run_dir), split

    def __reduce__(self):  # pickles (and deep-copies) as a plain dict
        return dict, (dict(self),)

    @property
    def class_names(self) -> list[str]:
        return [p["name"] for p in self["per_class"]]

    @property
    def per_class(self) -> pd.DataFrame:
        """Precision, recall, F1 and support per class (index: class name)."""
        frame = pd.DataFrame(self["per_class"]).set_index("name")
        frame.index.name = "class"
        return frame.rename(columns={"class": "id"})

    @property
    def confusion_matrix(self) -> pd.DataFrame:
        """Counts: rows are the true classes, columns the predicted ones."""
        names = self.class_names
        return pd.DataFrame(np.asarray(self["confusion_matrix"]), index=pd.Index(names, name="true"),
                            columns=pd.Index(names, name="predicted"))

    @property
    def confusion_matrix_normalized(self) -> pd.DataFrame:
        """Each row divided by its true class's count (0 for a class with no images)."""
        counts = self.confusion_matrix
        totals = counts.sum(axis=1).replace(0, 1)
        return counts.div(totals, axis=0)

    def _title(self) -> str:
        return f"{RunDir(self.run_dir).path.name}: {self.split} confusion matrix"

    def plot_confusion_matrix(self, normalize: bool = False):
        matrix = self.confusion_matrix_normalized if normalize else self.confusion_matrix
        return _figure(plots.confusion_figure(matrix.to_numpy(), self.class_names,
                                              self._title() + (" (share of each true class)" if normalize else "")))

    def _images(self):
        """(images, labels, probabilities) of the split's images that can be shown."""
        run = RunDir(self.run_dir)
        logits, labels = run.logits(self.split)
        if self.split == "val":
            sample = validation_sample(self.run_dir)
            if sample is None:
                raise UserError(f"{self.run_dir}: no validation images to show: the run was trained on in-memory "
                                f"arrays before runs kept a sample of them ({runs.SAMPLES}); retrain it")
            images, _, positions = sample
            return images, labels[positions], softmax(logits[positions])
        meta = run.read_model_meta()
        source = RunDir(self.run_dir / meta["members"][0]) if meta.get("ensemble") else run
        try:
            test = load_data(build_config(source.read_config())).test
        except UserError:
            raise UserError(f"{self.run_dir}: the test images cannot be reloaded (in-memory arrays keep only a "
                            "validation sample); use evaluate('val').plot_top_losses()") from None
        return test.images.numpy(), labels, softmax(logits)

    def plot_top_losses(self, k: int = 16):
        """The k most confident mistakes (highest loss) as an image grid."""
        images, labels, probs = self._images()
        losses = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
        wrong = np.flatnonzero(probs.argmax(1) != labels)
        order = wrong[np.argsort(-losses[wrong], kind="stable")][:int(k)]
        shown = f" (of a sample of {len(labels)} images)" if len(labels) < len(RunDir(self.run_dir).logits(self.split)[1]) \
            else ""
        return _figure(plots.mistakes_figure(images, labels, probs, self.class_names, order,
                                             f"Top losses, {self.split}{shown}", losses))

    def summary_rows(self) -> list[tuple[str, object]]:
        return [("Split", self.split), ("Accuracy", _pct(self.get("accuracy"))), ("Loss", _num(self.get("loss"))),
                ("Macro F1", _num(self.get("macro_f1"))), ("Hardest class", self.get("hardest_class")),
                ("Easiest class", self.get("easiest_class"))]

    def _repr_html_(self) -> str:
        table = self.per_class[["precision", "recall", "f1", "support"]].to_html(float_format="{:.3f}".format)
        figure = img_tag(figure_png(self.plot_confusion_matrix()), "confusion matrix", 420)
        return (f"<div><b>Evaluation</b> of <code>{_h(self.run_dir)}</code>{_rows(self.summary_rows())}"
                f"<div style='display:flex;gap:1em;align-items:flex-start'>{table}{figure}</div></div>")


# ------------------------------------------------------------------ a study


class StudyResult(dict):
    """cnnlab.study's result (still the dict: runs, report, markdown) that shows its comparison tables and the
    report's figures."""

    def __reduce__(self):
        return dict, (dict(self),)

    def _repr_html_(self) -> str:
        dirs = [r.path if hasattr(r, "path") else Path(r) for r in self.get("runs", [])]
        finished = [d for d in dirs if RunDir(d).is_finished()]
        parts = [f"<div><b>Study</b>: {len(dirs)} runs"
                 + (f", report <code>{_h(self['report'])}</code>" if self.get("report") else "")]
        if finished:
            for title, (header, rows) in tables(group_runs([load_run(d) for d in finished])).items():
                if title.startswith(("Accuracy", "Runtime")) or "Best" in title or "warning" in title.lower():
                    parts.append(_table(title, header, rows))
        for caption, path in report_figures(self.get("markdown")):
            if path.name.startswith(("comparison", "curves", "training_curves")):
                parts.append(f"<figure>{img_tag(path.read_bytes(), caption, 640)}"
                             f"<figcaption>{_h(caption)}</figcaption></figure>")
        return "".join(parts) + "</div>"


class EnsembleResult(dict):
    """cnnlab.ensemble's (and combine's) manifest, still the dict (members, vote accuracy, growth), that shows the
    vote's accuracy, its per-class scores and the accuracy-against-members figure in a notebook."""

    def __init__(self, manifest: dict, directory: str | Path):
        super().__init__(manifest)
        self.directory = Path(directory)

    def __reduce__(self):
        return dict, (dict(self),)

    def _repr_html_(self) -> str:
        rows = [("Model", self.get("model")), ("Vote", f"{self.get('vote')} vote of {self.get('qualified')} members "
                                                       f"({self.get('members_wanted')} wanted)"),
                ("Attempts", f"{self.get('attempts')}; threshold {self.get('threshold')} on validation accuracy"),
                ("Validation accuracy", _pct(self.get("val_accuracy"))), ("Test accuracy", _pct(self.get("test_accuracy")))]
        parts = [f"<div><b>Ensemble</b> <code>{_h(self.directory)}</code>{_rows(rows)}"]
        split = "test" if self.get("test_metrics") else "val"
        if self.get(f"{split}_metrics"):
            frame = pd.DataFrame(self[f"{split}_metrics"]["per_class"]).set_index("name")
            parts.append(f"<p>Per class, {split} split</p>"
                         + frame[["precision", "recall", "f1", "support"]].to_html(float_format="{:.3f}".format))
        growth = self.directory / "growth.png"
        if growth.is_file():
            parts.append(img_tag(growth.read_bytes(), "vote accuracy against the number of members", 520))
        return "".join(parts) + "</div>"


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{_h(title)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_figures(markdown: str | Path | None) -> list[tuple[str, Path]]:
    """(caption, PNG path) of a study report's figures, read from its Markdown version."""
    if not markdown or not Path(markdown).is_file():
        return []
    out = []
    for alt, target in re.findall(r"^!\[(.*)\]\(([^)]+)\)$", Path(markdown).read_text(), re.M):
        path = Path(markdown).parent / unquote(target)
        if path.is_file():
            out.append((html.unescape(re.sub(r"\\(.)", r"\1", alt)), path))
    return out
