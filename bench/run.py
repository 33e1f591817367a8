"""Training speed against the limit: cnnlab's default training path, a plain PyTorch loop, and the machine's peak.

For each model, in each of --rounds interleaved rounds (cnnlab and the plain loop one after the other,
the order alternating from round to round so neither always runs on a warmer or quieter machine):

- cnnlab: `cnnlab.engine.fit` on a subset of Fashion-MNIST's training split with the defaults of
  `cnnlab train` (only model, epochs = 1, batch size and data are set), in a temporary run directory;
  images/second is the `train_images_per_second` fit reports (its warm-up - compilation, probes,
  autotuning - is excluded and reported apart as `warmup_seconds`).
- plain: the loop most tutorials write, on a hand-written copy of the model (bench/peers.py, no
  cnnlab code): TensorDataset + DataLoader(shuffle=True), fp32, eager, Adam(lr 1e-3), cross-entropy,
  loss.item() each step, one warm-up step untimed.
- the limit: FLOPs of one training step (forward + backward, batch 128, counted on the peer with
  torch.utils.flop_counter) times steps/second, as a fraction of a 4096 x 4096 matmul peak measured
  at the start of the same run (fp32; also bf16 where the hardware has native bf16).

Prints a table (median over rounds; the ratio also min-max), Markdown rows for bench/README.md
("Speed against the limit") and, with --json, writes everything as JSON.

    python bench/run.py [--models cnn1,tuned-cnn] [--images N | --images cnn2=960,cnn3=640] [--rounds 3]
                        [--device auto] [--json auto|PATH] [--compile] [--graphs]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from cnnlab.allocator import keep_freed_memory  # noqa: E402
from cnnlab.config import build_config  # noqa: E402
from cnnlab.data import Dataset, Split, load_dataset  # noqa: E402
from cnnlab.device import synchronize  # noqa: E402
from cnnlab.engine import fit  # noqa: E402
from cnnlab.errors import UserError  # noqa: E402
from cnnlab.models import count_parameters, create_model, list_models  # noqa: E402
from cnnlab.product_speed import peak  # noqa: E402
from cnnlab.text import visible  # noqa: E402
from peers import INPUT_SHAPE, build_peer, trainable_parameters  # noqa: E402

EPOCH_IMAGES = 48_000  # the report's training split: seconds per epoch are given for this many images
DEFAULT_MODELS = "cnn1,cnn2,cnn3,cnn4,tuned-cnn"
# Images per timed epoch on the CPU, per model, so each measurement takes 3-15 s on a quiet 2-core AVX2-only CPU
# (AMD EPYC; single plain steps there ran at about cnn1 3,300 img/s, cnn2 260, cnn3 140, cnn4 290, tuned-cnn 880):
# 3 rounds of all five models then take an estimated 6 minutes, twice that on a busy machine. cnn2/cnn3 are
# 13-19M-parameter dense models: fewer images. On CUDA: a full 48,000-image epoch.
CPU_IMAGES = {"cnn1": 9_600, "cnn2": 2_560, "cnn3": 1_920, "cnn4": 3_840, "tuned-cnn": 6_400}
CPU_IMAGES_OTHER = 2_560
PEAK_REPEATS = 5
SUBSET_SEED = 0


# ------------------------------------------------------------------ the machine


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_class() -> str:
    """AMX, AVX-512 or AVX2-only: the CPU classes whose speeds are reported apart (bench/README.md)."""
    flags = cpu_flags()
    if flags:
        if "amx_tile" in flags:
            return "AMX"
        if "avx512f" in flags:
            return "AVX-512"
        return "AVX2-only" if "avx2" in flags else "pre-AVX2"
    capability = torch.backends.cpu.get_cpu_capability()  # no /proc/cpuinfo (not Linux): what torch dispatches to
    return {"AVX512": "AVX-512", "AVX2": "AVX2-only"}.get(capability, capability)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return {"class": name, "name": name, "native_bf16": torch.cuda.is_bf16_supported()}
    try:
        native = bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without these probes
        native = False
    cls, isa = cpu_class(), os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa.startswith(("AVX2", "SSE")) and cls in ("AMX", "AVX-512"):
        # the AVX2 emulation (bench/README.md): oneDNN has no bf16 kernels then (a bf16 4096 x 4096 product took
        # minutes on the 2-core AMX Xeon), and the figures belong to no real class
        native, cls = False, f"{cls}, {isa} emulated"
    return {"class": cls, "name": cpu_name(), "native_bf16": native,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def git_commit() -> tuple[str | None, bool]:
    """(HEAD, whether the working tree differs from it)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD").stdout.strip() or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False
    return head, dirty


def measure_peaks(device: torch.device, native_bf16: bool, size: int) -> dict:
    fp32 = peak(device, torch.float32, size, PEAK_REPEATS)
    bf16 = peak(device, torch.bfloat16, size, PEAK_REPEATS) if native_bf16 else None
    peaks = {"matmul_size": size, "repeats": PEAK_REPEATS, "fp32_flop_per_s": fp32["flop_per_s"],
             "bf16_flop_per_s": bf16["flop_per_s"] if bf16 else None,
             "by_library": {"fp32": fp32["by_library"], "bf16": bf16["by_library"] if bf16 else None}}
    if device.type == "cuda":
        peaks["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32  # False: true fp32, not TF32
    return peaks


# ------------------------------------------------------------------ the models


def reference_model(name: str, num_classes: int, shape: tuple[int, int, int]) -> torch.nn.Module:
    """The peer when there is one for this input, else cnnlab's model (for counting only, never timed as the peer)."""
    peer = build_peer(name, num_classes) if shape == INPUT_SHAPE else None
    if peer is not None:
        return peer
    return create_model(name, num_classes=num_classes, in_chans=shape[0], image_size=shape[1])


def check_peer(name: str, num_classes: int) -> None:
    """A peer that drifted from cnnlab's model would make the ratio meaningless: refuse to time it."""
    ours = count_parameters(create_model(name, num_classes=num_classes))[0]
    peer = trainable_parameters(build_peer(name, num_classes))
    if ours != peer:
        raise SystemExit(f"bench/peers.py: {name} has {peer:,} trainable parameters, cnnlab's {ours:,}; "
                         "update the peer to match src/cnnlab/models")


def step_flops(model: torch.nn.Module, batch: int, shape: tuple[int, int, int], num_classes: int,
               device: torch.device) -> int:
    """FLOPs of one training step's forward + backward (matmuls and convolutions, as FlopCounterMode counts; fp32).
    The count does not depend on the device; the device only makes counting fast."""
    torch.manual_seed(0)
    model = model.to(device).train()
    x, y = torch.rand(batch, *shape, device=device), torch.randint(0, num_classes, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------ data


def subset(full: Dataset, n_train: int, val_fraction: float) -> Dataset:
    """A random pool from the training split, sized so that cnnlab's default train/validation split leaves
    n_train images to train on; no test split (fit would evaluate it, which is not timed anyway)."""
    n_pool = min(len(full.train), math.ceil(n_train / (1 - val_fraction)))
    order = torch.randperm(len(full.train), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n_pool]
    train = Split(full.train.images[order].contiguous(), full.train.labels[order])
    return Dataset(name=full.name, source=f"{full.source} ({n_pool} random training images)",
                   class_names=full.class_names, train=train, test=None, class_ids=full.class_ids, verified=full.verified)


def images_per_model(spec: tuple[int | None, dict[str, int]] | None, models: list[str],
                     device: torch.device) -> dict[str, int]:
    """--images, as image_counts parsed it: one number for every model, or name=N entries (a bare number is the
    default for the rest)."""
    default, chosen = spec or (None, {})
    default = default or (EPOCH_IMAGES if device.type == "cuda" else None)
    return {m: chosen.get(m) or default or CPU_IMAGES.get(m, CPU_IMAGES_OTHER) for m in models}


# ------------------------------------------------------------------ the two measurements


def time_cnnlab(name: str, dataset: Dataset, args, **options) -> dict:
    """One epoch of `cnnlab train`'s default path through cnnlab.engine.fit; figures from its metrics."""
    config = build_config({"model": name, "epochs": 1, "batch_size": args.batch_size, "data": args.data,
                           "device": args.device, **options})
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        metrics = fit(config, Path(tmp) / name, dataset=dataset)
    images = round(metrics["train_images_per_second"] * metrics["train_seconds_total"])
    return {"images_per_s": metrics["train_images_per_second"], "train_images": images,
            "train_seconds": metrics["train_seconds_total"], "warmup_seconds": metrics["warmup_seconds"],
            "precision": metrics["precision"]}


def time_plain(name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int, device: torch.device,
               batch: int) -> float:
    """Images/second of one epoch of the textbook loop on the hand-written peer (after one warm-up step)."""
    torch.manual_seed(0)
    model = build_peer(name, num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(images.float() / 255, labels), batch_size=batch, shuffle=True)
    model.train()

    def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    step(*next(iter(loader)))  # warm-up: allocations, Adam's state, kernel selection
    synchronize(device)
    start = time.perf_counter()
    for xb, yb in loader:
        step(xb, yb)
    synchronize(device)
    return len(images) / (time.perf_counter() - start)


# ------------------------------------------------------------------ rounds and figures


def extra_variants(args) -> dict[str, dict]:
    """Non-default cnnlab settings timed next to the default when asked (GPU check)."""
    out = {}
    if args.compile:
        out["compiled"] = {"compile": True}
    if args.graphs:
        out["graphs"] = {"cuda_graphs": True}
    return out


def measure_round(name: str, r: int, dataset: Dataset, n: int, has_peer: bool, device, args) -> dict:
    """cnnlab (default path, then any variants) and the plain loop, the order alternating between rounds."""
    result: dict = {"round": r + 1}

    def run_cnnlab() -> None:
        result["cnnlab"] = time_cnnlab(name, dataset, args)
        for variant, options in extra_variants(args).items():
            result[variant] = time_cnnlab(name, dataset, args, **options)

    def run_plain() -> None:
        if has_peer:
            images, labels = dataset.train.images[:n], dataset.train.labels[:n]
            result["plain"] = {"images_per_s": time_plain(name, images, labels, dataset.num_classes, device,
                                                          args.batch_size), "train_images": n}

    for measure in ((run_cnnlab, run_plain) if r % 2 == 0 else (run_plain, run_cnnlab)):
        measure()
    if has_peer:
        result["ratio"] = result["cnnlab"]["images_per_s"] / result["plain"]["images_per_s"]
    return result


def round_line(name: str, rounds: int, res: dict) -> str:
    c = res["cnnlab"]
    line = (f"round {res['round']}/{rounds} {name}: cnnlab {c['images_per_s']:,.0f} img/s ({c['precision']}, "
            f"{c['train_images']} images, warm-up {c['warmup_seconds']:.1f} s)")
    if "plain" in res:
        line += f", plain {res['plain']['images_per_s']:,.0f} img/s, ratio {res['ratio']:.2f}x"
    for variant in ("compiled", "graphs"):
        if variant in res:
            line += f", {variant} {res[variant]['images_per_s']:,.0f} img/s"
    return line


def median_of(rounds: list[dict], key: str) -> float | None:
    values = [r[key]["images_per_s"] for r in rounds if key in r]
    return statistics.median(values) if values else None


def summarize(rounds: list[dict], flops: int, batch: int, peaks: dict) -> dict:
    """Medians over rounds; fraction of the peak = FLOP/step x steps/s (at the median speed) / peak FLOP/s."""
    s: dict = {"flop_per_step": flops, "cnnlab_warmup_s": statistics.median(r["cnnlab"]["warmup_seconds"] for r in rounds)}
    ratios = [r["ratio"] for r in rounds if "ratio" in r]  # paired within a round: the noise of one round cancels
    if ratios:
        s.update(ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
    for who in ("cnnlab", "plain", "compiled", "graphs"):
        ips = median_of(rounds, who)
        if ips is None:
            continue
        achieved = flops / batch * ips
        s.update({f"{who}_images_per_s": ips, f"{who}_seconds_per_epoch": EPOCH_IMAGES / ips,
                  f"{who}_flop_per_s": achieved})
        for dtype in ("fp32", "bf16"):
            if peaks[f"{dtype}_flop_per_s"]:
                s[f"{who}_fraction_of_{dtype}_peak"] = achieved / peaks[f"{dtype}_flop_per_s"]
        if who in ("compiled", "graphs") and s.get("plain_images_per_s"):
            s[f"{who}_vs_plain"] = ips / s["plain_images_per_s"]
    return s


# ------------------------------------------------------------------ output


def pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def table_columns(args) -> list[tuple[str, str, str, Callable]]:
    """(header, summary key, format, transform). Headers are single tokens: bench/gpu_check.py reads them."""
    def same(v):
        return v
    cols = [("cnnlab_img/s", "cnnlab_images_per_s", ",.0f", same), ("plain_img/s", "plain_images_per_s", ",.0f", same),
            ("ratio", "ratio_median", ".2f", same), ("ratio_min", "ratio_min", ".2f", same),
            ("ratio_max", "ratio_max", ".2f", same), ("cnnlab_s/ep", "cnnlab_seconds_per_epoch", ".2f", same),
            ("plain_s/ep", "plain_seconds_per_epoch", ".2f", same), ("warmup_s", "cnnlab_warmup_s", ".1f", same),
            ("GFLOP/step", "flop_per_step", ".3f", lambda v: v / 1e9),
            ("cnnlab_%fp32", "cnnlab_fraction_of_fp32_peak", ".1f", pct),
            ("cnnlab_%bf16", "cnnlab_fraction_of_bf16_peak", ".1f", pct),
            ("plain_%fp32", "plain_fraction_of_fp32_peak", ".1f", pct)]
    for variant in extra_variants(args):
        cols += [(f"{variant}_img/s", f"{variant}_images_per_s", ",.0f", same),
                 (f"{variant}_ratio", f"{variant}_vs_plain", ".2f", same),
                 (f"{variant}_s/ep", f"{variant}_seconds_per_epoch", ".2f", same)]
    return cols


def print_table(summaries: dict[str, dict], args) -> None:
    cols = table_columns(args)
    width = max(10, *(len(m) for m in summaries))
    print(f"{'model':<{width}} " + " ".join(f"{h:>12}" for h, *_ in cols))
    for model, s in summaries.items():
        cells = []
        for header, key, fmt, transform in cols:
            value = s.get(key)
            cells.append(f"{format(transform(value), fmt) if value is not None else '-':>{max(12, len(header))}}")
        print(f"{model:<{width}} " + " ".join(cells))


def markdown_header(native_bf16_column: bool) -> list[str]:
    cols = ["model", "cnnlab img/s", "plain img/s", "ratio (median, min–max)", "FLOP/step", "fraction of fp32 peak"]
    cols += ["fraction of bf16 peak"] if native_bf16_column else []
    cols += ["date", "commit"]
    return ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if c in ("model", "date", "commit") else "---:"
                                                           for c in cols) + "|"]


def markdown_row(model: str, s: dict, bf16_column: bool, date: str, commit: str) -> str:
    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"

    ratio = (f"{s['ratio_median']:.2f}x ({s['ratio_min']:.2f}–{s['ratio_max']:.2f})" if "ratio_median" in s else "-")
    cells = [model, num(s["cnnlab_images_per_s"], ",.0f"), num(s.get("plain_images_per_s"), ",.0f"), ratio,
             f"{s['flop_per_step'] / 1e9:.2f} G", num(pct(s.get("cnnlab_fraction_of_fp32_peak")), ".1f") + "%"]
    if bf16_column:
        bf16 = s.get("cnnlab_fraction_of_bf16_peak")
        cells.append(f"{pct(bf16):.1f}%" if bf16 is not None else "-")
    cells += [date, commit]
    return "| " + " | ".join(cells) + " |"


def json_path(spec: str | None, hw_class: str, date: str) -> Path | None:
    if not spec:
        return None
    if spec != "auto":
        return Path(spec)
    slug = "".join(c if c.isalnum() else "-" for c in hw_class.lower()).strip("-")
    return BENCH / "results" / f"{slug}-{date}.json"


def write_json(path: Path | None, report: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------ arguments


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line on stderr and exit 2, as cnnlab's CLI prints them (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def fail(prog: str, exc: UserError):
    """A UserError met after parsing (bad data, a refused setting): one line and exit 2, as `cnnlab` does."""
    print(f"{prog}: error: {visible(exc)}", file=sys.stderr)
    sys.exit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def model_names(text: str) -> list[str]:
    """--models: registered names, checked here so a typo is refused before the minute of peak measurement."""
    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"names no model, got {text!r}; give names such as cnn1,tuned-cnn")
    unknown = [m for m in names if m not in list_models()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(map(repr, unknown))}; known models are "
                                         f"{', '.join(list_models())}")
    return names


def image_counts(text: str) -> tuple[int | None, dict[str, int]]:
    """--images: N for every model and/or name=N entries -> (N or None, {name: N}); every count at least 1
    (0 used to fall back to the default silently)."""
    default, chosen = None, {}
    for item in filter(None, text.split(",")):
        name, _, value = item.rpartition("=")
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise argparse.ArgumentTypeError(f"must be a positive number of images for every model, or name=N "
                                             f"entries, e.g. 1024 or cnn2=1280,cnn3=960; got {item.strip()!r}")
        if name.strip() in chosen:  # cnn1=10,cnn1=20: the last one won without a word
            raise argparse.ArgumentTypeError(f"{name.strip()} is given twice; give each model's count once")
        if name.strip():
            chosen[name.strip()] = count
        else:
            default = count
    return default, chosen


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=model_names, default=DEFAULT_MODELS)
    parser.add_argument("--images", type=image_counts, default=None, help="images per timed epoch: N for every "
                        f"model, or name=N,... (default: {EPOCH_IMAGES:,} on CUDA; on the CPU {CPU_IMAGES}, "
                        f"{CPU_IMAGES_OTHER} for others)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds; the report gives median "
                        "and min-max")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--data", default="fashion-mnist", help="dataset (default fashion-mnist)")
    parser.add_argument("--json", default=None, help="write the results as JSON here; 'auto': "
                        "bench/results/<hardware class>-<date>.json (what `make bench` does)")
    parser.add_argument("--peak-size", type=positive_int, default=4096, help="matmul size of the peak (default 4096; "
                        "smaller is faster but understates the peak: quick checks only)")
    parser.add_argument("--compile", action="store_true", help="also time cnnlab with compile = true (the default, auto, "
                        "compiles only where a probe finds it pays)")
    parser.add_argument("--graphs", action="store_true", help="also time the CUDA-graph step (CUDA only, not the default)")
    args = parser.parse_args(argv)
    if args.json not in (None, "auto"):  # found out after the measurements (a traceback), or a folder made as root
        target = Path(args.json)
        if target.is_dir() or not target.parent.is_dir():
            parser.error(f"argument --json: {target} is a folder or lies in no existing folder; give a file in an "
                         "existing folder, or auto")
    if args.graphs and (args.device == "cpu" or not torch.cuda.is_available()):
        parser.error("argument --graphs: times the CUDA-graph step, and there is no CUDA here; drop it on the CPU")
    # a per-model count for a model not timed was ignored without a word (a typo such as cnn9=100)
    stray = [m for m in (args.images or (None, {}))[1] if m not in args.models]
    if stray:
        parser.error(f"argument --images: {', '.join(stray)} not among --models ({','.join(args.models)}); "
                     "give counts only for the models timed")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda, but no CUDA device is available here; use --device cpu or auto")
    return args


def peak_line(peaks: dict) -> str:
    def one(dtype: str) -> str:
        libs = ", ".join(f"{lib} {v / 1e9:,.1f}" for lib, v in peaks["by_library"][dtype].items())
        return f"{dtype} {peaks[f'{dtype}_flop_per_s'] / 1e9:,.1f} GFLOP/s ({libs})"

    size = peaks["matmul_size"]
    return (f"peak ({size}x{size} matmul, best of {peaks['repeats']}): {one('fp32')}"
            + (f"; {one('bf16')}" if peaks["bf16_flop_per_s"] else "; no native bf16"))


def resolve_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def describe_run(args, device: torch.device) -> dict:
    """What the figures depend on: hardware class, torch, threads, commit, settings."""
    commit, dirty = git_commit()
    return {"bench": "bench/run.py", "date": time.strftime("%Y-%m-%d"), "commit": commit, "commit_modified": dirty,
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "hardware": hardware(device), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
            "rounds": args.rounds, "data": args.data, "epoch_images": EPOCH_IMAGES,
            # cnnlab's fit sets glibc's malloc thresholds for its whole process (cnnlab.allocator); set here before
            # anything, the plain loop has them in every round too, so the ratio leaves their gain out. A plain loop
            # in a spawned process of its own slowed cnnlab's next runs (cnn1 5,700-6,000 -> 4,200-4,300 img/s)
            "malloc": keep_freed_memory() if device.type == "cpu" else None}


def plan_models(models: list[str], full: Dataset, sizes: dict[str, int], args, device: torch.device) -> dict:
    """Per model: its subset, whether it has a peer (checked against cnnlab's model), its FLOPs per step."""
    shape, num_classes = full.shape, full.num_classes
    val_fraction = build_config({"data": args.data}).val_fraction  # cnnlab's default split of the pool
    plan = {}
    for name in models:
        has_peer = build_peer(name, num_classes) is not None and shape == INPUT_SHAPE
        if has_peer:
            check_peer(name, num_classes)
        flops = step_flops(reference_model(name, num_classes, shape), args.batch_size, shape, num_classes, device)
        plan[name] = {"has_peer": has_peer, "images": sizes[name], "dataset": subset(full, sizes[name], val_fraction),
                      "flop_per_step": flops, "rounds": []}
    return plan


def run_rounds(plan: dict, report: dict, args, device: torch.device, out_path: Path | None) -> None:
    """Round after round, every model once per round; the JSON is rewritten after every measurement, so a run
    stopped early keeps what it had."""
    for r in range(args.rounds):
        for name, p in plan.items():
            res = measure_round(name, r, p["dataset"], p["images"], p["has_peer"], device, args)
            p["rounds"].append(res)
            print(round_line(name, args.rounds, res), flush=True)
            report["models"][name] = {"images": p["images"], "has_peer": p["has_peer"], "rounds": p["rounds"],
                                      "summary": summarize(p["rounds"], p["flop_per_step"], args.batch_size,
                                                           report["peaks"])}
            write_json(out_path, report)


def print_results(report: dict, args) -> None:
    summaries = {name: m["summary"] for name, m in report["models"].items()}
    print()
    print_table(summaries, args)
    precision = next(iter(report["models"].values()))["rounds"][0]["cnnlab"]["precision"]
    print(f"cnnlab precision on this device: {precision}; 's/ep' = seconds per epoch of {EPOCH_IMAGES:,} images "
          f"(extrapolated from the timed subset); ratio = cnnlab / plain, median (min, max) of {args.rounds} rounds; "
          "%fp32/%bf16 = FLOP/step x steps/s as a share of the matmul peak")
    hw_class, commit = report["hardware"]["class"], (report["commit"] or "unknown")[:7]
    bf16_column = hw_class != "AVX2-only"  # the README's AVX2-only table has no bf16 column
    rows = [markdown_row(name, s, bf16_column, report["date"], commit) for name, s in summaries.items()]
    report["markdown"] = markdown_header(bf16_column) + rows
    print(f"\nMarkdown rows for bench/README.md, \"Speed against the limit\" ({hw_class}: {report['hardware']['name']}, "
          f"{report['threads']} threads, torch {report['torch']}):")
    print("\n".join(report["markdown"]))


def main(argv: list[str] | None = None) -> None:
    """Entry point: a user's mistake (bad flag, unknown data) is one line on stderr and exit 2, no traceback."""
    try:
        bench(argv)
    except UserError as exc:
        fail("run.py", exc)


def bench(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped from outside: temporary run dirs still go
    device = resolve_device(args.device)
    if args.graphs and device.type != "cuda":
        raise SystemExit("bench/run.py: --graphs needs CUDA (the CUDA-graph step); drop it on the CPU")
    models = args.models
    for name in models:  # batch size, data name, model: refused now, not after the peak (time_cnnlab builds these)
        build_config({"model": name, "epochs": 1, "batch_size": args.batch_size, "data": args.data,
                      "device": args.device})
    sizes = images_per_model(args.images, models, device)
    report = describe_run(args, device)
    hw = report["hardware"]
    print(f"device: {hw['name']} ({hw['class']}, {report['threads']} threads); torch {torch.__version__}; commit "
          f"{(report['commit'] or 'unknown')[:10]}{' (modified)' if report['commit_modified'] else ''}; "
          f"batch {args.batch_size}; {args.rounds} rounds; images per timed epoch: "
          + ", ".join(f"{m} {sizes[m]}" for m in models), flush=True)

    out_path = json_path(args.json, hw["class"], report["date"])
    if out_path is not None and out_path.is_dir():
        raise UserError(f"--json {out_path}: is a folder; give a file name such as {out_path / 'bench.json'}")
    full = load_dataset(args.data)  # a missing dataset is refused before the peak, not after it

    report["peaks"] = peaks = measure_peaks(device, hw["native_bf16"], args.peak_size)  # before any training
    print(peak_line(peaks), flush=True)

    plan = plan_models(models, full, sizes, args, device)
    report["models"] = {}
    run_rounds(plan, report, args, device, out_path)
    print_results(report, args)
    write_json(out_path, report)
    if out_path:
        print(f"JSON: {out_path}")


if __name__ == "__main__":
    main()
