"""Time budgets (issue 20, item 3): durations, the rule that picks epochs, how a command's budget is shared
among its runs, the speed probe that leaves no trace, and what runs record.

No test here times anything: the clock is cnnlab.budget.clock (replaced by a counter the tests move), and
where a test needs a known speed, the probe still runs but its figures are replaced."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cnnlab
from cnnlab import budget as budgets
from cnnlab import errors
from cnnlab.budget import (HIGH, LOW, Budget, choose_epochs, overruns, parse_budget_width, parse_duration,
                           predicted_seconds)
from cnnlab.callbacks import LambdaCallback
from cnnlab.config import build_config
from cnnlab.engine import fit, loop, throughput
from cnnlab.engine.width_choice import wider_width
from cnnlab.errors import UserError
from cnnlab.fused import train_members_fused
from cnnlab.schedules import lr_at

from conftest import interrupt_at, write_npz_dataset

SETTINGS = dict(batch_size=32, device="cpu", precision="fp64", seed=3, compile=False)
BASE = dict(model="cnn1", **SETTINGS)
STEPS = 4  # 128 training images (160 less the 20% validation split) in batches of 32
TIMING = {"train_seconds", "eval_seconds"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("budget") / "data.npz", 160, 40, size=16)


@pytest.fixture
def clock(monkeypatch):
    """A clock that stands still unless a test (or the `ticking` callback) moves it: [seconds]."""
    now = [1000.0]
    monkeypatch.setattr(budgets, "clock", lambda: now[0])
    return now


def ticking(now: list, seconds_per_epoch: float) -> LambdaCallback:
    """Each epoch takes `seconds_per_epoch` on the test's clock."""
    return LambdaCallback(on_epoch_end=lambda ctx, rows: now.__setitem__(0, now[0] + seconds_per_epoch))


@pytest.fixture
def speed(monkeypatch, clock):
    """speed(epoch_seconds, final_seconds, checkpoint_seconds, epochs_take): the probes run as always (and
    must leave no trace) but report these figures, and each epoch moves the test's clock by `epochs_take`
    (default: as probed; a callable of the epoch number for a pace that changes)."""
    real, real_checkpoint, real_epoch = throughput.measure, throughput.checkpoint_seconds, loop.run_epoch
    probes = []

    def set_speed(epoch_seconds: float, final_seconds: float = 0.0, checkpoint_seconds: float = 0.0,
                  epochs_take=None):
        take = epochs_take if callable(epochs_take) else lambda epoch: epoch_seconds if epochs_take is None else epochs_take

        def measure(setup):
            probes.append(real(setup))
            return throughput.Throughput(epoch_seconds, final_seconds, probes[-1].steps)

        def checkpoint(*args):
            real_checkpoint(*args)
            return checkpoint_seconds

        def run_epoch(ctx, callbacks):
            real_epoch(ctx, callbacks)
            clock[0] += take(ctx.state.epoch)

        monkeypatch.setattr(throughput, "measure", measure)
        monkeypatch.setattr(throughput, "checkpoint_seconds", checkpoint)
        monkeypatch.setattr(loop, "run_epoch", run_epoch)
        return probes

    return set_speed


def history(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in cnnlab.Run(run).dir.history()]


# ------------------------------------------------------------------ durations


@pytest.mark.parametrize("value, seconds", [(900, 900.0), (12.5, 12.5), ("900", 900.0), ("900s", 900.0),
                                            ("15m", 900.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("2m 30s", 150.0),
                                            (" 90S ", 90.0), (0, 0.0), ("0", 0.0), ("1h0m5s", 3605.0)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


def test_numpy_numbers_are_durations_and_a_negative_text_says_why():
    import numpy as np

    assert parse_duration(np.int64(8)) == 8.0 and parse_duration(np.float32(12.5)) == 12.5  # both were refused
    config = build_config({"time_budget": np.int64(8), "epochs": np.int64(3), "lr": np.float32(0.5)})  # as the API
    assert (config.time_budget, config.epochs, config.lr) == (8.0, 3, 0.5) and type(config.epochs) is int
    with pytest.raises(UserError, match=r"\(finite, not negative\), got '-5'"):
        parse_duration("-5")  # as the command line passes it


def test_one_number_of_epochs_names_one_width():
    with pytest.raises(UserError, match=r"^budget_width: each number of epochs once"):
        build_config({"recipe": "cpu-budget", "budget_width": [[48, 16], [48, 32]]})


@pytest.mark.parametrize("value", ["soon", "15x", "m", "-5", -5, "1h1h", "30m1h", "", "1e3", "inf", True, [900],
                                   "1" * 400, "15m!", 10**400])
def test_bad_durations_are_one_line_naming_the_setting(value):
    with pytest.raises(UserError) as info:
        build_config({"time_budget": value})
    message = str(info.value)
    assert message.startswith("time_budget: must be ") and "\n" not in message and repr(value)[:20] in message


@pytest.mark.parametrize("value", ["721h", "99999999999999999999999", 1e9])
def test_budgets_beyond_30_days_are_refused(value):
    with pytest.raises(UserError, match=r"^time_budget: must be .* of at most 720h \(30 days; 0 for no budget\), got"):
        parse_duration(value)
    assert parse_duration("720h") == 30 * 86400  # the limit itself is a budget


def test_bad_duration_on_the_command_line(cli, data, tmp_path):
    code, _, err = cli("train", "cnn1", "--data", data, "--time-budget", "a while", "--out", tmp_path)
    assert code == 2 and err.strip() == ("cnnlab: error: --time-budget: must be a number of seconds or a duration such "
                                         "as 900, 900s, 15m, 1h30m or 1.5h (0 = no budget), got 'a while'")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ the rule


def test_the_rule_on_the_issues_example():
    assert choose_epochs(100, 0, 9, 0, 200) == (11, None)  # 99 s of 100
    assert choose_epochs(100, 0, 55, 0, 200) == (2, None)  # 1 would end at 55%; 2 end at 110%, allowed
    epochs, note = choose_epochs(100, 0, 60, 0, 200)  # 60% or 120%: early rather than late, and said
    assert epochs == 1 and "would end past 110%" in note


def test_the_rule_lands_within_the_window_whenever_an_epoch_count_can():
    for seconds in (10, 100, 900, 3600):
        for spent in (0, 0.03 * seconds):
            for final in (0, 0.01 * seconds):
                for fraction in [i / 1000 for i in range(1, 700, 7)]:
                    epoch = fraction * seconds
                    for cap in (3, 40, 200):
                        n, note = choose_epochs(seconds, spent, epoch, final, cap)
                        end = predicted_seconds(n, spent, epoch, final)
                        landable = [k for k in range(1, cap + 1)
                                    if LOW * seconds <= predicted_seconds(k, spent, epoch, final) <= HIGH * seconds]
                        assert 1 <= n <= cap
                        assert end <= HIGH * seconds or n == 1, (seconds, spent, epoch, cap)
                        if landable:
                            assert LOW * seconds <= end <= HIGH * seconds and note is None, (seconds, spent, epoch, cap)
                            # within the budget itself whenever some count is
                            if any(predicted_seconds(k, spent, epoch, final) <= seconds for k in landable):
                                assert end <= seconds
                        else:
                            assert note, (seconds, spent, epoch, cap)


def test_too_small_a_budget_trains_one_epoch_and_says_so():
    epochs, note = choose_epochs(2, 1.5, 9, 0.1, 200)
    assert epochs == 1 and "training 1 epoch (the least)" in note
    epochs, note = choose_epochs(100, 0, 1, 0, 5)  # epochs caps it: said too
    assert epochs == 5 and "raise epochs" in note


def test_a_budget_that_cannot_hold_one_epoch_is_refused_naming_what_would():
    """One epoch is the least a run trains, so a budget it would overrun by more than 10% is refused before the
    first step, with a budget that holds it (`train cnn4 --time-budget 3s` took 26.5 s, 2-core Zen 5 EPYC)."""
    budgets.require_one_epoch(Budget(10), 1, 9, 1, "cnn1")  # 11 s: 110%, allowed
    with pytest.raises(budgets.TooSmall) as info:
        budgets.require_one_epoch(Budget(3), 2, 24, 1.5, "cnn4 (48,000 images)")
    message = str(info.value)
    assert "\n" not in message and message.startswith("time budget 3.0 s cannot hold one epoch of cnn4 (48,000 images)")
    assert "an epoch about 24.0 s" in message and "give time_budget='30s' or more," in message


def test_a_share_too_small_for_one_epoch_names_the_whole_commands_budget(clock):
    """A study of 4 runs with 100 s: after 40 s, 3 runs share 60; one epoch takes 30 s, so each needs 32 s
    and the command 40 + 3 x 32 = 136 s (2m30s, rounded up)."""
    budget = Budget(100)
    clock[0] += 40
    share = budget.share(3)
    with pytest.raises(budgets.TooSmall) as info:
        budgets.require_one_epoch(share, 2, 30, 0, "cnn1")
    assert str(info.value).startswith("this run's share of the command's budget, 20.0 s, cannot hold one epoch")
    assert "give time_budget='2m30s' or more for the whole command (more where its other runs are slower)," in str(info.value)
    assert budgets.suggest_duration(301) == "5m30s" and budgets.suggest_duration(180) == "3m" and budgets.suggest_duration(44.2) == "45s"


def test_a_run_whose_budget_cannot_hold_one_epoch_trains_nothing_and_leaves_nothing(data, tmp_path, clock, speed):
    speed(30.0, final_seconds=1.0)
    with pytest.raises(budgets.TooSmall, match="give time_budget='35s' or more"):
        cnnlab.train(data=str(data), time_budget=20, out=tmp_path / "runs", progress=False, **dict(BASE, epochs=3))
    assert not (tmp_path / "runs").exists()  # no run directory, nor the folder made for it


def test_the_cli_refuses_a_budget_too_small_for_one_epoch_in_one_line(cli, data, tmp_path, clock, speed):
    speed(30.0)
    code, out, err = cli("train", "cnn1", "--data", data, "--time-budget", "10s", "--device", "cpu", "--out",
                         tmp_path / "runs", "--batch-size", "32", "--precision", "fp64")
    (line,) = [text for text in err.splitlines() if text.strip()]
    assert code != 0 and "cannot hold one epoch of cnn1" in line and "give --time-budget 30s or more" in line
    assert not (tmp_path / "runs").exists()
    # the progress header named a run directory: the error says it is gone (it read as if kept)
    assert "run directory: " in out and line.endswith("(nothing was kept: the run directory was removed)")


def test_a_budget_is_shared_among_the_runs_left(clock):
    budget = Budget(100)
    assert budget.share(4).seconds == 25
    clock[0] += 40
    assert budget.left() == 60 and budget.share(3).seconds == 20 and budget.share(4, runs=2).seconds == 30
    first = budget.share(1)
    clock[0] += 70
    assert budget.spent and budget.left() == 0 and budget.share(2).seconds == 0
    assert first.elapsed() == 70 and first.left() == 0


def test_the_guard_stops_before_an_epoch_that_would_overrun():
    assert overruns(100, elapsed=95, epochs_done=5, loop_seconds=90, final_seconds=0)  # 95 + 18 > 110
    assert not overruns(100, elapsed=80, epochs_done=4, loop_seconds=76, final_seconds=0)  # 80 + 19 = 99
    assert overruns(100, elapsed=80, epochs_done=4, loop_seconds=76, final_seconds=12)  # the final evaluation counts
    assert not overruns(100, elapsed=500, epochs_done=0, loop_seconds=0, final_seconds=0)


# ------------------------------------------------------------------ the engine


@pytest.mark.parametrize("case", ["plain", "modern", "fused"])
def test_a_budgeted_run_trains_exactly_as_the_same_run_with_its_epochs(case, data, tmp_path):
    """The probe (real, timed on this machine) leaves no trace: weights, BatchNorm statistics, optimizer
    state (SGD momentum, Adam, a fused group's MemberAdam), the EMA and every generator are put back."""
    options = {"plain": {"model": "tuned-cnn"},
               "modern": {"recipe": "modern", "model": "resnet9", "model_params": {"width": 8}, "batch_size": 32,
                          "ema": 0.9, "mixup": 0.2},
               "fused": {}}[case]
    plain = build_config({**BASE, **options, "data": str(data), "epochs": 2})
    budgeted = build_config({**BASE, **options, "data": str(data), "epochs": 2, "time_budget": "1h"})
    if case == "fused":
        train_members_fused(plain, [3, 4], [tmp_path / "a0", tmp_path / "a1"])
        results = train_members_fused(budgeted, [3, 4], [tmp_path / "b0", tmp_path / "b1"], budget=Budget(3600))
        pairs = [(tmp_path / "a0", tmp_path / "b0"), (tmp_path / "a1", tmp_path / "b1")]
    else:
        fit(plain, tmp_path / "a")
        results = [fit(budgeted, tmp_path / "b")]
        pairs = [(tmp_path / "a", tmp_path / "b")]
    for (a, b), metrics in zip(pairs, results):
        assert metrics["chosen_epochs"] == 2 and "raise epochs" in metrics["budget_note"]  # capped by epochs
        assert not [p.name for p in b.iterdir() if p.name.endswith(".tmp")]  # the probe's checkpoint is gone
        assert metrics["probe_seconds_per_epoch"] > 0 and metrics["time_budget_seconds"] == 3600
        assert history(a) == history(b)
        for name in ("logits.safetensors", "model.safetensors"):
            want, got = load_file(a / name), load_file(b / name)
            assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name


def test_the_chosen_total_is_the_schedules_total(data, tmp_path, clock, speed):
    """Budget 100 s, the probe says 20 s per epoch: 5 epochs of the 40 allowed, and one-cycle spans 5."""
    probes = speed(20.0)
    config = build_config({**BASE, "data": str(data), "epochs": 40, "lr_schedule": "one-cycle", "time_budget": 100})
    metrics = fit(config, tmp_path / "run")
    assert probes and metrics["chosen_epochs"] == 5 and metrics["epochs_done"] == 5
    assert metrics["budget_predicted_seconds"] == 100 and metrics["budget_note"] is None
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["epochs"] == 5 and stored["time_budget"] == 100.0
    lrs = [float(row["lr"]) for row in history(tmp_path / "run")]
    assert lrs == pytest.approx([lr_at("one-cycle", e * STEPS, 5 * STEPS, config.lr) for e in range(5)], rel=1e-12)
    assert lrs != pytest.approx([lr_at("one-cycle", e * STEPS, 40 * STEPS, config.lr) for e in range(5)], rel=1e-3)


@pytest.mark.parametrize("every, epochs", [(1, 3), (2, 4), (0, 6)])
def test_checkpoints_count_as_part_of_an_epoch(every, epochs, data, tmp_path, clock, speed):
    """60 s; an epoch 10 s and a checkpoint 10 s, written every `every` epochs (0: never)."""
    speed(10.0, checkpoint_seconds=10.0)
    config = build_config({**BASE, "data": str(data), "epochs": 40, "time_budget": 60, "checkpoint_every": every})
    assert fit(config, tmp_path / "run")["chosen_epochs"] == epochs


def test_a_resumed_budgeted_run_continues_to_its_chosen_total(data, tmp_path, clock, speed, monkeypatch):
    speed(20.0)
    options = dict(BASE, epochs=40, lr_schedule="cosine", warmup_epochs=8, time_budget=100, progress=False,
                   out=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cnnlab.train(data=str(data), callbacks=[interrupt_at(3)], **options)
    (run,) = tmp_path.iterdir()
    stored = json.loads((run / "config.json").read_text())
    assert stored["epochs"] == 5 and stored["warmup_epochs"] == 5  # the warm-up is cut to the chosen epochs

    def no_probe(setup):
        raise AssertionError("a resume probes nothing: it continues to the stored epochs")

    monkeypatch.setattr(throughput, "measure", no_probe)
    resumed = cnnlab.train(resume=run, progress=False)
    assert resumed.metrics["epochs_done"] == 5 and resumed.metrics["chosen_epochs"] == 5
    assert resumed.metrics["time_budget_seconds"] == 100 and len(resumed.history) == 5


def test_a_resume_prints_no_stale_budget_figures(data, tmp_path, clock, speed, capsys):
    """Extended from 5 to 7 epochs, a resumed budgeted run printed the first call's plan as if measured now
    ("20.0 s per epoch measured, 5 epochs chosen", "the first epoch took ..."), found by a trial."""
    speed(20.0)
    options = dict(BASE, epochs=40, time_budget=100, out=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cnnlab.train(data=str(data), callbacks=[interrupt_at(3)], progress=False, **options)
    (run,) = tmp_path.iterdir()
    capsys.readouterr()
    resumed = cnnlab.train(resume=run, epochs=7, progress=True)
    out = capsys.readouterr().out
    assert len(resumed.history) == 7 and re.search(r"^epoch +7/7 ", out, re.M), out
    assert "time budget" not in out, out


def test_a_study_divides_its_budget_among_the_runs_left(data, tmp_path, clock, speed):
    """4 runs, 100 s, 10 s per epoch (as probed and as spent): each run gets an equal part of what is left."""
    speed(10.0)
    result = cnnlab.study(["cnn1"], 4, str(data), out=tmp_path / "study", report=False, progress=False,
                          say=lambda text: None,
                          **dict(SETTINGS, epochs=10, time_budget=100))
    metrics = [run.metrics for run in result["runs"]]
    assert [m["time_budget_seconds"] for m in metrics] == pytest.approx([25, 80 / 3, 30, 30])
    assert [m["chosen_epochs"] for m in metrics] == [2, 2, 3, 3]
    assert sum(m["budget_seconds_used"] for m in metrics) == pytest.approx(100)
    assert [run.config["epochs"] for run in result["runs"]] == [2, 2, 3, 3]


def test_a_budgeted_studys_report_pools_repeats_whose_epochs_the_budget_chose(data, tmp_path, clock, speed):
    """The 4 runs above train 2, 2, 3 and 3 epochs: one group of 4 with mean ± std, not two (each repeat was its
    own group, labelled by its epochs, found by a trial)."""
    speed(10.0)
    result = cnnlab.study(["cnn1"], 4, str(data), out=tmp_path / "study", progress=False, say=lambda text: None,
                          **dict(SETTINGS, epochs=10, time_budget=100))
    assert sorted(run.config["epochs"] for run in result["runs"]) == [2, 2, 3, 3]
    text = Path(result["markdown"]).read_text()
    assert "separate groups" not in text and "epochs=" not in text
    assert re.search(r"^\| cnn1 \| 4 \| [\d.-]+ \| [\d.]+ ± [\d.]+ \|", text, re.M), text
    assert "Epochs chosen by the time budget from each run's measured pace: 2-3 (4 of 4 runs budgeted)" in text
    more = cnnlab.study(["cnn1"], 5, str(data), out=tmp_path / "study", progress=False, say=lambda text: None,
                        **dict(SETTINGS, epochs=10, time_budget=40))  # a call with a budget of its own
    text = Path(more["markdown"]).read_text()
    assert "separate groups" not in text and re.search(r"^\| cnn1 \| 5 \| ", text, re.M), text


def test_a_rerun_study_resumes_a_budgeted_run_to_its_chosen_epochs(data, tmp_path, clock, speed):
    """Interrupted in its third epoch of the 5 its 50 s share holds, a run resumes to 5 in the rerun, not to the
    study's cap of 40 (it trained all 40, past the rerun's budget: a 40 s study took 58 s, 2-core Zen 5 EPYC)."""
    speed(10.0)
    options = dict(SETTINGS, epochs=40, time_budget=100, out=tmp_path / "study", report=False, progress=False,
                   say=lambda text: None)
    with pytest.raises(KeyboardInterrupt):
        cnnlab.study(["cnn1"], 2, str(data), callbacks=[interrupt_at(3)], **options)
    (run,) = (tmp_path / "study" / "runs").iterdir()
    assert json.loads((run / "config.json").read_text())["epochs"] == 5
    result = cnnlab.study(["cnn1"], 2, str(data), **options)
    resumed = next(r for r in result["runs"] if r.dir.path.name == run.name)
    assert resumed.config["epochs"] == 5 and len(resumed.history) == 5


def test_a_study_says_the_epochs_its_runs_trained_after_the_re_plan(data, tmp_path, clock, speed):
    """The probe says 10 s an epoch, the epochs take 5: the re-plan after the first raises the total, and the
    study's line names that, not the first plan's (it said 8 where 9 trained, found by a trial)."""
    speed(10.0, epochs_take=5.0)
    said = []
    result = cnnlab.study(["cnn1"], 1, str(data), out=tmp_path / "study", report=False, progress=False,
                          say=said.append, **dict(SETTINGS, epochs=20, time_budget=50))
    (run,) = result["runs"]
    trained = run.config["epochs"]
    assert trained > run.metrics["chosen_epochs"] and len(run.history) == trained
    assert any(f"; {trained} epochs chosen" in line for line in said), said


def test_a_study_or_ensemble_whose_budget_trains_nothing_fails_naming_the_budget(data, tmp_path, clock, speed):
    """Where the first share cannot hold one epoch, nothing trains: the budget's line is the error, as `train`'s
    (an ensemble wrote an empty vote and exited 0; a study ended with "no finished run directories found")."""
    speed(30.0)
    said = []
    with pytest.raises(budgets.TooSmall, match="cannot hold one epoch of cnn1"):
        cnnlab.study(["cnn1"], 2, str(data), out=tmp_path / "study", progress=False, say=said.append,
                     **dict(SETTINGS, epochs=10, time_budget=10))
    assert not [line for line in said if "cannot hold one epoch" in line]  # the error says it, not twice
    with pytest.raises(budgets.TooSmall, match="cannot hold one epoch of cnn1"):
        cnnlab.ensemble("cnn1", members=2, threshold=0.0, data=str(data), out=tmp_path / "ensemble", progress=False,
                        say=lambda text: None, **dict(SETTINGS, epochs=10, time_budget=10))
    assert not list((tmp_path / "ensemble").rglob("config.json")), "a refused attempt keeps nothing"


@pytest.mark.parametrize("command", ["study", "ensemble"])
def test_a_budget_spent_before_the_first_run_is_an_error(command, data, tmp_path):
    """A budget the set-up used up: an ensemble wrote an empty vote and exited 0, a study ended with "no finished
    run directories found" (found by a regression trial)."""
    options = dict(SETTINGS, epochs=1, time_budget=0.001, data=str(data), out=tmp_path / command, progress=False,
                   say=lambda text: None)
    what = {"study": "run", "ensemble": "attempt"}[command]
    with pytest.raises(UserError, match=rf"^time_budget: its 0.0 s were spent before the first {what} started"):
        cnnlab.study(["cnn1"], 2, **options) if command == "study" else cnnlab.ensemble("cnn1", 2, 0.0, **options)


def test_a_study_starts_no_run_once_its_budget_is_spent(data, tmp_path, clock, speed):
    """Epochs take 30 s where the probe says 10: the first two runs (20 s each, 2 epochs by the probe, 1 after
    the re-plan) spend 60 s of the 60; the third and fourth do not start (they did, past the budget: a 30 s
    study took 64 s on a 2-core Zen 5 EPYC)."""
    speed(10.0, epochs_take=30.0)
    said = []
    result = cnnlab.study(["cnn1"], 4, str(data), out=tmp_path / "study", progress=False, say=said.append,
                          **dict(SETTINGS, epochs=10, time_budget=60))
    started = sorted(p.name for p in (tmp_path / "study" / "runs").iterdir() if (p / "history.csv").is_file())
    assert len(started) == 2 and len(list((tmp_path / "study" / "runs").iterdir())) <= 4
    left = sorted(run.dir.path.name for run in result["runs"] if run.dir.path.name not in started)
    # the report names the runs it leaves out (it read as if the study had fewer runs)
    assert f"Not in this report, not finished: {', '.join(left)} (" in Path(result["markdown"]).read_text()
    assert sum("not started, the time budget" in line and "is spent; run the same command again" in line
               for line in said) == 2, said


def test_a_study_starts_no_run_once_a_share_cannot_hold_one_epoch(data, tmp_path, clock, speed):
    """Epochs take 30 s where the probe says 10: the first run's 10 s of 40 hold one epoch by the probe and spend
    30; the second's share of the 10 left (3.3 s) cannot hold one, so it and the later runs do not start, named
    with the budget the whole study needs (it trained one epoch each, past the budget)."""
    speed(10.0, epochs_take=30.0)
    said = []
    result = cnnlab.study(["cnn1"], 4, str(data), out=tmp_path / "study", progress=False, say=said.append,
                          **dict(SETTINGS, epochs=10, time_budget=40))
    assert [run.dir.status() for run in result["runs"]] == ["finished", "fresh", "fresh", "fresh"]
    (refused,) = [line for line in said if "cannot hold one epoch of cnn1" in line]
    assert refused.startswith("[2/4] cnn1-seed4: not started: this run's share of the command's budget, 3.3 s,")
    assert "give time_budget='60s' or more for the whole command" in refused  # 30 s spent + 3 runs x 10 s
    assert sum("not started, the budget's share cannot hold one epoch" in line for line in said) == 2, said
    assert result["report"].is_file()  # of the run that finished
    refused_run = result["runs"][1].dir
    assert not refused_run.file("config.json").exists() and not refused_run.file("env.json").exists()  # kept before
    again = cnnlab.study(["cnn1"], 4, str(data), out=tmp_path / "study", progress=False, say=said.append,
                         **dict(SETTINGS, epochs=10, time_budget=200))  # the budget it named, and more: allowed
    assert [run.dir.status() for run in again["runs"]] == ["finished"] * 4


def test_an_ensemble_shares_its_budget_and_starts_nothing_once_it_is_spent(data, tmp_path, clock, speed):
    """The probe says 10 s per epoch, epochs take 30: the first member's 20 s hold 2 epochs by the probe, and
    after its first epoch the re-plan ends it there (one epoch is the least); the second gets half of what
    is left, then time is up."""
    speed(10.0, epochs_take=30.0)
    said = []
    manifest = cnnlab.ensemble("cnn1", members=3, threshold=0.0, data=str(data), out=tmp_path / "ens", fuse=1,
                               progress=False, say=said.append, **dict(SETTINGS, epochs=10, time_budget=60))
    assert manifest["attempts"] == 2 and any("time budget spent" in line for line in said)
    first, second = (cnnlab.Run(tmp_path / "ens" / "members" / f"member-{a:03d}").metrics for a in (0, 1))
    assert first["time_budget_seconds"] == 20 and first["chosen_epochs"] == 2 and first["epochs_done"] == 1
    assert first["replanned_epochs"] == 1 and first["replan_seconds_per_epoch"] == 30
    assert "training 1 epoch (the least)" in first["budget_note"] and not first.get("stop_reason")
    assert second["time_budget_seconds"] == 15 and second["chosen_epochs"] == 1


def test_an_ensemble_starts_no_attempt_once_a_share_cannot_hold_one_epoch(data, tmp_path, clock, speed):
    """Probe 10 s, epochs 30: the first member's 13.3 s of 40 hold one epoch by the probe and spend 30; the
    second's 5 s cannot hold one, so no attempt starts; the same command with a budget that holds them goes on."""
    speed(10.0, epochs_take=30.0)
    said = []
    options = dict(members=3, threshold=0.0, data=str(data), out=tmp_path / "ens", fuse=1, progress=False,
                   say=said.append)
    manifest = cnnlab.ensemble("cnn1", **options, **dict(SETTINGS, epochs=10, time_budget=40))
    assert manifest["attempts"] == 1 and manifest["qualified"] == 1
    (refused,) = [line for line in said if "cannot hold one epoch of cnn1" in line]
    assert refused.startswith("this run's share of the command's budget, 5.0 s,")
    assert refused.endswith("; 1/3 qualified, no further attempt starts")
    manifest = cnnlab.ensemble("cnn1", **options, **dict(SETTINGS, epochs=10, time_budget=100))
    assert manifest["attempts"] == 3 and manifest["qualified"] == 3


def test_the_first_epochs_pace_chooses_the_epochs_again_and_the_schedule_follows(data, tmp_path, clock, speed):
    """Budget 100 s; the probe says 25 s an epoch (4 epochs), the epochs take 10: after the first, 10 epochs,
    and one-cycle spans 10 from epoch 2 on; config.json holds the new total."""
    speed(25.0, epochs_take=10.0)
    config = build_config({**BASE, "data": str(data), "epochs": 40, "lr_schedule": "one-cycle", "time_budget": 100})
    metrics = fit(config, tmp_path / "run")
    assert metrics["chosen_epochs"] == 4 and metrics["replanned_epochs"] == 10 and metrics["epochs_done"] == 10
    assert metrics["replan_seconds_per_epoch"] == 10 and metrics["budget_seconds_used"] == pytest.approx(100)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 10
    lrs = [float(row["lr"]) for row in history(tmp_path / "run")]
    assert lrs[0] == pytest.approx(lr_at("one-cycle", 0, 4 * STEPS, config.lr), rel=1e-12)
    assert lrs[1:] == pytest.approx([lr_at("one-cycle", e * STEPS, 10 * STEPS, config.lr) for e in range(1, 10)],
                                    rel=1e-12)


def test_a_slow_first_epoch_shrinks_the_total_so_the_schedule_still_ends(data, tmp_path, clock, speed):
    """The probe says 10 s (10 epochs of 100 s), the epochs take 24: 4 epochs (96 s), not a cut at 110%."""
    speed(10.0, epochs_take=24.0)
    config = build_config({**BASE, "data": str(data), "epochs": 40, "lr_schedule": "cosine", "time_budget": 100})
    metrics = fit(config, tmp_path / "run")
    assert metrics["chosen_epochs"] == 10 and metrics["replanned_epochs"] == 4 and metrics["epochs_done"] == 4
    assert not metrics.get("stop_reason") and metrics["budget_seconds_used"] == pytest.approx(96)
    assert float(history(tmp_path / "run")[-1]["lr"]) == pytest.approx(lr_at("cosine", 3 * STEPS, 4 * STEPS, config.lr))


def test_a_run_that_slows_down_later_shrinks_its_total_and_ends_within_the_budget(data, tmp_path, clock, speed):
    """The first three epochs take 10 s as probed (10 epochs kept), then the machine slows to 40 s an epoch:
    after epoch 4 (70 s) the pace so far (20 s) leaves room for 5 in all, so the one-cycle schedule ends
    at epoch 5 (110 s, 110%), annealed, where a cut would have stopped it at full rate."""
    speed(10.0, epochs_take=lambda epoch: 10.0 if epoch <= throughput.REPLANS else 40.0)
    config = build_config({**BASE, "data": str(data), "epochs": 40, "lr_schedule": "one-cycle", "time_budget": 100})
    metrics = fit(config, tmp_path / "run")
    assert metrics["chosen_epochs"] == 10 and metrics["replanned_epochs"] == 5 and metrics["epochs_done"] == 5
    assert not metrics.get("stop_reason") and metrics["budget_seconds_used"] == pytest.approx(110)
    lrs = [float(row["lr"]) for row in history(tmp_path / "run")]
    assert lrs[-1] == pytest.approx(lr_at("one-cycle", 4 * STEPS, 5 * STEPS, config.lr), rel=1e-12)


def test_the_console_says_each_change_of_the_total(data, tmp_path, clock, speed, capsys):
    """As above, through cnnlab.train with its progress: the console said '10 epochs kept' after the first epoch
    and then nothing, while the run shrank to 5 (a user read 10 and got 5)."""
    speed(10.0, epochs_take=lambda epoch: 10.0 if epoch <= throughput.REPLANS else 40.0)
    run = cnnlab.train(data=str(data), out=tmp_path, **dict(BASE, epochs=40, lr_schedule="one-cycle", time_budget=100))
    out = " ".join(capsys.readouterr().out.split())
    assert run.metrics["replanned_epochs"] == 5 and "10 epochs kept" in out
    assert "time budget: after epoch 4 the pace is 20.0 s an epoch: 5 epochs instead of 10" in out


def test_past_the_first_epochs_the_total_never_grows(data, tmp_path, clock, speed):
    """Epochs of 20 s as probed (5 of 100 s), then 5 s from epoch 4 on: the total stays 5 (a growing
    one-cycle schedule would raise the rate again near its end)."""
    speed(20.0, epochs_take=lambda epoch: 20.0 if epoch <= throughput.REPLANS else 5.0)
    config = build_config({**BASE, "data": str(data), "epochs": 40, "lr_schedule": "one-cycle", "time_budget": 100})
    metrics = fit(config, tmp_path / "run")
    assert metrics["chosen_epochs"] == 5 and metrics["epochs_done"] == 5 and metrics["replanned_epochs"] == 5


def test_the_pace_leaves_the_first_epoch_out_once_there_are_more(data, tmp_path, clock, speed):
    """The first epoch takes 30 s (one-off costs), the next 10: after epoch 1, 3 epochs (90 s); after
    epoch 2 the pace is 10 s, so 30 + 10 * 7 = 100 s: 8 epochs."""
    speed(20.0, epochs_take=lambda epoch: 30.0 if epoch == 1 else 10.0)
    config = build_config({**BASE, "data": str(data), "epochs": 40, "lr_schedule": "one-cycle", "time_budget": 100})
    metrics = fit(config, tmp_path / "run")
    assert metrics["chosen_epochs"] == 5 and metrics["replanned_epochs"] == 8 and metrics["epochs_done"] == 8
    assert metrics["replan_seconds_per_epoch"] == 10 and metrics["budget_seconds_used"] == pytest.approx(100)
    lrs = [float(row["lr"]) for row in history(tmp_path / "run")]
    assert lrs[-1] == pytest.approx(lr_at("one-cycle", 7 * STEPS, 8 * STEPS, config.lr), rel=1e-12)


def test_a_resume_after_the_re_plan_continues_to_the_new_total(data, tmp_path, clock, speed, monkeypatch):
    speed(25.0, epochs_take=10.0)
    options = dict(BASE, epochs=40, lr_schedule="one-cycle", time_budget=100, progress=False, out=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cnnlab.train(data=str(data), callbacks=[interrupt_at(3)], **options)
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "config.json").read_text())["epochs"] == 10
    resumed = cnnlab.train(resume=run, progress=False)
    assert resumed.metrics["epochs_done"] == 10 and resumed.metrics["replanned_epochs"] == 10
    straight = cnnlab.train(data=str(data), **dict(options, out=tmp_path / "straight"))
    assert history(run) == history(straight.path)


def test_ray_with_a_study_or_ensemble_budget_is_refused_in_one_line(data, tmp_path):
    from cnnlab.ensembles import train_ensemble
    from cnnlab.studies import run_study

    config = build_config({**BASE, "data": str(data), "time_budget": 60})
    with pytest.raises(UserError, match=r"^time_budget: a study's budget .* not available with ray=True"):
        run_study(config, ["cnn1"], 1, tmp_path / "s", ray=True, budget=Budget(60))
    with pytest.raises(UserError, match=r"^time_budget: an ensemble's budget .* not available with ray=True"):
        train_ensemble(config, tmp_path / "e", 2, 0.0, ray=True, budget=Budget(60))


# ------------------------------------------------------------------ what the API and the CLI record


def test_the_api_records_the_budget_and_the_chosen_epochs(data, tmp_path):
    run = cnnlab.train(data=str(data), time_budget="2m", out=tmp_path, progress=False, **dict(BASE, epochs=3))
    metrics, config = run.metrics, run.config
    assert config["time_budget"] == 120.0 and config["epochs"] == metrics["chosen_epochs"]
    assert 1 <= metrics["chosen_epochs"] <= 3 and metrics["budget_max_epochs"] == 3
    assert metrics["time_budget_seconds"] == 120.0 and metrics["probe_seconds_per_epoch"] > 0
    assert 0 < metrics["budget_spent_seconds"] < metrics["budget_seconds_used"]
    assert budgets.summary(metrics)["seconds_used"] == metrics["budget_seconds_used"]


def test_the_cli_records_the_budget_and_the_chosen_epochs(cli, data, tmp_path):
    code, out, err = cli("train", "cnn1", "--data", data, "--time-budget", "20s", "--epochs", "5", "--device", "cpu",
                         "--batch-size", "32", "--out", tmp_path)  # 20 s: set-up and one epoch fit on a busy machine
    assert code == 0, err
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    config, metrics = (json.loads((run / name).read_text()) for name in ("config.json", "metrics.json"))
    # config.json holds the last total planned: the probe's, or the re-plan's after the first epochs (so a resume
    # continues to it); which one depends on this machine's pace, so both are accepted
    planned = metrics.get("replanned_epochs") or metrics["chosen_epochs"]
    assert config["time_budget"] == 20.0 and config["epochs"] == planned
    assert 1 <= metrics["chosen_epochs"] <= 5 and metrics["epochs_done"] <= planned
    assert metrics["time_budget_seconds"] == 20.0 and metrics["probe_seconds_per_epoch"] > 0
    assert "time budget 20.0 s:" in out and "epochs chosen" in out


def test_the_cpu_budget_recipe_is_a_budget():
    recipe = build_config({"recipe": "cpu-budget"})
    assert recipe.time_budget == 900 and recipe.epochs == 200 and recipe.lr_schedule == "one-cycle"
    assert build_config({"recipe": "cpu-budget", "time_budget": "5m"}).time_budget == 300
    assert build_config({"recipe": "cpu-budget", "time_budget": 0, "epochs": 32}).time_budget == 0  # fixed epochs
    assert build_config({}).time_budget == 0  # the report's recipe has none


# ------------------------------------------------------------------ a wider model where the budget holds many epochs


def test_the_width_rule_takes_the_largest_threshold_reached():
    assert wider_width([[48, 16]], 47) is None and wider_width([[48, 16]], 48) == 16
    assert wider_width([[10, 12], [48, 16]], 30) == 12 and wider_width([[48, 16], [10, 12]], 200) == 16
    assert wider_width([], 500) is None


WIDE = {**SETTINGS, "recipe": "modern", "model": "resnet9", "batch_size": 32}


def test_a_budget_that_holds_enough_epochs_trains_the_wider_model_exactly_as_if_asked(data, tmp_path):
    """budget_width [[2, 4]] at width 2, an hour for at most 2 epochs: the probe at width 2 says 2 epochs fit, so
    width 4 trains, bit for bit as a run asked for width 4 (the width-2 probes leave no trace)."""
    asked = build_config({**WIDE, "model_params": {"width": 4}, "data": str(data), "epochs": 2})
    chosen = build_config({**WIDE, "model_params": {"width": 2}, "budget_width": [[2, 4]], "data": str(data),
                           "epochs": 2, "time_budget": "1h"})
    fit(asked, tmp_path / "a")
    metrics = fit(chosen, tmp_path / "b")
    assert metrics["budget_width_probe_width"] == 2 and metrics["budget_width_probe_epochs"] == 2
    assert metrics["budget_width_chosen"] == 4 and metrics["chosen_epochs"] == 2
    stored = json.loads((tmp_path / "b" / "config.json").read_text())
    assert stored["model_params"] == {"width": 4} and stored["budget_width"] == [[2, 4]]
    assert history(tmp_path / "a") == history(tmp_path / "b")
    want, got = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("epoch_seconds, width", [(30.0, 2), (10.0, 4)])
def test_the_width_follows_the_epochs_the_budget_holds(epoch_seconds, width, data, tmp_path, clock, speed):
    """100 s and budget_width [[5, 4]]: 30 s an epoch holds 3 epochs (width 2 stays), 10 s holds 10 (width 4)."""
    probes = speed(epoch_seconds)
    config = build_config({**WIDE, "model_params": {"width": 2}, "budget_width": [[5, 4]], "data": str(data),
                           "epochs": 40, "lr_schedule": "one-cycle", "time_budget": 100})
    metrics = fit(config, tmp_path / "run")
    assert metrics["budget_width_chosen"] == width and metrics["budget_width_probe_epochs"] == 100 // epoch_seconds
    assert len(probes) == (2 if width == 4 else 1)  # the width-2 probe, then a wider model's own
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_params"] == {"width": width}
    assert cnnlab.Run(tmp_path / "run").model[0].weight.shape[0] == width  # the prep conv: `width` channels
    line = budgets.Plan(**{k: v for k, v in metrics.items() if k in budgets.Plan.__dataclass_fields__}).line()
    assert ("width 4, since the budget holds 10 epochs at width 2" in line) == (width == 4)


def test_without_a_budget_or_on_resume_the_width_stays(data, tmp_path):
    config = build_config({**WIDE, "model_params": {"width": 2}, "budget_width": [[1, 4]], "data": str(data), "epochs": 1})
    metrics = fit(config, tmp_path / "run")
    assert "budget_width_chosen" not in metrics
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_params"] == {"width": 2}


def test_budget_width_on_the_command_line():
    assert parse_budget_width("48:16") == [[48, 16]] and parse_budget_width(" 10:12, 48:16 ") == [[10, 12], [48, 16]]
    assert parse_budget_width("off") == parse_budget_width("0") == []
    for bad in ("48x16", "48:", "16", "48:16,", "-1:4", "1.5:4"):
        with pytest.raises(UserError, match="--budget-width: must be EPOCHS:WIDTH pairs"), errors.command_line():
            parse_budget_width(bad)


@pytest.mark.parametrize("flag, width", [("1:12", 12), ("off", 8)])
def test_the_budget_width_flag_reaches_the_run(flag, width, data, tmp_path, cli):
    """cpu-budget (width 8, budget_width [[48, 16]]) on tiny data for an hour at most 1 epoch: `--budget-width
    1:12` trains width 12 (the budget holds the 1 epoch), `off` keeps width 8 and no width rule."""
    code, _, err = cli("train", "--recipe", "cpu-budget", "--data", data, "--budget-width", flag, "--time-budget", "1h",
                       "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--precision", "fp32", "--no-compile",
                       "--out", tmp_path, "--quiet")
    assert code == 0, err
    (run,) = tmp_path.iterdir()
    stored = json.loads((run / "config.json").read_text())
    assert stored["model_params"] == {"width": width} and stored["budget_width"] == ([[1, 12]] if width == 12 else [])


@pytest.mark.parametrize("model", ["cnn4", "wrn-16-4", "custom"])
def test_cpu_budget_with_another_model_keeps_the_recipe_but_not_its_widths(model):
    """`train cnn4 --recipe cpu-budget` (or a model of one's own) was refused: budget_width switches resnet9's
    width, which the other model does not have. The rest of the recipe stays; asking for a width rule explicitly
    on such a model is still one line."""
    config = build_config({"recipe": "cpu-budget", "model": model})
    assert config.budget_width == [] and config.model_params == {}
    assert config.time_budget == 900 and config.tta_translate and config.label_smoothing == 0.05
    with pytest.raises(UserError, match="budget_width: needs a model with a width option"):
        build_config({"recipe": "cpu-budget", "model": model, "budget_width": [[48, 16]]})
    assert build_config({"recipe": "cpu-budget", "model": "resnet9"}).budget_width == [[48, 16]]


def test_a_bad_budget_width_flag_is_one_line(tmp_path, cli):
    code, out, err = cli("train", "--recipe", "cpu-budget", "--budget-width", "48x16", "--out", tmp_path)
    assert code == 2 and err.startswith("cnnlab: error: --budget-width: must be") and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ search


def test_tune_timeout_and_time_budget_are_one_setting(cli, data, tmp_path, monkeypatch):
    seen = []

    def fake_run_tune(config, directory, trials, budget, *args):
        seen.append((config.time_budget, budget.seconds))
        return {"complete": 0, "pruned": 0, "failed": 0, "seconds_saved_by_pruning": 0.0}

    monkeypatch.setattr(cnnlab.api, "run_tune", fake_run_tune)
    common = ["tune", "cnn1", "--data", data, "--trials", "1", "--out", tmp_path]
    assert cli(*common, "--timeout", "90")[0] == 0
    assert cli(*common, "--time-budget", "1.5m")[0] == 0
    assert cli(*common, "--timeout", "90", "--time-budget", "90s")[0] == 0
    assert seen == [(90.0, 90.0)] * 3
    code, _, err = cli(*common, "--timeout", "90", "--time-budget", "2m")
    assert code == 2 and "timeout: is another name of time_budget; give one of them" in err
    code, _, err = cli(*common, "--timeout", "soon")
    assert code == 2 and err.strip().startswith("cnnlab: error: timeout: must be a number of seconds")


def test_a_search_starts_no_trial_that_would_not_fit(data, tmp_path, clock):
    """250 s, trials of 100 s: the third would not fit in the 50 s left. Trials keep their epochs, unbudgeted."""
    from cnnlab.search import run_tune

    config = build_config({**BASE, "data": str(data), "epochs": 1, "time_budget": 250, "precision": "fp32"})
    said = []
    space = {"lr": {"type": "categorical", "choices": [0.001, 0.003]}}
    summary = run_tune(config, tmp_path / "t", trials=5, space=space, pruner="none", say=said.append,
                       callbacks=[ticking(clock, 100.0)])
    assert summary["complete"] == 2 and any("less than a trial takes here" in line for line in said)
    assert said[0].startswith("time budget 4:10: no trial starts once it is spent")  # said first: trials run whole
    trial = json.loads((tmp_path / "t" / "trials" / "trial-0000" / "config.json").read_text())
    assert trial["time_budget"] == 0.0 and trial["epochs"] == 1


def test_a_search_whose_budget_is_spent_before_its_first_trial_fails(data, tmp_path, cli):
    """A budget that setting up the search used up: one line and exit 2, not an empty summary and exit 0."""
    code, _, err = cli("tune", "cnn1", "--trials", "3", "--data", data, "--epochs", "1", "--time-budget", "0.001",
                       "--device", "cpu", "--out", tmp_path / "t")
    (line,) = [text for text in err.splitlines() if text.strip()]
    assert code == 2 and line.startswith("cnnlab: error: --time-budget: its 0.0 s were spent before the first trial started")


def test_tune_takes_progress_as_train_study_and_ensemble_do(data, tmp_path):
    """`progress=False` was an unknown setting for tune alone."""
    summary = cnnlab.tune("cnn1", trials=1, data=str(data), out=tmp_path / "t", progress=False, say=lambda text: None,
                          **dict(SETTINGS, epochs=1))
    assert summary["complete"] == 1


def test_the_width_rules_probe_measures_with_the_allocator_that_trains(data, tmp_path, monkeypatch):
    """The width rule's speed probe ran before glibc was told to keep freed memory (fit_setup does that before
    its first step), so on a fresh process it measured 1.3-1.4 s an epoch where training took 0.94-0.98 and chose
    fewer epochs (`--recipe cpu-budget --time-budget 15s`, 2-core Zen 5 EPYC; found by a trial)."""
    from cnnlab import allocator

    order = []
    real_measure = throughput.measure
    monkeypatch.setattr(allocator, "_state", None)  # a fresh process
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: order.append("allocator") or allocator.keep_freed_memory())
    monkeypatch.setattr(throughput, "measure", lambda setup: order.append("probe") or real_measure(setup))
    config = build_config({**WIDE, "model_params": {"width": 2}, "budget_width": [[1000, 4]], "data": str(data),
                           "epochs": 1, "time_budget": "1h"})
    fit(config, tmp_path / "run")
    assert order and order[0] == "allocator", order


def test_a_budget_recipe_without_its_budget_says_it_trains_its_most_epochs(capsys):
    """`--recipe cpu-budget --time-budget 0` trained its cap of 200 epochs (about 40 minutes) without a word."""
    from cnnlab.api import make_config

    make_config(recipe="cpu-budget", time_budget=0)
    assert "recipe cpu-budget without a time budget trains its most epochs, 200" in capsys.readouterr().err
    make_config(recipe="cpu-budget", time_budget=0, epochs=30)  # epochs chosen: nothing to say
    make_config(recipe="cpu-budget", time_budget=0, epochs=200)  # the cap, asked for: nothing to say either
    make_config(recipe="cpu-budget")  # its budget picks the epochs
    make_config(recipe="cpu-budget", time_budget=0, trains=None)  # lr_find trains no epochs
    assert capsys.readouterr().err == ""
    # a search's trials always train without a budget, and trained 200 epochs each without a word
    make_config(recipe="cpu-budget", trains="trial")
    assert "recipe cpu-budget: each trial trains its most epochs, 200" in capsys.readouterr().err
