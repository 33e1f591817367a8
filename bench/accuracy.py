"""Accuracy against time on this machine: a recipe over several seeds, with the report's tuned model beside it.

Two modes, both on the test split, which is never used to choose anything (mean ± std over seeds):

- fixed epochs (the default): test accuracy is recorded after every epoch *for this benchmark only* (a
  callback) against the cumulative training seconds, giving the accuracy-versus-time curve;
- `--budgets 5m,10m,25m`: the frontier. For each budget and seed the recipe runs under
  `time_budget`, as a user's `cnnlab train --recipe cpu-budget --time-budget 10m` does (the budget
  counts everything after the call: data, warm-up, the speed probe, training and evaluation); no
  per-epoch test curve there, since its evaluations would eat the budget. Each row gives the budget,
  the seconds actually used, the width and epochs the recipe chose, and the test accuracy.

Nothing else should run on the machine meanwhile.

    python bench/accuracy.py --recipe cpu-budget --seeds 0,1,2 --val-fraction 0 --peer-epochs 40
    python bench/accuracy.py --recipe cpu-budget --budgets 10m,25m --seeds 0,1,2 --val-fraction 0 --peer-seeds ""
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cnnlab  # noqa: E402
from cnnlab.callbacks import Callback  # noqa: E402
from cnnlab.budget import parse_duration  # noqa: E402
from cnnlab.engine import device_name, evaluate, resolve_device  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import cpu_class, git_commit  # noqa: E402  bench/run.py, beside this script


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
        print(f"  {label}: test {row['test_accuracy']:.4f}, {row['epochs_done']} epochs, width "
              f"{(row['model_params'] or {}).get('width')}, {row['budget_seconds_used']:.0f} s used of "
              f"{row['time_budget_seconds']:.0f} ({row['budget_seconds_used'] / row['time_budget_seconds']:.0%}); "
              f"probe {row['probe_seconds_per_epoch']:.1f} s an epoch -> {row['chosen_epochs']} epochs, first epoch "
              f"{row['replan_seconds_per_epoch'] or 0:.1f} s -> {row['replanned_epochs']}", flush=True)
    return row


def frontier_row(budget: float, results: list[dict], hardware: str, date: str, commit: str) -> str:
    """A Markdown row of bench/README.md's frontier table."""
    accs = [100 * r["test_accuracy"] for r in results]
    spread = f"{statistics.stdev(accs):.2f}" if len(accs) > 1 else "n/a"
    used = [r["budget_seconds_used"] for r in results]
    widths = sorted({(r["model_params"] or {}).get("width") for r in results}, key=str)
    epochs = sorted({r["epochs_done"] for r in results})
    return (f"| {budget / 60:g} min | {statistics.mean(accs):.2f}% ± {spread} ({', '.join(f'{a:.2f}' for a in accs)}) "
            f"| {len(accs)} | {', '.join(map(str, widths))} | {', '.join(map(str, epochs))} "
            f"| {min(used) / 60:.1f}-{max(used) / 60:.1f} min ({min(used) / budget:.0%}-{max(used) / budget:.0%}) | {hardware} | {date} | {commit} |")


def summary(results: list[dict]) -> str:
    accs = [r["test_accuracy"] for r in results]
    secs = [r["train_seconds"] for r in results]
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return (f"{results[0]['label'].split(' seed')[0]}: test {statistics.mean(accs):.4f} ± {spread:.4f} over "
            f"{len(accs)} seeds (min {min(accs):.4f}, max {max(accs):.4f}); training {statistics.mean(secs):.0f} s "
            f"(max {max(secs):.0f} s = {max(secs) / 60:.1f} min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cpu-budget")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--val-fraction", type=float, default=0.0, help="0: train on all 60,000 (fixed schedule)")
    parser.add_argument("--peer", default="tuned-cnn", help="the report's model, trained with the report's recipe")
    parser.add_argument("--peer-epochs", type=int, default=40)
    parser.add_argument("--peer-seeds", default="0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--budgets", default="", help="time budgets, e.g. 10m,25m: the accuracy-against-time frontier")
    parser.add_argument("--time-budget", default=None, help="fixed-epoch mode: the run's time budget (0: none, so "
                        "--epochs is what trains; default: the recipe's)")
    parser.add_argument("--precision", default=None, help="fp32, bf16, ... (default: cnnlab's auto)")
    parser.add_argument("--width", type=int, default=None, help="fixed-epoch mode: the recipe's model at this width")
    args = parser.parse_args()
    device = resolve_device(args.device)
    hardware = cpu_class() if device.type == "cpu" else device_name(device)
    commit, dirty = git_commit()
    print(f"device: {device_name(device)} ({hardware}); commit {commit}{' (modified)' if dirty else ''}; "
          "Fashion-MNIST, 10 classes, test split", flush=True)
    out = Path(tempfile.mkdtemp(prefix="cnnlab-bench-acc-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.budgets:
        rows, frontier = [], {}
        for text in args.budgets.split(","):
            budget = parse_duration(text, "--budgets")
            frontier[budget] = [run(f"{args.recipe} {text} seed {s}", out, curve=False, recipe=args.recipe, seed=s,
                                    val_fraction=args.val_fraction, time_budget=budget, device=args.device)
                                for s in seeds]
            rows.append(frontier_row(budget, frontier[budget], f"{device_name(device)} ({hardware})",
                                     time.strftime("%Y-%m-%d"), commit or "-"))
            print(rows[-1], flush=True)
        print(f"\n{device_name(device)} ({hardware}), `{args.recipe}`, val_fraction {args.val_fraction}:")
        print("| time budget | test accuracy (mean ± std) | seeds | width | epochs | time used | CPU | date | commit |")
        print("|---|---:|---:|---:|---:|---:|---|---|---|")
        print("\n".join(rows), flush=True)
        ours = [r for results in frontier.values() for r in results]
    else:
        fixed = {key: value for key, value in (("time_budget", args.time_budget), ("precision", args.precision))
                 if value is not None}
        if args.width is not None:
            fixed["model_params"] = {"width": args.width}
        ours = [run(f"{args.recipe} seed {s}", out, recipe=args.recipe, seed=s, val_fraction=args.val_fraction,
                    epochs=args.epochs, device=args.device, **fixed) for s in seeds]
        print(summary(ours), flush=True)
    peers = [run(f"{args.peer} (report recipe) seed {s}", out, model=args.peer, seed=int(s), epochs=args.peer_epochs,
                 device=args.device) for s in args.peer_seeds.split(",") if s]
    if peers:
        print(summary(peers), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"recipe": ours, "peer": peers}, indent=1))


if __name__ == "__main__":
    main()
