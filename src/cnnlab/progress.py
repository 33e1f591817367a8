"""How training shows progress: a rich bar per epoch on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cnnlab.engine import Reporter


def _epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.2g}  "
            f"train {row['train_seconds']:.2f}s  eval {row['eval_seconds']:.2f}s")


class ConsoleReporter(Reporter):
    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console()
        self.live = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.progress: Progress | None = None
        self.epochs = 0

    def start(self, run_dir: Path, config, info: dict) -> None:
        self.epochs = config.epochs
        if self.quiet:
            return
        trainable, frozen = info["params"]
        self.console.print(f"[bold]{config.model}[/bold] on {info['dataset']} "
                           f"({info['train']} train / {info['val']} val / {info['test']} test), "
                           f"{trainable:,} trainable params, {info['device']}, {info['precision']}")
        self.console.print(f"run directory: {run_dir}")

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self._t0 = time.perf_counter()
        self._last = 0.0
        if self.live:
            self.progress = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("train", total=steps, stats="")

    def step(self, done: int, images: int, loss, accuracy) -> None:
        if not self.progress:
            return
        now = time.perf_counter()
        if now - self._last < 0.25 and done < self.progress.tasks[0].total:  # reading loss syncs the device
            return
        self._last = now
        rate = images / max(now - self._t0, 1e-9)
        self.progress.update(self.task, completed=done,
                             stats=f"loss {loss():.4f} acc {accuracy():.4f} {rate:,.0f} img/s")

    def epoch_end(self, row: dict) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None
        if not self.quiet:
            self.console.print(_epoch_line(row, self.epochs), highlight=False)
