"""How fast this machine multiplies matrices in a float type: the peak `make bench` divides by (bench/run.py),
and the bf16-against-fp32 figures `precision = "auto"` reads on a CPU with AVX512-BF16 but no AMX
(device.choose_precision)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F


def gemms(device: torch.device, dtype: torch.dtype, size: int) -> dict:
    """The same size x size x size product, by each library a training step may use.

    On the CPU torch.mm goes to MKL, which on AMD CPUs takes a slow generic path (40-70 GFLOP/s on the 2-core
    AVX2 EPYC, where oneDNN's convolutions run at 2-3 times that); so the product is also run as a 1x1
    convolution over a square image in channels_last (oneDNN, what Conv2d uses), and the peak is the faster."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = {"matmul": lambda: torch.mm(a, b)}
    if device.type == "cpu":
        h = max(d for d in range(1, math.isqrt(size) + 1) if size % d == 0)  # pixels = size, as square as it goes
        x = a.t().reshape(1, size, h, size // h).contiguous(memory_format=torch.channels_last)
        w = b.t().reshape(size, size, 1, 1).contiguous(memory_format=torch.channels_last)
        out["conv1x1"] = lambda: F.conv2d(x, w)
    return out


def best_seconds(call, device: torch.device, repeats: int) -> float:
    """Seconds of one call, best of `repeats` after one untimed call (kernel selection, page faults)."""
    calls = 20 if device.type == "cuda" else 1  # one CUDA matmul is too short to time alone
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int, libraries: set[str] | None = None) -> dict:
    """FLOP/s of a size^3 product with all threads (or the whole card), best of `repeats`, per library (all, or
    those named); `flop_per_s` the best."""
    by_library = {name: 2 * size**3 / best_seconds(call, device, repeats)
                  for name, call in gemms(device, dtype, size).items() if libraries is None or name in libraries}
    return {"flop_per_s": max(by_library.values()), "by_library": by_library}


# 2048^3: 17 GFLOP, 46-100 ms a product in fp32 on 2-core CPUs (the AVX-512 Xeon and Zen 5 EPYC of bench/README),
# long enough to reach the 4096 peaks' ratio there (Zen 5: 1.99x against 1.94x); the probe takes about a second.
PROBE_SIZE, PROBE_REPEATS = 2048, 3
# A library is first timed in bf16 at 512^3 and at full size only if it reaches half the fp32 peak there: one
# without bf16 kernels is slow beyond use. Zen 5 EPYC with ONEDNN_MAX_CPU_ISA=AVX2: torch.mm in bf16 ran at
# 1.2 GFLOP/s at 1024 (1.8 s a product; the unscreened probe took 259 s), oneDNN's at 30 against fp32's 174.
SCREEN_SIZE, SCREEN_FRACTION = 512, 0.5


def cpu_bf16_against_fp32(size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS) -> dict:
    """The CPU's best bf16 product speed against its best fp32 one (`speedup`), with both figures."""
    start = time.perf_counter()
    cpu = torch.device("cpu")
    fp32 = peak(cpu, torch.float32, size, repeats)["flop_per_s"]
    screened = peak(cpu, torch.bfloat16, SCREEN_SIZE, repeats)["by_library"]
    fast = {name for name, rate in screened.items() if rate >= SCREEN_FRACTION * fp32}
    bf16 = peak(cpu, torch.bfloat16, size, repeats, fast)["flop_per_s"] if fast else max(screened.values())
    return {"fp32_flop_per_s": fp32, "bf16_flop_per_s": bf16, "speedup": bf16 / fp32, "size": size,
            "bf16_size": size if fast else SCREEN_SIZE, "repeats": repeats, "seconds": time.perf_counter() - start}
