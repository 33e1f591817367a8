"""Training speed: cnnlab's engine against a plain PyTorch loop, same model, data and device, one run.

The peer is the loop most tutorials write: TensorDataset + DataLoader(shuffle=True), fp32, eager,
loss.item() each step. cnnlab runs its default path (data on the device as uint8, channels_last,
bf16 autocast where the hardware has native bf16). Prints images/second, seconds per epoch of
48,000 images (extrapolated on the CPU, where a subset is timed) and the ratio.

    python bench/run.py [--models cnn1,tuned-cnn] [--images N] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from cnnlab.config import build_config  # noqa: E402
from cnnlab.engine import (DeviceData, GraphedStep, Setup, device_name, prepare, synchronize,  # noqa: E402
                           train_one_epoch, warm_up)
from cnnlab.models import create_model  # noqa: E402

EPOCH_IMAGES = 48_000  # the report's training split


def plain_loop(model_name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int, device, batch: int) -> float:
    """Images/second of one epoch of the textbook loop (after one warm-up batch)."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = images.float() / 255
    loader = DataLoader(TensorDataset(x, labels), batch_size=batch, shuffle=True)
    model.train()
    xb, yb = next(iter(loader))
    F.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
    opt.zero_grad()
    synchronize(device)
    start = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
    synchronize(device)
    return len(x) / (time.perf_counter() - start)


def cnnlab_loop(model_name: str, n: int, device: str, batch: int, compile: bool = False,
                precision: str = "auto", data: str | None = None, graphs: bool = False) -> tuple[float, Setup]:
    """Images/second of one epoch of cnnlab's engine (public functions: prepare, warm_up, train_one_epoch)."""
    cfg = build_config({"model": model_name, "epochs": 1, "batch_size": batch, "device": device,
                        "compile": compile, "precision": precision, "data": data, "cuda_graphs": graphs})
    setup = prepare(cfg)
    setup.train = DeviceData(setup.train.images[:n], setup.train.labels[:n])
    warm_up(setup)
    if graphs:
        setup.graph = GraphedStep(setup)
    _, _, seconds = train_one_epoch(setup, 1)
    return n / seconds, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn1,cnn2,cnn3,cnn4,tuned-cnn")
    parser.add_argument("--images", type=int, default=None, help="images per timed epoch (default: 48,000 on CUDA, 6,400 on the CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="also time cnnlab with torch.compile")
    parser.add_argument("--data", default=None, help="dataset (default fashion-mnist)")
    parser.add_argument("--graphs", action="store_true", help="also time the CUDA-graph step (CUDA only)")
    args = parser.parse_args()
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    n = args.images or (EPOCH_IMAGES if dev.type == "cuda" else 6_400)
    print(f"device: {device_name(dev)}; torch {torch.__version__}; {n} images per timed epoch, batch {args.batch_size}")
    print(f"{'model':<10} {'plain img/s':>12} {'cnnlab img/s':>13} {'ratio':>6} {'plain s/ep':>11} {'cnnlab s/ep':>12}"
          f" {'cnnlab fp32':>12} {'ratio':>6}" + (f" {'compiled':>9} {'ratio':>6}" if args.compile else "")
          + (f" {'graphs':>9} {'ratio':>6} {'graphs s/ep':>11}" if args.graphs else ""))
    for name in args.models.split(","):
        ours, setup = cnnlab_loop(name, n, args.device, args.batch_size, data=args.data)
        ours_fp32, _ = cnnlab_loop(name, n, args.device, args.batch_size, precision="fp32", data=args.data)
        images, labels = setup.train.images.cpu(), setup.train.labels.cpu()
        plain = plain_loop(name, images, labels, setup.dataset.num_classes, dev, args.batch_size)
        line = (f"{name:<10} {plain:>12,.0f} {ours:>13,.0f} {ours / plain:>5.2f}x {EPOCH_IMAGES / plain:>11.2f}"
                f" {EPOCH_IMAGES / ours:>12.2f} {ours_fp32:>12,.0f} {ours_fp32 / plain:>5.2f}x")
        if args.compile:
            compiled, _ = cnnlab_loop(name, n, args.device, args.batch_size, compile=True, data=args.data)
            line += f" {compiled:>9,.0f} {compiled / plain:>5.2f}x"
        if args.graphs:
            graphed, _ = cnnlab_loop(name, n, args.device, args.batch_size, data=args.data, graphs=True)
            line += f" {graphed:>9,.0f} {graphed / plain:>5.2f}x {EPOCH_IMAGES / graphed:>11.2f}"
        print(line, flush=True)
    print(f"cnnlab precision on this device: {setup.precision}; 's/ep' = seconds per epoch of {EPOCH_IMAGES:,} images")


if __name__ == "__main__":
    main()
