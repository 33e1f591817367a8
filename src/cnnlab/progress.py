"""How training shows progress: a rich bar per epoch on a terminal and in Jupyter (time left for the
epoch and for the run), one plain line per epoch otherwise (logs, CI)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cnnlab.budget import Plan
from cnnlab.callbacks import Callback
from cnnlab.device import device_name, precision_note
from cnnlab.models import count_parameters
from cnnlab.models.custom import spec_label


def _epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.2g}  "
            f"train {row['train_seconds']:.2f}s  eval {row['eval_seconds']:.2f}s")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class ConsoleProgress(Callback):
    """The CLI's and the Python API's progress callback."""

    keeps_best = False  # never calls ctx.keep_best (cnnlab.callbacks.Callback)

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console()
        self.live = (self.console.is_terminal or self.console.is_jupyter) and not quiet
        # a pipe, `| tee` or a CI log: one whole line per epoch, however long, never wrapped at 80 columns
        self.soft_wrap = not (self.console.is_terminal or self.console.is_jupyter)
        self.quiet = quiet
        self.progress: Progress | None = None
        self.epoch_seconds: list[float] = []
        self.named_run_dir = False

    def on_train_start(self, ctx) -> None:
        setup = ctx.setup
        self.epochs, self.epoch_seconds, self.budget_shown, self.replan_shown = ctx.config.epochs, [], False, False
        self.shown_total: int | None = None
        self.resumed = False
        if self.quiet:
            return
        trainable, _ = count_parameters(setup.model)
        members = f" ({setup.members} members fused)" if setup.members > 1 else ""
        val = len(setup.val) if setup.val is not None else 0
        test = len(setup.test) if setup.test is not None else 0
        name = spec_label(ctx.config.model, setup.spec)  # a model of one's own by its class, not "custom"
        self.console.print(f"[bold]{escape(name)}[/bold]{members} on {escape(setup.dataset.name)} "
                           f"({len(setup.train)} train / {val} val / {test} test), {trainable:,} trainable params, "
                           f"{escape(device_name(setup.device))}, {setup.precision}", soft_wrap=self.soft_wrap)
        self.console.print("run directory: " + escape(", ".join(str(d) for d in ctx.run_dirs)), highlight=False,
                           soft_wrap=self.soft_wrap)
        self.named_run_dir = True  # a failure that then removes it says so (the CLI's train)
        if note := precision_note(setup.device, setup.precision):
            self.console.print(f"[yellow]{escape(note)}[/yellow]", soft_wrap=self.soft_wrap)

    def load_state_dict(self, states: list[dict]) -> None:
        """Called on resume only: the budget's plan came from the checkpoint, measured when the run started."""
        self.resumed = True

    def on_epoch_start(self, ctx, epoch: int, steps: int) -> None:
        # a resume trains to its stored epochs: the plan's figures ("1.6 s per epoch measured, 21 epochs chosen",
        # "the first epoch took 1.6 s") were the first call's, and stale when it extends the run (--epochs 23)
        if ctx.state.budget and not self.quiet and not self.resumed:  # chosen after on_train_start, chosen again after epoch 1
            plan = Plan(**ctx.state.budget)
            if not self.budget_shown:
                self.console.print(escape(plan.line()), highlight=False, soft_wrap=self.soft_wrap)
            elif plan.replanned_epochs is not None and not self.replan_shown:
                self.console.print(escape(plan.replan_line()), highlight=False, soft_wrap=self.soft_wrap)
                self.replan_shown, self.shown_total = True, plan.replanned_epochs
            elif plan.replanned_epochs is not None and plan.replanned_epochs != self.shown_total:
                # a later change (the pace of the epochs so far): said too, or the console's total would be stale
                self.console.print(escape(plan.later_replan_line(self.shown_total, epoch - 1)), highlight=False,
                                   soft_wrap=self.soft_wrap)
                self.shown_total = plan.replanned_epochs
        self.budget_shown = True
        self.epochs = ctx.config.epochs
        self._t0 = self._last = time.perf_counter()
        self.epoch = epoch
        if self.live:
            self.progress = Progress(TextColumn(f"epoch {epoch}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("left"),
                                     TimeRemainingColumn(), console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("train", total=steps, stats="")

    def on_step(self, ctx, step: int, images: int, loss, accuracy) -> None:
        if not self.progress:
            return
        now = time.perf_counter()
        total = self.progress.tasks[0].total
        if now - self._last < 0.25 and step < total:  # reading loss syncs the device
            return
        self._last = now
        elapsed = now - self._t0
        rate = images / max(elapsed, 1e-9)
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else elapsed * total / step
        run_left = per_epoch * (self.epochs - self.epoch) + elapsed * (total - step) / step
        self.progress.update(self.task, completed=step, stats=f"loss {loss():.4f} acc {accuracy():.4f} {rate:,.0f} img/s "
                                                              f"run left ~{_duration(run_left)}")

    def on_epoch_end(self, ctx, rows: list[dict]) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._t0)
        if self.progress:
            self.progress.stop()
            self.progress = None
        if not self.quiet:
            self.console.print(_epoch_line(rows[0], self.epochs), highlight=False, soft_wrap=self.soft_wrap)

