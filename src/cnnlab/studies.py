"""The report's study (section 1.4): several models, each trained N times with different seeds.

Orchestration only: every run is an ordinary `cnnlab train` run directory under DIR/runs/, named
MODEL-seedS. Finished runs are reused, interrupted ones resumed from their checkpoint, so a study
picks up where it stopped. Several processes may work on one study directory: each run is owned by
one process at a time (RunDir's owner lock), the others move on and wait for it at the end, so
every run is trained once. Tables and figures come from `cnnlab.report`, which reads directories.

A model of the user's own (an nn.Module or a factory, `builders` below) joins under its class's or
factory's name (runs NAME-seedS); study.json records its import path, and continuing the study takes the
model again: a directory never causes code to be imported.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cnnlab import runs
from cnnlab.budget import Budget, TooSmall, budget_spent_first, chosen_line, format_seconds
from cnnlab.config import (MAX_RUNS, TrainConfig, build_config, differing_settings, require_seeds_fit,
                           require_validation, shorten)
from cnnlab.data.fingerprint import files_fingerprint, require_same_files
from cnnlab.data.prepared import preflight
from cnnlab.distributed import cluster_has_gpus, put_dataset, ray_cluster, run_tasks
from cnnlab.engine import config_for_resume, fit
from cnnlab.errors import UserError, either, option
from cnnlab.groups import GroupDir
from cnnlab.models import model_info
from cnnlab.models.custom import CUSTOM_MODEL, class_path, refuse_by_name, require_importable
from cnnlab.runs import RunDir

SETTINGS_FILE = "study.json"


def study_dir(directory: Path) -> GroupDir:
    return GroupDir(directory, SETTINGS_FILE, "runs")


def require_models(directory: Path, models: list[str], builders: dict | None = None) -> None:
    """A study directory holding models of the user's own is continued with those models passed again (by name
    alone it refuses in one line), and a name keeps meaning the model it meant."""
    builders = builders or {}
    group = study_dir(directory)
    stored = group.read_settings() if group.has_settings() else {}
    custom = stored.get("custom_models", {})
    for name in models:
        if name in builders:
            path = class_path(builders[name])
            if name in custom and custom[name] != path:
                raise UserError(f"{directory}: {name} in this study is {custom[name]}, not {path}; use another output "
                                "folder or give the model another name")
            if name not in custom and name in stored.get("models", []):
                raise UserError(f"{directory}: {name} in this study is a registered model, not your {path}; use "
                                "another output folder or give the model another name")
        elif name in custom:
            raise refuse_by_name(directory, "study", custom[name])


def plan(config: TrainConfig, models: list[str], repeats: int, directory: Path,
         builders: dict | None = None) -> list[tuple[TrainConfig, RunDir, object]]:
    """(config, run directory, builder or None) per run. builders: name -> the nn.Module or factory of a model
    of the user's own (config.model "custom"; config.model_params belong to the first model given)."""
    builders = builders or {}
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise UserError(f"repeats: must be a positive integer, got {repeats!r}")
    if repeats > MAX_RUNS:
        raise UserError(f"repeats: must be at most {MAX_RUNS:,} runs per model, got {shorten(repr(repeats))}")
    require_seeds_fit(config.seed, repeats, "repeats")
    if not models:
        raise UserError(f"models: name at least one model (see {either('`cnnlab models`', 'cnnlab.list_models()')})")
    require_models(directory, models, builders)
    for name in models:
        if name not in builders:
            model_info(name)  # unknown names fail before anything trains
    base = config.to_dict()
    group = study_dir(directory)
    jobs = []
    for name in models:
        model = CUSTOM_MODEL if name in builders else name
        same = model == config.model and (name not in builders or name == models[0])
        # each model gets the recipe's settings with its own model options
        cfg = config if same else build_config({**base, "model": model, "model_params": {}})
        for r in range(repeats):
            jobs.append((replace(cfg, seed=config.seed + r), group.run(f"{name}-seed{config.seed + r}"),
                         builders.get(name)))
    return jobs


def merge_settings(directory: Path, config: TrainConfig):
    """A rerun must use the same training options and data files; it may add models and repeats."""
    def merge(stored: dict, wanted: dict) -> dict:
        diff = differing_settings({k: v for k, v in stored.get("train", {}).items() if k != "model"},
                                  {k: v for k, v in wanted["train"].items() if k != "model"})
        if diff:
            raise UserError(f"{directory}: holds a study with other training options ({', '.join(diff)}); "
                            "use another output folder or the same options")
        require_same_files(stored.get("data_files"), config.data, config.data_dir, f"continuing the study in {directory}")
        custom = {**stored.get("custom_models", {}), **wanted.get("custom_models", {})}
        return {**wanted, "models": list(dict.fromkeys(stored.get("models", []) + wanted["models"])),
                "repeats": max(stored.get("repeats", 0), wanted["repeats"]), **({"custom_models": custom} if custom else {})}
    return merge


def run_on_ray(jobs: list[tuple[TrainConfig, RunDir, object]], say, dataset, ray) -> None:
    """Every unfinished run as a Ray task (on `ray`, started or joined by the caller); the driver writes each
    run directory from what its task returns."""
    todo = [(cfg, run, builder) for cfg, run, builder in jobs if run.status() != runs.FINISHED and run.try_own()]
    say(f"{len(jobs) - len(todo)} of {len(jobs)} runs finished earlier (or owned by another process); "
        f"{len(todo)} to train on Ray")
    if not todo:
        return

    def on_done(name, results, error):
        if results is None:
            say(f"    {name}: failed ({error})")
        else:
            m = results[0]
            say(f"    {name}: val {m['val_accuracy']:.4f}" + (f", test {m['test_accuracy']:.4f}" if "test_accuracy" in m else ""))

    try:
        data_ref = put_dataset(ray, dataset)
        gpus = 0.25 if cluster_has_gpus(ray) else 0
        run_tasks(ray, [(run.path.name, cfg.to_dict(), [cfg.seed], [run], builder) for cfg, run, builder in todo],
                  gpus, data_ref, on_done)
    finally:
        for _, run, _ in todo:
            run.release()


def run_study(config: TrainConfig, models: list[str], repeats: int, directory: Path, callbacks=(),
              say=print, dataset=None, ray: bool = False, ray_address: str | None = None,
              budget: Budget | None = None, builders: dict | None = None) -> list[Path]:
    """Train what is missing; return every run directory of the study. ray: runs train as Ray tasks.
    builders: name (in `models`) -> the nn.Module or factory of a model of the user's own.
    budget: the study's time (default: config.time_budget from now), divided among the runs still to train as
    they come (re-divided as they finish)."""
    directory = Path(directory)
    require_validation(config, "the study", "its report compares models on the validation split too")
    budget = budget or Budget.starting(config.time_budget)
    if budget is not None and ray:
        raise UserError(f"{option('time_budget')}: a study's budget is divided among runs trained one after "
                        f"another; not available with {option('ray', True)} (give {option('epochs')} instead)")
    builders = builders or {}
    jobs = plan(config, models, repeats, directory, builders)
    for builder in builders.values() if ray else ():  # before anything is written
        require_importable(builder, "or run the study without ray")
    dataset = preflight(config, dataset)  # bad data fails before anything is written; loaded once
    files = files_fingerprint(config.data, config.data_dir)
    custom = {name: class_path(builder) for name, builder in builders.items() if name in models}
    group, merge = study_dir(directory), merge_settings(directory, config)
    wanted = {"models": models, "repeats": repeats, "train": config.to_dict(),
              **({"custom_models": custom} if custom else {}), **({"data_files": files} if files is not None else {})}
    if ray:
        if group.has_settings():  # a refused rerun says so before Ray starts
            merge(group.read_settings(), wanted)
        # Ray up before the settings are written: a cluster that cannot start or be joined leaves none behind
        with ray_cluster(ray_address) as cluster:
            group.fix_settings(wanted, merge)
            run_on_ray(jobs, say, dataset, cluster)
        return [run.path for _, run, _ in jobs]
    group.fix_settings(wanted, merge)
    deferred = []
    too_small: list[str] = []  # a run's share could not hold one epoch (budget.TooSmall)

    def trained_any() -> bool:
        return any(r.status() == runs.FINISHED for _, r, _ in jobs)

    def train_owned(i: int, cfg: TrainConfig, run: RunDir, builder) -> None:
        status = run.status()
        if status == runs.FINISHED:
            say(f"[{i}/{len(jobs)}] {run.path.name}: finished earlier, reused")
            return
        resume = run.resumable()
        share = None
        if budget is not None and budget.spent and not resume:  # as an ensemble's attempts: none starts once spent
            say(f"[{i}/{len(jobs)}] {run.path.name}: not started, the time budget ({format_seconds(budget.seconds)}) "
                "is spent; run the same command again to go on (each call has a budget of its own)")
            return
        if too_small and not resume:
            if trained_any():  # else the command's error says it
                say(f"[{i}/{len(jobs)}] {run.path.name}: not started, the budget's share cannot hold one epoch (above)")
            return
        if budget is not None:  # this run and every later or deferred one still unfinished
            left = {r.path: r for r in [r for _, r, _ in jobs[i - 1:]] + [r for _, _, r, _ in deferred]}
            share = budget.share(sum(r.status() != runs.FINISHED for r in left.values()))
        say(f"[{i}/{len(jobs)}] {run.path.name}: {'resuming' if resume else 'training'}"
            + (f" ({format_seconds(share.seconds)} of the budget's {format_seconds(budget.left())} left)"
               if share is not None and not resume else ""))
        if resume:  # continues to the epochs it stored (a budget's choice), as `train --resume` and an ensemble's
            cfg = config_for_resume(run, device=cfg.device)  # members do; the study's cap retrained it to --epochs
        try:
            metrics = fit(cfg, run, callbacks, resume=resume, dataset=dataset, builder=builder, budget=share)
        except TooSmall as exc:  # as a spent budget: no later run starts, since its share would be no larger
            run.clear()  # refused before its first step: its settings and environment go, as train's whole folder
            too_small.append(str(exc))
            if trained_any():  # else the command's error says it, once
                say(f"[{i}/{len(jobs)}] {run.path.name}: not started: {exc}")
            return
        say(f"    val {metrics['val_accuracy']:.4f}" + (f", test {metrics['test_accuracy']:.4f}"
                                                       if "test_accuracy" in metrics else "")
            + (f"; {chosen_line(metrics)}" if chosen_line(metrics) and not resume else "")
            + (f" ({metrics['budget_note']})" if metrics.get("budget_note") and not resume else ""))

    for i, (cfg, run, builder) in enumerate(jobs, 1):
        if run.status() == runs.FINISHED:
            say(f"[{i}/{len(jobs)}] {run.path.name}: finished earlier, reused")
            continue
        if not run.try_own():
            say(f"[{i}/{len(jobs)}] {run.path.name}: another process is training it; coming back to it later")
            deferred.append((i, cfg, run, builder))
            continue
        try:
            train_owned(i, cfg, run, builder)
        finally:
            run.release()
    for i, cfg, run, builder in deferred:  # wait for the other process; train it here if it stopped unfinished
        run.wait_own()
        try:
            train_owned(i, cfg, run, builder)
        finally:
            run.release()
    if not trained_any():  # nothing trained: the budget's line, not
        if too_small:  # the report's "no finished run directories found"
            raise TooSmall(too_small[0])
        if budget is not None and budget.spent:
            raise budget_spent_first(budget, "run")
    return [run.path for _, run, _ in jobs]
