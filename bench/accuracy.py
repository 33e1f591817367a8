"""Accuracy per minute on this machine: a recipe over several seeds, with the report's tuned model beside it.

For each run, test accuracy is recorded after every epoch *for this benchmark only* (a callback; never
used to choose anything) against the cumulative training seconds, giving the accuracy-versus-time
curve; the final test accuracy is reported as mean ± std over seeds. Nothing else should run on the
machine meanwhile.

    python bench/accuracy.py --recipe cpu-budget --seeds 0,1,2 --val-fraction 0 --peer-epochs 40
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
from cnnlab.engine import device_name, evaluate, resolve_device  # noqa: E402


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


def run(label: str, out: Path, **settings) -> dict:
    curve = TestCurve(label)
    start = time.perf_counter()
    result = cnnlab.train(out=out, callbacks=[curve], progress=False, **settings)
    metrics = result.metrics
    return {"label": label, "settings": settings, "test_accuracy": metrics["test_accuracy"],
            "train_seconds": metrics["train_seconds_total"], "wall_seconds": time.perf_counter() - start,
            "precision": metrics["precision"], "curve": curve.points}


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
    args = parser.parse_args()
    print(f"device: {device_name(resolve_device(args.device))}; Fashion-MNIST, 10 classes, test split", flush=True)
    out = Path(tempfile.mkdtemp(prefix="cnnlab-bench-acc-"))
    ours = [run(f"{args.recipe} seed {s}", out, recipe=args.recipe, seed=int(s), val_fraction=args.val_fraction,
                epochs=args.epochs, device=args.device) for s in args.seeds.split(",")]
    print(summary(ours), flush=True)
    peers = [run(f"{args.peer} (report recipe) seed {s}", out, model=args.peer, seed=int(s), epochs=args.peer_epochs,
                 device=args.device) for s in args.peer_seeds.split(",") if s]
    if peers:
        print(summary(peers), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"recipe": ours, "peer": peers}, indent=1))


if __name__ == "__main__":
    main()
