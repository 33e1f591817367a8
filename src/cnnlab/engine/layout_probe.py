"""Whether the report CNNs' Flatten hands its gradient back channels_last (models.layers.Flatten), decided
per model and machine by measurement: it makes a training step 14-21% faster on some and 7-10% slower on
others (the figures are in models.layers.Flatten), so no fixed rule holds.

After warm-up and before the compile decision (which then measures the chosen path), `settle_layout`
times pairs of eager training steps, one each way, inside throughput.undone: the run trains exactly as if
never probed. The channels_last gradient is kept only if the median of the pairs' ratios says its step is
3% faster. The figures are
cached beside the compile probe's (its key, in layout-probe.json), the record goes into env.json
under `flatten_grad`, and a resumed run takes the recorded decision again: the two ways round differently,
so bit-exact resume needs the same one. Never probed (kept as computed): fp64 (exactness checks and the
golden files), deterministic algorithms, compile = true (each way would compile apart), torchrun (the
processes would decide apart).
"""

from __future__ import annotations

import math
import statistics
import time
from datetime import datetime, timezone

import torch

from cnnlab.device import synchronize
from cnnlab.models.layers import Flatten
from cnnlab.probe_cache import read_cache, remember

from .compile_probe import cache_key, timed_steps
from .setup import Setup
from .step import apply_learning_rates, learning_rates, make_batch, train_step
from .throughput import undone

ON, OFF = "channels_last", "as computed"
CACHE_FILE = "layout-probe.json"  # beside the compile probe's figures, in $CNNLAB_CACHE_DIR
MARGIN = 0.03  # the channels_last gradient must make the step at least this much faster
# Pairs of single steps, one each way, the order alternating, and the median of their ratios: a 2-core host's
# step time drifts by up to 1.6x within seconds, which adjacent steps share. AVX2 emulated on the 2-core AMX
# Xeon, tuned-cnn, channels_last / as computed, repeated probes: the best of 2 rounds of 3 steps each way said
# 0.97-1.25, 8 pairs said 0.985-1.013 (six probes; its epochs: 0.95-1.05 apart); cnn1 0.77-0.93 against 0.83-0.88;
# cnn2 8 pairs 0.89-0.96 and its epochs 1.12x faster channels_last.
PAIRS = 8  # 16 timed steps and 2 untimed: 5% of a 48,000-image epoch at batch 128


def flatten_layers(setup: Setup) -> list[Flatten]:
    return [m for m in setup.model.modules() if isinstance(m, Flatten)]


def apply(setup: Setup, decision: str) -> None:
    for layer in flatten_layers(setup):
        layer.channels_last_grad = decision == ON


def never_probed(setup: Setup) -> str | None:
    for why, applies in (("precision fp64 (exactness checks)", setup.precision == "fp64"),
                         ("deterministic", setup.config.deterministic),
                         ("compile = true: each way would compile apart", setup.config.compile is True),
                         ("torchrun: every process would have to probe together", setup.dist is not None)):
        if applies:
            return why
    return None


def choose(ratio: float, off_ms: float, on_ms: float) -> tuple[str, str]:
    ms = (f"channels_last gradient {on_ms:.1f} ms a step against {off_ms:.1f} ms as computed "
          f"(median of paired steps: {ratio:.3f}x the time)")
    if ratio < 1 - MARGIN:
        return ON, f"{ms}: at least {MARGIN:.0%} faster"
    return OFF, f"{ms}: not {MARGIN:.0%} faster"


def probe(setup: Setup) -> dict:
    """Median milliseconds per training step either way and the median ratio of PAIRS adjacent steps (one each
    way, the order alternating), on one full batch; every effect undone."""
    idx = torch.arange(min(setup.batch_size, len(setup.train)), device=setup.device).expand(setup.members, -1)
    ms: dict[str, list[float]] = {OFF: [], ON: []}
    ratios = []
    with undone(setup):
        try:
            setup.step_model.train()
            apply_learning_rates(setup, learning_rates(setup, 0))
            for decision in (OFF, ON):  # untimed: the optimizer's state, each way's first allocations
                apply(setup, decision)
                train_step(setup, *make_batch(setup, idx))
            for pair in range(PAIRS):
                for decision in (OFF, ON) if pair % 2 == 0 else (ON, OFF):
                    apply(setup, decision)
                    ms[decision].append(1000 * timed_steps(setup, idx, 1))
                ratios.append(ms[ON][-1] / ms[OFF][-1])
        finally:
            apply(setup, OFF)
    synchronize(setup.device)
    return {"as_computed_step_ms": round(statistics.median(ms[OFF]), 3),
            "channels_last_step_ms": round(statistics.median(ms[ON]), 3),
            "step_time_ratio": round(statistics.median(ratios), 4), "timed_pairs": PAIRS,
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def cached(key: str) -> dict | None:
    entry = read_cache(CACHE_FILE).get(key)
    if not isinstance(entry, dict):
        return None
    numbers = [entry.get(k) for k in ("as_computed_step_ms", "channels_last_step_ms", "step_time_ratio")]
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in numbers)
    return entry if ok else None


def decide(setup: Setup, resume: bool = False, stored: dict | None = None) -> dict | None:
    """The record env.json keeps (None: this model has no such Flatten)."""
    if not flatten_layers(setup):
        return None
    if resume:
        if isinstance(stored, dict) and stored.get("decision") in (ON, OFF):
            return {**stored, "resumed": True}
        return {"decision": OFF, "source": "resume", "reason": "resumed without a recorded decision: as the run began"}
    why = never_probed(setup)
    if why is not None:
        return {"decision": OFF, "source": "rule", "reason": why}
    key = cache_key(setup)
    figures, source = cached(key), "cache"
    if figures is None:
        figures, source = probe(setup), "probe"
        remember(key, figures, CACHE_FILE)
    decision, reason = choose(figures["step_time_ratio"], figures["as_computed_step_ms"], figures["channels_last_step_ms"])
    return {**figures, "decision": decision, "source": source, "reason": reason}


def settle_layout(setup: Setup, resume: bool = False, stored: dict | None = None) -> float:
    """Decide (setup.flatten_grad), apply it, and return the seconds it took, which count as warm-up."""
    start = time.perf_counter()
    record = decide(setup, resume, stored)
    if record is not None:
        apply(setup, record["decision"])
        if record["source"] == "probe":
            record["decision_seconds"] = round(time.perf_counter() - start, 3)
    setup.flatten_grad = record
    return time.perf_counter() - start
