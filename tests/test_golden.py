"""Golden files: the engine's numbers, pinned, so moving code cannot change a computation unnoticed.

Five small trainings in float64 on the CPU (fixed seed, compile off, two epochs on generated data):
a plain run, an augmented run, a fused group of two members, a modern-recipe run and a resumed
run. Each one's history.csv (timings aside) and stored logits are compared with files under
tests/golden/, written by the commit before the engine was taken apart (32ca5e0), and written again
once, on purpose, when the report CNNs' dropout masks began to be drawn as uniform >= p
(cnnlab.models.layers.Dropout, issue 20), and once more when those masks began to come from 16-bit slices
of 64-bit draws (session 8): the modern-recipe case, which has no dropout, kept its files both times, and
every other engine change since has left all five within the tolerances below.

Tolerances come from the dtypes, not from one run. History values are float64: a different
processor sums in a different order (about 1e-16 relative per operation), which a few dozen
optimizer steps can amplify by several orders of magnitude; 1e8 float64 epsilons (2.2e-8) leaves
room for that, while a moved or changed computation differs by 1e-3 or more. Logits are stored as
float32, and validation losses are computed from them, so those also allow the rounding of a float64
value to float32 (a few float32 epsilons).

    CNNLAB_WRITE_GOLDEN=DIR   write the files into DIR instead of comparing (e.g. tests/golden)
    CNNLAB_GOLDEN_DIR=DIR     compare with DIR instead of tests/golden
    CNNLAB_GOLDEN_EXACT=1     demand bit-for-bit equality (same machine, same library versions)
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.config import build_config
from cnnlab.engine import fit
from cnnlab.fused import train_members_fused

from conftest import interrupt_at, write_npz_dataset

GOLDEN = Path(os.environ.get("CNNLAB_GOLDEN_DIR") or Path(__file__).parent / "golden")
WRITE = os.environ.get("CNNLAB_WRITE_GOLDEN")
EXACT = os.environ.get("CNNLAB_GOLDEN_EXACT") == "1"
TIMING = {"train_seconds", "eval_seconds"}
HISTORY_TOL = 1e8 * torch.finfo(torch.float64).eps
LOGITS_TOL = HISTORY_TOL + 4 * torch.finfo(torch.float32).eps

BASE = dict(model="cnn1", epochs=2, batch_size=32, device="cpu", precision="fp64", seed=3, compile=False)
CASES = {
    "plain": {},
    "augmented": {"augment": True},
    "fused": {},
    "modern": {"recipe": "modern", "model": "resnet9", "model_params": {"width": 8}, "batch_size": 32},
    "resumed": {"model": "tuned-cnn", "early_stopping": 3, "lr_patience": 1},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("golden") / "data.npz", 160, 40, size=16)


def train(case: str, data: Path, out: Path) -> list[Path]:
    """Run one case into `out`; returns the run directories it wrote."""
    config = build_config({**BASE, **CASES[case], "data": str(data)})
    if case == "fused":
        dirs = [out / "member-0", out / "member-1"]
        train_members_fused(config, [3, 4], dirs)
        return dirs
    if case == "resumed":
        with pytest.raises(KeyboardInterrupt):
            fit(config, out, [interrupt_at(2)])
        fit(config, out, resume=True)
        return [out]
    fit(config, out)
    return [out]


def history(run: Path) -> list[dict[str, float]]:
    with open(run / "history.csv") as f:
        return [{k: float(v) for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def assert_close(actual, expected, tol: float, what: str) -> None:
    if EXACT:
        assert torch.equal(actual, expected), f"{what}: not bit-identical (max diff {(actual - expected).abs().max()})"
    else:
        torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("case", list(CASES))
def test_engine_matches_golden_files(case, data, tmp_path):
    dirs = train(case, data, tmp_path / case)
    for run in dirs:
        golden = GOLDEN / case / run.relative_to(tmp_path / case)
        if WRITE:
            target = Path(WRITE) / case / run.relative_to(tmp_path / case)
            target.mkdir(parents=True, exist_ok=True)
            for name in ("history.csv", "logits.safetensors"):
                shutil.copy(run / name, target / name)
            continue
        got, want = history(run), history(golden)
        assert [sorted(r) for r in got] == [sorted(r) for r in want], f"{case}: history columns or epochs differ"
        for key in want[0]:
            assert_close(torch.tensor([r[key] for r in got], dtype=torch.float64),
                         torch.tensor([r[key] for r in want], dtype=torch.float64),
                         LOGITS_TOL if key.startswith("val_") else HISTORY_TOL, f"{case} {run.name} {key}")
        logits, expected = load_file(str(run / "logits.safetensors")), load_file(str(golden / "logits.safetensors"))
        assert logits.keys() == expected.keys()
        for key in expected:
            tol = 0.0 if expected[key].dtype == torch.int64 else LOGITS_TOL
            assert_close(logits[key], expected[key], tol, f"{case} {run.name} {key}")
