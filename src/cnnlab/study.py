"""The report's study (section 1.4): several models, each trained N times with different seeds.

Orchestration only: every run is an ordinary `cnnlab train` run directory under DIR/runs/, named
MODEL-seedS. Finished runs are reused, interrupted ones resumed from their checkpoint, so a study
picks up where it stopped. Tables and figures come from `cnnlab.report`, which reads directories.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cnnlab import runs
from cnnlab.config import TrainConfig
from cnnlab.errors import UserError

REPORT_MODELS = ["cnn1", "cnn2", "cnn3", "cnn4", "inception", "resnet50"]


def run_status(path: Path) -> str:
    """finished | resumable | fresh"""
    if (path / "metrics.json").is_file() and runs.read_json(path / "metrics.json").get("status") == "finished" \
            and (path / "model.json").is_file():
        return "finished"
    if (path / "checkpoint.safetensors").is_file():
        return "resumable"
    return "fresh"


def plan(config: TrainConfig, models: list[str], repeats: int, directory: Path) -> list[tuple[TrainConfig, Path]]:
    from cnnlab.models import model_info

    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    for name in models:
        model_info(name)  # unknown names fail before anything trains
    return [(replace(config, model=name, seed=config.seed + r), directory / "runs" / f"{name}-seed{config.seed + r}")
            for name in models for r in range(repeats)]


def run_study(config: TrainConfig, models: list[str], repeats: int, directory: Path, reporter=None,
              say=print) -> list[Path]:
    """Train what is missing; return every run directory of the study."""
    import shutil

    from cnnlab.engine import train

    directory = Path(directory)
    jobs = plan(config, models, repeats, directory)
    settings = {"models": models, "repeats": repeats, "train": config.to_dict()}
    settings_path = directory / "study.json"
    if settings_path.is_file():
        stored = runs.read_json(settings_path)
        if {k: v for k, v in stored["train"].items() if k != "device"} != \
                {k: v for k, v in settings["train"].items() if k != "device"}:
            raise UserError(f"{directory}: holds a study with other training options; use another --out")
        settings["models"] = list(dict.fromkeys(stored["models"] + models))
        settings["repeats"] = max(stored["repeats"], repeats)
    runs.write_json(settings_path, settings)
    for i, (cfg, run_dir) in enumerate(jobs, 1):
        status = run_status(run_dir)
        if status == "finished":
            say(f"[{i}/{len(jobs)}] {run_dir.name}: finished earlier, reused")
            continue
        if status == "fresh" and run_dir.exists():
            shutil.rmtree(run_dir)  # interrupted before its first checkpoint: start over
        say(f"[{i}/{len(jobs)}] {run_dir.name}: {'resuming' if status == 'resumable' else 'training'}")
        metrics = train(cfg, run_dir, reporter, resume=status == "resumable")
        say(f"    val {metrics['val_accuracy']:.4f}" + (f", test {metrics['test_accuracy']:.4f}"
                                                       if "test_accuracy" in metrics else ""))
    return [run_dir for _, run_dir in jobs]
