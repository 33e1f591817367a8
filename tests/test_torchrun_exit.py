"""How a torchrun rank ends: through torchrun.leave, never through interpreter finalization.

DDP keeps the gloo group alive after destroy_process_group; a gloo worker thread that drops the last
reference to a collective's tensor after finalization began aborts the rank (SIGABRT, "terminate called
without an active exception"), failing a finished run. CI saw it once in test_torchrun_two_processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_npz_dataset

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}

# One rank of the CLI as it ends a run: a DDP model, collectives on tensors dropped at once, the session's
# barrier and teardown, then the exit cli.main takes.
RANK = """
import sys, torch
from cnnlab import cli, torchrun

def command():
    with torchrun.session("cpu") as ctx:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
        for _ in range(200):
            ctx.all_reduce_sum(torch.ones(1000))
    sys.exit(0)

cli._main = command
cli.main()
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    buffered = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # so that a missing flush loses output
    return subprocess.run([sys.executable, "-c", code], env=buffered, capture_output=True, text=True, timeout=120)


def test_leave_runs_exit_handlers_flushes_and_keeps_the_code():
    done = run_python("import atexit, sys\nfrom cnnlab import torchrun\n"
                      "atexit.register(lambda: print('handler ran'))\n"
                      "sys.stdout.write('unflushed ')\ntorchrun.leave(3)\nprint('not reached')")
    assert done.returncode == 3 and done.stdout == "unflushed handler ran\n"


def test_leave_with_a_message_prints_it_and_exits_1():
    done = run_python("from cnnlab import torchrun\ntorchrun.leave('cnnlab: error: it broke')")
    assert done.returncode == 1 and done.stderr.strip() == "cnnlab: error: it broke"


# A command that exits 4, an exit handler, and a global whose __del__ only interpreter finalization runs.
EXITING = ("import atexit\nfrom cnnlab import cli, torchrun\n"
           "class Global:\n    def __del__(self): print('finalized')\n"
           "kept = Global()\natexit.register(lambda: print('handler ran'))\n"
           "cli._main = lambda: exit(4)\n")


def test_outside_torchrun_main_exits_the_ordinary_way():
    done = run_python(EXITING + "cli.main()")
    assert done.returncode == 4 and done.stdout == "handler ran\nfinalized\n"


def test_a_torchrun_rank_leaves_main_without_finalization():
    done = run_python(EXITING + "torchrun._joined = True  # as distributed_from_env sets it\ncli.main()")
    assert done.returncode == 4 and done.stdout == "handler ran\n"


@pytest.mark.slow
def test_torchrun_ranks_end_without_an_abort(tmp_path):
    """Six launches of two gloo ranks ending as the CLI does; before torchrun.leave, 13 of 30 such launches
    aborted on the 2-core Zen 5 EPYC under load (and 0 of 30 with it)."""
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    for launch in range(6):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-addr", "127.0.0.1", "--master-port", "29523", str(script)],
                              env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"launch {launch}: {done.stderr[-2000:]}"


@pytest.mark.slow
def test_ctrl_c_under_torchrun_is_one_line_and_keeps_the_epochs(tmp_path):
    """Ctrl-C to torchrun (it passes the signal on to both ranks): rank 0 alone prints the line that says how to
    continue, with torchrun and the same number of processes; the run directory holds the finished epochs."""
    data = write_npz_dataset(tmp_path / "d.npz", 64, 16, size=12)
    out = tmp_path / "runs"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", "29524", "-m", "cnnlab", "train", "cnn1", "--data", str(data), "--epochs",
         "5000", "--batch-size", "16", "--device", "cpu", "--precision", "fp32", "--out", str(out), "--quiet"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(len(h.read_text().splitlines()) > 3 for h in out.glob("*/history.csv")):
        time.sleep(0.2)
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=120)
    (run,) = out.iterdir()
    lines = [line for line in err.splitlines() if line.startswith("cnnlab:")]
    assert lines == [f"cnnlab: interrupted; the run directory holds every finished epoch. Continue with: torchrun "
                     f"--nproc-per-node 2 -m cnnlab train --resume {run}"], err[-2000:]
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    assert len((run / "history.csv").read_text().splitlines()) > 3
