"""The report's ensemble (section 1.3): train a model again and again with different seeds, keep the
runs whose held-out accuracy passes a threshold, and vote.

Unlike the report, the threshold is applied to the *validation* split; the test split is only
reported. An ensemble directory holds one ordinary run directory per member attempt, so members
can be trained by several processes or machines into one directory and combined later:

    DIR/ensemble.json          settings + the combined result (rewritten under a lock)
    DIR/members/member-007/    attempt 7 (seed = seed + 7): a normal run directory
    DIR/model.json, logits.safetensors, growth.png   the vote, usable by evaluate and predict
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cnnlab import runs
from cnnlab.config import TrainConfig
from cnnlab.errors import UserError

SETTINGS_FILE = "ensemble_settings.json"


# ------------------------------------------------------------------ voting (pure functions)


def vote(logits: np.ndarray, method: str = "hard") -> np.ndarray:
    """logits: members x N x classes -> N x classes scores whose argmax is the ensemble's prediction.

    hard: majority of the members' predictions; a tie goes to the tied class with the larger summed
    probability, then to the lower class index. soft: mean probability.
    """
    from cnnlab.metrics import softmax

    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3 or len(logits) == 0:
        raise ValueError("vote needs logits shaped members x N x classes with at least one member")
    k, n, c = logits.shape
    probs = np.stack([softmax(m) for m in logits])
    if method == "soft":
        return probs.mean(0)
    if method != "hard":
        raise UserError(f"--vote must be hard or soft, got {method!r}")
    votes = np.zeros((n, c))
    np.add.at(votes, (np.repeat(np.arange(n)[None], k, 0), probs.argmax(2)), 1)
    # summed probability is at most k < k + 1, so it only decides between classes with equal votes
    return votes + probs.sum(0) / (k + 1)


def scores_to_logits(scores: np.ndarray) -> np.ndarray:
    """Scores as log of a distribution, so evaluation tools read them like any run's logits."""
    return np.log(np.clip(scores / scores.sum(1, keepdims=True), 1e-12, None))


# ------------------------------------------------------------------ the ensemble directory


@contextmanager
def locked(directory: Path):
    """An exclusive lock on the ensemble directory (flock; safe across processes on one machine or NFS v4)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def member_dir(directory: Path, attempt: int) -> Path:
    return directory / "members" / f"member-{attempt:03d}"


def is_finished(path: Path) -> bool:
    return (path / "model.json").is_file() and (path / "logits.safetensors").is_file()


def _claim_is_stale(path: Path) -> bool:
    claim = path / "claim.json"
    try:
        info = json.loads(claim.read_text())
    except (OSError, json.JSONDecodeError):
        return True  # a claim without its file: the claimer died between mkdir and write
    if info.get("host") != socket.gethostname():
        return False  # another machine's process: we cannot tell, so leave it alone
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim_attempts(directory: Path, candidates: list[int], count: int) -> list[int]:
    """Claim up to `count` attempts nobody has finished or is training (stale claims are taken over)."""
    claimed = []
    with locked(directory):
        for attempt in candidates:
            if len(claimed) == count:
                break
            path = member_dir(directory, attempt)
            if path.exists():
                if is_finished(path) or not _claim_is_stale(path):
                    continue
                shutil.rmtree(path)  # an interrupted attempt: start it over
            path.mkdir(parents=True)
            runs.write_json(path / "claim.json", {"pid": os.getpid(), "host": socket.gethostname()})
            claimed.append(attempt)
    return claimed


def release(directory: Path, attempts: list[int]) -> None:
    """Drop unfinished claims (after an interruption), so the attempts can be trained again."""
    with locked(directory):
        for attempt in attempts:
            path = member_dir(directory, attempt)
            if path.exists() and not is_finished(path):
                shutil.rmtree(path)


def finished_members(directory: Path) -> list[dict]:
    members = []
    for path in sorted((directory / "members").glob("member-*")):
        if is_finished(path):
            metrics = runs.read_json(path / "metrics.json")
            members.append({"attempt": int(path.name.split("-")[1]), "seed": runs.read_json(path / "config.json")["seed"],
                            "path": str(path.relative_to(directory)), "val_accuracy": metrics["val_accuracy"],
                            "test_accuracy": metrics.get("test_accuracy"),
                            "train_seconds": metrics.get("train_seconds_total")})
    return members


def write_settings(directory: Path, config: TrainConfig, settings: dict) -> dict:
    """The first invocation fixes the settings; later ones (other workers, restarts) must agree."""
    path = directory / SETTINGS_FILE
    wanted = {"train": config.to_dict(), **settings}
    with locked(directory):
        if path.is_file():
            stored = runs.read_json(path)
            # the device may differ between workers (one CPU machine, one GPU machine); results may not
            diff = sorted(k for k in wanted["train"] if k != "device" and wanted["train"][k] != stored["train"].get(k))
            if diff:
                raise UserError(f"{directory}: holds an ensemble trained with other options ({', '.join(diff)}); "
                                "use another --out or the same options")
            return stored
        runs.write_json(path, wanted)
    return wanted


# ------------------------------------------------------------------ training and combining


def parse_member_range(text: str | None) -> range | None:
    """'0-9' or '4' -> attempt indices this process may train."""
    if not text:
        return None
    try:
        lo, _, hi = text.partition("-")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise UserError(f"--only-members: expected a range such as 0-9, got {text!r}") from None
    if lo < 0 or hi < lo:
        raise UserError(f"--only-members: expected a range such as 0-9, got {text!r}")
    return range(lo, hi + 1)


def train_ensemble(config: TrainConfig, directory: Path, members: int = 30, threshold: float = 0.91,
                   method: str = "hard", max_attempts: int | None = None, only: range | None = None,
                   fuse: int = 0, reporter=None, say=print) -> dict:
    """Train attempts until `members` pass the threshold (or attempts run out), then combine."""
    from cnnlab.engine import resolve_device
    from cnnlab.fused import can_fuse, train_members_fused
    from cnnlab.models import create_model

    if members < 1:
        raise UserError(f"--members must be at least 1, got {members}")
    if not 0 <= threshold <= 1:
        raise UserError(f"--threshold is an accuracy between 0 and 1, got {threshold}")
    if method not in ("hard", "soft"):
        raise UserError(f"--vote must be hard or soft, got {method!r}")
    max_attempts = max_attempts or members * 3
    settings = write_settings(directory, config, {"members": members, "threshold": threshold, "vote": method,
                                                  "max_attempts": max_attempts})
    members, threshold, method = settings["members"], settings["threshold"], settings["vote"]
    device = resolve_device(config.device)
    fusable = can_fuse(create_model(config.model, num_classes=2, **config.model_params)) and not config.early_stopping and config.optimizer == "adam"
    # auto: fuse on CUDA, where one small CNN leaves the GPU mostly idle; on the 2-core CPU five fused
    # tuned-cnn members ran at 3,150 member-images/s against 3,960 images/s for one model (measured)
    group = (fuse or (30 if device.type == "cuda" else 1)) if fusable else 1
    say(f"training path: {'fused, up to %d members at once' % group if group > 1 else 'one member after another'}"
        + ("" if fusable else f" ({config.model} cannot be fused)"))
    candidates = [a for a in range(max_attempts) if only is None or a in only]
    while True:
        done = finished_members(directory)
        qualified = sum(m["val_accuracy"] >= threshold for m in done)
        if qualified >= members:
            break
        attempts = claim_attempts(directory, candidates, min(group, members - qualified))
        if not attempts:
            break
        try:
            seeds = [config.seed + a for a in attempts]
            dirs = [member_dir(directory, a) for a in attempts]
            say(f"attempts {', '.join(map(str, attempts))} (seeds {', '.join(map(str, seeds))}); "
                f"{qualified}/{members} qualified so far")
            if group > 1:
                results = train_members_fused(config, seeds, dirs, reporter)
            else:
                from cnnlab.engine import train

                results = [train(replace(config, seed=seeds[0]), dirs[0], reporter)]
            for attempt, result in zip(attempts, results):
                verdict = "kept" if result["val_accuracy"] >= threshold else "discarded"
                say(f"  attempt {attempt}: val {result['val_accuracy']:.4f}"
                    + (f", test {result['test_accuracy']:.4f}" if "test_accuracy" in result else "") + f" -> {verdict}")
        except BaseException:
            release(directory, attempts)
            raise
    return combine(directory)


def combine(directory: Path) -> dict:
    """Vote with the first `members` qualified members; write the ensemble's files and manifest."""
    from cnnlab.evaluation import run_logits
    from cnnlab.metrics import classification_metrics

    directory = Path(directory)
    if not (directory / SETTINGS_FILE).is_file():
        raise UserError(f"{directory}: not an ensemble directory (no {SETTINGS_FILE})")
    settings = runs.read_json(directory / SETTINGS_FILE)
    with locked(directory):
        done = finished_members(directory)
        qualified = [m for m in done if m["val_accuracy"] >= settings["threshold"]][: settings["members"]]
        manifest = {"model": settings["train"]["model"], "vote": settings["vote"], "threshold": settings["threshold"],
                    "threshold_split": "val", "members_wanted": settings["members"], "attempts": len(done),
                    "qualified": len(qualified), "members": qualified, "discarded": [m for m in done if m not in qualified]}
        if not qualified:
            runs.write_json(directory / "ensemble.json", manifest)
            return manifest
        meta = runs.read_json(directory / qualified[0]["path"] / "model.json")
        tensors, growth = {}, {}
        for split in ("val", "test"):
            try:
                stacked = [run_logits(directory / m["path"], split) for m in qualified]
            except UserError:
                continue  # no labeled test split in this dataset
            logits, labels = np.stack([s[0] for s in stacked]), stacked[0][1]
            scores = vote(logits, settings["vote"])
            tensors[f"{split}_logits"] = torch.from_numpy(scores_to_logits(scores)).float()
            tensors[f"{split}_labels"] = torch.from_numpy(labels)
            manifest[f"{split}_accuracy"] = float((scores.argmax(1) == labels).mean())
            growth[split] = [float((vote(logits[:i], settings["vote"]).argmax(1) == labels).mean())
                             for i in range(1, len(qualified) + 1)]
            manifest[f"{split}_metrics"] = classification_metrics(labels, scores.argmax(1), meta["class_names"])
        manifest["growth"] = growth
        runs.save_tensors(directory / "logits.safetensors", tensors)
        runs.write_json(directory / "model.json", {**meta, "ensemble": True,
                                                   "members": [m["path"] for m in qualified], "vote": settings["vote"]})
        runs.write_json(directory / "ensemble.json", manifest)
    from cnnlab.plots import ensemble_growth_plot

    ensemble_growth_plot(growth, directory / "growth.png", f"{manifest['model']} ensemble ({settings['vote']} vote)")
    return manifest


def ensemble_logits(directory: Path, images: torch.Tensor, device, batch_size: int = 1024) -> np.ndarray:
    """Vote scores of an ensemble directory's members on new images."""
    from cnnlab.engine import load_model, predict_logits, run_autocast

    meta = runs.read_json(Path(directory) / "model.json")
    stacked = []
    for path in meta["members"]:
        model, _ = load_model(Path(directory) / path, device)
        autocast = run_autocast(Path(directory) / path, device)
        stacked.append(predict_logits(model, images.to(device), batch_size, autocast).cpu().numpy())
    return vote(np.stack(stacked), meta["vote"])
