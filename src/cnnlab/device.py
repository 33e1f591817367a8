"""Devices and precision: which device, which float precision "auto" means there, autocast, timing
barriers, and the environment a run records. Shared by training and the read side alike."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy
import torch

from cnnlab.errors import UserError
from cnnlab.probe_cache import positive_numbers, read_cache, remember
from cnnlab.product_speed import cpu_bf16_against_fp32
from cnnlab.version import __version__

AUTO_PRECISION_ENV = "CNNLAB_AUTO_PRECISION"  # fp32, bf16 or fp16: what precision "auto" means (tests, CI)
FORCEABLE = ("fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # "tpu", "": torch's own traceback (predict passed it straight through)
        raise UserError(f"device: must be auto, cpu or cuda (or cuda:N), got {name!r}") from None
    if device.type not in ("cpu", "cuda"):  # mps, meta, xla: devices cnnlab does not train or predict on
        raise UserError(f"device: must be auto, cpu or cuda (or cuda:N), got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name}: no CUDA device is available here; use device cpu or auto")
    return device


def cpu_has_amx() -> bool:
    """AMX tiles: the CPU's matrix units, where bf16 always trains faster than fp32."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the probe
        return False


def cpu_has_avx512_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


# bf16 products must run this much faster than fp32 ones for "auto" to train in bf16 on a CPU without AMX. make
# bench, 2-core CPUs, 4096 products: the AVX-512 Xeon's bf16 ran 0.59x its fp32 (153 against 260 GFLOP/s) and bf16
# training 0.78-0.83x fp32's for cnn3, cnn4 and tuned-cnn; the Zen 5 EPYC's 1.94x (726 against 374) and bf16
# training 1.26x (cnn1) to 1.84x (cnn4) fp32's (bench/README.md, both "AVX-512 CPU" sections). The casts around
# each product cost the rest, hence a margin above 1.
BF16_SPEEDUP_NEEDED = 1.3
BF16_PROBE_FILE = "cpu-bf16-probe.json"  # in $CNNLAB_CACHE_DIR, beside the compile probe's figures
_BF16_PROBED: dict[str, dict] = {}  # this process's figures, by cache key


def cpu_kernels() -> dict:
    """The CPU kernels in use: ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA can narrow them (a probe's cache key)."""
    return {"aten": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or None}


def bf16_probe_key() -> str:
    """What the bf16 probe's figures depend on: the CPU and its threads, torch, the kernels in use."""
    return json.dumps({"device": device_name(torch.device("cpu")), "torch": torch.__version__,
                       "cpu_kernels": cpu_kernels()}, sort_keys=True)


def cpu_bf16_figures() -> dict:
    """This CPU's bf16 against fp32 product speed (product_speed.cpu_bf16_against_fp32): timed once per machine,
    threads, torch and kernels, about a second, then read from the cache."""
    key = bf16_probe_key()
    if key in _BF16_PROBED:
        return _BF16_PROBED[key]
    figures = read_cache(BF16_PROBE_FILE).get(key)
    if not positive_numbers(figures, ("fp32_flop_per_s", "bf16_flop_per_s", "speedup")):
        figures = {**cpu_bf16_against_fp32(), "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        remember(key, figures, BF16_PROBE_FILE)
    _BF16_PROBED[key] = figures
    return figures


def precision_policy(device_type: str, capability: tuple[int, int] | None, cpu_amx: bool,
                     forced: str | None = None, cpu_bf16: dict | None = None) -> tuple[str, str]:
    """What `precision = "auto"` means, from the hardware's facts alone: (precision, why).

    `forced` ($CNNLAB_AUTO_PRECISION) wins. CUDA: bf16 where the card has it natively (compute
    capability 8.0 and up), fp16 autocast with a gradient scaler on 7.x (T4, V100: tensor cores, no
    bf16), fp32 below (6.x, e.g. the report's GTX 1080 Ti: slow fp16). CPU: bf16 with AMX; without AMX,
    bf16 where the CPU's measured bf16 products (`cpu_bf16`: cpu_bf16_figures, on CPUs with AVX512-BF16) run
    BF16_SPEEDUP_NEEDED times fp32's, else fp32. AVX512-BF16 alone says nothing: the AVX-512 Xeon's bf16 ran
    at 0.59x its fp32, Zen 5's at 1.94x."""
    if forced:
        if forced not in FORCEABLE:
            raise UserError(f"${AUTO_PRECISION_ENV}: must be {', '.join(FORCEABLE[:-1])} or {FORCEABLE[-1]}, "
                            f"got {forced!r}; unset it for the default")
        return forced, f"${AUTO_PRECISION_ENV}={forced}"
    if device_type == "cuda":
        if capability is None:
            return "fp32", "compute capability unknown: fp32"
        cc = f"compute capability {capability[0]}.{capability[1]}"
        if tuple(capability) >= (8, 0):
            return "bf16", f"{cc}: native bf16"
        if capability[0] == 7:
            return "fp16", f"{cc}: no native bf16; fp16 autocast with a gradient scaler"
        return "fp32", f"{cc}: no native bf16 and slow fp16; fp32"
    if cpu_amx:
        return "bf16", "CPU with AMX: native bf16 matrix units"
    if cpu_bf16 is None:
        return "fp32", "CPU without AMX or AVX512-BF16: fp32"
    measured = (f"bf16 products measured {cpu_bf16['speedup']:.2f}x fp32's ({cpu_bf16['bf16_flop_per_s'] / 1e9:.0f} "
                f"against {cpu_bf16['fp32_flop_per_s'] / 1e9:.0f} GFLOP/s)")
    if cpu_bf16["speedup"] >= BF16_SPEEDUP_NEEDED:
        return "bf16", f"CPU with AVX512-BF16, no AMX: {measured}, at least {BF16_SPEEDUP_NEEDED}x: bf16"
    return "fp32", f"CPU with AVX512-BF16, no AMX: {measured}, under {BF16_SPEEDUP_NEEDED}x: fp32"


def choose_precision(device: torch.device, precision: str) -> tuple[str, str]:
    """(resolved precision, why): "auto" by precision_policy with this device's facts, else as set."""
    if precision != "auto":
        return precision, f"precision = {precision} (set)"
    forced = os.environ.get(AUTO_PRECISION_ENV, "").strip() or None
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    amx = device.type != "cuda" and cpu_has_amx()
    probe = device.type != "cuda" and not forced and not amx and cpu_has_avx512_bf16()
    return precision_policy(device.type, capability, amx, forced, cpu_bf16_figures() if probe else None)


def auto_precision(device: torch.device) -> str:
    """What `precision = "auto"` resolves to on this device (precision_policy)."""
    return choose_precision(device, "auto")[0]


def without_fp16(precision: str, reason: str, requested: str, who: str) -> tuple[str, str]:
    """Paths that cannot train in fp16 (fused ensemble groups, CUDA graphs): an fp16 that was set is
    refused in one line; one that "auto" chose becomes fp32."""
    if precision != "fp16":
        return precision, reason
    if requested != "auto":
        raise UserError(f"precision fp16: not available for {who}; use bf16 or fp32")
    return "fp32", f"{reason}; but {who} cannot use fp16: fp32"


# tuned-cnn, batch 128, one training step: 18.5 s in fp16 against 0.13 s in fp32 (2-core AMX Xeon; 3.6 s
# against 0.19 s with the AVX2 emulation), nearly all of it in aten::convolution_backward
CPU_FP16_NOTE = ("note: fp16 training on a CPU is slow (PyTorch's CPU convolution backward in fp16 takes 19-140x "
                 "fp32's time); fp16 is meant for CUDA cards of compute capability 7.x: use bf16 or fp32 on a CPU")


def precision_note(device: torch.device, precision: str) -> str | None:
    """A line for the console where the chosen precision is a poor one for this device."""
    return CPU_FP16_NOTE if precision == "fp16" and device.type == "cpu" else None


def autocast_for(device: torch.device, precision: str):
    """(resolved precision, autocast context factory).

    On the 2-core Xeon (AMX) dev machine, tuned-cnn trains at 2,819 img/s in bf16 + channels_last
    against 1,731 in fp32 + channels_last and 1,517 in plain fp32 (measured with the same batches).
    """
    if precision == "auto":
        precision = auto_precision(device)
    if precision == "bf16":
        return precision, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":  # training adds a gradient scaler (engine.setup)
        return precision, lambda: torch.autocast(device.type, dtype=torch.float16)
    return precision, contextlib.nullcontext  # fp32, or fp64 (model and inputs in float64: exactness checks)


def float_dtype(precision: str) -> torch.dtype:
    return torch.float64 if precision == "fp64" else torch.float32


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


_DETERMINISM_OURS = False  # whether set_deterministic turned determinism on (and may turn it off again)


def set_deterministic(on: bool, device: torch.device) -> None:
    """config.deterministic: torch.use_deterministic_algorithms(True, warn_only=True) (an operation without a
    deterministic form warns instead of failing, like Lightning's deterministic="warn"), and on CUDA
    cudnn.deterministic with benchmarking off and cuBLAS's fixed workspace. Off undoes only what on did, so
    a later run in the same process is not deterministic by accident, and a user's own setting stays."""
    global _DETERMINISM_OURS
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for reproducible GEMMs
        torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        _DETERMINISM_OURS = True
    elif _DETERMINISM_OURS:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        _DETERMINISM_OURS = False


def determinism() -> dict:
    """What env.json records of determinism: the state torch is in now."""
    out = {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
           "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled()}
    if torch.cuda.is_available():
        out["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
        out["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return out


def environment(device: torch.device) -> dict:
    """env.json: library versions, platform, device and the source's commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"cnnlab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            # the installed versions, read without importing torchvision and scikit-learn (2.4 s of `import cnnlab`)
            "torchvision": version("torchvision"), "numpy": numpy.__version__, "scikit-learn": version("scikit-learn"),
            "platform": platform.platform(), "device": device_name(device), "git_commit": commit,
            "determinism": determinism()}


def compiled(module):
    """torch.compile(module), without inductor's "No CUDA runtime is found, using CUDA_HOME=..." on a machine with
    a CUDA toolkit but no GPU: a warning line on stderr of every compiled CPU run, about nothing cnnlab uses."""
    import logging

    quiet = logging.getLogger("torch.utils.cpp_extension")
    if quiet.getEffectiveLevel() < logging.ERROR:
        quiet.setLevel(logging.ERROR)
    return torch.compile(module)
