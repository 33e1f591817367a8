"""Time budgets (`--time-budget 15m`, `time_budget=...`): a command's seconds, shared among its runs, and
the rule that turns a measured speed into a number of epochs.

A budget belongs to one command: `train`, `study`, `ensemble` or `tune` starts its clock when it is
called, and everything after that counts (data loading, warm-up, compilation, the speed probe,
training, evaluation), except writing a study's report. Each run gets an equal part of what is left
among the runs still to train (`Budget.share`, re-divided as runs finish). A run measures its speed
after warm-up (cnnlab.engine.throughput: a few real steps and a slice of validation, then undone) and
fixes its number of epochs before the first step, so one-cycle and cosine schedules lay out the
chosen total (`choose_epochs`); after each of its first epochs the same rule chooses again from their
real pace (later, only fewer), and the schedule stretches or shrinks to the new total
(engine.throughput.Guard). `epochs` is the most a budgeted run trains.

Pure: no torch, the clock is a parameter (`clock`, replaceable by tests), the speed is given.
"""

from __future__ import annotations

import math
import numbers
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable

from cnnlab.errors import UserError, option
from cnnlab.text import visible

LOW, HIGH = 0.8, 1.1  # a budgeted run aims to end within [80%, 110%] of its share, and below 100% if it can
clock: Callable[[], float] = time.monotonic  # seconds; tests replace it (monkeypatch cnnlab.budget.clock)

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([hms])")
MAX_BUDGET_SECONDS = 30 * 86400.0  # longer is no budget at all (0 says that); beyond, dates overflow the notes
EXAMPLES = "a number of seconds or a duration such as 900, 900s, 15m, 1h30m or 1.5h (0 = no budget)"


def parse_duration(value, setting: str = "time_budget") -> float:
    """900, 900.5, "900", "900s", "15m", "1h30m", "1.5h", "2m 30s" -> seconds; 0 (or "0") means no budget.

    Anything else is one UserError naming the setting."""
    def refuse(why: str = ""):
        return UserError(f"{setting}: must be {EXAMPLES}{why}, got {value!r}")

    if isinstance(value, bool):
        raise refuse()
    if isinstance(value, numbers.Real):  # NumPy's numbers too (np.int64(8) was refused)
        try:
            seconds = float(value)
        except OverflowError:  # 10**400: a traceback
            seconds = math.inf
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.startswith("-"):  # "-5" from the command line: the same hint as -5
            raise refuse(" (finite, not negative)")
        if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", text):
            seconds = float(text)
        else:
            parts = _DURATION.findall(text)
            units = [unit for _, unit in parts]
            # each unit once, largest first, and nothing else in the text
            if not parts or _DURATION.sub("", text).strip() or units != sorted(set(units), key="hms".index):
                raise refuse()
            seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        raise refuse()
    if not math.isfinite(seconds) or seconds < 0:
        raise refuse(" (finite, not negative)")
    if seconds > MAX_BUDGET_SECONDS:
        raise refuse(f" of at most {MAX_BUDGET_SECONDS / 3600:.0f}h (30 days; 0 for no budget)")
    return seconds


def parse_budget_width(text: str) -> list[list[int]]:
    """The command line's budget_width: "48:16" or "48:16,100:32" (EPOCHS:WIDTH pairs) -> [[48, 16], ...];
    "off" (or "none", "0", "") -> [] (keep the configured width). The pairs' ranges are TrainConfig's to check."""
    text = text.strip().lower()
    if text in ("", "off", "none", "0"):
        return []
    pairs = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d{1,9})\s*:\s*(\d{1,9})\s*", part)
        if match is None:
            raise UserError(f"{option('budget_width')}: must be EPOCHS:WIDTH pairs separated by commas, e.g. 48:16 (width 16 "
                            f"where the budget holds 48 epochs or more), or off; got '{visible(text[:80])}'")
        pairs.append([int(match[1]), int(match[2])])
    return pairs


def format_seconds(seconds: float) -> str:
    """125.3 -> '2:05', 5400 -> '1:30:00' (as the progress bar writes durations); under a minute '42.0 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}" if whole >= 3600 else f"{whole // 60}:{whole % 60:02d}"


class Budget:
    """`seconds` on the clock from `start` on (default: now). A share of a command's budget knows how many
    such shares the command had left (`parts`) and what it had spent before (`spent_before`), so a share too
    small for one epoch can say what budget the whole command needs."""

    def __init__(self, seconds: float, start: float | None = None, clock_fn: Callable[[], float] | None = None,
                 parts: float = 1.0, spent_before: float = 0.0):
        self.clock = clock_fn or (lambda: clock())  # late binding: a test's replacement clock counts
        self.seconds = float(seconds)
        self.start = self.clock() if start is None else start
        self.parts, self.spent_before = parts, spent_before

    @classmethod
    def starting(cls, seconds: float, start: float | None = None) -> "Budget | None":
        """A command's budget (None without one: seconds 0)."""
        return cls(seconds, start) if seconds else None

    def __repr__(self) -> str:
        return f"Budget({self.seconds:g} s, {self.left():g} s left)"

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return max(0.0, self.seconds - self.elapsed())

    @property
    def spent(self) -> bool:
        return self.left() <= 0

    def share(self, runs_left: int, runs: int = 1) -> "Budget":
        """The budget of the next `runs` runs trained at once (a fused group) when `runs_left` runs are still to
        train (these included): their part of what is left, from now on."""
        now = self.clock()
        left = max(0.0, self.seconds - (now - self.start))
        parts = max(runs_left, runs, 1) / runs
        return Budget(left / parts, now, self.clock, parts, now - self.start)

    def needed_for(self, run_seconds: float) -> float:
        """The command budget in which each of this share's `parts` runs gets `run_seconds`."""
        return self.spent_before + self.parts * run_seconds


# ------------------------------------------------------------------ choosing the epochs


def predicted_seconds(epochs: int, spent: float, epoch_seconds: float, final_seconds: float) -> float:
    return spent + final_seconds + epochs * epoch_seconds


def choose_epochs(seconds: float, spent: float, epoch_seconds: float, final_seconds: float,
                  max_epochs: int) -> tuple[int, str | None]:
    """(epochs, a note or None) for a run with `seconds` in all, `spent` of them used before training (data,
    warm-up, probe), `epoch_seconds` per epoch (training and validation, as measured) and `final_seconds`
    for the final evaluation.

    The rule: the most epochs whose predicted end lies within the budget; one more if that ends below 80% of
    it and the one more still ends within 110%; at most `max_epochs` (the config's `epochs`), at least 1.
    The note says when the end cannot lie within [80%, 110%]: a budget too small for one epoch (1 epoch, for a
    re-plan after epochs are done; before the first, `require_one_epoch` refuses such a budget), `epochs` too
    few to use it, or epochs too long to land in the window (the run then ends early rather than late)."""
    epoch_seconds = max(epoch_seconds, 1e-9)
    fits = (seconds - spent - final_seconds) / epoch_seconds
    epochs = max(0, math.floor(fits))
    def end(n): return predicted_seconds(n, spent, epoch_seconds, final_seconds)

    if end(epochs) < LOW * seconds and end(epochs + 1) <= HIGH * seconds:
        epochs += 1
    if epochs > max_epochs:
        epochs = max_epochs
        if end(epochs) < LOW * seconds:
            return epochs, (f"epochs = {max_epochs} (the most a budgeted run trains) ends in about "
                            f"{format_seconds(end(epochs))} of {format_seconds(seconds)}; raise epochs to use the budget")
        return epochs, None
    if epochs < 1:
        return 1, (f"{format_seconds(seconds)} leave time for {max(fits, 0):.2f} epochs of {format_seconds(epoch_seconds)}"
                   f" after {format_seconds(spent)} of set-up; training 1 epoch (the least), about "
                   f"{format_seconds(end(1))} in all")
    if end(epochs) < LOW * seconds:
        return epochs, (f"an epoch takes about {format_seconds(epoch_seconds)}: {epochs} end at about "
                        f"{format_seconds(end(epochs))}, {epochs + 1} would end past 110% of {format_seconds(seconds)}")
    return epochs, None


class TooSmall(UserError):
    """A budget that cannot hold one epoch: refused before the first step, since one epoch is the least a run
    trains (that floor overran: `train cnn4 --time-budget 3s` took 26.5 s, 2-core Zen 5 EPYC)."""


def suggest_duration(seconds: float) -> str:
    """A budget to suggest, rounded up, as --time-budget takes it: 44.2 -> '45s', 136 -> '2m30s', 301 -> '5m30s'."""
    if seconds < 120:
        return f"{5 * math.ceil(seconds / 5):.0f}s"
    minutes, rest = divmod(30 * math.ceil(seconds / 30), 60)
    return f"{minutes:.0f}m" + ("30s" if rest else "")


def require_one_epoch(budget: Budget, spent: float, epoch_seconds: float, final_seconds: float, what: str) -> None:
    """TooSmall unless one epoch of `what` (e.g. "cnn4 (48,000 images)") ends within 110% of `budget`."""
    one = predicted_seconds(1, spent, epoch_seconds, final_seconds)
    if one <= HIGH * budget.seconds:
        return
    shared = budget.parts > 1 or budget.spent_before > 0
    scope = (f"this run's share of the command's budget, {format_seconds(budget.seconds)},"
             if shared else f"time budget {format_seconds(budget.seconds)}")
    need = suggest_duration(budget.needed_for(one))
    raise TooSmall(f"{scope} cannot hold one epoch of {what} on this machine: set-up took {format_seconds(spent)}, an "
                   f"epoch about {format_seconds(epoch_seconds)}, the final evaluation {format_seconds(final_seconds)}; "
                   f"give {option('time_budget', need)} or more"
                   f"{' for the whole command (more where its other runs are slower)' if shared else ''}, "
                   f"or fewer training images ({option('train_images')}), or {option('time_budget', 0)} with "
                   f"{option('epochs', metavar='N')}")


@dataclass
class Plan:
    """What a budgeted run measured and chose (recorded in its metrics.json, and in its checkpoint)."""

    time_budget_seconds: float  # this run's share of the command's budget
    budget_spent_seconds: float  # used before training: data, warm-up, compilation, the probe
    probe_seconds_per_epoch: float  # training and validation of one epoch, as the probe measured them
    budget_final_seconds: float  # the final evaluation, as measured
    budget_max_epochs: int  # the config's epochs: the most a budgeted run trains
    chosen_epochs: int
    budget_predicted_seconds: float
    budget_note: str | None = None
    replan_seconds_per_epoch: float | None = None  # the pace of the latest re-plan (engine.throughput.Guard)
    replanned_epochs: int | None = None  # the epochs chosen again from it
    budget_width_probe_width: int | None = None  # budget_width (engine.width_choice): the width first measured,
    budget_width_probe_epochs: int | None = None  # the epochs the budget holds at it,
    budget_width_chosen: int | None = None  # and the width that trains

    @classmethod
    def choose(cls, seconds: float, spent: float, epoch_seconds: float, final_seconds: float,
               max_epochs: int) -> "Plan":
        epochs, note = choose_epochs(seconds, spent, epoch_seconds, final_seconds, max_epochs)
        return cls(seconds, spent, epoch_seconds, final_seconds, max_epochs, epochs,
                   predicted_seconds(epochs, spent, epoch_seconds, final_seconds), note)

    def metrics(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One line for the console."""
        text = (f"time budget {format_seconds(self.time_budget_seconds)}: {format_seconds(self.probe_seconds_per_epoch)}"
                f" per epoch measured, {self.chosen_epochs} epochs chosen (at most {self.budget_max_epochs}), "
                f"about {format_seconds(self.budget_predicted_seconds)} in all")
        text += f"; {self.budget_note}" if self.budget_note else ""
        if self.budget_width_chosen is not None and self.budget_width_chosen != self.budget_width_probe_width:
            text += (f"; width {self.budget_width_chosen}, since the budget holds {self.budget_width_probe_epochs} "
                     f"epochs at width {self.budget_width_probe_width}")
        return text

    def replan_line(self) -> str:
        """One line for the console once the first epoch's pace has been measured."""
        change = (f"{self.replanned_epochs} epochs instead of {self.chosen_epochs}"
                  if self.replanned_epochs != self.chosen_epochs else f"{self.chosen_epochs} epochs kept")
        return (f"time budget: the first epoch took {format_seconds(self.replan_seconds_per_epoch)} (the probe said "
                f"{format_seconds(self.probe_seconds_per_epoch)}): {change}, about "
                f"{format_seconds(self.budget_predicted_seconds)} in all" + (f"; {self.budget_note}" if self.budget_note else ""))

    def later_replan_line(self, before: int, done: int) -> str:
        """One line for a total changed again after `done` epochs, from their pace."""
        return (f"time budget: after epoch {done} the pace is {format_seconds(self.replan_seconds_per_epoch)} an "
                f"epoch: {self.replanned_epochs} epochs instead of {before}, about "
                f"{format_seconds(self.budget_predicted_seconds)} in all")


def overruns(seconds: float, elapsed: float, epochs_done: int, loop_seconds: float, final_seconds: float) -> bool:
    """Whether one more epoch, at the pace of the epochs so far (`loop_seconds` for `epochs_done`, checkpoints
    and callbacks included), would end the run past 110% of its `seconds`: the guard that stops a run whose
    probe was too hopeful (a machine that slowed down, a first epoch slower than its first steps)."""
    if epochs_done < 1:
        return False
    return elapsed + loop_seconds / epochs_done + final_seconds > HIGH * seconds


def budget_spent_first(budget: Budget, what: str) -> UserError:
    """A command's budget that its set-up (data, checks) used up before its first `what` (run, attempt, trial)."""
    return UserError(f"{option('time_budget')}: its {format_seconds(budget.seconds)} were spent before the first {what} "
                     f"started (setting up took {format_seconds(budget.elapsed())}); give a budget that holds a few "
                     f"{what}s")


def chosen_line(metrics: dict) -> str:
    """'9 epochs chosen' for a budgeted run's metrics ('' without a budget): the total it trained to, which the
    re-plans after its first epochs may have changed (the first plan's 8 was printed where 9 trained)."""
    epochs = metrics.get("replanned_epochs") or metrics.get("chosen_epochs")
    return f"{epochs} epoch{'' if epochs == 1 else 's'} chosen" if epochs else ""


def summary(metrics: dict) -> dict | None:
    """For benchmarks: a finished run's budget, what it used and whether that lies within [80%, 110%]
    (None for a run without a budget)."""
    if metrics.get("time_budget_seconds") is None:
        return None
    used = metrics.get("budget_seconds_used")
    fraction = used / metrics["time_budget_seconds"] if used is not None and metrics["time_budget_seconds"] else None
    return {"time_budget_seconds": metrics["time_budget_seconds"], "seconds_used": used, "fraction_used": fraction,
            "within": fraction is not None and LOW <= fraction <= HIGH, "chosen_epochs": metrics.get("chosen_epochs"),
            "replanned_epochs": metrics.get("replanned_epochs"),
            "epochs_done": metrics.get("epochs_done"), "probe_seconds_per_epoch": metrics.get("probe_seconds_per_epoch"),
            "note": metrics.get("budget_note")}
