"""Where training runs, a layer above the engine: Ray tasks for many independent trainings (ensemble
members, study runs, search trials), torch.distributed (torchrun) for one model on several processes.

Ray: the driver (the `cnnlab` process) ships the dataset once to Ray's object store, submits one task
per member (or fused group, or run, or trial) asking for its resources, and writes every run
directory itself from what the task returns (all of the run's files as bytes), so workers need no
shared filesystem. A task whose worker dies is retried by Ray (bounded by TASK_RETRIES); a run
directory is written once, from one successful task, and a finished one is never trained again, so
rerunning a killed driver continues from the runs already written.

    ray_cluster(None)       a local cluster for this process only: bound to 127.0.0.1, no dashboard
    ray_cluster("auto")     join the cluster `ray start` runs on this machine
    ray_cluster("IP:6379")  join a cluster by its address
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from cnnlab.errors import UserError
from cnnlab.runs import RunDir

TASK_RETRIES = 3  # a worker (or node) dying mid-task: Ray runs the task again, at most this often


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError("ray: not installed; install the extra with: pip install 'cnnlab[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None) -> Iterator[object]:
    """Ray, initialised for this block: a private local cluster on loopback, or a running one joined."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
    if address is None:
        loopback_only()
    ray = require_ray()
    if ray.is_initialized():  # the caller (a notebook, a test) set Ray up already
        yield ray
        return
    options = dict(include_dashboard=False, configure_logging=True, logging_level="WARNING", log_to_driver=False)
    try:
        if address is None:
            ray.init(_node_ip_address="127.0.0.1", num_cpus=num_cpus, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        target = "a local cluster" if address is None else f"the cluster at {address}"
        raise UserError(f"ray: cannot start or join {target} ({str(exc).splitlines()[0]}); start one with "
                        "'ray start --head --node-ip-address=127.0.0.1' and pass --ray auto") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def loopback_only() -> None:
    """A private local cluster binds to 127.0.0.1 only. Ray otherwise replaces a loopback node address by the
    machine's network address (ray._private.services.resolve_ip_for_localhost); its switch for single-machine
    clusters, read at import by the driver and inherited by every worker, keeps the loopback address."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants  # already imported: switch the driver's copy too
    except ImportError:
        return
    ray_constants.ENABLE_RAY_CLUSTER = False


def cluster_has_gpus(ray) -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


# ------------------------------------------------------------------ the task


def train_task(config: dict, seeds: list[int], dataset, resume_files: list[dict] | None = None) -> list[dict[str, bytes]]:
    """Runs on a Ray worker: train len(seeds) members (fused when more than one) in a temporary folder and
    return each run directory's files. The dataset comes from the object store, not from a path."""
    from dataclasses import replace

    from cnnlab.config import build_config
    from cnnlab.engine import fit
    from cnnlab.fused import train_members_fused

    cfg = build_config(config)
    with tempfile.TemporaryDirectory(prefix="cnnlab-ray-") as tmp:
        dirs = [RunDir(Path(tmp) / f"member-{i}") for i in range(len(seeds))]
        if len(seeds) > 1:
            train_members_fused(cfg, seeds, dirs, dataset=dataset)
        else:
            fit(replace(cfg, seed=seeds[0]), dirs[0], dataset=dataset)
        return [run.read_files() for run in dirs]


def remote_train(ray, gpus: float):
    return ray.remote(train_task).options(num_cpus=1, num_gpus=gpus, max_retries=TASK_RETRIES, name="cnnlab-train")


def run_tasks(ray, jobs: list[tuple[object, dict, list[int], list[RunDir]]], gpus: float, dataset_ref,
              on_done=None, max_in_flight: int | None = None) -> None:
    """Submit (key, config, seeds, run_dirs) jobs; write each job's run directories as its task finishes.

    The caller owns the run directories (RunDir owner lock) while their task is in flight."""
    task = remote_train(ray, gpus)
    waiting = list(jobs)
    pending: dict = {}
    limit = max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
    while waiting or pending:
        while waiting and len(pending) < limit:
            key, config, seeds, dirs = waiting.pop(0)
            pending[task.remote(config, seeds, dataset_ref)] = (key, dirs)
        ready, _ = ray.wait(list(pending), num_returns=1)
        key, dirs = pending.pop(ready[0])
        try:
            results = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:  # the training itself failed (e.g. diverged): report, go on
            cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
            if isinstance(cause, UserError):
                if on_done:
                    on_done(key, None, str(cause))
                continue
            raise
        for run, files in zip(dirs, results):
            run.write_files(files)
        if on_done:
            on_done(key, [run.read_metrics() for run in dirs], None)


def put_dataset(ray, config, dataset=None):
    """The dataset in Ray's object store (loaded here once; workers never read the driver's paths)."""
    from cnnlab.engine import load_data

    return ray.put(load_data(config, dataset))
