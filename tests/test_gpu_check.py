"""bench/gpu_check.py (`make gpu-check`): the dry run works end to end on the CPU, so the script cannot rot
where CI has no GPU; without CUDA the real run refuses in one line; the parsers read the scripts' output."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env() -> dict:
    e = dict(os.environ)
    e.pop("OUT", None)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), e.get("PYTHONPATH")]))
    return e


@pytest.mark.slow
def test_dry_run_writes_log_and_json_with_every_step(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    log, figures = out / "gpu_check.log", out / "gpu_check.json"
    assert log.is_file() and figures.is_file()
    report = json.loads(figures.read_text())
    assert report["dry_run"] is True and report["result"] == "ok"
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["precision"] in ("fp32", "bf16") and report["environment"]["precision_reason"]
    steps = {s["name"]: s for s in report["steps"]}
    assert {"gpu-tests", "bench-eager", "bench-compiled", "ensemble", "modern"} <= steps.keys()
    for step in report["steps"]:
        assert "rc" in step and isinstance(step["seconds"], (int, float)), step
        assert step["status"] in ("ok", "skipped"), step
        if step["status"] == "ok":
            assert step["rc"] == 0 and step["command"], step
    assert steps["gpu-tests"]["figures"].get("skipped", 0) >= 1  # collected, skipped without CUDA
    assert steps["bench-eager"]["figures"]["rows"][0]["model"] == "cnn1"
    assert "vote_test_accuracy" in steps["ensemble"]["figures"] or "fused" in steps["ensemble"]["figures"]
    text = log.read_text()
    assert "=== gpu-tests" in text and "=== ensemble" in text
    assert f"precision auto: {report['environment']['precision']} (" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_real_run_refuses_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [load_script().NO_CUDA]
    assert not (tmp_path / "out").exists()


BENCH_OUTPUT = """\
device: NVIDIA H100 80GB HBM3; torch 2.11.0+cu130; 48000 images per timed epoch, batch 128
model       plain img/s  cnnlab img/s  ratio  plain s/ep  cnnlab s/ep  cnnlab fp32  ratio  compiled  ratio
tuned-cnn        21,000       160,000  7.62x        2.29         0.30      120,000  5.71x   190,000  9.05x
cnnlab precision on this device: bf16; 's/ep' = seconds per epoch of 48,000 images
"""


def test_parsers_read_the_scripts_output():
    gc = load_script()
    row = gc.parse_bench(BENCH_OUTPUT)["rows"][0]
    assert row["model"] == "tuned-cnn" and row["cnnlab_images_per_s"] == 160_000 and row["compiled_vs_plain"] == 9.05
    assert gc.parse_bench(BENCH_OUTPUT)["cnnlab_precision"] == "bf16"
    ens = gc.parse_ensemble("fused            members 30  test acc 0.9301-0.9377  hard vote test 0.9462  "
                            "training 41.0 s  wall 52.3 s\n")
    assert ens["fused"] == {"members": 30, "member_test_accuracy_min": 0.9301, "member_test_accuracy_max": 0.9377,
                            "vote": "hard", "vote_test_accuracy": 0.9462, "training_seconds": 41.0, "wall_seconds": 52.3}
    tests = gc.parse_pytest("....\n4 passed, 2 skipped, 130 deselected in 41.20s\n")
    assert tests == {"passed": 4, "skipped": 2, "deselected": 130, "pytest_seconds": 41.2}


def test_a_step_over_its_limit_is_stopped_and_recorded(tmp_path):
    gc = load_script()
    check = gc.Check(tmp_path, budget=60, dry_run=True)
    try:
        step = check.run("sleeper", [sys.executable, "-c", "import time; print('going', flush=True); time.sleep(60)"],
                         timeout=2)
    finally:
        check.close()
    assert step["status"] == "timeout" and step["seconds"] < 20 and "going" in step["tail"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["steps"][0]["name"] == "sleeper"
