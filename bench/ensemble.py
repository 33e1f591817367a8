"""The report's ensemble protocol, timed: K members of tuned-cnn trained fused vs one after another.

Report protocol (GPU): 30 members, 40 epochs, batch 128, Fashion-MNIST 48,000/12,000, 10 classes:
    python bench/ensemble.py --members 30 --epochs 40
CPU check (what bench/README.md records for the 2-core machine):
    python bench/ensemble.py --members 5 --epochs 2
Prints members' accuracy range, hard-vote accuracy, training seconds and end-to-end wall time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cnnlab  # noqa: E402
from cnnlab.callbacks import LambdaCallback  # noqa: E402
from cnnlab.engine import device_name, resolve_device  # noqa: E402


def subset(name: str | None, images: int):
    """The first `images` training and images // 5 test images of the dataset, as arrays (a dry run)."""
    from cnnlab.data import load_dataset

    ds = load_dataset(name or "fashion-mnist")
    return (ds.train.images[:images].numpy(), ds.train.labels[:images].numpy(),
            ds.test.images[:images // 5].numpy(), ds.test.labels[:images // 5].numpy())


def run(label: str, fuse: int, args) -> None:
    data = subset(args.data, args.images) if args.images else args.data
    out = Path(tempfile.mkdtemp(prefix="cnnlab-bench-ens-"))
    epoch_line = LambdaCallback(on_epoch_end=lambda ctx, rows: print(
        f"  epoch {rows[0]['epoch']}: {len(rows)} member(s), train {sum(r['train_seconds'] for r in rows):.2f} s, "
        f"val acc {min(r['val_accuracy'] for r in rows):.4f}-{max(r['val_accuracy'] for r in rows):.4f}", flush=True))
    start = time.perf_counter()
    manifest = cnnlab.ensemble(args.model, args.members, args.threshold, "hard", data, out=out, fuse=fuse,
                               max_attempts=args.members * 3, epochs=args.epochs, device=args.device,
                               compile=args.compile or None,
                               callbacks=[epoch_line], progress=False, say=lambda text: None)
    wall = time.perf_counter() - start
    members = manifest["members"] + manifest["discarded"]
    train_s = sum(m["train_seconds"] for m in members)
    tests = [m["test_accuracy"] for m in members]
    print(f"{label:<16} members {manifest['qualified']}  test acc {min(tests):.4f}-{max(tests):.4f}  "
          f"hard vote test {manifest.get('test_accuracy', float('nan')):.4f}  training {train_s:.1f} s  wall {wall:.1f} s"
          f"  (threshold {args.threshold} on validation: {manifest['qualified']} of {manifest['attempts']} kept)",
          flush=True)
    shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tuned-cnn")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-sequential", action="store_true")
    parser.add_argument("--data", default=None, help="dataset (default fashion-mnist)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fused network (GPU)")
    parser.add_argument("--images", type=int, default=0, help="train on the first N images only (a dry run)")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="keep members whose validation accuracy reaches this (the report's protocol: 0.91)")
    args = parser.parse_args()
    print(f"device: {device_name(resolve_device(args.device))}; {args.model}, {args.members} members x {args.epochs} epochs, "
          + (f"first {args.images} images" if args.images else "Fashion-MNIST 48,000/12,000") + ", batch 128")
    run("fused", args.members, args)
    if not args.skip_sequential:
        run("one after another", 1, args)
    print("fused: members trained together in one network (cnnlab.fused); one after another: the engine per member")


if __name__ == "__main__":
    main()
