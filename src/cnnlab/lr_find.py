"""The learning-rate finder (fastai's `lr_find`, after Leslie Smith's range test): train on real batches
while the rate grows exponentially from 1e-7 to 10 over about 100 steps, smooth the loss, stop once it
diverges (more than 4 x the best smoothed loss), and suggest a rate by fastai's "valley" rule: the
middle of the longest stretch over which the loss keeps falling.

The weights, the optimizer, BatchNorm's statistics and the random generators are put back afterwards:
nothing is trained permanently, no run directory is written; only the plot is.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cnnlab.engine.setup import Setup  # noqa: E402
from cnnlab.engine.step import apply_learning_rates, make_batch, restore_rng, rng_snapshot, train_step  # noqa: E402
from cnnlab.display import figure_png  # noqa: E402
from cnnlab.plots import save_figure  # noqa: E402
from cnnlab.errors import either  # noqa: E402

START_LR, END_LR, STEPS = 1e-7, 10.0, 100  # fastai's defaults
SMOOTHING = 0.98  # fastai's beta: an exponential moving average of the loss, debiased
DIVERGE = 4.0  # stop when the smoothed loss exceeds this many times the best one


@dataclass
class LRFind:
    """What the sweep saw: rates, raw and smoothed losses, the suggestion and the plot's path."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    plot: Path | None = None
    model: str = "MODEL"
    custom: bool = False  # a model of one's own: the CLI cannot train it, so the advice is the Python call

    @property
    def command(self) -> str:
        if self.custom:
            return f"cnnlab.train({self.model}, ..., lr={self.suggestion:.3g})"
        return either(f"cnnlab train {self.model} --lr {self.suggestion:.3g}",
                      f"cnnlab.train({self.model!r}, ..., lr={self.suggestion:.3g})")

    def __repr__(self) -> str:
        where = f", plot={str(self.plot)!r}" if self.plot is not None else ""
        return f"LRFind(suggestion={self.suggestion:.3g}, steps={len(self.lrs)}{where}); use it: {self.command}"

    def _repr_png_(self) -> bytes:
        """The plot, inline in a notebook (fastai's learn.lr_find() shows it there too)."""
        fig = figure(self)
        try:
            return figure_png(fig)
        finally:
            plt.close(fig)  # else every display leaves one open (matplotlib warns past 20)


def valley(lrs: list[float], losses: list[float]) -> int:
    """fastai's valley rule: the longest decreasing subsequence of the losses, and the index a third and a
    half of a third (int-rounded) into it, as fastai's `valley` computes it."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max(0, max_start + int(sections) + int(sections / 2))  # fastai's start may be -1 (a valley from 0)


def sweep(setup: Setup, start_lr: float = START_LR, end_lr: float = END_LR, steps: int = STEPS,
          diverge: float = DIVERGE) -> LRFind:
    """Run the range test on a prepared setup (one member) and restore everything it changed."""
    saved_model = copy.deepcopy(setup.model.state_dict())
    saved_opt = copy.deepcopy(setup.optimizer.state_dict())
    saved_ema = copy.deepcopy(setup.ema.module.state_dict()) if setup.ema is not None else None
    randomness = rng_snapshot(setup)
    result = LRFind()
    try:
        setup.step_model.train()
        n, batch = len(setup.train), setup.batch_size
        perm, pos = torch.randperm(n, generator=setup.generators[0], device=setup.device), 0
        avg, best = 0.0, math.inf
        for i in range(steps):
            lr = start_lr * (end_lr / start_lr) ** (i / max(1, steps - 1))
            if pos + batch > n and pos:  # a new pass over the data (full batches only)
                perm, pos = torch.randperm(n, generator=setup.generators[0], device=setup.device), 0
            idx = perm[pos:pos + batch][None]
            pos += batch
            apply_learning_rates(setup, [lr])
            x, y = make_batch(setup, idx)
            losses, _ = train_step(setup, x, y)
            loss = losses[0].item()
            if not math.isfinite(loss):
                break
            avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
            smooth = avg / (1 - SMOOTHING ** (i + 1))
            result.lrs.append(lr)
            result.losses.append(loss)
            result.smoothed.append(smooth)
            if smooth > diverge * best:
                break
            best = min(best, smooth)
    finally:
        setup.model.load_state_dict(saved_model)
        setup.optimizer.load_state_dict(saved_opt)
        if saved_ema is not None:
            setup.ema.module.load_state_dict(saved_ema)
        restore_rng(setup, randomness)
        apply_learning_rates(setup, [setup.config.lr])
    result.suggestion = suggest(result.lrs, result.smoothed, steps)
    return result


def suggest(lrs: list[float], smoothed: list[float], steps: int = STEPS) -> float | None:
    """fastai's suggestion: the valley of the smoothed losses, leaving out the first tenth and the last 5."""
    lo, hi = steps // 10, len(lrs) - 5
    if hi - lo < 2:  # too short a sweep for fastai's cut: use all of it
        lo, hi = 0, len(lrs)
    if hi - lo < 1:
        return None
    return lrs[lo + valley(lrs[lo:hi], smoothed[lo:hi])]


def plot(result: LRFind, path: str | Path) -> Path:
    """The figure written atomically."""
    return save_figure(figure(result), path)


def figure(result: LRFind):
    """Smoothed loss against the rate (log x), the suggestion marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.smoothed)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    if result.suggestion is not None:
        i = result.lrs.index(result.suggestion)
        ax.plot([result.suggestion], [result.smoothed[i]], "o", color="red", label=f"valley: {result.suggestion:.3g}")
        ax.axvline(result.suggestion, color="red", alpha=0.3)
        ax.legend()
    ax.set_title(f"lr finder: {result.model}")
    return fig
