"""The study report, rebuilt from run directories alone: one self-contained HTML file (images
embedded, no external scripts or fonts) and a Markdown version with its figures beside it."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import os
import re
import shutil
import statistics
import tempfile
import uuid
from urllib.parse import quote
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab import plots, runs
from cnnlab.errors import UserError
from cnnlab.evaluation import evaluate_run, history, validation_sample
from cnnlab.metrics import softmax
from cnnlab.models import create_architecture, keras_shape, summarize
from cnnlab.models.custom import CUSTOM_MODEL, spec_label
from cnnlab.runs import RunDir
from cnnlab.text import visible


@dataclass
class Run:
    path: Path
    config: dict
    env: dict
    metrics: dict
    model: dict
    history: list[dict]
    val: dict  # classification metrics on the validation holdout
    test: dict | None


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories given directly or found below (study and ensemble directories)."""
    found = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path}: no such run or study directory")
        found += [c for c in runs_below(path, runs.HISTORY) if RunDir(c).is_finished()]
    if not found:
        raise UserError(f"{', '.join(map(str, paths))}: no finished run directories found")
    # once each, however it was reached (a folder and a run inside it, ./a and a, a link): counted twice, a
    # run weighed double in every mean and spread
    unique: dict[Path, Path] = {}
    for candidate in found:
        unique.setdefault(candidate.resolve(), candidate)
    return list(unique.values())


def load_run(path: Path) -> Run:
    run = RunDir(path)
    return Run(path, run.read_config(), run.read_env(), run.read_metrics(), run.read_model_meta(), history(path),
               evaluate_run(path, "val"), evaluate_run(path, "test") if run.has_logits("test") else None)


IGNORED_SETTINGS = ("seed", "device", "data_dir", "compile", "checkpoint_every", "eval_batch_size", "cuda_graphs")


def compared_settings(run: Run) -> dict:
    """The settings that tell groups apart. A time budget chooses each run's epochs (and cuts its warm-up to
    them) from its own pace, so a budgeted run counts by the epochs asked (at most), and its repeats stay one
    group (each repeat was a group of one, with no mean ± std), also where calls of a study had other budgets."""
    setup = {k: v for k, v in run.config.items() if k not in IGNORED_SETTINGS}
    if run.metrics.get("budget_max_epochs") is not None:
        setup["epochs"] = run.metrics["budget_max_epochs"]
        for chosen in ("warmup_epochs", "time_budget"):  # each call of a study has a budget of its own
            setup.pop(chosen, None)
    return setup


def group_runs(loaded: list[Run]) -> list[Group]:
    """One group per model and training setting; seeds (repeats) vary within a group. Runs of different
    settings are never mixed: groups whose model is the same are labelled by the settings that differ."""
    groups: dict[str, Group] = {}
    settings: dict[str, dict] = {}
    for run in loaded:
        # a model of the user's own by its class's (or factory's) name: config.json says "custom" for all of them
        setup = {**compared_settings(run), "model": model_label(run)}
        key = json.dumps(setup, sort_keys=True, default=str)
        settings[key] = setup
        groups.setdefault(key, Group(setup["model"])).runs.append(run)
    varying = differing(list(settings.values()))
    for key, group in groups.items():
        extra = [f"{k}={_short(settings[key].get(k))}" for k in varying if k != "model"]
        if extra:
            group.label = f"{group.label} ({', '.join(extra)})"
    return list(groups.values())


def model_label(run: Run) -> str:
    return spec_label(run.config["model"], run.model.get("spec", {}))


def differing(settings: list[dict]) -> list[str]:
    keys = sorted({k for s in settings for k in s})
    return [k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in settings}) > 1]


def _short(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items()) or "-"
    text = str(value)
    return text if len(text) <= 24 else "..." + text[-21:]


def _spread(values: list[float], fmt: str = "{:.2f}") -> tuple[str, str]:
    if not values:
        return "-", "-"
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    mean = statistics.fmean(values)
    std = fmt.format(statistics.stdev(values)) if len(values) > 1 else "n/a"  # one repeat has no spread
    return (lo if lo == hi else f"{lo}-{hi}"), f"{fmt.format(mean)} ± {std}"


def _median_range(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def tables(groups: list[Group]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every table of the report as (header, rows)."""
    runtime, accuracy, per_class = [], [], {}
    order = sorted(groups, key=lambda g: -statistics.fmean(r.val["accuracy"] for r in g.runs))
    for g in order:
        first = g.runs[0]
        train_s = [float(h["train_seconds"]) for r in g.runs for h in r.history]
        test_s = [r.metrics["test_predict_seconds"] for r in g.runs if "test_predict_seconds" in r.metrics]
        runtime.append([g.label, f"{first.model['trainable_params']:,}", first.env.get("device", "?"),
                        _median_range(train_s), _median_range(test_s),
                        f"{statistics.median(r.metrics.get('warmup_seconds', 0) for r in g.runs):.2f}"])
        val = [100 * r.val["accuracy"] for r in g.runs]
        test = [100 * r.test["accuracy"] for r in g.runs if r.test]
        accuracy.append([g.label, str(len(g.runs)), *_spread(val), *_spread(test)])
        k = len(first.val["per_class"])

        def mean_of(key, c, split="val"):
            return statistics.fmean(100 * getattr(r, split)["per_class"][c][key] for r in g.runs if getattr(r, split))

        names = [pc["name"] for pc in first.val["per_class"]]
        for split in ("val", "test"):
            if split == "test" and not all(r.test for r in g.runs):
                continue
            f1 = [mean_of("f1", c, split) for c in range(k)]
            for key in ("f1", "precision", "recall"):
                per_class.setdefault((key, split), []).append(
                    [g.label, *(f"{mean_of(key, c, split):.2f}" for c in range(k))]
                    + ([names[f1.index(min(f1))], names[f1.index(max(f1))]] if key == "f1" else []))
    class_names = [pc["name"] for pc in order[0].runs[0].val["per_class"]] if order else []
    out = {
        "Runtime per epoch (seconds; median and range over epochs and repeats)":
            (["Model", "Trainable params", "Device", "Training (s/epoch)", "Testing (s)", "Warm-up (s)"], runtime),
        "Accuracy over repeats (%; validation = the holdout, test = official test split, never used to choose)":
            (["Model", "Runs", "Val min-max", "Val mean ± std", "Test min-max", "Test mean ± std"], accuracy),
    }
    for key, label in (("f1", "F1"), ("precision", "Precision"), ("recall", "Recall")):
        extra = ["Hardest class", "Easiest class"] if key == "f1" else []
        out[f"Per-class {label} on the validation holdout (%, mean over repeats)"] = (
            ["Model", *class_names, *extra], per_class.get((key, "val"), []))
        if per_class.get((key, "test")):  # beside the validation table: the official test split's
            out[f"Per-class {label} on the test split (%, mean over repeats)"] = (
                ["Model", *class_names, *extra], per_class[(key, "test")])
    return out


def best_model_line(groups: list[Group]) -> str:
    """Which model is best by mean validation accuracy (the test split never chooses)."""
    best = max(groups, key=lambda g: statistics.fmean(r.val["accuracy"] for r in g.runs))
    val = statistics.fmean(100 * r.val["accuracy"] for r in best.runs)
    tests = [100 * r.test["accuracy"] for r in best.runs if r.test]
    return (f"Best model by validation accuracy: {best.label} ({val:.2f}% mean over {len(best.runs)} "
            f"run{'s' if len(best.runs) > 1 else ''}" + (f"; test {statistics.fmean(tests):.2f}%" if tests else "")
            + ")")


def degenerate_warnings(loaded: list[Run]) -> list[str]:
    """Runs whose result is not a classifier: one predicted class for every image, accuracy at chance (the
    largest class's share) or a non-finite loss in the history or the final metrics."""
    out = []
    for run in loaded:
        name = f"{model_label(run)} seed {run.config['seed']} ({run.path.name})"
        logits, labels = RunDir(run.path).logits("val")
        predicted = logits.argmax(1)
        chance = max(float((labels == c).mean()) for c in range(logits.shape[1])) if len(labels) else 0.0
        if len(predicted) > 1 and len(set(predicted.tolist())) == 1:
            out.append(f"{name}: predicts one class ({run.model['class_names'][int(predicted[0])]}) for every "
                       "validation image")
        elif len(labels) and run.val["accuracy"] <= chance + 1e-9:
            out.append(f"{name}: validation accuracy {100 * run.val['accuracy']:.2f}% is at chance "
                       f"({100 * chance:.2f}%, the largest class's share)")
        losses = [row.get(k) for row in run.history for k in ("train_loss", "val_loss")]
        losses += [run.metrics.get(k) for k in ("val_loss", "test_loss")]
        if any(v not in (None, "") and not math.isfinite(float(v)) for v in losses):
            out.append(f"{name}: a loss is NaN or infinite (the training diverged; lower lr or use fp32)")
    return out


def median_run(group: Group) -> Run:
    ranked = sorted(group.runs, key=lambda r: r.val["accuracy"])
    return ranked[len(ranked) // 2]


def figures(groups: list[Group], folder: Path) -> list[tuple[str, Path]]:
    """The comparison across models first (as the tables), then each model's confusion matrices and mistakes."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise runs.os_error(folder, exc) from None
    order = sorted(groups, key=lambda g: -statistics.fmean(r.val["accuracy"] for r in g.runs))
    accuracy = {g.label: {"val": [r.val["accuracy"] for r in g.runs],
                          "test": [r.test["accuracy"] for r in g.runs if r.test]} for g in order}
    out = [("Accuracy over repeats: every run as a point, mean ± std as bars, validation and test",
            plots.comparison_plot(accuracy, folder / "comparison.png"))]
    timing = {}
    for g in order:
        seconds = [r.metrics.get("train_seconds_total") or 0.0 for r in g.runs]
        scores = [r.test["accuracy"] if r.test else r.val["accuracy"] for r in g.runs]
        timing[g.label] = (statistics.fmean(seconds), statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
                           statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0)
    split = "test" if all(r.test for g in order for r in g.runs) else "validation"
    out.append((f"Accuracy ({split}) against training time per run: the runtime table as a picture",
                plots.accuracy_time_plot(timing, folder / "accuracy_time.png")))
    out.append(("Validation accuracy against epochs, every model (its median run)",
                plots.validation_curves_plot({g.label: median_run(g).history for g in order}, folder / "curves.png")))
    out.append(("Training and validation accuracy and loss against epochs, every model (its median run; "
                "shaded: the range over its repeats)",
                plots.training_curves_plot({g.label: (median_run(g).history, [r.history for r in g.runs])
                                            for g in order}, folder / "training_curves.png")))
    for i, g in enumerate(order):
        run = median_run(g)
        names = [p["name"] for p in run.val["per_class"]]
        predictions = {}
        for split_name in ("val", "test"):
            try:
                logits, labels = RunDir(run.path).logits(split_name)
            except UserError:
                continue
            predictions[split_name] = (labels, logits.argmax(1))
        out.append((f"{g.label}: confusion matrices, counts and normalised by row, validation and test "
                    f"(seed {run.config['seed']}, the median run)",
                    plots.confusion_panels(predictions, names, folder / f"confusion_{i}.png", g.label)))
        gallery = mistakes_figure(run, folder / f"mistakes_{i}.png")
        if gallery is not None:
            out.append((f"{g.label}: the most confident mistakes on the validation holdout (seed {run.config['seed']})",
                        gallery))
    return out


def mistakes_figure(run: Run, path: Path) -> Path | None:
    """The median run's most confident validation mistakes (its images rebuilt from its data; skipped when
    the data cannot be reloaded, e.g. in-memory arrays)."""
    sample = validation_sample(run.path)
    if sample is None:
        return None
    images, _, positions = sample
    logits, labels = RunDir(run.path).logits("val")
    return plots.mistakes_grid(images, labels[positions], softmax(logits[positions]),
                               [p["name"] for p in run.val["per_class"]], path)


def layer_summaries(groups: list[Group]) -> dict[str, tuple[list[str], list[list[str]]]]:
    out = {}
    for g in groups:
        meta = g.runs[0].model
        spec = dict(meta["spec"])
        if spec.get("name") == CUSTOM_MODEL:  # its code is never imported from a directory: parameters only
            out[f"{g.label} layers"] = (["Layer (type)", "Output Shape", "Param #"], [
                [f"a model of your own ({spec.get('class')}): its layers are not rebuilt from a run directory", "",
                 f"{meta.get('trainable_params', 0):,} trainable"]])
            continue
        s = summarize(create_architecture(spec.pop("name"), **spec), tuple(meta["input_shape"]))
        rows = [[f"{r.name} ({r.kind})", keras_shape(r.output_shape), f"{r.params:,}"] for r in s.rows]
        rows.append(["Total / trainable / non-trainable", "", f"{s.total:,} / {s.trainable:,} / {s.non_trainable:,}"])
        out[f"{g.label} layers"] = (["Layer (type)", "Output Shape", "Param #"], rows)
    return out


def setup_lines(loaded: list[Run]) -> list[str]:
    first = loaded[0]
    cfg = first.config
    devices = sorted({r.env.get("device", "?") for r in loaded})
    versions = first.env
    return [
        f"Dataset: {first.model['dataset']} ({cfg['data']}), classes: {', '.join(first.model['class_names'])}",
        f"Split: {100 * (1 - cfg['val_fraction']):.0f}/{100 * cfg['val_fraction']:.0f} stratified train/validation "
        f"(split seed {cfg['split_seed']}); the official test split kept apart",
        f"Training (first run): recipe {cfg.get('recipe', 'report')}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
        f"{cfg['optimizer']} lr {cfg['lr']}, " + (
            f"ReduceLROnPlateau(factor {cfg['lr_factor']}, patience {cfg['lr_patience']})"
            if cfg.get("lr_schedule", "plateau") == "plateau" else f"{cfg['lr_schedule']} schedule")
        + f", augmentation {'on' if cfg['augment'] else 'off'}, precision {first.metrics.get('precision', '?')}",
        f"Hardware: {'; '.join(devices)}",
        f"Software: cnnlab {versions.get('cnnlab')}, torch {versions.get('torch')}, python {versions.get('python')}",
        f"Runs: {len(loaded)} (seeds {', '.join(sorted({str(r.config['seed']) for r in loaded}, key=int))})",
    ] + budget_lines(loaded)


def budget_lines(loaded: list[Run]) -> list[str]:
    """What the time budget chose, where one did: the epochs differ per run."""
    chosen = sorted(r.config["epochs"] for r in loaded if r.metrics.get("budget_max_epochs") is not None)
    if not chosen:
        return []
    span = f"{chosen[0]}" if chosen[0] == chosen[-1] else f"{chosen[0]}-{chosen[-1]}"
    return [f"Epochs chosen by the time budget from each run's measured pace: {span} "
            f"({len(chosen)} of {len(loaded)} runs budgeted)"]


# ------------------------------------------------------------------ rendering

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;
padding:4px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:14px}caption{text-align:left;font-weight:600;
padding:4px 0}details{margin:.5em 0}"""


def html_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_html(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_html(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{_html(title)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


MD_SPECIAL = re.compile(r"([\\`*_{}\[\]|~])")


def _html(text, quote: bool = True) -> str:
    """Text as HTML shows it literally, control characters as visible escapes."""
    return html.escape(visible(text), quote=quote)


def _md(text) -> str:
    """Text as Markdown shows it literally: raw HTML escaped (Markdown would render it), markup characters
    backslashed, so a class named '<script>' or '*bold*' prints as itself, as in the HTML report."""
    return MD_SPECIAL.sub(r"\\\1", _html(text, quote=False))


def md_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"**{_md(title)}**", "", "| " + " | ".join(map(_md, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(paths: list[Path], output: Path, title: str = "cnnlab study report",
                 not_started: list[str] = ()) -> tuple[Path, Path]:
    """Write OUTPUT (.html) and OUTPUT with .md beside it, plus the Markdown's figures folder: all three or,
    where anything fails (a full disk), none of them (a previous report there is left as it was).
    not_started: names of runs a study wanted that have no directory yet, listed with the unfinished ones."""
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{output}: the report is HTML; give a file name ending in .html")
    figure_dir, markdown = output.with_name(output.stem + "_files"), output.with_suffix(".md")
    check_targets(output, markdown, figure_dir)
    loaded = [load_run(p) for p in find_runs(paths)]
    with staging_folder(figure_dir) as staging:
        return _build_report(loaded, output, markdown, figure_dir, staging, title,
                             sorted(set(unfinished_runs(paths)) | set(not_started)))


def unfinished_runs(paths: list[Path]) -> list[str]:
    """The names of runs given or found below that have not finished (interrupted, or not started within a time
    budget): a report that left them out without a word read as if the study had fewer models."""
    left = {c.name for path in map(Path, paths) if path.is_dir() for c in runs_below(path, runs.CONFIG)
            if not RunDir(c).is_finished()}
    return sorted(left)


def runs_below(path: Path, marker: str) -> list[Path]:
    """`path` itself where it holds `marker` (a run's file), else every folder below that holds one."""
    return [path] if RunDir(path).file(marker).is_file() else sorted(p.parent for p in path.rglob(marker))


def check_targets(output: Path, markdown: Path, figure_dir: Path) -> None:
    """What stands in the way of the report's files, told before any work."""
    for path in (output, markdown):
        if path.is_dir():
            raise UserError(f"{output}: {path} is a folder; give another file name for the report")
    if figure_dir.is_symlink() or (figure_dir.exists() and not figure_dir.is_dir()):
        raise UserError(f"{output}: {figure_dir} is in the way of the report's figures folder (a file or a link); "
                        "move it or give another file name for the report")
    # the folder is replaced whole: a previous report's figures (PNGs) may go, anything else (a run named
    # x_files beside -o x.html was deleted) may not
    if figure_dir.is_dir() and any(p.is_dir() or p.suffix.lower() != ".png" for p in figure_dir.iterdir()):
        raise UserError(f"{output}: {figure_dir} holds more than a report's figures, and the report would replace "
                        "it; move it or give another file name for the report")


@contextlib.contextmanager
def staging_folder(target: Path):
    """A temporary folder beside `target` (hidden, named as runs' temporary files are), removed whatever happens;
    `publish` renames it onto `target`."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise runs.os_error(target.parent, exc) from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once published


def publish(staging: Path, target: Path) -> None:
    """Rename the finished `staging` folder onto `target`, a previous one moved aside first and removed after
    (put back if the rename fails)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 -> the user's normal permissions
    previous = None
    if target.is_dir():
        previous = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.rename(target, previous)
    try:
        os.rename(staging, target)
    except OSError:
        if previous is not None:
            os.rename(previous, target)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _build_report(loaded: list[Run], output: Path, markdown: Path, figure_dir: Path, staging: Path,
                  title: str, unfinished: list[str] = ()) -> tuple[Path, Path]:
    groups = group_runs(loaded)
    main_tables = tables(groups)
    best, warnings = best_model_line(groups), degenerate_warnings(loaded)
    summaries = layer_summaries(groups)
    try:
        figs = figures(groups, staging)
    except UserError as exc:  # name the folder the user asked for, not the temporary one
        named = UserError(str(exc).replace(str(staging), str(figure_dir)))
        named.__dict__.update(exc.__dict__)  # what runs.os_error attached (the errno) goes along
        raise named from None
    setup = setup_lines(loaded)
    varying = differing([{k: v for k, v in compared_settings(r).items() if k != "model"} for r in loaded])
    if varying:
        setup.append(f"Runs of different settings are reported as separate groups; they differ in: {', '.join(varying)}")
    if unfinished:
        shown = ", ".join(unfinished[:6]) + (f" and {len(unfinished) - 6} more" if len(unfinished) > 6 else "")
        setup.append(f"Not in this report, not finished: {shown} (interrupted, or not started within a time "
                     "budget; the command that trains them continues them when run again)")

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_html(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{_html(title)}</h1><h2>Setup</h2><ul>"]
    parts += [f"<li>{_html(line)}</li>" for line in setup]
    parts.append("</ul><h2>Results</h2>")
    parts += [f"<p class='warning' style='color:#a00;font-weight:600'>Warning: {_html(w)}</p>" for w in warnings]
    parts.append(f"<p><strong>{_html(best)}</strong></p>")
    parts += [html_table(t, h, r) for t, (h, r) in main_tables.items()]
    parts.append("<h2>Figures</h2>")
    for caption, path in figs:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{_html(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{_html(caption)}</figcaption></figure>")
    parts.append("<h2>Models</h2>")
    for t, (h, r) in summaries.items():
        parts.append(f"<details><summary>{_html(t)}</summary>{html_table(t, h, r)}</details>")
    relative = ", ".join(os.path.relpath(r.path, output.parent.resolve()) for r in loaded)
    parts.append(f"<p>Run directories (relative to this report): {_html(relative)}</p></body></html>")

    md = [f"# {_md(title)}", "", "## Setup", ""] + [f"- {_md(line)}" for line in setup] + ["", "## Results", ""]
    md += [f"> **Warning:** {_md(w)}\n" for w in warnings] + [f"**{_md(best)}**", ""]
    for t, (h, r) in main_tables.items():
        md += [md_table(t, h, r), ""]
    md += ["## Figures", ""]
    for caption, path in figs:
        md += [f"![{_md(caption)}]({quote(figure_dir.name)}/{quote(path.name)})", "", f"*{_md(caption)}*", ""]
    md += ["## Models", ""]
    for t, (h, r) in summaries.items():
        md += [md_table(t, h, r), ""]
    md += [f"Run directories (relative to this report): {_md(relative)}"]
    # every byte written before anything is renamed into place: a full disk leaves no part of the report
    with runs.atomic_target(output) as html_tmp, runs.atomic_target(markdown) as md_tmp:
        html_tmp.write_text("".join(parts))
        md_tmp.write_text("\n".join(md) + "\n")
        publish(staging, figure_dir)
    return output, markdown
