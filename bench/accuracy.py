"""Accuracy against time on this machine: a recipe over several seeds, with the report's tuned model beside it.

Two modes, both on the test split, which is never used to choose anything (mean ± std over seeds):

- fixed epochs (the default): test accuracy is recorded after every epoch *for this benchmark only* (a
  callback) against the cumulative training seconds, giving the accuracy-versus-time curve;
- `--budgets 5m,10m,25m`: the frontier. For each budget and seed the recipe runs under
  `time_budget`, as a user's `cnnlab train --recipe cpu-budget --time-budget 10m` does (the budget
  counts everything after the call: data, warm-up, the speed probe, training and evaluation); no
  per-epoch test curve there, since its evaluations would eat the budget. Each row gives the budget,
  the seconds actually used, the width and epochs the recipe chose, the precision trained in, and the test
  accuracy. --precision, --epochs (the most a run trains) and --width apply as in fixed-epoch mode. A budget
  too small for one epoch is reported in one line and its row dropped; the other rows and --json are kept
  (exit 2).

Nothing else should run on the machine meanwhile.

    python bench/accuracy.py --recipe cpu-budget --seeds 0,1,2 --val-fraction 0 --peer-epochs 40
    python bench/accuracy.py --recipe cpu-budget --budgets 10m,25m --seeds 0,1,2 --val-fraction 0 --peer-seeds ""
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cnnlab  # noqa: E402
from cnnlab.callbacks import Callback  # noqa: E402
from cnnlab.budget import TooSmall, parse_duration  # noqa: E402
from cnnlab.config import build_config  # noqa: E402
from cnnlab.engine import device_name, evaluate, resolve_device  # noqa: E402
from cnnlab.errors import UserError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import OneLineParser, cpu_class, fail, git_commit, positive_int  # noqa: E402  bench/run.py, beside this script

PROG = "accuracy.py"


class TestCurve(Callback):
    """Test accuracy after each epoch against cumulative training seconds (benchmark only)."""

    def __init__(self, label: str):
        self.label, self.points, self.train_seconds = label, [], 0.0

    def on_epoch_end(self, ctx, rows):
        self.train_seconds += rows[0]["train_seconds"]
        if ctx.setup.test is not None:
            _, acc, _, _ = evaluate(ctx.setup, ctx.setup.test)
            self.points.append((rows[0]["epoch"], round(self.train_seconds, 1), round(acc[0], 4)))
            print(f"  {self.label} epoch {rows[0]['epoch']:>3}: {self.train_seconds:7.1f} s of training, "
                  f"test {acc[0]:.4f}", flush=True)


def run(label: str, out: Path, curve: bool = True, **settings) -> dict:
    callbacks = [TestCurve(label)] if curve else []
    start = time.perf_counter()
    result = cnnlab.train(out=out, callbacks=callbacks, progress=False, **settings)
    metrics = result.metrics
    row = {"label": label, "settings": settings, "test_accuracy": metrics["test_accuracy"],
           "train_seconds": metrics["train_seconds_total"], "wall_seconds": time.perf_counter() - start,
           "precision": metrics["precision"], "curve": callbacks[0].points if curve else None,
           "model_params": result.config.get("model_params"), "epochs_done": metrics.get("epochs_done")}
    for key in ("time_budget_seconds", "budget_seconds_used", "chosen_epochs", "probe_seconds_per_epoch",
                "replanned_epochs", "replan_seconds_per_epoch"):
        row[key] = metrics.get(key)
    if not curve:
        print(f"  {label}: test {row['test_accuracy']:.4f}, {row['precision']}, {row['epochs_done']} epochs, width "
              f"{(row['model_params'] or {}).get('width')}, {row['budget_seconds_used']:.0f} s used of "
              f"{row['time_budget_seconds']:.0f} ({row['budget_seconds_used'] / row['time_budget_seconds']:.0%}); "
              f"probe {row['probe_seconds_per_epoch']:.1f} s an epoch -> {row['chosen_epochs']} epochs, first epoch "
              f"{row['replan_seconds_per_epoch'] or 0:.1f} s -> {row['replanned_epochs']}", flush=True)
    return row


def frontier_row(budget: float, results: list[dict], hardware: str, date: str, commit: str) -> str:
    """A Markdown row of bench/README.md's frontier table; the CPU cell ends with the precision trained in, as the
    README's rows write it ("2-core Zen 5 AMD EPYC, bf16")."""
    hardware += ", " + ", ".join(sorted({str(r["precision"]) for r in results}))
    accs = [100 * r["test_accuracy"] for r in results]
    spread = f"{statistics.stdev(accs):.2f}" if len(accs) > 1 else "n/a"
    used = [r["budget_seconds_used"] for r in results]
    widths = sorted({(r["model_params"] or {}).get("width") for r in results}, key=str)
    epochs = sorted({r["epochs_done"] for r in results})
    return (f"| {budget / 60:g} min | {statistics.mean(accs):.2f}% ± {spread} ({', '.join(f'{a:.2f}' for a in accs)}) "
            f"| {len(accs)} | {', '.join(map(str, widths))} | {', '.join(map(str, epochs))} "
            f"| {min(used) / 60:.1f}-{max(used) / 60:.1f} min ({min(used) / budget:.0%}-{max(used) / budget:.0%}) | {hardware} | {date} | {commit} |")


def budget_runs(text: str, budget: float, seeds: list[int], out: Path, settings: dict) -> tuple[list[dict], str | None]:
    """One budget's runs, seed after seed, and the reason it stopped early (None: every seed ran). A budget too
    small for one epoch (TooSmall, refused before training) ends its row there - the next seeds would be refused
    too - while the runs before it, and the other budgets, are kept."""
    results = []
    for s in seeds:
        try:
            results.append(run(f"{settings['recipe']} {text} seed {s}", out, curve=False, seed=s, time_budget=budget,
                               **settings))
        except TooSmall as exc:
            return results, f"--budgets {text}: {exc}"
    return results, None


def summary(results: list[dict]) -> str:
    accs = [r["test_accuracy"] for r in results]
    secs = [r["train_seconds"] for r in results]
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return (f"{results[0]['label'].split(' seed')[0]}: test {statistics.mean(accs):.4f} ± {spread:.4f} over "
            f"{len(accs)} seeds (min {min(accs):.4f}, max {max(accs):.4f}); training {statistics.mean(secs):.0f} s "
            f"(max {max(secs):.0f} s = {max(secs) / 60:.1f} min)")


# ------------------------------------------------------------------ arguments


def seed_list(text: str) -> list[int]:
    """--seeds, --peer-seeds: "0,1,2" -> [0, 1, 2] ("" -> [], which --seeds refuses)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = [-1]
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"must be seeds (integers 0 or more) separated by commas, e.g. 0,1,2; got {text!r}")
    return seeds


def budget_list(text: str) -> list[tuple[str, float]]:
    """--budgets: "10m,25m" -> [("10m", 600.0), ("25m", 1500.0)]; "" -> [] (fixed-epoch mode). Each must be above 0:
    0 is cnnlab's "no budget", which ran the recipe's 200 epochs as if it were a point of the frontier."""
    budgets = []
    for item in text.split(",") if text.strip() else []:
        try:
            seconds = parse_duration(item, "--budgets")
        except UserError:
            seconds = 0.0
        if not seconds:
            raise argparse.ArgumentTypeError(f"each budget must be a duration above 0 (and at most 30 days) such as "
                                             f"90s, 10m or 1h30m, separated by commas (a frontier point needs a "
                                             f"budget; leave --budgets out for fixed epochs); got {item.strip()!r}")
        budgets.append((item.strip(), seconds))
    return budgets


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cpu-budget")
    parser.add_argument("--seeds", type=seed_list, default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="the epochs trained (with a time budget: the most a "
                        "run trains); default: the recipe's")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="0: train on all 60,000 (fixed schedule)")
    parser.add_argument("--peer", default="tuned-cnn", help="the report's model, trained with the report's recipe")
    parser.add_argument("--peer-epochs", type=int, default=40)
    parser.add_argument("--peer-seeds", type=seed_list, default="0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--budgets", type=budget_list, default="", help="time budgets, e.g. 10m,25m: the "
                        "accuracy-against-time frontier")
    parser.add_argument("--time-budget", default=None, help="fixed-epoch mode: the run's time budget (0: none, so "
                        "--epochs is what trains; default: the recipe's)")
    parser.add_argument("--precision", default=None, help="fp32, bf16, ... (default: cnnlab's auto)")
    parser.add_argument("--width", type=positive_int, default=None, help="the recipe's model at this width (with --budgets, "
                        "the width its budget rule starts from)")
    args = parser.parse_args(argv)
    if not args.seeds:
        parser.error("argument --seeds: names no seed; give seeds such as 0,1,2")
    if args.budgets and args.time_budget is not None:  # each row's budget is the one --budgets gives it
        parser.error("argument --time-budget: fixed-epoch mode only; with --budgets each row runs under its own "
                     "budget, so drop --time-budget")
    if args.json is not None and not args.json.parent.is_dir():  # it was found out only after the training
        parser.error(f"argument --json: {args.json.parent} is not a folder; give a file in an existing folder")
    if args.json is not None and args.json.is_dir():
        parser.error(f"argument --json: {args.json} is a folder; give a file name such as {args.json / 'accuracy.json'}")
    return args


def recipe_settings(args) -> dict:
    """What every run of the recipe gets besides its seed (and, with --budgets, its budget)."""
    settings = {"recipe": args.recipe, "val_fraction": args.val_fraction, "epochs": args.epochs, "device": args.device,
                "precision": args.precision, "time_budget": args.time_budget,
                "model_params": {"width": args.width} if args.width is not None else None}
    return {key: value for key, value in settings.items() if value is not None}  # None: the recipe's own


def check_settings(args) -> None:
    """Every run's settings as cnnlab will build them (recipe, precision, epochs, val fraction, device, the peer's
    model): a UserError now, before the temporary folder and the first minute of training."""
    budgets = [seconds for _, seconds in args.budgets] or [None]
    for seed in args.seeds:
        for budget in budgets:
            build_config(recipe_settings(args), {"seed": seed, "time_budget": budget})
    for seed in args.peer_seeds:
        build_config({"model": args.peer, "seed": seed, "epochs": args.peer_epochs, "device": args.device})


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    """Entry point: a user's mistake is one line on stderr and exit 2; the temporary run folder goes on every path."""
    try:
        sys.exit(bench(parse_args(argv)))
    except UserError as exc:
        fail(PROG, exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        sys.exit(130)


def bench(args: argparse.Namespace) -> int:
    """Runs and prints everything; returns the exit status (2: a budget was too small for one epoch)."""
    check_settings(args)
    device = resolve_device(args.device)
    hardware = cpu_class() if device.type == "cpu" else device_name(device)
    commit, dirty = git_commit()
    print(f"device: {device_name(device)} ({hardware}); commit {commit}{' (modified)' if dirty else ''}; "
          "Fashion-MNIST, 10 classes, test split", flush=True)
    settings, refused = recipe_settings(args), []
    # the runs' folders (2-5 MB each) are of no use once their figures are read: removed on every way out
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-acc-") as tmp:
        out = Path(tmp)
        if args.budgets:
            rows, ours = [], []
            for text, budget in args.budgets:
                results, why = budget_runs(text, budget, args.seeds, out, settings)
                ours += results
                if why:
                    refused.append({"budget": text, "seconds": budget, "seeds_done": len(results), "error": why})
                    print(f"{PROG}: error: {why}", file=sys.stderr, flush=True)
                if results:
                    rows.append(frontier_row(budget, results, f"{device_name(device)} ({hardware})",
                                             time.strftime("%Y-%m-%d"), commit or "-"))
                    print(rows[-1], flush=True)
            print(f"\n{device_name(device)} ({hardware}), `{args.recipe}`, val_fraction {args.val_fraction}, precision "
                  f"{args.precision or 'auto'}:")
            print("| time budget | test accuracy (mean ± std) | seeds | width | epochs | time used | CPU | date | commit |")
            print("|---|---:|---:|---:|---:|---:|---|---|---|")
            print("\n".join(rows), flush=True)
        else:
            ours = [run(f"{args.recipe} seed {s}", out, seed=s, **settings) for s in args.seeds]
            print(summary(ours), flush=True)
        peers = [run(f"{args.peer} (report recipe) seed {s}", out, model=args.peer, seed=s, epochs=args.peer_epochs,
                     device=args.device) for s in args.peer_seeds]
    if peers:
        print(summary(peers), flush=True)
    if args.json:
        report = {"recipe": ours, "peer": peers}
        if args.budgets:
            report["too_small"] = refused  # budgets that could not hold one epoch (rows of the seeds done, if any)
        args.json.write_text(json.dumps(report, indent=1))
    return 2 if refused else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped from outside: the temporary folder still goes
    main()
