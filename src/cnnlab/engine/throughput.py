"""A budgeted run's speed, measured on this machine after warm-up, and the epochs chosen from it.

`measure` times a few real training steps (full batches, augmentation included) and a slice of validation,
then undoes every effect as warm_up does (`undone`, which the compile probe uses too): weights and BatchNorm
statistics, the optimizer's state (in place, so a captured CUDA graph keeps its tensors), the EMA, fp16's
gradient scaler, every random generator. A run with a budget therefore trains exactly as the same run with
`epochs` set to the chosen count. `checkpoint_seconds` times one checkpoint of every member, written as
temporary files beside the real ones and removed. `plan` applies cnnlab.budget's rule and sets the chosen
total on the config before the first step, so one-cycle and cosine schedules lay out that total; `Guard`
chooses again from the first epochs' real pace, and stops a run that would overrun.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import time
from dataclasses import dataclass, replace
from typing import Iterator

import torch

from cnnlab import runs, test_time
from cnnlab.budget import HIGH, Budget, Plan, choose_epochs, overruns, require_one_epoch
from cnnlab.device import synchronize
from cnnlab.runs import RunDir

from .checkpoint import save_checkpoints
from .setup import Setup
from .step import apply_learning_rates, learning_rates, make_batch, restore_rng, rng_snapshot, split_logits, train_step

PROBE_STEPS = (5, 20)  # timed steps: 5% of an epoch, within these bounds (never more than an epoch)


@dataclass
class Throughput:
    epoch_seconds: float  # one epoch: training over the whole split plus validation
    final_seconds: float  # the final evaluation (validation and test)
    steps: int  # training steps timed


def probe_steps(steps_per_epoch: int) -> int:
    low, high = PROBE_STEPS
    return max(1, min(steps_per_epoch, high, max(low, math.ceil(steps_per_epoch / 20))))


def _clone(value):
    return value.detach().clone() if torch.is_tensor(value) else value


def save_optimizer(optimizer) -> object:
    if not isinstance(optimizer, torch.optim.Optimizer):
        return optimizer.state_dict()  # an optimizer of its own kind (a fused group's): clones of its state
    state = {p: {k: _clone(v) for k, v in s.items()} for p, s in optimizer.state.items()}
    return state, [_clone(g["lr"]) for g in optimizer.param_groups]


def restore_optimizer(optimizer, saved, keep_tensors: bool) -> None:
    """Put the saved state back in place; state the probe created goes (zeroed instead when a CUDA graph
    holds its tensors, as GraphedStep leaves it)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        optimizer.load_state_dict(saved)
        return
    state, rates = saved
    with torch.no_grad():
        for p in list(optimizer.state):
            if p in state:
                for key, value in optimizer.state[p].items():
                    if torch.is_tensor(value):
                        value.copy_(state[p][key])
                    else:
                        optimizer.state[p][key] = state[p][key]
            elif keep_tensors:
                for value in optimizer.state[p].values():
                    if torch.is_tensor(value):
                        value.zero_()
            else:
                del optimizer.state[p]
        for group, rate in zip(optimizer.param_groups, rates):
            if torch.is_tensor(group["lr"]):
                group["lr"].copy_(rate)
            else:
                group["lr"] = rate


@contextlib.contextmanager
def undone(setup: Setup) -> Iterator[None]:
    """Whatever training steps the block takes are undone afterwards (also when it fails): weights and
    BatchNorm statistics, the optimizer's state, the EMA, fp16's gradient scaler and every random
    generator. The budget's probe and the compile probe (engine.compile_probe) both run inside one."""
    with torch.no_grad():
        model_state = {k: v.detach().clone() for k, v in setup.model.state_dict().items()}
    optimizer_state = save_optimizer(setup.optimizer)
    ema_state = setup.ema.state_dict() if setup.ema is not None else None
    scaler_state = setup.scaler.state_dict() if setup.scaler is not None else None  # fp16: the probe's steps move it
    randomness = rng_snapshot(setup)
    try:
        yield
    finally:
        with torch.no_grad():
            setup.model.load_state_dict(model_state)
        restore_optimizer(setup.optimizer, optimizer_state, keep_tensors=setup.graph is not None)
        if ema_state is not None:
            setup.ema.load_state_dict(ema_state)
        if scaler_state is not None:
            setup.scaler.load_state_dict(scaler_state)
        restore_rng(setup, randomness)


def measure(setup: Setup) -> Throughput:
    """Seconds per epoch (training and validation) and of the final evaluation, from a short timed probe
    after warm-up; every effect on the model, optimizer, EMA and random generators is undone."""
    n, batch = len(setup.train), min(setup.batch_size, len(setup.train))
    steps = probe_steps(setup.steps_per_epoch)
    idx = torch.arange(batch, device=setup.device).expand(setup.members, -1)
    with undone(setup):
        setup.step_model.train()
        apply_learning_rates(setup, learning_rates(setup, 0))
        train_step(setup, *make_batch(setup, idx))  # untimed: an optimizer's first step allocates its state
        synchronize(setup.device)
        start = time.perf_counter()
        for _ in range(steps):
            train_step(setup, *make_batch(setup, idx))
        synchronize(setup.device)
        train_seconds = (time.perf_counter() - start) / steps * n / batch
        per_image = 0.0
        split = setup.val if setup.val is not None else setup.test
        if split is not None and len(split):
            images = split.images[: 2 * setup.config.eval_batch_size]
            synchronize(setup.device)
            start = time.perf_counter()
            split_logits(setup, images)
            synchronize(setup.device)
            per_image = (time.perf_counter() - start) / len(images)
    val = len(setup.val) if setup.val is not None else 0
    test = len(setup.test) if setup.test is not None else 0
    final = per_image  # the final evaluation also scores the shifted views of tta_translate, which the probe did not
    if setup.config.tta and setup.config.tta_translate:
        final *= test_time.VIEWS[True] / test_time.VIEWS[False]
    return Throughput(train_seconds + per_image * val, final * (val + test), steps)


class ProbeDir(RunDir):
    """A run directory whose checkpoint goes to a temporary file (a name runs.remove_stale_temporaries
    knows), removed at once: what writing one costs, without touching the real files."""

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        path = self.path / f".budget-probe.{secrets.token_hex(4)}.tmp"
        try:
            runs.save_tensors(path, tensors, {"cnnlab": json.dumps(meta, default=str)})  # as RunDir.save_checkpoint
        finally:
            path.unlink(missing_ok=True)


def checkpoint_seconds(setup: Setup, run_dirs: list[RunDir], states: list[dict]) -> float:
    """Seconds one checkpoint of every member takes (as the Checkpoint callback writes them)."""
    if setup.dist and not setup.dist.lead:
        return 0.0  # rank 0 alone writes
    probes = [ProbeDir(run_dir.path) for run_dir in run_dirs]
    synchronize(setup.device)
    start = time.perf_counter()
    save_checkpoints(setup, probes, [None] * setup.members, states)
    return time.perf_counter() - start


def agree(setup: Setup, *values: float) -> list[float]:
    """torchrun: every process's mean, so all of them choose the same epochs (and stop at the same one)."""
    if not setup.dist:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=setup.device)
    return (setup.dist.all_reduce_sum(tensor) / setup.dist.world_size).tolist()


def plan(setup: Setup, budget: Budget, run_dirs: list[RunDir] = (), states: list[dict] | None = None,
         speed: Throughput | None = None) -> Plan:
    """Measure (unless `speed` was measured on this setup already), choose the epochs for `budget`, and set them
    on the config(s) before the first step; budget.TooSmall where one epoch would end past 110% of it. With
    `run_dirs` (and each member's checkpoint `states`), an epoch's share of a checkpoint counts too.

    A warm-up longer than the chosen epochs is cut to them (the schedule cut it to the total anyway)."""
    speed = speed or measure(setup)
    every = setup.config.checkpoint_every
    saving = checkpoint_seconds(setup, run_dirs, states) / every if run_dirs and every else 0.0
    world = setup.dist.world_size if setup.dist else 1
    epoch_seconds, final_seconds, saving, spent = agree(setup, speed.epoch_seconds, speed.final_seconds, saving * world,
                                                        budget.elapsed())
    epoch_seconds += saving  # the lead's, the others' being 0
    require_one_epoch(budget, spent, epoch_seconds, final_seconds, f"{setup.config.model} ({len(setup.train):,} images)")
    chosen = Plan.choose(budget.seconds, spent, epoch_seconds, final_seconds, setup.config.epochs)
    set_epochs(setup, chosen.chosen_epochs, setup.config.warmup_epochs)
    for state in setup.states:
        state.budget = chosen.metrics()
    return chosen


def set_epochs(setup: Setup, epochs: int, warmup_epochs: float) -> None:
    """A new total on the config(s), which one-cycle and cosine schedules lay out (a warm-up longer than the
    total is cut to it: the schedule would cut it anyway)."""
    def fixed(cfg):
        return replace(cfg, epochs=epochs, warmup_epochs=min(warmup_epochs, epochs))

    setup.config = fixed(setup.config)
    if setup.group is not None:
        setup.group.configs = [fixed(cfg) for cfg in setup.group.configs]


REPLANS = 3  # after each of the first 3 epochs the total may grow or shrink; after later ones, only shrink


class Guard:
    """Holds a budgeted run to its share, after each epoch. After each of the first REPLANS epochs, the
    epochs are chosen again from the pace measured so far (checkpoints and callbacks included) instead of
    the probe's few steps, and the schedule stretches or shrinks to the new total. The pace is the first
    epoch's until there is a second, then the mean of the epochs after the first, which carries one-off
    costs (cpu-budget, 2-core AVX2-only AMD EPYC: 27.5 s against 21.7-24.0 for the next ones). The probe
    alone guessed 31.6 s an epoch where the epochs took 23.8 (25-minute budget, same EPYC), which left
    25% of the budget unused. Later epochs may only shrink the total, when the pace so far says it would
    end past the budget (a 10-minute cpu-budget run planned 599.6 s from epochs 2-3 at 20.5 s, then took
    21-21.9 s an epoch and ended at 617 s, 103%): a shrinking one-cycle or cosine schedule anneals a little
    sooner, where a growing one would raise the rate again. Last, it stops a run when one more epoch would
    end it past 110% of its share (a total cannot shrink below the epochs done)."""

    def __init__(self, setup: Setup, budget: Budget, plan: Plan, warmup_epochs: float):
        self.setup, self.budget, self.plan, self.warmup_epochs = setup, budget, plan, warmup_epochs
        self.start, self.epochs = budget.clock(), setup.state.epoch
        self.marks = [self.start]  # the clock at the first epoch's start and after each epoch

    def replan(self, run_dirs: list[RunDir]) -> bool:
        """After an epoch: choose the epochs again (after the first REPLANS, only fewer); True if the total
        changed (config.json too, so a resume continues to the new total)."""
        setup, now = self.setup, self.budget.clock()
        self.marks.append(now)
        done = len(self.marks) - 1
        if setup.state.epoch >= setup.config.epochs and (done > REPLANS or setup.config.epochs >= self.plan.budget_max_epochs):
            return False
        laps = [b - a for a, b in zip(self.marks, self.marks[1:])]
        pace = laps[0] if done == 1 else sum(laps[1:]) / (done - 1)
        pace, elapsed = agree(setup, pace, now - self.budget.start)
        final = self.plan.budget_final_seconds
        # the rule's "spent" is what the epochs still to come do not pay: the end is elapsed + (n - done) * pace
        # (not below 0, where the epochs done were faster than the pace: then the rule errs early, not late)
        spent = max(0.0, elapsed - done * pace)
        epochs, note = choose_epochs(self.budget.seconds, spent, pace, final, self.plan.budget_max_epochs)
        epochs = max(epochs, setup.state.epoch)  # what is trained stays trained
        if done > REPLANS and epochs >= setup.config.epochs:
            return False  # past the first epochs the total only shrinks (the guard below still watches)
        for state in setup.states:
            state.budget = {**(state.budget or {}), "replan_seconds_per_epoch": pace, "replanned_epochs": epochs,
                            "budget_predicted_seconds": spent + epochs * pace + final, "budget_note": note}
        if epochs == setup.config.epochs:
            return False
        set_epochs(setup, epochs, self.warmup_epochs)
        for run_dir, cfg in zip(run_dirs, setup.member_configs):
            run_dir.write_config(cfg.to_dict())
        return True

    def should_stop(self) -> bool:
        done = self.setup.state.epoch - self.epochs
        if self.setup.state.epoch >= self.setup.config.epochs:
            return False
        now = self.budget.clock()
        over = overruns(self.budget.seconds, now - self.budget.start, done, now - self.start, self.plan.budget_final_seconds)
        return bool(agree(self.setup, float(over))[0])

    def reason(self) -> str:
        return (f"time budget: one more epoch would end past {100 * HIGH:.0f}% of this run's "
                f"{self.budget.seconds:.0f} s (the probe's estimate was too hopeful)")
