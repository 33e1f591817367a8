"""Callbacks: how code outside the engine takes part in training (Keras's and Lightning's idea).

A callback overrides any of five hooks; each gets the engine's Context (`ctx.setup`, `ctx.config`,
`ctx.state`, `ctx.run_dirs`) and may call `ctx.stop(reason)` to end training after the epoch:

    on_train_start(ctx)                      before warm-up and the first epoch
    on_epoch_start(ctx, epoch, steps)
    on_step(ctx, step, images, loss, acc)    loss() and accuracy() read the device: call them rarely
    on_epoch_end(ctx, rows)                  rows: one history row per member (one for a standalone run)
    on_train_end(ctx, results)               results: the final metrics, one dict per member

`cnnlab.train(..., callbacks=[...])` and `cnnlab.engine.fit(config, run_dir, callbacks=[...])` take
them after the ones the configuration asks for (early stopping, checkpoints), and before progress.
"""

from __future__ import annotations

import math


class Callback:
    def on_train_start(self, ctx) -> None: ...
    def on_epoch_start(self, ctx, epoch: int, steps: int) -> None: ...
    def on_step(self, ctx, step: int, images: int, loss, accuracy) -> None: ...
    def on_epoch_end(self, ctx, rows: list[dict]) -> None: ...
    def on_train_end(self, ctx, results: list[dict]) -> None: ...


class EarlyStopping(Callback):
    """Stop after `patience` epochs without improvement of `monitor` (0: never stop, only track the best).

    restore_best (cnnlab's default whenever early stopping is on, unlike Keras's
    restore_best_weights=False): the final weights, which evaluate, predict and ensembles use, are
    the best epoch's, and model.json says which epoch (weights_epoch). The last epoch's state stays
    in the checkpoint, so a resumed run continues from where it stopped."""

    def __init__(self, patience: int = 0, monitor: str = "val_loss", restore_best: bool = True, min_delta: float = 0.0):
        self.patience, self.monitor, self.restore_best, self.min_delta = patience, monitor, restore_best, min_delta
        self.maximize = monitor.endswith("accuracy")

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return not math.isnan(value)
        return value > best + self.min_delta if self.maximize else value < best - self.min_delta

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        from cnnlab.engine import final_weights

        weights = None
        for m, (row, state) in enumerate(zip(rows, ctx.states)):
            value = row[self.monitor]
            if self.improved(value, state.best_value):
                state.best_value, state.best_epoch, state.epochs_since_best = value, row["epoch"], 0
                if self.restore_best:
                    weights = weights or final_weights(ctx.setup)
                    ctx.best_weights[m] = {k: v.detach().cpu().clone() for k, v in weights[m].items()}
            else:
                state.epochs_since_best += 1
            if self.patience and state.epochs_since_best >= self.patience:
                state.stopped_early = True
                state.stop_reason = f"early stopping: no better {self.monitor} for {self.patience} epochs"


class Checkpoint(Callback):
    """Write every member's resume checkpoint every `every` epochs and after the last one."""

    def __init__(self, every: int = 1):
        self.every = every

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        from cnnlab.engine import save_checkpoints

        epoch = rows[0]["epoch"]
        last = epoch == ctx.config.epochs or ctx.stop_requested
        if self.every and (epoch % self.every == 0 or last):
            save_checkpoints(ctx.setup, ctx.run_dirs, ctx.best_weights)


class LambdaCallback(Callback):
    """A callback from plain functions: LambdaCallback(on_epoch_end=lambda ctx, rows: print(rows[0]))."""

    def __init__(self, **hooks):
        unknown = set(hooks) - {name for name in dir(Callback) if name.startswith("on_")}
        if unknown:
            raise TypeError(f"unknown hook(s) {', '.join(sorted(unknown))}")
        for name, fn in hooks.items():
            setattr(self, name, fn)
