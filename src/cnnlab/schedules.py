"""Learning-rate schedules as pure functions of the optimizer step.

Pure functions (no scheduler object, no state) so a resumed run needs nothing but its step count to
be at the same learning rate, and so the engine can precompute a whole schedule as a tensor on the
device (one index per step, no host sync).

Step convention, shared by every schedule: `step` counts optimizer steps from 0, and `lr_at(step)` is
the learning rate *used by* step `step`. Warm-up and decay are laid out on [0, total_steps]; the end
value is reached at step == total_steps, i.e. just after the last step (total_steps - 1) is taken, so
no step is wasted at a learning rate of exactly 0. Steps past total_steps stay at the end value.

- "constant":  linear warm-up over `warmup_steps` (if any), then `base_lr`.
- "one-cycle": linear warm-up from base_lr / div_factor to base_lr over the first pct_start of the
  steps, then a *cosine* anneal to base_lr / final_div_factor (fastai's fit_one_cycle and PyTorch's
  OneCycleLR anneal with a cosine too; airbench's triangle is the linear variant. Cosine spends longer
  near the peak and near the end, which is where short runs gain the most). `warmup_steps` is unused.
- "cosine":    linear warm-up over `warmup_steps`, then a cosine from base_lr to min_lr.
- "linear":    linear warm-up over `warmup_steps`, then a straight line from base_lr to 0.

The warm-up of "constant", "cosine" and "linear" is base_lr * (step + 1) / warmup_steps: the first
step already moves (never lr 0) and step warmup_steps - 1 is the first at full base_lr.
"""

from __future__ import annotations

import math

from cnnlab.errors import UserError

SCHEDULES = ("constant", "one-cycle", "cosine", "linear")


def _check(kind: str, total_steps: int, base_lr: float, warmup_steps: int, pct_start: float, div_factor: float,
           final_div_factor: float) -> None:
    if kind not in SCHEDULES:
        raise UserError(f"unknown lr_schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if total_steps < 1:
        raise UserError(f"lr_schedule {kind}: total_steps must be at least 1, got {total_steps}")
    if base_lr < 0:
        raise UserError(f"lr_schedule {kind}: the learning rate must not be negative, got {base_lr}")
    if not 0 <= warmup_steps <= total_steps:
        raise UserError(f"lr_schedule {kind}: warmup_steps must be between 0 and the {total_steps} total steps, "
                        f"got {warmup_steps}")
    if not 0.0 <= pct_start < 1.0:
        raise UserError(f"lr_schedule one-cycle: pct_start must be in [0, 1), got {pct_start}")
    if div_factor <= 0 or final_div_factor <= 0:
        raise UserError("lr_schedule one-cycle: div_factor and final_div_factor must be positive")


def _cosine(start: float, end: float, progress: float) -> float:
    """From start (progress 0) to end (progress 1) along half a cosine."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(kind: str, step: int, total_steps: int, base_lr: float, *, warmup_steps: int = 0, pct_start: float = 0.25,
          div_factor: float = 25.0, final_div_factor: float = 1e4, min_lr: float = 0.0) -> float:
    """The learning rate of optimizer step `step` (0-based) in a run of `total_steps` steps."""
    _check(kind, total_steps, base_lr, warmup_steps, pct_start, div_factor, final_div_factor)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    step = min(step, total_steps)
    if kind == "one-cycle":
        start, end = base_lr / div_factor, base_lr / final_div_factor
        peak = pct_start * total_steps  # may be fractional; the shape is continuous in the step
        if step < peak:
            return start + (base_lr - start) * step / peak
        return _cosine(base_lr, end, (step - peak) / (total_steps - peak))
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps) if total_steps > warmup_steps else 1.0
    if kind == "cosine":
        return _cosine(base_lr, min_lr, progress)
    return base_lr * (1.0 - progress)  # linear
