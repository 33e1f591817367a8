"""The study report, rebuilt from run directories alone: one self-contained HTML file (images
embedded, no external scripts or fonts) and a Markdown version with its figures beside it."""

from __future__ import annotations

import base64
import html
import json
import re
import statistics
from urllib.parse import quote
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab import runs
from cnnlab.errors import UserError
from cnnlab.runs import RunDir


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
        candidates = [path] if RunDir(path).file(runs.HISTORY).is_file() else \
            sorted(p.parent for p in path.rglob(runs.HISTORY))
        found += [c for c in candidates if RunDir(c).is_finished()]
    if not found:
        raise UserError(f"{', '.join(map(str, paths))}: no finished run directories found")
    return list(dict.fromkeys(found))


def load_run(path: Path) -> Run:
    from cnnlab.evaluation import evaluate_run, history

    run = RunDir(path)
    return Run(path, run.read_config(), run.read_env(), run.read_metrics(), run.read_model_meta(), history(path),
               evaluate_run(path, "val"), evaluate_run(path, "test") if run.has_logits("test") else None)


def group_runs(loaded: list[Run]) -> list[Group]:
    """One group per model and training setup; seeds (repeats) vary within a group."""
    groups: dict[str, Group] = {}
    for run in loaded:
        setup = {k: v for k, v in run.config.items() if k not in ("seed", "device")}
        key = json.dumps(setup, sort_keys=True)
        groups.setdefault(key, Group(run.config["model"])).runs.append(run)
    labels = [g.label for g in groups.values()]
    for i, g in enumerate(groups.values()):
        if labels.count(g.label) > 1:
            g.label = f"{g.label} ({i + 1})"
    return list(groups.values())


def _spread(values: list[float], fmt: str = "{:.2f}") -> tuple[str, str]:
    if not values:
        return "-", "-"
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return (lo if lo == hi else f"{lo}-{hi}"), f"{fmt.format(mean)} ± {fmt.format(std)}"


def _median_range(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def tables(groups: list[Group]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every table of the report as (header, rows)."""
    runtime, accuracy, per_class = [], [], []
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

        def mean_of(key, c):
            return statistics.fmean(100 * r.val["per_class"][c][key] for r in g.runs)

        f1 = [mean_of("f1", c) for c in range(k)]
        names = [pc["name"] for pc in first.val["per_class"]]
        per_class.append([g.label, " ".join(f"{mean_of('precision', c):.2f}" for c in range(k)),
                          " ".join(f"{mean_of('recall', c):.2f}" for c in range(k)), " ".join(f"{v:.2f}" for v in f1),
                          names[f1.index(min(f1))], names[f1.index(max(f1))]])
    return {
        "Runtime per epoch (seconds; median and range over epochs and repeats)":
            (["Model", "Trainable params", "Device", "Training (s/epoch)", "Testing (s)", "Warm-up (s)"], runtime),
        "Accuracy over repeats (%; validation = 20% holdout, test = official test split, never used to choose)":
            (["Model", "Runs", "Val min-max", "Val mean ± std", "Test min-max", "Test mean ± std"], accuracy),
        "Per-class precision, recall and F1 on the 20% holdout (%; classes in order, mean over repeats)":
            (["Model", "Precision", "Recall", "F1", "Hardest class", "Easiest class"], per_class),
    }


def figures(groups: list[Group], folder: Path) -> list[tuple[str, Path]]:
    """Accuracy/loss curves and a confusion matrix per model, drawn from the median run's directory."""
    from cnnlab import plots

    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for i, g in enumerate(groups):
        ranked = sorted(g.runs, key=lambda r: r.val["accuracy"])
        run = ranked[len(ranked) // 2]
        seed = run.config["seed"]
        out.append((f"{g.label}: accuracy and loss against epochs (seed {seed}, the median of {len(g.runs)} runs)",
                    plots.accuracy_loss_plot(run.history, g.label, folder / f"acc_loss_{i}.png")))
        out.append((f"{g.label}: confusion matrix on the validation holdout (seed {seed})",
                    plots.confusion_plot(run.val["confusion_matrix"], [p["name"] for p in run.val["per_class"]],
                                         folder / f"confusion_{i}.png", f"{g.label} (validation)")))
    return out


def layer_summaries(groups: list[Group]) -> dict[str, tuple[list[str], list[list[str]]]]:
    from cnnlab.models import create_architecture, keras_shape, summarize

    out = {}
    for g in groups:
        meta = g.runs[0].model
        spec = dict(meta["spec"])
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
        f"Training: {cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']}, "
        f"ReduceLROnPlateau(factor {cfg['lr_factor']}, patience {cfg['lr_patience']}), "
        f"augmentation {'on' if cfg['augment'] else 'off'}, precision {first.metrics.get('precision', '?')}",
        f"Hardware: {'; '.join(devices)}",
        f"Software: cnnlab {versions.get('cnnlab')}, torch {versions.get('torch')}, python {versions.get('python')}",
        f"Runs: {len(loaded)} (seeds {', '.join(sorted({str(r.config['seed']) for r in loaded}, key=int))})",
    ]


# ------------------------------------------------------------------ rendering

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;
padding:4px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:14px}caption{text-align:left;font-weight:600;
padding:4px 0}details{margin:.5em 0}"""


def _html_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{html.escape(title)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


MD_SPECIAL = re.compile(r"([\\`*_{}\[\]|~])")


def _md(text) -> str:
    """Text as Markdown shows it literally: raw HTML escaped (Markdown would render it), markup characters
    backslashed, so a class named '<script>' or '*bold*' prints as itself, as in the HTML report."""
    return MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")


def _md_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"**{_md(title)}**", "", "| " + " | ".join(map(_md, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(paths: list[Path], output: Path, title: str = "cnnlab study report") -> tuple[Path, Path]:
    """Write OUTPUT (.html) and OUTPUT with .md beside it, plus the Markdown's figures folder."""
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"-o {output}: the report is HTML; give a file name ending in .html")
    loaded = [load_run(p) for p in find_runs(paths)]
    groups = group_runs(loaded)
    main_tables = tables(groups)
    summaries = layer_summaries(groups)
    figure_dir = output.with_name(output.stem + "_files")
    figs = figures(groups, figure_dir)
    setup = setup_lines(loaded)

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><h2>Setup</h2><ul>"]
    parts += [f"<li>{html.escape(line)}</li>" for line in setup]
    parts.append("</ul><h2>Results</h2>")
    parts += [_html_table(t, h, r) for t, (h, r) in main_tables.items()]
    parts.append("<h2>Figures</h2>")
    for caption, path in figs:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("<h2>Models</h2>")
    for t, (h, r) in summaries.items():
        parts.append(f"<details><summary>{html.escape(t)}</summary>{_html_table(t, h, r)}</details>")
    parts.append(f"<p>Run directories: {html.escape(', '.join(str(r.path) for r in loaded))}</p></body></html>")
    runs.write_text(output, "".join(parts))

    md = [f"# {_md(title)}", "", "## Setup", ""] + [f"- {_md(line)}" for line in setup] + ["", "## Results", ""]
    for t, (h, r) in main_tables.items():
        md += [_md_table(t, h, r), ""]
    md += ["## Figures", ""]
    for caption, path in figs:
        md += [f"![{_md(caption)}]({quote(figure_dir.name)}/{quote(path.name)})", "", f"*{_md(caption)}*", ""]
    md += ["## Models", ""]
    for t, (h, r) in summaries.items():
        md += [_md_table(t, h, r), ""]
    markdown = output.with_suffix(".md")
    runs.write_text(markdown, "\n".join(md) + "\n")
    return output, markdown
