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

from cnnlab.config import build_config  # noqa: E402
from cnnlab.engine import device_name, resolve_device  # noqa: E402
from cnnlab.ensemble import train_ensemble  # noqa: E402


def run(label: str, fuse: int, args) -> None:
    cfg = build_config({"model": args.model, "epochs": args.epochs, "device": args.device, "data": args.data})
    out = Path(tempfile.mkdtemp(prefix="cnnlab-bench-ens-"))
    start = time.perf_counter()
    manifest = train_ensemble(cfg, out, members=args.members, threshold=0.0, method="hard", fuse=fuse,
                              say=lambda text: None)
    wall = time.perf_counter() - start
    members = manifest["members"]
    train_s = sum(m["train_seconds"] for m in members)
    tests = [m["test_accuracy"] for m in members]
    print(f"{label:<16} members {len(members)}  test acc {min(tests):.4f}-{max(tests):.4f}  "
          f"hard vote test {manifest['test_accuracy']:.4f}  training {train_s:.1f} s  wall {wall:.1f} s", flush=True)
    shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tuned-cnn")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-sequential", action="store_true")
    parser.add_argument("--data", default=None, help="dataset (default fashion-mnist); a small file for a dry run")
    args = parser.parse_args()
    print(f"device: {device_name(resolve_device(args.device))}; {args.model}, {args.members} members x {args.epochs} epochs, "
          "Fashion-MNIST 48,000/12,000, batch 128")
    run("fused", args.members, args)
    if not args.skip_sequential:
        run("one after another", 1, args)
    print("fused: members trained together in one network (cnnlab.fused); one after another: the engine per member")


if __name__ == "__main__":
    main()
