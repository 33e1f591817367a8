"""Single-image prediction latency: `Run.predict` (the model loaded once and kept) against a plain
onnxruntime session on the same run exported with `cnnlab.export`.

Trains a small run on generated arrays (1 epoch, in a temporary folder), exports it, then times
`run.predict(image)` and `session.run(None, {"images": image})` on one 28x28 image, interleaved in
rounds so both see the same machine load (the ratio is taken within each round); prints medians and
the Markdown line for bench/README.md. --tta trains with flip test-time augmentation, so both score
the image and its mirror (the export carries the TTA); --ort-threads 1 gives onnxruntime the one
thread Run.predict uses for a single image.

    python bench/predict_latency.py [--model tuned-cnn] [--calls 200] [--rounds 5] [--tta] [--ort-threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cnnlab
from cnnlab import inference
from run import cpu_name  # bench/run.py, beside this script


def timed(call, calls: int) -> float:
    """Median seconds of one call over `calls` calls."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tuned-cnn")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tta", action="store_true", help="train with flip TTA (predict then runs it)")
    parser.add_argument("--ort-threads", type=int, default=0,
                        help="onnxruntime's intra-op threads (default 0: its own choice, one per core)")
    parser.add_argument("--route", choices=["onnx", "torch"], default="onnx",
                        help="Run.predict's small-batch route: onnx (after inference.ONNX_AFTER calls, the default) "
                             "or torch (the lean PyTorch copy only)")
    args = parser.parse_args()
    if args.route == "torch":
        inference.ONNX_AFTER = 0
    import onnxruntime

    rng = np.random.default_rng(0)
    y = np.arange(600) % 10
    x = rng.integers(0, 255, size=(600, 28, 28)).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        run = cnnlab.train(args.model, (x, y), epochs=1, device="cpu", out=folder, progress=False,
                           tta=args.tta)
        onnx_path = Path(folder) / "model.onnx"
        cnnlab.export(run, onnx_path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.ort_threads
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        image = x[:1]
        feed = {"images": image[:, None]}
        for _ in range(inference.ONNX_AFTER if args.route == "onnx" else 20):  # loading, kernel selection
            run.predict(image)
        member = run._predictor._loaded[1][0]
        if args.route == "onnx" and member.onnx is None:
            raise SystemExit(f"Run.predict did not move to an onnxruntime session: {member.onnx_failed or 'onnx missing?'}")
        session.run(None, feed)
        cnnlab_s, ort_s = [], []
        for r in range(args.rounds):
            pair = [("cnnlab", lambda: run.predict(image)), ("onnxruntime", lambda: session.run(None, feed))]
            for name, call in (pair if r % 2 == 0 else pair[::-1]):
                (cnnlab_s if name == "cnnlab" else ort_s).append(timed(call, args.calls))
    a, b = statistics.median(cnnlab_s) * 1e3, statistics.median(ort_s) * 1e3
    ratios = [c / o for c, o in zip(cnnlab_s, ort_s)]
    ratio = statistics.median(ratios)
    name = f"{args.model}{' (tta)' if args.tta else ''}"
    print(f"{name}, 1 image 1x28x28, CPU {cpu_name()}, {torch.get_num_threads()} torch threads "
          "(Run.predict: 1 or all, chosen by timing, up to 32 images), onnxruntime "
          f"{args.ort_threads or 'default'} threads, "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"Run.predict   median {a:.3f} ms  (rounds: {', '.join(f'{1e3 * s:.3f}' for s in cnnlab_s)})")
    print(f"onnxruntime   median {b:.3f} ms  (rounds: {', '.join(f'{1e3 * s:.3f}' for s in ort_s)})")
    print(f"ratio         median {ratio:.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"| {name} | {a:.2f} ms | {b:.2f} ms | {ratio:.1f}x ({min(ratios):.1f}-{max(ratios):.1f}) | {cpu_name()} "
          f"| {time.strftime('%Y-%m-%d')} |")


if __name__ == "__main__":
    main()
