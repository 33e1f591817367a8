#!/usr/bin/env python3
"""`make gpu-check`: the GPU checks of the issue, on one CUDA machine, in at most --budget seconds (default 300).

Steps, each a subprocess with its own time limit (its process group is stopped when the limit is
reached, so a slow step cannot eat the others' time):

  probe           torch version, CUDA, device name, nvidia-smi -L, cnnlab's models, missing imports,
                  the precision "auto" trains in on the card and why
  gpu-tests       python3 -m pytest -m gpu -q -p no:cacheprovider tests/
  bench-eager     python3 bench/run.py --models <sequential CNNs + modern-recipe models when registered> --rounds 1
  bench-compiled  python3 bench/run.py --models M --compile --rounds 1, one process per model, tuned-cnn first
  ensemble        python3 bench/ensemble.py --members 30 --epochs 40 --skip-sequential (the report's protocol)
  modern          python3 -m cnnlab train resnet9 --recipe modern, only if time is left and `cnnlab train`
                  has --recipe

Each step gets a share of the budget (SHARES) and never starts with less than its minimum
(MINIMUM) left; the modern-recipe run gets whatever is left. Writes gpu_check.log (everything the
steps printed) and gpu_check.json (environment, and per step: command, rc, seconds, parsed figures
or the tail of the output) to --out, else $OUT, else ./gpu-check/. The JSON is rewritten after every
step, so a run stopped from outside still leaves what it had.

Runs with the machine's own python3 (no install): src/ goes on PYTHONPATH; wheels in .whl/ are
installed with pip --target into a temporary folder put in front of PYTHONPATH; Fashion-MNIST in
.data/fashion-mnist/ is used through $CNNLAB_DATA.

    python3 bench/gpu_check.py [--out DIR] [--budget 300]
    python3 bench/gpu_check.py --dry-run      # the same steps, tiny, on the CPU (CI runs this)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = time.monotonic()  # the budget counts from the script's start
GRACE = 15  # seconds of the budget kept for stopping the last step (SIGTERM, then SIGKILL) and the summary
NO_CUDA = ("gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, "
           "or use --dry-run for the tiny CPU version")

SEQUENTIAL = ["cnn1", "cnn2", "cnn3", "cnn4", "tuned-cnn"]  # the report's sequential CNNs
MODERN = ["resnet9", "wrn-16-4"]  # the modern recipe's models, timed once they are registered
COMPILED_ORDER = ["tuned-cnn", "resnet9", "wrn-16-4", "cnn1", "cnn4", "cnn2", "cnn3"]  # most wanted first

# share of the budget each step may use, and the least time left for which it is started at all
SHARES = {"gpu-tests": 0.25, "bench-eager": 0.14, "bench-compiled": 0.16, "ensemble": 0.30}
MINIMUM = {"gpu-tests": 15, "bench-eager": 10, "bench-compiled": 20, "ensemble": 30, "modern": 30}
PROBE_TIMEOUT = 90
TAIL_CHARS = 3000

PROBE = r"""
import importlib, json, platform, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
try:
    import torch
    info.update(torch=torch.__version__, cuda_available=torch.cuda.is_available(), torch_cuda=torch.version.cuda)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=p.name, device_count=torch.cuda.device_count(),
                    capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
    else:
        info["device_name"] = "cpu"
except Exception as exc:
    info.update(torch=None, cuda_available=False, torch_error=repr(exc))
missing = {}
for name in ("cnnlab.cli", "cnnlab.engine", "cnnlab.fused", "cnnlab.ensembles", "cnnlab.models", "cnnlab.runs"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing[name] = repr(exc)
info["cnnlab_import_errors"] = missing
import importlib.util
info["optional_modules"] = {name: importlib.util.find_spec(name) is not None  # found, not imported: ray, mlflow are slow
                            for name in ("optuna", "torchinfo", "ray", "mlflow", "tensorboard", "onnx", "onnxruntime",
                                         "selenium", "hypothesis", "pytest_timeout", "filelock")}
try:
    from cnnlab.models import list_models
    info["models"] = list(list_models())
except Exception as exc:
    info["models"] = None
    info["models_error"] = repr(exc)
try:  # what precision = "auto" trains in on this card, and why (cnnlab.device.precision_policy)
    from cnnlab.device import choose_precision
    info["precision"], info["precision_reason"] = choose_precision(
        torch.device("cuda" if torch.cuda.is_available() else "cpu"), "auto")
except Exception as exc:
    info["precision"] = None
    info["precision_error"] = repr(exc)
print("GPU_CHECK_PROBE " + json.dumps(info))
"""


# ------------------------------------------------------------------ parsing what the steps print


def _number(text: str) -> float | None:
    text = text.strip().rstrip("x").replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


BENCH_COLUMNS = ["plain_images_per_s", "cnnlab_images_per_s", "cnnlab_vs_plain", "plain_s_per_epoch",
                 "cnnlab_s_per_epoch", "cnnlab_fp32_images_per_s", "cnnlab_fp32_vs_plain"]
BENCH_COMPILED = ["compiled_images_per_s", "compiled_vs_plain"]
BENCH_GRAPHS = ["graphs_images_per_s", "graphs_vs_plain", "graphs_s_per_epoch"]
BENCH_LAYOUTS = {len(c): c for c in (BENCH_COLUMNS, BENCH_COLUMNS + BENCH_COMPILED, BENCH_COLUMNS + BENCH_GRAPHS,
                                      BENCH_COLUMNS + BENCH_COMPILED + BENCH_GRAPHS)}


# bench/run.py's table since issue 20: one token per column header, read by name ('-': no value)
BENCH_HEADER_KEYS = {"cnnlab_img/s": "cnnlab_images_per_s", "plain_img/s": "plain_images_per_s",
                     "ratio": "cnnlab_vs_plain", "ratio_min": "cnnlab_vs_plain_min", "ratio_max": "cnnlab_vs_plain_max",
                     "cnnlab_s/ep": "cnnlab_s_per_epoch", "plain_s/ep": "plain_s_per_epoch", "warmup_s": "cnnlab_warmup_s",
                     "GFLOP/step": "gflop_per_step", "cnnlab_%fp32": "cnnlab_pct_of_fp32_peak",
                     "cnnlab_%bf16": "cnnlab_pct_of_bf16_peak", "plain_%fp32": "plain_pct_of_fp32_peak",
                     "compiled_ratio": "compiled_vs_plain", "graphs_ratio": "graphs_vs_plain"}


def _header_key(token: str) -> str:
    return BENCH_HEADER_KEYS.get(token) or token.replace("/s", "_per_s").replace("img", "images").replace("/ep", "_per_epoch")


def parse_bench(text: str) -> dict:
    """bench/run.py's table: one row per model, columns as its header (compiled columns with --compile)."""
    rows = []
    figures: dict = {"rows": rows}
    named: list[str] | None = None  # the header's columns, when they are one token each
    for line in text.splitlines():
        if line.startswith("device:"):
            figures["device_line"] = line[len("device:"):].strip()
        elif line.startswith("cnnlab precision on this device:"):
            figures["cnnlab_precision"] = line.split(":", 1)[1].split(";")[0].strip()
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "model" and "cnnlab_img/s" in parts:
            named = [_header_key(p) for p in parts[1:]]
            continue
        if named is not None:
            values = [None if p == "-" else _number(p) for p in parts[1:]]
            if len(values) == len(named) and all(v is not None or p == "-" for v, p in zip(values, parts[1:])):
                rows.append({"model": parts[0], **{k: v for k, v in zip(named, values) if v is not None}})
            continue
        if len(parts) < 2 or parts[0] == "model":
            continue
        values = [_number(p) for p in parts[1:]]
        if any(v is None for v in values):
            continue
        row: dict = {"model": parts[0]}
        if len(values) in BENCH_LAYOUTS:
            row.update(zip(BENCH_LAYOUTS[len(values)], values))
        else:  # a changed table: keep the numbers in order
            row["values"] = values
        rows.append(row)
    return figures


ENSEMBLE_LINE = re.compile(
    r"^(?P<label>.+?)\s+members (?P<members>\d+)\s+test acc (?P<min>[\d.]+)-(?P<max>[\d.]+)\s+"
    r"(?P<vote>\w+) vote test (?P<vote_test>[\d.]+)\s+training (?P<train>[\d.]+) s\s+wall (?P<wall>[\d.]+) s")
CLI_QUALIFIED = re.compile(r"(?P<q>\d+) of (?P<a>\d+) trained members qualified")
CLI_ACCURACY = re.compile(r"members' val accuracy (?P<vmin>[\d.]+)-(?P<vmax>[\d.]+); (?P<vote>\w+) vote: val (?P<val>[\d.]+)"
                          r"(?:; members' test (?P<tmin>[\d.]+)-(?P<tmax>[\d.]+); vote test (?P<test>[\d.]+))?")


def parse_ensemble(text: str) -> dict:
    """bench/ensemble.py's lines (fused / one after another), or the `cnnlab ensemble` summary."""
    figures: dict = {}
    for line in text.splitlines():
        if line.startswith("device:"):
            figures["device_line"] = line[len("device:"):].strip()
        m = ENSEMBLE_LINE.match(line.strip())
        if m:
            figures[m["label"].strip().replace(" ", "_")] = {
                "members": int(m["members"]), "member_test_accuracy_min": float(m["min"]),
                "member_test_accuracy_max": float(m["max"]), "vote": m["vote"],
                "vote_test_accuracy": float(m["vote_test"]), "training_seconds": float(m["train"]),
                "wall_seconds": float(m["wall"])}
        m = CLI_QUALIFIED.search(line)
        if m:
            figures.update(qualified=int(m["q"]), attempts=int(m["a"]))
        m = CLI_ACCURACY.search(line)
        if m:
            figures.update(member_val_accuracy_min=float(m["vmin"]), member_val_accuracy_max=float(m["vmax"]),
                           vote=m["vote"], vote_val_accuracy=float(m["val"]))
            if m["test"]:
                figures.update(member_test_accuracy_min=float(m["tmin"]), member_test_accuracy_max=float(m["tmax"]),
                               vote_test_accuracy=float(m["test"]))
    return figures


def parse_pytest(text: str) -> dict:
    """The closing line: '3 passed, 1 skipped in 12.3s' -> counts."""
    figures: dict = {}
    for line in reversed(text.splitlines()):
        counts = re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)", line)
        if counts and re.search(r"\bin [\d.]+s", line):
            for n, word in counts:
                figures[word.rstrip("s") if word.startswith(("error", "warning")) else word] = int(n)
            m = re.search(r"\bin ([\d.]+)s", line)
            figures["pytest_seconds"] = float(m.group(1))
            break
        if "no tests ran" in line:
            figures["no_tests_ran"] = True
            break
    outcomes = re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", text, flags=re.M)
    if outcomes:  # -v: known test by test, also when the run was stopped before its closing line
        figures["tests"] = {name.split("::", 1)[1]: outcome for name, outcome in outcomes}
    skips = re.findall(r"^SKIPPED \[\d+\] (.+)$", text, flags=re.M)
    if skips:
        figures["skip_reasons"] = sorted(set(skips))[:10]
    return figures


def parse_run_dir(folder: Path) -> dict:
    """A cnnlab run directory under `folder`: metrics.json's headline figures and the epochs in history.csv."""
    figures: dict = {}
    dirs = sorted(p.parent for p in folder.glob("*/config.json"))
    if not dirs:
        return figures
    run = dirs[-1]
    figures["run_dir"] = run.name
    metrics = run / "metrics.json"
    if metrics.is_file():
        try:
            data = json.loads(metrics.read_text())
        except ValueError:
            data = {}
        for key in ("status", "epochs_done", "val_accuracy", "test_accuracy", "train_seconds_total",
                    "train_seconds_per_epoch_median", "train_images_per_second", "warmup_seconds", "precision", "device"):
            if key in data:
                figures[key] = data[key]
    history = run / "history.csv"
    if history.is_file():
        lines = history.read_text().strip().splitlines()
        figures["history_epochs"] = max(0, len(lines) - 1)
        if len(lines) > 1:
            figures["last_epoch"] = dict(zip(lines[0].split(","), lines[-1].split(",")))
    return figures


# ------------------------------------------------------------------ the run


class Check:
    def __init__(self, out: Path, budget: float, dry_run: bool):
        self.out, self.budget, self.dry_run = out, budget, dry_run
        self.start = T0
        self.deadline = self.start + budget - GRACE
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu_check.log"
        self.json_path = out / "gpu_check.json"
        self.log_file = open(self.log_path, "a", encoding="utf-8")
        self.work = Path(tempfile.mkdtemp(prefix="cnnlab-gpu-check-"))
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        self.py = sys.executable
        self.child: subprocess.Popen | None = None
        self.report: dict = {"tool": "bench/gpu_check.py", "dry_run": dry_run, "budget_s": budget,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repo": str(REPO),
                             "environment": {}, "steps": []}

    # -------------------------------------------------------------- output

    def log(self, text: str, echo: bool = True) -> None:
        self.log_file.write(text + "\n")
        self.log_file.flush()
        if echo:
            print(text, flush=True)

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.start, 2)
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        os.replace(tmp, self.json_path)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # -------------------------------------------------------------- one subprocess, bounded

    def run(self, name: str, cmd: list[str], timeout: float, parse=None, after=None, cwd: Path = REPO) -> dict:
        """Run cmd with a time limit; its output goes to the log (and stdout) as it comes."""
        timeout = max(1.0, timeout)
        shown = shlex.join(cmd).replace(self.py, "python3", 1) if cmd and cmd[0] == self.py else shlex.join(cmd)
        self.log(f"\n=== {name}: {shown}   (at {time.monotonic() - self.start:.0f} s; limit {timeout:.0f} s, "
                 f"{self.remaining():.0f} s of the budget left)")
        chunks: list[str] = []
        started = time.monotonic()
        status = "ok"
        proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1, start_new_session=True)
        self.child = proc

        def pump() -> None:
            for line in proc.stdout:
                chunks.append(line)
                self.log(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = "timeout"
            self.log(f"--- {name}: time limit of {timeout:.0f} s reached; stopping its process group")
            self._stop(proc)
        finally:
            self.child = None
        reader.join(timeout=5)  # a grandchild that left its session may still hold the pipe: don't wait for it
        seconds = time.monotonic() - started
        rc = proc.returncode
        if status == "ok" and rc != 0:
            status = "failed"
        text = "".join(chunks)
        step = {"name": name, "command": shown, "rc": rc, "seconds": round(seconds, 2), "timeout_s": round(timeout, 1),
                "status": status}
        figures = None
        try:
            figures = parse(text) if parse else None
            if after:
                figures = {**(figures or {}), **after()}
        except Exception as exc:  # a changed output must not stop the check
            step["parse_error"] = repr(exc)
        if figures:
            step["figures"] = figures
        if status != "ok" or not figures:
            step["tail"] = text[-TAIL_CHARS:]
        self.log(f"--- {name}: {status}, rc {rc}, {seconds:.1f} s")
        self.report["steps"].append(step)
        self.save()
        return step

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """SIGTERM first (cnnlab stops like Ctrl-C and marks its run interrupted), SIGKILL after 10 s."""
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def skip(self, name: str, reason: str, command: str | None = None) -> dict:
        self.log(f"\n=== {name}: skipped: {reason}")
        step = {"name": name, "command": command, "rc": None, "seconds": 0.0, "status": "skipped", "reason": reason}
        self.report["steps"].append(step)
        self.save()
        return step

    def limit(self, name: str, later: list[str]) -> float | None:
        """Seconds the step may take: its share, less what the later steps need at least; None: don't start."""
        left = self.remaining() - sum(MINIMUM[s] for s in later)
        share = SHARES.get(name, 1.0) * self.budget if name in SHARES else left
        allowed = min(share, left)
        return allowed if allowed >= MINIMUM[name] else None

    def flags_of(self, cmd: list[str]) -> str:
        """The --help text of a command ('' if it fails): options are detected, not assumed."""
        try:
            done = subprocess.run(cmd + ["--help"], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120)
            return done.stdout + done.stderr
        except (subprocess.TimeoutExpired, OSError):
            return ""

    # -------------------------------------------------------------- set-up

    def prepare(self) -> None:
        env = self.report["environment"]
        paths = [str(REPO / "src")]
        wheels = sorted((REPO / ".whl").glob("*.whl"))
        if wheels:
            site = Path(tempfile.gettempdir()) / "cnnlab-gpu-check-site"
            cmd = [self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                   "--upgrade", "--target", str(site)] + [str(w) for w in wheels]
            started = time.monotonic()
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
            env["wheels"] = {"files": [w.name for w in wheels], "target": str(site), "rc": done.returncode,
                             "seconds": round(time.monotonic() - started, 2)}
            self.log(f"wheels: {len(wheels)} from .whl/ into {site} (rc {done.returncode})")
            if done.returncode != 0:
                self.log(done.stdout + done.stderr)
            paths.insert(0, str(site))
        else:
            env["wheels"] = None
        if self.env.get("PYTHONPATH"):
            paths.append(self.env["PYTHONPATH"])
        self.env["PYTHONPATH"] = os.pathsep.join(paths)
        env["pythonpath"] = self.env["PYTHONPATH"]
        carried = REPO / ".data" / "fashion-mnist"
        if (carried / "train-images-idx3-ubyte.gz").is_file() or (carried / "train-images-idx3-ubyte").is_file():
            self.env["CNNLAB_DATA"] = str(REPO / ".data")  # cnnlab looks in $CNNLAB_DATA/fashion-mnist first
            env["data"] = f"{carried} (carried; CNNLAB_DATA={self.env['CNNLAB_DATA']})"
        elif self.env.get("CNNLAB_DATA"):
            env["data"] = f"CNNLAB_DATA={self.env['CNNLAB_DATA']} (from the environment)"
        else:
            env["data"] = "not carried: cnnlab's own search (/usr/share/datasets/fashion-mnist, then its download cache)"
        env["python_executable"] = self.py
        if shutil.which("nvidia-smi"):
            try:
                smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
                env["nvidia_smi_L"] = (smi.stdout + smi.stderr).strip()
            except (subprocess.TimeoutExpired, OSError) as exc:
                env["nvidia_smi_L"] = f"failed: {exc!r}"
        else:
            env["nvidia_smi_L"] = None

    def probe(self) -> dict:
        try:
            done = subprocess.run([self.py, "-c", PROBE], cwd=REPO, env=self.env, capture_output=True, text=True,
                                  timeout=PROBE_TIMEOUT)
            text = done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            text = f"probe timed out after {PROBE_TIMEOUT} s: {exc!r}"
        for line in text.splitlines():
            if line.startswith("GPU_CHECK_PROBE "):
                return json.loads(line[len("GPU_CHECK_PROBE "):])
        return {"cuda_available": False, "probe_error": text[-TAIL_CHARS:]}

    def tiny_dataset(self) -> Path:
        """A learnable 28x28, 4-class NPZ for the dry run's CLI steps (no Fashion-MNIST needed)."""
        import numpy as np

        rng = np.random.default_rng(0)

        def split(n: int):
            labels = np.arange(n) % 4
            images = rng.integers(0, 80, size=(n, 28, 28)).astype(np.uint8)
            for i, k in enumerate(labels):
                images[i, 7 * k:7 * k + 7, :] += 150
            return images, labels.astype(np.int64)

        x, y = split(320)
        xt, yt = split(80)
        path = self.work / "tiny.npz"
        np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
        return path

    # -------------------------------------------------------------- the steps

    def execute(self, probe: dict) -> None:
        dry = self.dry_run
        device = "cpu" if dry else "cuda"
        models = probe.get("models") or []
        modern = [m for m in MODERN if m in models]
        tiny = self.tiny_dataset() if dry else None

        # (a) GPU tests: on the CPU they are all skipped, which still proves they collect
        t = self.limit("gpu-tests", ["bench-eager", "bench-compiled", "ensemble"])
        cmd = [self.py, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", "--durations=0", "tests/"]
        if t is None:
            self.skip("gpu-tests", "not enough time left", shlex.join(cmd))
        else:
            self.run("gpu-tests", cmd, t, parse_pytest)

        # (b) single-model epochs against the plain loop, eager (one process) then compiled (one per model)
        bench_models = ["cnn1"] if dry else SEQUENTIAL + modern  # dry: one model keeps it near 10 s on 2 cores
        cmd = [self.py, "bench/run.py", "--models", ",".join(bench_models)]
        # on the GPU the eager step also times the CUDA-graph step (the target: <= 0.3 s per tuned-cnn epoch)
        # one round (the bench's default is 3, interleaved): the step's time limit was sized for one
        cmd += (["--device", "cpu", "--images", "128", "--batch-size", "64", "--rounds", "1", "--peak-size", "1024"] if dry
                else ["--device", "cuda", "--graphs", "--rounds", "1"])
        t = self.limit("bench-eager", ["bench-compiled", "ensemble"])
        if t is None:
            self.skip("bench-eager", "not enough time left", shlex.join(cmd))
        else:
            self.run("bench-eager", cmd, t, parse_bench)

        if dry:
            self.skip("bench-compiled", "dry run: torch.compile is timed on the GPU only")
        else:
            group_end = time.monotonic() + (self.limit("bench-compiled", ["ensemble"]) or 0)
            for name in [m for m in COMPILED_ORDER if m in SEQUENTIAL + modern]:
                cmd = [self.py, "bench/run.py", "--models", name, "--compile", "--device", "cuda", "--rounds", "1"]
                left = min(group_end - time.monotonic(), self.remaining() - MINIMUM["ensemble"])
                if left < MINIMUM["bench-compiled"]:
                    self.skip(f"bench-compiled:{name}", f"the step's {SHARES['bench-compiled']:.0%} of the budget is used up",
                              shlex.join(cmd))
                    continue
                self.run(f"bench-compiled:{name}", cmd, left, parse_bench)

        # (c) the report's ensemble protocol
        self.step_ensemble(device, tiny)

        # (d) one modern-recipe run, with what is left
        self.step_modern(device, tiny, models)

    def step_ensemble(self, device: str, tiny: Path | None) -> None:
        script = [self.py, "bench/ensemble.py"]
        if not self.dry_run:
            cmd = script + ["--members", "30", "--epochs", "40", "--skip-sequential", "--device", device, "--compile"]
            help_text = self.flags_of(script)
            if "--threshold" in help_text:
                cmd += ["--threshold", "0.91"]  # the report's threshold vote (cnnlab ensemble's default)
            t = self.limit("ensemble", [])
            if t is None:
                self.skip("ensemble", "not enough time left", shlex.join(cmd))
            else:
                self.run("ensemble", cmd, t, parse_ensemble)
            return
        help_text = self.flags_of(script)
        subset = next((flag for flag in ("--limit", "--images") if flag in help_text), None)
        t = self.limit("ensemble", [])
        if subset:
            cmd = script + ["--model", "cnn1", "--members", "2", "--epochs", "1", "--skip-sequential", "--device", "cpu",
                            subset, "256"]
            if "--threshold" in help_text:
                cmd += ["--threshold", "0"]
            self.run("ensemble", cmd, t or 1, parse_ensemble)
        else:
            # bench/ensemble.py has no way yet to train on a subset, and a full Fashion-MNIST epoch takes minutes
            # on 2 CPU cores: run the same fused training through the CLI on a tiny dataset instead
            self.report["notes"] = self.report.get("notes", []) + [
                "dry run: bench/ensemble.py has no --limit/--images flag, so the ensemble step ran "
                "`cnnlab ensemble` (fused) on a tiny dataset; bench/ensemble.py itself was only imported (--help)"]
            self.log(f"bench/ensemble.py --help: {'ok' if 'usage' in help_text else 'FAILED'}")
            cmd = [self.py, "-m", "cnnlab", "ensemble", "cnn1", "--data", str(tiny), "--members", "2",
                   "--epochs", "1", "--threshold", "0", "--fuse", "2", "--device", "cpu", "--out",
                   str(self.work / "ensemble"), "--quiet"]
            step = self.run("ensemble", cmd, t or 1, parse_ensemble)
            step["bench_ensemble_help_ok"] = "usage" in help_text
            if "usage" not in help_text:
                step["status"], step["rc"] = "failed", step["rc"] or 1
            self.save()

    def step_modern(self, device: str, tiny: Path | None, models: list[str]) -> None:
        help_text = self.flags_of([self.py, "-m", "cnnlab", "train"])
        if "--recipe" not in help_text:
            self.skip("modern", "not built yet: `cnnlab train --help` has no --recipe")
            return
        if "resnet9" not in models:
            self.skip("modern", "not built yet: no resnet9 in cnnlab's models")
            return
        out = self.work / "modern"
        # the modern recipe on all 60,000 training images (no validation split: its schedule is fixed), test reported;
        # the dry run takes the CPU-budget recipe (a narrow ResNet-9) on the tiny data
        cmd = [self.py, "-m", "cnnlab", "train", "resnet9", "--recipe", "cpu-budget" if self.dry_run else "modern",
               "--device", device, "--out", str(out), "--quiet", "--val-fraction", "0"]
        if self.dry_run:
            cmd += ["--data", str(tiny), "--epochs", "1"]
        cmd += shlex.split(self.env.get("GPU_CHECK_MODERN_ARGS", ""))
        left = self.remaining()
        if left < MINIMUM["modern"] and not self.dry_run:
            self.skip("modern", f"only {left:.0f} s of the budget left (needs {MINIMUM['modern']} s)", shlex.join(cmd))
            return
        self.run("modern", cmd, left if not self.dry_run else max(left, 30), after=lambda: parse_run_dir(out))

    # -------------------------------------------------------------- summary

    def summary(self) -> str:
        lines = [f"\ngpu-check {'(dry run) ' if self.dry_run else ''}on {self.report['environment'].get('device_name')}: "
                 f"{time.monotonic() - self.start:.0f} s of {self.budget:.0f}; log {self.log_path}, figures {self.json_path}",
                 f"  precision auto: {self.report['environment'].get('precision')} "
                 f"({self.report['environment'].get('precision_reason', '')})"]
        for step in self.report["steps"]:
            f = step.get("figures") or {}
            note = ""
            if step["name"] == "gpu-tests":
                note = ", ".join(f"{k} {v}" for k, v in f.items() if isinstance(v, int))
            elif step["name"].startswith("bench"):
                note = "; ".join(f"{r['model']} {r.get('cnnlab_images_per_s', 0):,.0f} img/s ({r.get('cnnlab_vs_plain', 0):.2f}x)"
                                 + (f", compiled {r['compiled_images_per_s']:,.0f}" if "compiled_images_per_s" in r else "")
                                 for r in f.get("rows", []))
            elif step["name"] == "ensemble":
                fused = f.get("fused")
                if fused:
                    note = (f"{fused['members']} members, vote test {fused['vote_test_accuracy']:.4f}, "
                            f"training {fused['training_seconds']:.1f} s, wall {fused['wall_seconds']:.1f} s")
                elif "vote_val_accuracy" in f:
                    note = f"vote val {f['vote_val_accuracy']:.4f}"
            elif step["name"] == "modern" and f:
                note = f"val {f.get('val_accuracy')}, test {f.get('test_accuracy')}, {f.get('train_seconds_total')} s"
            reason = step.get("reason", "")
            lines.append(f"  {step['name']:<26} {step['status']:<8} rc {str(step['rc']):<5} {step['seconds']:>7.1f} s  "
                         f"{note or reason}")
        return "\n".join(lines)

    def close(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self._stop(self.child)
        self.report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()
        self.log_file.close()
        shutil.rmtree(self.work, ignore_errors=True)


def cuda_problem() -> str | None:
    """None when this python3's torch sees a CUDA device, else the one line to print."""
    code = "import torch; print('GPU_CHECK_CUDA', torch.cuda.is_available())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"gpu-check: no CUDA device here (importing torch took over {PROBE_TIMEOUT} s)"
    if "GPU_CHECK_CUDA True" in done.stdout:
        return None
    if "GPU_CHECK_CUDA False" in done.stdout:
        return NO_CUDA
    error = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return f"gpu-check: no CUDA device here (python3 could not import torch: {error})"


def default_out() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else Path.cwd() / "gpu-check"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.log and gpu_check.json "
                        "(default: $OUT when set, else ./gpu-check)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for everything (default 300)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps, tiny, on the CPU (no compile)")
    args = parser.parse_args(argv)

    if not args.dry_run:
        problem = cuda_problem()
        if problem:
            print(problem, file=sys.stderr)  # one line, and nothing written
            return 1
    check = Check(args.out or default_out(), args.budget, args.dry_run)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        check.log(f"gpu-check {'--dry-run ' if args.dry_run else ''}started {check.report['started']}, "
                  f"budget {args.budget:.0f} s, out {check.out}", echo=True)
        check.prepare()
        probe = check.probe()
        check.report["environment"].update(probe)
        check.log("environment: " + json.dumps(check.report["environment"]))
        check.log(f"precision auto: {probe.get('precision')} ({probe.get('precision_reason') or probe.get('precision_error')})")
        check.save()
        if not probe.get("cuda_available") and not args.dry_run:  # the first look saw CUDA; this one did not
            check.report["result"] = "no CUDA in the probe"
            print(NO_CUDA, file=sys.stderr)
            return 1
        if probe.get("cnnlab_import_errors"):
            check.log(f"cnnlab modules that fail to import: {probe['cnnlab_import_errors']}")
        check.execute(probe)
    except KeyboardInterrupt:
        check.log("gpu-check: interrupted; the JSON holds the steps done so far")
        check.report["result"] = "interrupted"
        return 130
    finally:
        check.close()
    bad = [s["name"] for s in check.report["steps"] if s["status"] in ("failed", "timeout")]
    check.report["result"] = "ok" if not bad else "problems: " + ", ".join(bad)
    check.save()
    print(check.summary(), flush=True)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
