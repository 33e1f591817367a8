"""Single-image prediction latency: `Run.predict` (the model loaded once and kept) against a plain
onnxruntime session on the same run exported with `cnnlab.export`.

Trains a small run on generated arrays (1 epoch, in a temporary folder), exports it, then times
`run.predict(image)` and `session.run(None, {"images": image})` on one 28x28 image, interleaved in
rounds so both see the same machine load; prints medians and the Markdown line for bench/README.md.

    python bench/predict_latency.py [--model tuned-cnn] [--calls 200] [--rounds 5]
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
    args = parser.parse_args()
    import onnxruntime

    rng = np.random.default_rng(0)
    y = np.arange(600) % 10
    x = rng.integers(0, 255, size=(600, 28, 28)).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        run = cnnlab.train(args.model, (x, y), epochs=1, device="cpu", out=folder, progress=False)
        onnx_path = Path(folder) / "model.onnx"
        cnnlab.export(run, onnx_path)
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        image = x[:1]
        feed = {"images": image[:, None]}
        run.predict(image), session.run(None, feed)  # first calls: loading, kernel selection
        cnnlab_s, ort_s = [], []
        for r in range(args.rounds):
            pair = [("cnnlab", lambda: run.predict(image)), ("onnxruntime", lambda: session.run(None, feed))]
            for name, call in (pair if r % 2 == 0 else pair[::-1]):
                (cnnlab_s if name == "cnnlab" else ort_s).append(timed(call, args.calls))
    a, b = statistics.median(cnnlab_s) * 1e3, statistics.median(ort_s) * 1e3
    print(f"{args.model}, 1 image 1x28x28, CPU {cpu_name()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"Run.predict   median {a:.3f} ms  (rounds: {', '.join(f'{1e3 * s:.3f}' for s in cnnlab_s)})")
    print(f"onnxruntime   median {b:.3f} ms  (rounds: {', '.join(f'{1e3 * s:.3f}' for s in ort_s)})")
    print(f"| {args.model} | {a:.2f} ms | {b:.2f} ms | {a / b:.1f}x | {cpu_name()} | {time.strftime('%Y-%m-%d')} |")


if __name__ == "__main__":
    main()
