"""The loop: `fit` trains one model (or one fused group) into its run directories, epoch by epoch,
calling the callbacks, and writes the final files. Callbacks act only through the `Context`."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from cnnlab import runs
from cnnlab.allocator import keep_freed_memory
from cnnlab.budget import Budget
from cnnlab.callbacks import Callback, Checkpoint, EarlyStopping
from cnnlab.config import PLATEAU, TrainConfig
from cnnlab.data import Dataset
from cnnlab.data.fingerprint import files_fingerprint, require_same_files
from cnnlab.device import device_name, environment, synchronize
from cnnlab.errors import UserError
from cnnlab.models import count_parameters
from cnnlab.runs import RunDir
from cnnlab.samples import store_validation_sample

from . import width_choice
from .checkpoint import (final_weights, load_checkpoints, load_member_weights, record_resumed_epochs, save_checkpoints,
                         stored_precision)
from .compile_probe import settle
from .layout_probe import settle_layout
from .setup import Setup, TrainState, prepare
from .step import GraphedStep, evaluate, learning_rates, train_one_epoch, warm_up
from .throughput import Guard, plan


class NonFiniteLoss(Exception):
    pass


class Context:
    """What callbacks see and act through: the setup, the run directories, each member's state, a way to
    stop, the members' weights, the best weights to keep, and saving checkpoints."""

    def __init__(self, setup: Setup, run_dirs: list[RunDir], callbacks: list[Callback]):
        self.setup, self.run_dirs, self.callbacks = setup, run_dirs, callbacks
        self.config = setup.config
        self.best_weights: list[dict | None] = [None] * setup.members
        self.kept_now = [False] * setup.members  # keep_best called in this fit (not only loaded from a checkpoint)
        self.warmup_seconds = 0.0

    @property
    def members(self) -> int:
        return self.setup.members

    @property
    def member_configs(self) -> list[TrainConfig]:
        return self.setup.member_configs

    @property
    def state(self) -> TrainState:
        return self.setup.state

    @property
    def states(self) -> list[TrainState]:
        return self.setup.states

    def stop(self, reason: str, member: int | None = None) -> None:
        """Stop after this epoch (one member, or all); the run then finishes normally and records the reason."""
        for state in self.states if member is None else [self.states[member]]:
            state.stopped_early, state.stop_reason = True, reason

    @property
    def stop_requested(self) -> bool:
        return all(state.stopped_early for state in self.states)

    def member_weights(self) -> list[dict[str, torch.Tensor]]:
        """Each member's current weights, as a standalone model's state dict (the EMA's with EMA)."""
        return final_weights(self.setup)

    def keep_best(self, member: int, epoch: int, weights: dict[str, torch.Tensor]) -> None:
        """Keep these weights of `member` as its final ones (restore_best); the checkpoint stores them."""
        self.best_weights[member] = {k: v.detach().cpu().clone() for k, v in weights.items()}
        self.states[member].best_epoch = epoch
        self.kept_now[member] = True

    def checkpoint_states(self) -> list[dict]:
        """Each member's TrainState with every callback's state beside it (as checkpoints store it)."""
        out = [dict(vars(state)) for state in self.states]
        for cb in self.callbacks:
            for m, extra in enumerate(cb.state_dict() or []):
                out[m].update(extra)
        return out

    def save_checkpoints(self) -> None:
        save_checkpoints(self.setup, self.run_dirs, self.best_weights, self.checkpoint_states())


def ordered(callbacks) -> list[Callback]:
    """The one place callback order is decided (a stable sort on `Callback.order`): early stopping first,
    since what it stops and keeps is what the others report and save; checkpoints last, so they hold
    every other callback's change of the epoch."""
    return sorted(callbacks, key=lambda cb: getattr(cb, "order", 0))


def default_callbacks(config: TrainConfig, extra=()) -> list[Callback]:
    out = []
    if config.early_stopping or config.keeps_best:
        out.append(EarlyStopping(config.early_stopping, config.monitor, config.keeps_best))
    if config.checkpoint_every:
        out.append(Checkpoint(config.checkpoint_every))
    return out + list(extra)


def fit(config: TrainConfig, run_dir: str | Path | RunDir, callbacks=(), resume: bool = False,
        dataset: Dataset | None = None, builder=None, budget: Budget | None = None) -> dict:
    """Train one model into one run directory and return its final metrics.

    `callbacks` (cnnlab.callbacks.Callback) come beside the defaults the config asks for (early
    stopping, checkpoints). `resume` continues from the directory's checkpoint. `budget`: this run's
    time (default: config.time_budget from now on); a resume continues to the stored epochs instead."""
    budget = budget or Budget.starting(config.time_budget)
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    precision = stored_precision(run_dir) if resume else None
    setup = prepare(config, dataset, precision, builder)  # data and model first: a bad input fails before anything is written
    width_notes = speed = None
    if width_choice.applies(setup, budget, resume):  # cpu-budget: a budget that holds many epochs trains wider
        if setup.device.type == "cpu":  # its probe steps first: measured without, they ran 1.3-1.4 s an epoch
            keep_freed_memory()  # where training then took 0.94-0.98 (fewer epochs chosen; 2-core Zen 5 EPYC)
        setup, width_notes, speed = width_choice.choose_width(setup, budget, precision, builder)
    if setup.dist and not setup.dist.lead:  # torchrun: rank 0 alone writes the run directory
        return fit_setup(setup, [runs.ReadOnlyRunDir(run_dir.path)], default_callbacks(config, callbacks), resume,
                         budget, width_notes, speed)[0]
    with run_dir.owned():
        return fit_setup(setup, [run_dir], default_callbacks(config, callbacks), resume, budget, width_notes, speed)[0]


def fit_setup(setup: Setup, run_dirs: list[RunDir], callbacks: list, resume: bool = False,
              budget: Budget | None = None, width_notes: dict | None = None, speed=None) -> list[dict]:
    """The loop over epochs for a prepared setup (one member per run directory, all owned by the caller).
    After warm-up, compile = "auto" is decided (engine.compile_probe); with a `budget` (not on resume), a probe
    then fixes the epochs (engine.throughput), or the `speed` engine.width_choice measured on this setup does.
    `width_notes` (what engine.width_choice measured and chose) go into the metrics beside the plan."""
    callbacks = ordered(callbacks)
    ctx = Context(setup, run_dirs, callbacks)
    malloc = keep_freed_memory() if setup.device.type == "cpu" else None  # before the first step allocates
    stored = None
    if resume:
        require_same_files(run_dirs[0].read_env().get("data_files"), setup.config.data, setup.config.data_dir,
                           f"resuming {run_dirs[0]}")
        require_same_model(run_dirs[0], setup.spec)
        ctx.best_weights, stored = load_checkpoints(setup, run_dirs)
        record_resumed_epochs(run_dirs, setup.member_configs)
    else:
        env = {**environment(setup.device), "precision": setup.precision, "precision_reason": setup.precision_reason,
               "model_spec": setup.spec}
        if malloc is not None:
            env["malloc"] = malloc
        files = files_fingerprint(setup.config.data, setup.config.data_dir)
        if files is not None:
            env["data_files"] = files
        for run_dir, cfg in zip(run_dirs, setup.member_configs):
            run_dir.clear()
            run_dir.write_start(cfg.to_dict(), env)
    for run_dir in run_dirs:
        run_dir.unfinish()  # the weights are about to change: the old result no longer holds
    for cb in callbacks:
        cb.on_train_start(ctx)
        if stored is not None:
            cb.load_state_dict(stored)
    ctx.warmup_seconds = warm_up(setup)
    stored_env = run_dirs[0].read_env() if resume else {}
    # Flatten's gradient layout (measured), then compiled or eager (compile = "auto": measured), both before
    # the budget's probe, so that measures the chosen path
    ctx.warmup_seconds += settle_layout(setup, resume, stored_env.get("flatten_grad"))
    ctx.warmup_seconds += settle(setup, budget, resume, stored_env.get("compile"))
    if setup.config.cuda_graphs and setup.graph is None:
        start = time.perf_counter()
        setup.graph = GraphedStep(setup)
        synchronize(setup.device)
        ctx.warmup_seconds += time.perf_counter() - start
    guard = None
    if budget is not None and not resume:  # the chosen epochs go into config.json: a resume continues to them
        warmup_epochs = setup.config.warmup_epochs  # as asked: a re-plan may stretch the total past a cut
        guard = Guard(setup, budget, plan(setup, budget, run_dirs, ctx.checkpoint_states(), speed), warmup_epochs)
        for state in setup.states:  # what engine.width_choice measured, beside the plan in metrics.json
            state.budget = {**state.budget, **(width_notes or {})}
        ctx.config = setup.config
    if not resume:  # env.json records the compile decision (a resume takes it again), config.json the epochs
        env["compile"] = setup.compile
        if setup.flatten_grad is not None:
            env["flatten_grad"] = setup.flatten_grad
        for run_dir, cfg in zip(run_dirs, setup.member_configs):
            run_dir.write_start(cfg.to_dict(), env)

    def status(value: str, recorded: bool = False, **extra) -> None:
        for run_dir, state in zip(run_dirs, setup.states):  # recorded: the epochs on disk, what a resume continues
            # from (Ctrl-C inside an epoch's callbacks, or a full disk: the last epoch may not be saved)
            done = recorded_epochs(run_dir) if recorded else state.epoch
            run_dir.write_status(value, epochs_done=done, precision=setup.precision,
                                 warmup_seconds=ctx.warmup_seconds, **extra)

    status(runs.RUNNING)
    try:
        while setup.state.epoch < setup.config.epochs and not ctx.stop_requested:
            run_epoch(ctx, callbacks)
            if guard is not None and not ctx.stop_requested:
                if guard.replan(run_dirs):
                    ctx.config = setup.config
                if guard.should_stop():
                    ctx.stop(guard.reason())
        results = finish(ctx, budget if guard is not None else None)
    except KeyboardInterrupt:
        status(runs.INTERRUPTED, recorded=True)
        raise
    except NonFiniteLoss as exc:
        status(runs.FAILED, reason=str(exc))
        raise UserError(f"{run_dirs[0]}: {exc}") from None
    except UserError as exc:  # e.g. the disk filled up writing a checkpoint or the final files: what is on disk counts
        with contextlib.suppress(UserError):
            status(runs.FAILED, recorded=True, reason=str(exc))
        raise
    for cb in callbacks:
        cb.on_train_end(ctx, results)
    return results


def run_epoch(ctx: Context, callbacks: list) -> None:
    setup = ctx.setup
    epoch = setup.state.epoch + 1
    for cb in callbacks:
        cb.on_epoch_start(ctx, epoch, setup.steps_per_epoch)

    def on_step(done, images, loss, accuracy):
        for cb in callbacks:
            cb.on_step(ctx, done, images, loss, accuracy)

    lrs = learning_rates(setup, setup.state.step)
    train_loss, train_acc, train_s = train_one_epoch(setup, epoch, on_step)
    bad = [m for m, value in enumerate(train_loss) if not math.isfinite(value)]
    if bad:
        raise NonFiniteLoss(f"training diverged: the training loss became {train_loss[bad[0]]} in epoch {epoch}; "
                            f"lower the learning rate (lr = {setup.config.lr:g}) or check the data")
    if setup.val is not None:
        val_loss, val_acc, eval_s, _ = evaluate(setup, setup.val)
    else:
        val_loss, val_acc, eval_s = [math.nan] * setup.members, [math.nan] * setup.members, 0.0
    k = setup.members
    rows = []
    for m in range(k):
        row = {"epoch": epoch, "train_loss": train_loss[m], "train_accuracy": train_acc[m], "val_loss": val_loss[m],
               "val_accuracy": val_acc[m], "lr": lrs[m],
               "train_seconds": train_s / k, "eval_seconds": eval_s / k}  # a fused member's share of the time
        rows.append(row)
        state = setup.states[m]
        state.history.append(row)
        state.epoch = epoch
        if m:
            state.step = setup.state.step
        if setup.config.lr_schedule == PLATEAU:
            setup.plateaus[m].step(val_acc[m] if setup.config.plateau_monitor == "val_accuracy" else val_loss[m])
    for cb in callbacks:
        cb.on_epoch_end(ctx, rows)
    # after the checkpoint callback: a kill between the two leaves history behind, never ahead
    for run_dir, state in zip(ctx.run_dirs, setup.states):
        run_dir.write_history(state.history)


def recorded_epochs(run_dir: RunDir) -> int:
    """The epochs a resume continues from: the checkpoint's, else (checkpoints off) those history.csv holds."""
    epoch = run_dir.checkpoint_epoch()
    if epoch is not None:
        return epoch
    return len(run_dir.history()) if run_dir.file(runs.HISTORY).is_file() else 0


def require_same_model(run_dir: RunDir, spec: dict) -> None:
    """A resume continues the model it started with: a model of one's own is passed again, and another class whose
    weights have the same names and shapes loaded without a word (and was recorded as the run's model)."""
    stored = run_dir.read_env().get("model_spec")
    if stored is None and run_dir.file(runs.MODEL).is_file():  # runs started before env.json recorded the spec
        stored = run_dir.read_model_meta().get("spec")
    was, now = (stored or {}).get("class"), spec.get("class")
    # by class name: the same class imported from elsewhere (defined in a script, __main__.Net, then imported
    # as trainer.Net; moved from a notebook into a module) is the same model, as load_run takes it
    if was is not None and now is not None and was.rsplit(".", 1)[-1] != now.rsplit(".", 1)[-1]:
        raise UserError(f"resuming {run_dir.path}: it was trained with model {was}, not {now}; pass {was} again to "
                        "continue, or train a new run")


def model_metadata(setup: Setup, weights_epoch: int) -> dict:
    c, h, w = setup.dataset.shape
    trainable, frozen = count_parameters(setup.group.template if setup.group is not None else setup.model)
    return {"spec": setup.spec, "num_classes": setup.dataset.num_classes, "class_names": setup.dataset.class_names,
            "class_ids": setup.dataset.class_ids, "input_shape": [c, h, w], "dataset": setup.dataset.name,
            "trainable_params": trainable, "frozen_params": frozen, "input_scale": "pixels / 255",
            "weights_epoch": weights_epoch, "tta": setup.config.tta, "tta_translate": setup.config.tta_translate}


def finish(ctx: Context, budget: Budget | None = None) -> list[dict]:
    """Final evaluation and files of every member: best weights restored if asked, model.json last."""
    setup = ctx.setup
    # weights kept by the configured early stopping (restore_best), or by a callback of the caller's that keeps
    # best weights in this fit (an EarlyStopping passed by hand, config.keeps_best off: they were dropped). A best
    # a checkpoint brought back counts only while a callback that may keep one is passed again: a resume without
    # it (the CLI's) restored the old best and threw the new epochs away.
    watched = setup.config.keeps_best or any(getattr(cb, "keeps_best", True) for cb in ctx.callbacks)
    restored = [best is not None and (watched or kept) for best, kept in zip(ctx.best_weights, ctx.kept_now)]
    if any(restored):
        member_weights = final_weights(setup)
        for m, best in enumerate(ctx.best_weights):
            if restored[m]:
                member_weights[m] = best
        load_member_weights(setup, member_weights)
    splits = {"val": setup.val, "test": setup.test}
    evaluated = {name: evaluate(setup, data, final=True) for name, data in splits.items() if data is not None}
    weights = final_weights(setup)
    results = []
    for m, (run_dir, state) in enumerate(zip(ctx.run_dirs, setup.states)):
        logits, metrics = {}, {}
        for name, (losses, accs, seconds, out) in evaluated.items():
            logits[f"{name}_logits"], logits[f"{name}_labels"] = out[:, m], splits[name].labels
            metrics[f"{name}_loss"], metrics[f"{name}_accuracy"] = losses[m], accs[m]
            if name == "test":
                metrics["test_predict_seconds"] = seconds
        history = state.history
        train_secs = [r["train_seconds"] for r in history]
        weights_epoch = state.best_epoch if restored[m] else state.epoch
        metrics.update(
            status=runs.FINISHED, epochs_done=state.epoch, stopped_early=state.stopped_early,
            stop_reason=state.stop_reason, weights_epoch=weights_epoch,
            warmup_seconds=ctx.warmup_seconds, train_seconds_total=sum(train_secs),
            train_seconds_per_epoch_median=sorted(train_secs)[len(train_secs) // 2] if train_secs else None,
            train_images_per_second=(len(setup.train) * len(train_secs) / sum(train_secs)) if train_secs else None,
            best_val_epoch=min(history, key=lambda r: r["val_loss"])["epoch"] if setup.val is not None and history else None,
            feature_cache_seconds=setup.feature_cache_seconds,
            device=device_name(setup.device), precision=setup.precision)
        if state.budget:
            metrics.update(state.budget, budget_seconds_used=budget.elapsed() if budget is not None else None)
        if setup.group is not None:
            metrics["fused_members"] = setup.members
        if setup.dist:
            metrics["world_size"] = setup.dist.world_size
        store_validation_sample(run_dir, setup.config, setup.dataset)  # in-memory data: images for figures, export
        run_dir.write_result(metrics, logits, weights[m], model_metadata(setup, weights_epoch))
        results.append(metrics)
    return results
