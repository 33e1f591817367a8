"""cnnlab.allocator: after glibc's malloc is told to keep freed memory, a CPU training step stops faulting in fresh
pages (each fault is the kernel zeroing a 4 KiB page: 21,000-32,000 of them per cnn4 step in `fit` at batch 128
before, on the 2-core AVX-512 Xeon)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

STEPS = """
import json, resource, torch
from cnnlab import allocator
from cnnlab.models import create_model
torch.manual_seed(0)
torch.set_num_threads(1)
model = create_model("cnn4").to(memory_format=torch.channels_last)
opt = torch.optim.Adam(model.parameters())
x, y = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
def faults_per_step():
    for _ in range(2):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
default = faults_per_step()  # glibc's defaults first, then the same steps with the thresholds set
state = allocator.keep_freed_memory()
print(json.dumps({"default": default, "kept": faults_per_step(), "state": state}))
"""


def test_a_step_stops_faulting_in_fresh_pages():
    out = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"minor faults per step: {got['default']:.0f} by default, {got['kept']:.0f} kept")
    assert got["state"].startswith("glibc mmap_threshold 32 MiB")
    # a cnn4 step at batch 64 frees and maps again tens of MB: thousands of faults by default, a few after
    assert got["default"] > 2000, got
    assert got["kept"] < got["default"] / 5, got


def test_a_users_own_choice_is_left_alone(monkeypatch):
    """Checked before mallopt is called, so in this process: nothing is changed here."""
    from cnnlab import allocator

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert allocator._apply() == "left as is: GLIBC_TUNABLES sets malloc"
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator._apply().startswith("left as is: LD_PRELOAD=")
