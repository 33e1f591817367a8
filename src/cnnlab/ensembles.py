"""The report's ensemble (section 1.3): train a model again and again with different seeds, keep the
runs whose held-out accuracy passes a threshold, and vote.

Unlike the report, the threshold is applied to the *validation* split; the test split is only
reported. An ensemble directory holds one ordinary run directory per member attempt, so members
can be trained by several processes or machines into one directory and combined later:

    DIR/ensemble_settings.json the options, fixed by the first invocation
    DIR/ensemble.json          the combined result (rewritten under a lock)
    DIR/groups.json            which attempts trained together in one fused network
    DIR/members/member-007/    attempt 7 (seed = seed + 7): a normal run directory
    DIR/model.json, logits.safetensors, growth.png   the vote, usable by evaluate and predict

A model of the user's own (an nn.Module or a factory: `builder`) is named by its class or factory in the
manifest; the settings record its import path, and continuing the ensemble takes the model again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cnnlab import runs
from cnnlab.budget import Budget, TooSmall, budget_spent_first, chosen_line, format_seconds
from cnnlab.config import MAX_RUNS, TrainConfig, differing_settings, require_seeds_fit, require_validation, shorten
from cnnlab.data.fingerprint import files_fingerprint, require_same_files
from cnnlab.data.prepared import preflight
from cnnlab.device import resolve_device
from cnnlab.distributed import cluster_has_gpus, put_dataset, ray_cluster, run_tasks
from cnnlab.engine import config_for_resume, fit
from cnnlab.errors import UserError, option
from cnnlab.fused import can_fuse_config, train_members_fused
from cnnlab.groups import GroupDir
from cnnlab.metrics import classification_metrics
from cnnlab.models.custom import CUSTOM_MODEL, class_path, display_name, refuse_by_name, require_importable
from cnnlab.plots import ensemble_growth_plot
from cnnlab.runs import RunDir
from cnnlab.voting import scores_to_logits, vote  # noqa: F401  (vote: importable from here too)

SETTINGS_FILE = "ensemble_settings.json"  # the ensemble's options, fixed by its first invocation
MANIFEST_FILE = "ensemble.json"  # the vote's members, accuracies and growth (rewritten by combine)


# ------------------------------------------------------------------ the ensemble directory


def ensemble_dir(directory: Path) -> GroupDir:
    return GroupDir(directory, SETTINGS_FILE, "members")


def member_dir(directory: Path, attempt: int) -> Path:
    return ensemble_dir(directory).run(f"member-{attempt:03d}").path


def finished_members(directory: Path) -> list[dict]:
    members = []
    for run in ensemble_dir(directory).run_dirs():
        path = run.path
        if run.is_finished():
            metrics = run.read_metrics()
            members.append({"attempt": int(path.name.split("-")[1]), "seed": run.read_config()["seed"],
                            "path": str(path.relative_to(directory)), "val_accuracy": metrics["val_accuracy"],
                            "test_accuracy": metrics.get("test_accuracy"),
                            "train_seconds": metrics.get("train_seconds_total")})
    return members


def claim_attempts(directory: Path, candidates: list[int], count: int) -> list[tuple[int, RunDir]]:
    """Own up to `count` member directories nobody has finished or is training, interrupted ones first
    (they continue from their checkpoints). A claim is the run directory's owner lock: a dead process's
    claim is gone with it."""
    claimed: list[tuple[int, RunDir]] = []
    with ensemble_dir(directory).locked():
        ordered = sorted(candidates, key=lambda a: RunDir(member_dir(directory, a)).status() != runs.INTERRUPTED)
        for attempt in ordered:
            if len(claimed) == count:
                break
            run = RunDir(member_dir(directory, attempt))
            if run.status() in (runs.FINISHED, runs.RUNNING) or not run.try_own():
                continue
            claimed.append((attempt, run))
    return claimed


def resumable_groups(directory: Path, claimed: list[tuple[int, RunDir]]) -> tuple[list[list], list, list]:
    """Split claimed attempts into (fused groups to resume whole, single runs to resume, fresh ones).

    A group resumes as the same group when all its members are claimed here with checkpoints of the
    same epoch; otherwise each checkpointed member resumes alone (its checkpoint has a standalone
    run's format), so no finished epoch is lost."""
    groups = ensemble_dir(directory).read_groups()
    by_attempt = dict(claimed)
    resumable = {a for a, run in claimed if run.resumable()}
    whole, singles, seen = [], [], set()
    for attempt in sorted(resumable):
        if attempt in seen:
            continue
        group = [a for a in groups.get(str(attempt), [attempt]) if a in by_attempt]
        if len(group) > 1 and set(group) <= resumable and len(set(groups.get(str(attempt)))) == len(group) and \
                len({by_attempt[a].checkpoint_epoch() for a in group}) == 1:
            whole.append([(a, by_attempt[a]) for a in group])
            seen.update(group)
        else:
            singles.append((attempt, by_attempt[attempt]))
            seen.add(attempt)
    fresh = [(a, run) for a, run in claimed if a not in resumable]
    return whole, singles, fresh


def require_builder(directory: Path, builder=None) -> None:
    """An ensemble directory of a model of the user's own is continued with that model passed again (one line
    otherwise), and one of a registered model is not continued with a model of the user's own."""
    group = ensemble_dir(directory)
    if not group.has_settings():
        return
    stored = group.read_settings().get("custom_model")
    if stored is not None and builder is None:
        raise refuse_by_name(directory, "ensemble", stored)
    if builder is not None and stored != class_path(builder):
        raise UserError(f"{directory}: holds an ensemble of {stored or 'a registered model'}, not of your "
                        f"{class_path(builder)}; use another output folder or the same model")


def write_settings(directory: Path, config: TrainConfig, settings: dict, check_only: bool = False) -> dict | None:
    """The first invocation fixes the settings; later ones (other workers, restarts) must agree.
    check_only: refuse (UserError) where they disagree, write nothing."""
    def agree(stored: dict, wanted: dict) -> dict:
        # the device may differ between workers (one CPU machine, one GPU machine); results may not
        diff = differing_settings(wanted["train"], stored.get("train", {}))
        if diff:
            raise UserError(f"{directory}: holds an ensemble trained with other options ({', '.join(diff)}); "
                            "use another output folder or the same options")
        require_same_files(stored.get("data_files"), config.data, config.data_dir, f"continuing the ensemble in {directory}")
        # what the vote is: a rerun with others kept the stored ones in silence and printed the old result
        votes = [k for k in ("members", "threshold", "vote") if k in stored and stored[k] != wanted[k]]
        if votes:
            raise UserError(f"{directory}: holds an ensemble of {', '.join(f'{k} {stored[k]}' for k in votes)} (asked: "
                            f"{', '.join(f'{k} {wanted[k]}' for k in votes)}); use another output folder or the same")
        return {**stored, "max_attempts": wanted["max_attempts"]}  # a rerun may try more attempts (or fewer)

    files = files_fingerprint(config.data, config.data_dir)
    wanted = {"train": config.to_dict(), **settings, **({"data_files": files} if files is not None else {})}
    group = ensemble_dir(directory)
    if check_only:
        return agree(group.read_settings(), wanted) if group.has_settings() else None
    return group.fix_settings(wanted, agree)


# ------------------------------------------------------------------ training and combining


def parse_member_range(text: str | None) -> range | None:
    """'0-9' or '4' -> attempt indices this process may train."""
    if not text:
        return None
    try:
        lo, _, hi = text.partition("-")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise UserError(f"only_members: expected a range such as 0-9, got {text!r}") from None
    if lo < 0 or hi < lo:
        raise UserError(f"only_members: expected a range such as 0-9, got {text!r}")
    return range(lo, hi + 1)


def check_settings(members: int, threshold: float, method: str, max_attempts: int | None, fuse: int,
                   seed: int = 0) -> None:
    for name, value in (("members", members), ("max_attempts", max_attempts if max_attempts is not None else 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name}: must be a positive integer, got {value!r}")
        if value > MAX_RUNS:
            raise UserError(f"{name}: must be at most {MAX_RUNS:,}, got {shorten(repr(value))}")
    if not isinstance(fuse, int) or isinstance(fuse, bool) or fuse < 0:
        raise UserError(f"fuse: must be 0 (chosen for you) or a positive integer, got {fuse!r}")
    require_seeds_fit(seed, max_attempts or members * 3, "attempts")
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise UserError(f"threshold: is an accuracy between 0 and 1, got {threshold!r}")
    if method not in ("hard", "soft"):
        raise UserError(f"vote: must be hard or soft, got {method!r}")


def training_path(config: TrainConfig, fuse: int) -> tuple[int, str]:
    """(members trained at once, a sentence saying so and why)."""
    fusable, why = can_fuse_config(config)
    # auto: fuse on CUDA, where one small CNN leaves the GPU mostly idle; on the 2-core CPU five fused
    # tuned-cnn members ran at 3,150 member-images/s against 3,960 images/s for one model (measured)
    group = (fuse or (30 if resolve_device(config.device).type == "cuda" else 1)) if fusable else 1
    text = f"fused, up to {group} members at once" if group > 1 else "one member after another"
    return group, text + ("" if fusable else f" (not fusable: {why})")


def train_ensemble(config: TrainConfig, directory: Path, members: int = 30, threshold: float = 0.91,
                   method: str = "hard", max_attempts: int | None = None, only: range | None = None,
                   fuse: int = 0, callbacks=(), say=print, dataset=None, ray: bool = False,
                   ray_address: str | None = None, budget: Budget | None = None, builder=None) -> dict:
    """Train attempts until `members` pass the threshold (or attempts run out), then combine. builder: the
    nn.Module or factory of a model of the user's own (config.model "custom"), copied or called per member.

    Rerunning continues: finished members are kept, interrupted ones resume from their checkpoints
    (a fused group as the same group when it can). ray: members train as Ray tasks (cnnlab.distributed).
    budget: the ensemble's time (default: config.time_budget from now); each attempt (or fused group) gets
    its part of what is left among the members still wanted, and no attempt starts once it is spent."""
    check_settings(members, threshold, method, max_attempts, fuse, config.seed)
    require_validation(config, "an ensemble", "an ensemble keeps members by their validation accuracy")
    budget = budget or Budget.starting(config.time_budget)
    if budget is not None and ray:
        raise UserError(f"{option('time_budget')}: an ensemble's budget is divided among members trained one group "
                        f"after another; not available with {option('ray', True)} (give {option('epochs')} instead)")
    directory = Path(directory)
    max_attempts = max_attempts or members * 3
    group, text = training_path(config, fuse)
    dataset = preflight(config, dataset)  # bad data fails before anything is written; loaded once
    require_builder(directory, builder)
    if ray and builder is not None:  # before anything is written
        require_importable(builder, "or train the ensemble without ray")
    custom = {"custom_model": class_path(builder)} if builder is not None else {}
    wanted = {"members": members, "threshold": threshold, "vote": method, "max_attempts": max_attempts, **custom}
    if ray:
        write_settings(directory, config, wanted, check_only=True)  # a refused rerun says so before Ray starts
        # Ray up before the settings are written: a cluster that cannot start or be joined leaves none behind
        with ray_cluster(ray_address) as cluster:
            settings = write_settings(directory, config, wanted)
            candidates = [a for a in range(settings["max_attempts"]) if only is None or a in only]
            train_members_on_ray(config, directory, settings["members"], settings["threshold"], candidates, fuse, say,
                                 dataset, cluster, builder)
        return combine(directory)
    settings = write_settings(directory, config, wanted)
    members, threshold, method = settings["members"], settings["threshold"], settings["vote"]
    candidates = [a for a in range(settings["max_attempts"]) if only is None or a in only]
    say(f"training path: {text}")
    while True:
        done = finished_members(directory)
        qualified = sum(m["val_accuracy"] >= threshold for m in done)
        if qualified >= members:
            break
        if budget is not None and budget.spent:
            if not done:  # nothing trained, in this call or before: an empty vote exited 0 (predict then failed)
                raise budget_spent_first(budget, "attempt")
            say(f"time budget spent ({format_seconds(budget.seconds)}): {qualified}/{members} qualified; "
                "no further attempt starts")
            break
        # members another process is training count toward the target: start none beyond what it still needs
        running = [RunDir(member_dir(directory, a)) for a in candidates
                   if RunDir(member_dir(directory, a)).status() == runs.RUNNING]
        wanted = members - qualified - len(running)
        claimed = claim_attempts(directory, candidates, min(group, wanted)) if wanted > 0 else []
        if not claimed:
            if not running:
                break
            say(f"{len(running)} member(s) in training by another process; waiting for {running[0].path.name}")
            running[0].wait_own()  # it finished (counted next round) or its process died (resumed here)
            running[0].release()
            continue
        try:
            whole, singles, fresh = resumable_groups(directory, claimed)
            jobs = [(g, True) for g in whole] + [([s], True) for s in singles]
            if group > 1 and len(fresh) > 1:
                ensemble_dir(directory).record_group([a for a, _ in fresh])
                jobs.append((fresh, False))
            else:
                jobs += [([f], False) for f in fresh]
            for job, resume in jobs:
                attempts, dirs = [a for a, _ in job], [d for _, d in job]
                seeds = [config.seed + a for a in attempts]
                share = budget.share(members - qualified, len(job)) if budget is not None else None
                say(f"attempts {', '.join(map(str, attempts))} (seeds {', '.join(map(str, seeds))})"
                    + (", resumed" if resume else "") + f"; {qualified}/{members} qualified so far"
                    + (f"; {format_seconds(share.seconds)} of the budget's {format_seconds(budget.left())} left"
                       if share is not None and not resume else ""))
                try:
                    if len(job) > 1:
                        results = train_members_fused(config, seeds, dirs, callbacks, resume=resume, dataset=dataset,
                                                      budget=share)
                    else:
                        member_config = config_for_member(config, dirs[0], seeds[0], resume)
                        results = [fit(member_config, dirs[0], callbacks, resume=resume, dataset=dataset,
                                       builder=builder, budget=share)]
                except TooSmall as exc:  # as a spent budget: the next share would be no larger
                    for run in dirs:  # refused before the first step: nothing of these attempts is kept
                        run.clear()
                    if not finished_members(directory):  # nothing trained, in this call or before: an error, as
                        raise  # `train`'s (an empty vote exited 0 and predict then failed)
                    say(f"{exc}; {qualified}/{members} qualified, no further attempt starts")
                    return combine(directory)
                for attempt, result in zip(attempts, results):
                    verdict = "kept" if result["val_accuracy"] >= threshold else "discarded"
                    qualified += verdict == "kept"
                    say(f"  attempt {attempt}: val {result['val_accuracy']:.4f}"
                        + (f", test {result['test_accuracy']:.4f}" if "test_accuracy" in result else "")
                        + (f", {chosen_line(result)}" if chosen_line(result) and not resume else "") + f" -> {verdict}")
        finally:
            for _, run in claimed:
                run.release()  # an interrupted member keeps its checkpoint and resumes next time
    return combine(directory)


def train_members_on_ray(config: TrainConfig, directory: Path, members: int, threshold: float, candidates: list[int],
                        fuse: int, say, dataset, ray, builder=None) -> None:
    """Members as Ray tasks (on `ray`, started or joined by the caller): one per member, or per fused group where
    the cluster has GPUs. Submits attempts until enough members qualify (counting those in flight), writing each
    member's directory from its task."""
    gpus = cluster_has_gpus(ray)
    fusable, why = can_fuse_config(config)
    group = (fuse or 30) if gpus and fusable else 1
    say(f"training path: Ray, {'fused groups of up to %d members, one GPU each' % group if group > 1 else 'one task per member'}"
        f"{', a quarter GPU each' if gpus and group == 1 else ''}")
    data_ref = put_dataset(ray, dataset)
    left = [a for a in candidates if not RunDir(member_dir(directory, a)).is_finished()]
    state = {"qualified": sum(m["val_accuracy"] >= threshold for m in finished_members(directory))}

    def on_done(attempts, results, error):
        for attempt, metrics in zip(attempts, results or [None] * len(attempts)):
            if metrics is None:
                say(f"  attempt {attempt}: failed ({error})")
                continue
            kept = metrics["val_accuracy"] >= threshold
            state["qualified"] += kept
            say(f"  attempt {attempt}: val {metrics['val_accuracy']:.4f}" +
                (f", test {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else "") +
                f" -> {'kept' if kept else 'discarded'}")

    while state["qualified"] < members and left:
        wanted = members - state["qualified"]
        batch, left = left[:wanted], left[wanted:]
        owned = [(a, RunDir(member_dir(directory, a))) for a in batch]
        owned = [(a, run) for a, run in owned if run.try_own()]  # another driver may be on it
        jobs = []
        for start in range(0, len(owned), group):
            part = owned[start:start + group]
            attempts = [a for a, _ in part]
            if len(part) > 1:
                ensemble_dir(directory).record_group(attempts)
            jobs.append((attempts, config.to_dict(), [config.seed + a for a in attempts], [run for _, run in part],
                         builder))
        say(f"attempts {', '.join(str(a) for a, _ in owned)} on Ray; {state['qualified']}/{members} qualified so far")
        try:
            run_tasks(ray, jobs, 1.0 if group > 1 else (0.25 if gpus else 0), data_ref, on_done)
        finally:
            for _, run in owned:
                run.release()


def config_for_member(config: TrainConfig, run: RunDir, seed: int, resume: bool) -> TrainConfig:
    """A resumed member continues with the configuration it stored (a fused member's is its own)."""
    if resume:
        return config_for_resume(run, device=config.device)
    return replace(config, seed=seed)


def combine(directory: Path) -> dict:
    """Vote with the first `members` qualified members; write the ensemble's files and manifest."""
    directory = Path(directory)
    if not (directory / SETTINGS_FILE).is_file():
        raise UserError(f"{directory}: not an ensemble directory (no {SETTINGS_FILE})")
    settings = runs.read_json(directory / SETTINGS_FILE)
    with ensemble_dir(directory).locked():
        done = finished_members(directory)
        qualified = [m for m in done if m["val_accuracy"] >= settings["threshold"]][: settings["members"]]
        model = settings["train"]["model"]
        if model == CUSTOM_MODEL and "custom_model" in settings:  # by its class's (or factory's) name
            model = display_name(settings["custom_model"])
        manifest = {"model": model, "vote": settings["vote"], "threshold": settings["threshold"],
                    "threshold_split": "val", "members_wanted": settings["members"], "attempts": len(done),
                    "qualified": len(qualified), "members": qualified, "discarded": [m for m in done if m not in qualified]}
        if not qualified:
            runs.write_json(directory / MANIFEST_FILE, manifest)
            return manifest
        meta = RunDir(directory / qualified[0]["path"]).read_model_meta()
        tensors, growth = {}, {}
        for split in ("val", "test"):
            try:
                stacked = [RunDir(directory / m["path"]).logits(split) for m in qualified]
            except UserError:
                continue  # no labeled test split in this dataset
            logits, labels = np.stack([s[0] for s in stacked]), stacked[0][1]
            scores = vote(logits, settings["vote"])
            tensors[f"{split}_logits"] = torch.from_numpy(scores_to_logits(scores)).float()
            tensors[f"{split}_labels"] = torch.from_numpy(labels)
            manifest[f"{split}_accuracy"] = float((scores.argmax(1) == labels).mean())
            growth[split] = [float((vote(logits[:i], settings["vote"]).argmax(1) == labels).mean())
                             for i in range(1, len(qualified) + 1)]
            manifest[f"{split}_metrics"] = classification_metrics(labels, scores.argmax(1), meta["class_names"],
                                                                      meta.get("class_ids"))
        manifest["growth"] = growth
        runs.save_tensors(directory / runs.LOGITS, tensors)
        runs.write_json(directory / runs.MODEL, {**meta, "ensemble": True,
                                                 "members": [m["path"] for m in qualified], "vote": settings["vote"]})
        runs.write_json(directory / MANIFEST_FILE, manifest)
    ensemble_growth_plot(growth, directory / "growth.png", f"{manifest['model']} ensemble ({settings['vote']} vote)")
    return manifest
