"""glibc's malloc told to keep freed memory, so a CPU training step stops faulting in fresh pages.

PyTorch's CPU allocator has no cache: every activation and gradient of a step is a new malloc. glibc
serves the large ones with mmap (and hands the top of the heap back with trim), so each step maps,
zero-faults and unmaps its buffers again. Measured on the 2-core AVX-512 Xeon (no AMX), fp32, batch 128,
`fit` on 6,400 images, steps 10-40, three alternating pairs of processes (off: GLIBC_TUNABLES set): cnn4
(activations up to 25.7 MB) 21,000-32,000 minor faults per step and 331 img/s without, 59-105 faults and
365 img/s with (+10%, each pair +8 to +11%). cnn1 and tuned-cnn already ran without faults in `fit`
(glibc's own threshold had adapted to their smaller buffers); cnn3's 77 MB gradients are above any
threshold glibc allows. This is what jemalloc or tcmalloc under LD_PRELOAD give, which
PyTorch's CPU tuning guide recommends; here it needs nothing installed.

Process-wide and kept until the process ends: freed memory up to TRIM_THRESHOLD stays with the process
instead of going back to the system. Left alone where the user chose already (an allocator in LD_PRELOAD,
malloc settings in GLIBC_TUNABLES) and off glibc."""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's largest: allocations above it are always mmap'd (cnn4's largest is 25.7 MB)
TRIM_THRESHOLD = 1 << 30  # freed heap the process keeps (up to 1 GiB) instead of handing back after each step
PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

_state: str | None = None  # what keep_freed_memory did, once per process


def keep_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds once per process; returns what was done (env.json's "malloc")."""
    global _state
    if _state is None:
        _state = _apply()
    return _state


def _apply() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in PRELOADED):
        return f"left as is: LD_PRELOAD={preload}"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "left as is: GLIBC_TUNABLES sets malloc"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"left as is: not glibc ({platform.system()})"
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError) as exc:
        return f"left as is: {exc}"
    if not done:
        return "left as is: mallopt refused"
    return f"glibc mmap_threshold {MMAP_THRESHOLD >> 20} MiB, trim_threshold {TRIM_THRESHOLD >> 20} MiB"
