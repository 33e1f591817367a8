"""Callbacks: how code outside the engine takes part in training (Keras's and Lightning's idea).

A callback overrides any of five hooks; each gets the loop's Context and acts only through it
(`ctx.config`, `ctx.state`, `ctx.states`, `ctx.run_dirs`, `ctx.member_weights()`,
`ctx.keep_best(m, epoch, weights)`, `ctx.save_checkpoints()`, `ctx.stop(reason)`), so this module
imports nothing of the engine:

    on_train_start(ctx)                      before warm-up and the first epoch
    on_epoch_start(ctx, epoch, steps)
    on_step(ctx, step, images, loss, acc)    loss() and accuracy() read the device: call them rarely
    on_epoch_end(ctx, rows)                  rows: one history row per member (one for a standalone run)
    on_train_end(ctx, results)               results: the final metrics, one dict per member

A callback with state that must survive a resume returns it per member from `state_dict()`; the
checkpoint stores it beside the loop's state and `load_state_dict(states)` gets it back after
on_train_start. `order` places a callback among the others (engine.loop.ordered: lower first).

`cnnlab.train(..., callbacks=[...])` and `cnnlab.engine.fit(config, run_dir, callbacks=[...])` take
them beside the ones the configuration asks for (early stopping, checkpoints).
"""

from __future__ import annotations

import math
import numbers

from cnnlab.errors import UserError

MONITORS = ("val_loss", "val_accuracy", "train_loss", "train_accuracy")  # history columns a callback may watch


class Callback:
    order = 0  # early stopping -1 (decides first), checkpoints 1 (save last)
    # May call ctx.keep_best: a best kept before a resume counts only while such a callback is passed again
    # (the engine's own that never keep one say False, so the CLI's resume does not restore a stale best).
    keeps_best = True

    def on_train_start(self, ctx) -> None: ...
    def on_epoch_start(self, ctx, epoch: int, steps: int) -> None: ...
    def on_step(self, ctx, step: int, images: int, loss, accuracy) -> None: ...
    def on_epoch_end(self, ctx, rows: list[dict]) -> None: ...
    def on_train_end(self, ctx, results: list[dict]) -> None: ...

    def state_dict(self) -> list[dict] | None:
        """Per member, what a resume needs of this callback (stored in the checkpoint); None: nothing."""
        return None

    def load_state_dict(self, states: list[dict]) -> None:
        """Each member's stored checkpoint state (the loop's and every callback's keys)."""


class EarlyStopping(Callback):
    """Stop after `patience` epochs without improvement of `monitor` (0: never stop, only track the best).

    restore_best (cnnlab's default whenever early stopping is on, unlike Keras's
    restore_best_weights=False): the final weights, which evaluate, predict and ensembles use, are
    the best epoch's, and model.json says which epoch (weights_epoch). The last epoch's state stays
    in the checkpoint, so a resumed run continues from where it stopped."""

    order = -1  # what it stops and keeps is what the others report and save

    @property
    def keeps_best(self) -> bool:
        return self.restore_best

    def __init__(self, patience: int = 0, monitor: str = "val_loss", restore_best: bool = True, min_delta: float = 0.0):
        if monitor not in MONITORS:  # a typo failed with a KeyError after the first epoch, leaving a broken run
            raise UserError(f"EarlyStopping: monitor must be one of {', '.join(MONITORS)}, got {monitor!r}")
        if not isinstance(patience, numbers.Integral) or isinstance(patience, bool) or patience < 0:
            raise UserError(f"EarlyStopping: patience must be a whole number of epochs (0: never stop), got {patience!r}")
        self.patience, self.monitor, self.restore_best, self.min_delta = int(patience), monitor, restore_best, min_delta
        self.maximize = monitor.endswith("accuracy")
        self.best: list[float | None] = []
        self.since_best: list[int] = []

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return not math.isnan(value)
        return value > best + self.min_delta if self.maximize else value < best - self.min_delta

    def on_train_start(self, ctx) -> None:
        if self.monitor.startswith("val_") and ctx.setup.val is None:
            raise UserError(f"EarlyStopping: monitor {self.monitor} needs a validation split (val_fraction > 0); "
                            "monitor train_loss or train_accuracy instead")
        self.best, self.since_best = [None] * ctx.members, [0] * ctx.members

    def state_dict(self) -> list[dict]:
        return [{"best_value": best, "epochs_since_best": since} for best, since in zip(self.best, self.since_best)]

    def load_state_dict(self, states: list[dict]) -> None:
        for m, state in enumerate(states):
            best = state.get("best_value")
            if "best_val_loss" in state and "best_value" not in state:  # checkpoints written before callbacks existed
                old = state["best_val_loss"]
                best = None if old is None or math.isinf(old) else old
            self.best[m], self.since_best[m] = best, state.get("epochs_since_best", 0)

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        weights = None
        for m, row in enumerate(rows):
            value = row[self.monitor]
            if self.improved(value, self.best[m]):
                self.best[m], self.since_best[m] = value, 0
                if self.restore_best:
                    weights = weights or ctx.member_weights()
                    ctx.keep_best(m, row["epoch"], weights[m])
            else:
                self.since_best[m] += 1
            if self.patience and self.since_best[m] >= self.patience:
                ctx.stop(f"early stopping: no better {self.monitor} for {self.patience} epochs", member=m)


class Checkpoint(Callback):
    """Write every member's resume checkpoint every `every` epochs and after the last one."""

    order = 1  # after every other callback changed the epoch's state
    keeps_best = False

    def __init__(self, every: int = 1):
        self.every = every

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        epoch = rows[0]["epoch"]
        last = epoch == ctx.config.epochs or ctx.stop_requested
        if self.every and (epoch % self.every == 0 or last):
            ctx.save_checkpoints()


class LambdaCallback(Callback):
    """A callback from plain functions: LambdaCallback(on_epoch_end=lambda ctx, rows: print(rows[0]))."""

    def __init__(self, **hooks):
        unknown = set(hooks) - {name for name in dir(Callback) if name.startswith("on_")}
        if unknown:
            raise TypeError(f"unknown hook(s) {', '.join(sorted(unknown))}")
        for name, fn in hooks.items():
            setattr(self, name, fn)
