"""Where a training epoch's time goes: one epoch of `cnnlab train`'s default path (as bench/run.py times
it) under torch.profiler, and the operators that took the most time, self time first.

    python bench/profile_step.py [--model tuned-cnn] [--images 4096] [--rows 12]
    python bench/profile_step.py --recipe cpu-budget --images 8192

Prints the device line (CPU name and class, as bench/run.py writes it), then a table: operator, share of
the profiled time, milliseconds per training step, calls per step. The epoch's set-up, warm-up and
validation are in the profile too: they are a small part at these sizes and show as their own operators.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from run import cpu_name, hardware, subset  # bench/run.py, beside this script

from cnnlab.config import build_config
from cnnlab.data import load_dataset
from cnnlab.engine import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default tuned-cnn, or the recipe's model")
    parser.add_argument("--recipe", default="report", help="a named recipe (cpu-budget: resnet9 width 8, batch 256, "
                        "crop + flip); its time budget is switched off, so one epoch is profiled")
    parser.add_argument("--images", type=int, default=4096, help="training images in the epoch")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128, or the recipe's")
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    settings = {"recipe": args.recipe, "epochs": 1, "time_budget": 0, "device": "cpu"}
    if args.recipe == "report" or args.model:
        settings["model"] = args.model or "tuned-cnn"
    if args.recipe == "report" or args.batch_size:
        settings["batch_size"] = args.batch_size or 128
    config = build_config(settings)
    dataset = subset(load_dataset(config.data), args.images, config.val_fraction)
    with tempfile.TemporaryDirectory(prefix="cnnlab-profile-") as tmp, profile(activities=[ProfilerActivity.CPU]) as prof:
        metrics = fit(config, Path(tmp) / config.model, dataset=dataset)
    steps = max(1, args.images // config.batch_size)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    print(f"device: CPU {cpu_name()} ({hardware(torch.device('cpu'))['class']}, {torch.get_num_threads()} threads); "
          f"{config.model}, batch {config.batch_size}, {args.images} images, {metrics['precision']}; "
          f"{metrics['train_images_per_second']:.0f} img/s under the profiler")
    print(f"{'operator':<40} {'share':>6} {'ms/step':>8} {'calls/step':>10}")
    for event in events[:args.rows]:
        print(f"{event.key:<40} {100 * event.self_cpu_time_total / total:5.1f}% "
              f"{event.self_cpu_time_total / 1e3 / steps:8.2f} {event.count / steps:10.1f}")


if __name__ == "__main__":
    main()
