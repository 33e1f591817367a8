"""A wider model where a time budget holds many epochs (`budget_width`; the cpu-budget recipe).

Which width trains best in a given time depends on how many epochs that time holds: a few epochs favour a
narrow, fast model, many a wider one. cpu-budget, 10% validation split, seed 0, fp32, at equal time on the
2-core AVX2-only AMD EPYC (width 16 costs 3.06x width 8's epoch there: 962 against 2,948 images a second):
width 8 x 26 epochs 95.17% against width 16 x 9 94.83% (10 minutes: -0.34 for 16); width 8 x 67 95.33%
against width 16 x 22 95.63% (25 minutes: +0.30 for 16). Between the two the gain crosses zero near 48
epochs of width 8, hence cpu-budget's `budget_width = [[48, 16]]` (bench/README.md, "Session 13").

So a budgeted run with `budget_width` (pairs [epochs, width]) first measures how many epochs its budget holds
at the configured width, as its plan would (warm-up, the layout and compile probes, the speed probe; all
inside the budget, all undone), and trains at the width of the largest pair whose epochs that reaches,
choosing its epochs for that model from its own probes. Standalone runs only: fused groups and torchrun
keep their width."""

from __future__ import annotations

from dataclasses import replace

from cnnlab.budget import Budget, Plan

from . import throughput
from .compile_probe import settle
from .layout_probe import settle_layout
from .setup import Setup, prepare
from .step import warm_up


def wider_width(pairs: list, epochs: int) -> int | None:
    """The width of the pair with the most epochs that `epochs` reaches; None where it reaches none. Pure."""
    reached = [(need, width) for need, width in pairs if epochs >= need]
    return max(reached)[1] if reached else None


def epochs_within(setup: Setup, budget: Budget) -> tuple[int, throughput.Throughput]:
    """(the epochs `budget` holds for this setup's model, chosen as engine.throughput.plan would; the speed
    measured); writes nothing."""
    warm_up(setup)
    settle_layout(setup)
    settle(setup, budget)
    speed = throughput.measure(setup)
    return Plan.choose(budget.seconds, budget.elapsed(), speed.epoch_seconds, speed.final_seconds,
                       setup.config.epochs).chosen_epochs, speed


def applies(setup: Setup, budget: Budget | None, resume: bool) -> bool:
    return bool(budget is not None and not resume and setup.config.budget_width and setup.dist is None
                and setup.members == 1)


def choose_width(setup: Setup, budget: Budget, precision: str | None = None,
                 builder=None) -> tuple[Setup, dict, throughput.Throughput | None]:
    """(the setup to train, what was measured and chosen, its speed if measured): the same setup and the speed
    its plan can take instead of measuring again (a small budget keeps the most of its time), or one prepared at
    a wider width on the same loaded data, which measures its own."""
    config = setup.config
    width = config.model_params.get("width")
    epochs, speed = epochs_within(setup, budget)
    wider = wider_width(config.budget_width, epochs)
    notes = {"budget_width_probe_width": width, "budget_width_probe_epochs": epochs,
             "budget_width_chosen": wider if wider is not None else width}
    if wider is None or wider == width:
        return setup, notes, speed
    wide = replace(config, model_params={**config.model_params, "width": wider})
    return prepare(wide, setup.dataset, precision, builder), notes, None
