"""Whether a run trains torch.compile'd or eager: `compile = "auto"` (the default) decides by measurement, per
model and machine; `true` and `false` are settings and decide nothing.

After warm-up, `settle` takes the decision and applies it. It is cheap where compiling cannot pay:
- never probed: CUDA graphs (they capture the step their own way), fp64 (exactness checks), deterministic
  algorithms (compiled kernels are outside them), torchrun (every process would have to probe together);
- "run too short to amortise a compile": the eager training left, estimated from warm-up's full-batch step
  times the steps to train (a time budget caps it), could not win back a typical compile even at a
  generous 1.5x speed-up;
- a machine that probed this model before (same device, torch, model and settings: `cache_key`) reuses
  its figures from $CNNLAB_CACHE_DIR/compile-probe.json (default ~/.cache/cnnlab/).
Otherwise the probe times a few eager training steps and, after compiling (timed apart), as many compiled
ones, on the real model and batches, inside throughput.undone: the run trains exactly as if never probed.
Compiled wins only if its step is 10% faster and what it saves over the run exceeds the compile (`choose`).

The record (compiled or eager, why, the figures, where they came from) goes into env.json under `compile`,
and its time into warm-up (`warmup_seconds`), before a time budget's probe, which so measures the chosen
path. A resumed run takes the recorded path again and probes nothing.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone

import torch
from torch import nn

from cnnlab.budget import Budget
from cnnlab.device import compiled, cpu_kernels, device_name, synchronize
from cnnlab.probe_cache import positive_numbers, read_cache, remember

from .setup import Setup
from .step import apply_learning_rates, learning_rates, make_batch, train_step, warm_up
from .throughput import probe_steps, undone

EAGER, COMPILED = "eager", "compiled"
CACHE_FILE = "compile-probe.json"
# What one inductor compile of a training step costs on a CPU: 17 s for cnn1 and 24 s for resnet9 (width 16) on
# the 2-core AVX2-only AMD EPYC (measured), 25 s for tuned-cnn on a 2-core AVX-512 Xeon (bench/README.md).
TYPICAL_COMPILE_SECONDS = 20.0
BEST_SPEEDUP = 1.5  # a generous guess at what compiling gains; both figures above were slower than eager
MARGIN = 0.10  # the compiled step must be at least this much faster than the eager one


def compile_model(module: nn.Module) -> nn.Module:
    return compiled(module)


# ------------------------------------------------------------------ the rules (pure)


def could_pay(eager_seconds: float, compile_seconds: float | None = None, speedup: float | None = None) -> bool:
    """Whether `eager_seconds` of eager training, run `speedup` (BEST_SPEEDUP) times faster, saves more than a
    compile of `compile_seconds` (TYPICAL_COMPILE_SECONDS)."""
    compile_seconds = TYPICAL_COMPILE_SECONDS if compile_seconds is None else compile_seconds
    return eager_seconds * (1 - 1 / (speedup or BEST_SPEEDUP)) > compile_seconds


def choose(eager_step: float, compiled_step: float, compile_seconds: float, steps: int,
           margin: float | None = None) -> tuple[str, str]:
    """(decision, why) from the probe's seconds per step and of the compile, for a run of `steps` steps."""
    margin = MARGIN if margin is None else margin
    ms = f"compiled {1000 * compiled_step:.1f} ms a step against eager {1000 * eager_step:.1f} ms"
    if compiled_step > (1 - margin) * eager_step:
        return EAGER, f"{ms}: not {margin:.0%} faster"
    saving = (eager_step - compiled_step) * steps
    if saving <= compile_seconds:
        return EAGER, f"{ms} saves {saving:.1f} s over {steps} steps, no more than the {compile_seconds:.1f} s compile"
    return COMPILED, f"{ms} saves {saving:.1f} s over {steps} steps, more than the {compile_seconds:.1f} s compile"


def never_probed(setup: Setup) -> str | None:
    """Why this run cannot use a compile at all (the decision is then eager without a probe), or None."""
    cfg = setup.config
    for why, applies in (("cuda_graphs: the captured CUDA graph takes the compiled step's place", cfg.cuda_graphs),
                         ("precision fp64 (exactness checks) stays eager", setup.precision == "fp64"),
                         ("deterministic: compiled kernels are outside torch's deterministic algorithms",
                          cfg.deterministic),
                         ("torchrun: every process would have to probe together", setup.dist is not None)):
        if applies:
            return why
    return None


def run_steps(setup: Setup, budget: Budget | None, step_seconds: float) -> int:
    """Training steps this run has left: its epochs', fewer when a time budget cannot hold them."""
    steps = max(0, setup.config.epochs - setup.state.epoch) * setup.steps_per_epoch
    if budget is not None and step_seconds > 0:
        steps = min(steps, math.ceil(budget.left() / step_seconds))
    return steps


# ------------------------------------------------------------------ the cache of figures, per machine


def cache_key(setup: Setup) -> str:
    """What a probe's figures depend on: device (its threads and CPU kernels too), torch, model and input, batch,
    precision."""
    cfg = setup.config
    c, h, _ = setup.dataset.shape
    key = {"device": device_name(setup.device), "torch": torch.__version__, "model": cfg.model,
           "model_params": cfg.model_params, "parameters": sum(p.numel() for p in setup.model.parameters()),
           "members": setup.members, "batch_size": setup.batch_size, "precision": setup.precision,
           "channels_last": True,  # engine.setup trains every model channels_last
           # Flatten's gradient layout, chosen before this probe (engine.layout_probe; None while choosing it)
           "flatten_grad": (setup.flatten_grad or {}).get("decision"),
           "image_size": cfg.image_size or h, "in_chans": c, "classes": setup.dataset.num_classes,
           "optimizer": cfg.optimizer, "head_only": setup.feature_cache_seconds is not None}
    if setup.device.type == "cpu":  # the kernels in use: ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA can narrow them
        key["cpu_kernels"] = cpu_kernels()
    return json.dumps(key, sort_keys=True, default=str)


def cached(key: str) -> dict | None:
    entry = read_cache(CACHE_FILE).get(key)
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("error"), str):
        return entry
    return entry if positive_numbers(entry, ("eager_step_ms", "compiled_step_ms", "compile_seconds")) else None


# ------------------------------------------------------------------ the probe


def timed_steps(setup: Setup, idx: torch.Tensor, steps: int) -> float:
    synchronize(setup.device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(setup, *make_batch(setup, idx))
    synchronize(setup.device)
    return (time.perf_counter() - start) / steps


def probe(setup: Setup) -> tuple[dict, nn.Module | None]:
    """(figures, the compiled module or None): seconds per eager step, of the compile (the first compiled
    step) and per compiled step, on full batches of the training split; every effect undone."""
    steps = probe_steps(setup.steps_per_epoch)
    idx = torch.arange(min(setup.batch_size, len(setup.train)), device=setup.device).expand(setup.members, -1)
    figures: dict = {"probe_steps": steps, "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    eager = setup.step_model
    with undone(setup):
        try:
            eager.train()
            apply_learning_rates(setup, learning_rates(setup, 0))
            train_step(setup, *make_batch(setup, idx))  # untimed: an optimizer's first step allocates its state
            figures["eager_step_ms"] = 1000 * timed_steps(setup, idx, steps)
            try:
                setup.step_model = compiled = compile_model(eager)
                synchronize(setup.device)
                start = time.perf_counter()
                train_step(setup, *make_batch(setup, idx))
                synchronize(setup.device)
                figures["compile_seconds"] = time.perf_counter() - start  # the first compiled step: the compile
                figures["compiled_step_ms"] = 1000 * timed_steps(setup, idx, steps)
                # eager again, the better of its two: a first timing runs slow (cnn1, 16x16 images, 2-core AMX
                # Xeon: 3.7 and 5.0 ms against 3.2-4.3 for the next seven), which favoured the compiled step
                setup.step_model = eager
                figures["eager_step_ms"] = min(figures["eager_step_ms"], 1000 * timed_steps(setup, idx, steps))
            except Exception as exc:  # no C++ compiler, an unsupported operation: train eager
                message = " ".join(str(exc).split())[:200]
                figures["error"] = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
                return figures, None
        finally:
            setup.step_model = eager
    return figures, compiled


# ------------------------------------------------------------------ deciding and applying


def decide(setup: Setup, budget: Budget | None = None, resume: bool = False,
           stored: dict | None = None) -> tuple[dict, nn.Module | None]:
    """(the record env.json keeps, the probe's compiled module when it is to be used)."""
    setting = setup.config.compile
    if setting != "auto":  # True or False (config.validate)
        return {"setting": setting, "decision": COMPILED if setting else EAGER, "source": "setting",
                "reason": f"compile = {str(setting).lower()} (set)"}, None
    record: dict = {"setting": setting}
    if resume:
        if isinstance(stored, dict) and stored.get("decision") in (EAGER, COMPILED):
            return {**stored, "resumed": True}, None
        return {**record, "decision": EAGER, "source": "resume",
                "reason": "resumed without a recorded decision: eager, as the run began"}, None
    why = never_probed(setup)
    if why is None:
        step = setup.step_seconds or 0.0
        eager_seconds = run_steps(setup, budget, step) * step
        record["estimated_eager_seconds"] = round(eager_seconds, 1)
        if not could_pay(eager_seconds):
            why = (f"run too short to amortise a compile: about {eager_seconds:.0f} s of eager training, "
                   f"{BEST_SPEEDUP:g}x faster, would save less than a typical {TYPICAL_COMPILE_SECONDS:.0f} s compile")
    if why is not None:
        return {**record, "decision": EAGER, "source": "rule", "reason": why}, None
    key = cache_key(setup)
    figures, compiled, source = cached(key), None, "cache"
    if figures is None:
        figures, compiled, source = *probe(setup), "probe"
        remember(key, figures, CACHE_FILE)
    record.update(figures, source=source)
    if "error" in figures:
        return {**record, "decision": EAGER, "reason": f"torch.compile failed here ({figures['error']})"}, None
    eager_step, compiled_step = figures["eager_step_ms"] / 1000, figures["compiled_step_ms"] / 1000
    steps = run_steps(setup, budget, eager_step)
    decision, reason = choose(eager_step, compiled_step, figures["compile_seconds"], steps)
    record.update(decision=decision, reason=reason, run_steps=steps)
    return record, compiled if decision == COMPILED else None


def settle(setup: Setup, budget: Budget | None = None, resume: bool = False, stored: dict | None = None) -> float:
    """Decide (setup.compile), compile when decided so (with a warm-up of the compiled model: its other batch
    size and evaluation compile too), and return the seconds it took, which count as warm-up."""
    synchronize(setup.device)
    start = time.perf_counter()
    record, compiled = decide(setup, budget, resume, stored)
    if record["decision"] == COMPILED and record["source"] != "setting":  # compile = true compiled in prepare
        setup.step_model = compiled if compiled is not None else compile_model(setup.step_model)
        warm_up(setup)
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    if record["source"] != "setting" and not record.get("resumed"):
        record["decision_seconds"] = round(seconds, 3)
    setup.compile = record
    return seconds
