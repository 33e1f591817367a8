"""cnnlab.allocator: after glibc's malloc is told to keep freed memory, a CPU training step stops faulting in fresh
pages (each fault is the kernel zeroing a 4 KiB page: 27,000-34,000 of them per cnn4 step before)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

STATE = "import json; from cnnlab import allocator; print(json.dumps({'state': allocator.keep_freed_memory()}))"
STEPS = """
import json, resource, sys, torch
from cnnlab import allocator
from cnnlab.models import create_model
torch.manual_seed(0)
torch.set_num_threads(1)
state = allocator.keep_freed_memory() if sys.argv[1] == "keep" else None
model = create_model("cnn4").to(memory_format=torch.channels_last)
opt = torch.optim.Adam(model.parameters())
x, y = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(json.dumps({"faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3, "state": state}))
"""


def run_python(code: str, *args: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_step_stops_faulting_in_fresh_pages():
    default, kept = run_python(STEPS, "default"), run_python(STEPS, "keep")
    print(f"minor faults per step: {default['faults']:.0f} by default, {kept['faults']:.0f} kept")
    assert kept["state"].startswith("glibc mmap_threshold 32 MiB")
    # a cnn4 step at batch 64 frees and maps again tens of MB: thousands of faults by default, a few after
    assert default["faults"] > 2000, default
    assert kept["faults"] < default["faults"] / 5, (default, kept)


def test_a_users_own_choice_is_left_alone():
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}
    assert run_python(STATE, env=env)["state"] == "left as is: GLIBC_TUNABLES sets malloc"
    env = {**os.environ, "LD_PRELOAD": "/nonexistent/libjemalloc.so.2"}
    assert run_python(STATE, env=env)["state"].startswith("left as is: LD_PRELOAD=")
