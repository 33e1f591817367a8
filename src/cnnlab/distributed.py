"""Where training runs, a layer above the engine: Ray tasks for many independent trainings (ensemble
members, study runs, search trials). (One model on several processes is torchrun: cnnlab.torchrun.)

Ray: the driver (the `cnnlab` process) ships the dataset once to Ray's object store, submits one task
per member (or fused group, or run, or trial) asking for its resources, and writes every run
directory itself from what the task returns (all of the run's files as bytes), so workers need no
shared filesystem. A task whose worker dies is retried by Ray (bounded by TASK_RETRIES); a run
directory is written once, from one successful task, and a finished one is never trained again, so
rerunning a killed driver continues from the runs already written.

    ray_cluster(None)       a local cluster for this process only: bound to 127.0.0.1, no dashboard
    ray_cluster("auto")     join the cluster `ray start` runs on this machine
    ray_cluster("IP:6379")  join a cluster by its address

An address to join is checked first (it is found, its port answers within CONNECT_SECONDS, and what answers speaks
gRPC as Ray's servers do): otherwise one line at once, not Ray's minutes of retries (about 5 for another server).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from cnnlab.config import build_config
from cnnlab.engine import fit
from cnnlab.errors import UserError, option
from cnnlab.fused import train_members_fused
from cnnlab.models.custom import model_name
from cnnlab.ports import port_answers, speaks_grpc
from cnnlab.redact import mask_secrets, mask_url
from cnnlab.runs import RunDir

TASK_RETRIES = 3  # a worker (or node) dying mid-task: Ray runs the task again, at most this often


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError("ray: not installed; install the extra with: pip install 'cnnlab[ray]'") from None
    return ray


CONNECT_SECONDS = 2.0  # a cluster's address that does not answer within this fails at once (Ray retries for minutes)
# A head bound to 127.0.0.1 only: on Linux `ray start` replaces a loopback --node-ip-address by the machine's network
# address and its servers listen on every interface, unless the single-machine switch below is off.
START_HEAD = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --node-ip-address=127.0.0.1 "
              "--include-dashboard=false")


def start_hint() -> str:
    return (f"start one on this machine with '{START_HEAD}' and pass {option('ray_address', 'auto')}, or leave "
            f"out {option('ray_address')} for a private local cluster")


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
    if address is not None:
        require_answering(address)
    options = dict(include_dashboard=False, configure_logging=True, logging_level="WARNING", log_to_driver=False)
    try:
        if address is None:  # "local": a new cluster even where RAY_ADDRESS or a `ray start` cluster would be joined
            ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        target = "a local cluster" if address is None else f"the cluster at {mask_url(address)}"
        reason = mask_secrets(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, *([address] if address else []))
        raise UserError(f"ray: cannot start or join {target} ({reason}); {start_hint()}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def split_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', with an optional ray:// scheme) -> (host, port); one line when it is not one."""
    rest = address.split("://", 1)[-1].rpartition("@")[2]  # user:password@ is not the host (nor ever shown)
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"ray_address: expected 'auto' or HOST:PORT (such as 127.0.0.1:6379), got {mask_url(address)!r}")
    return host, int(port)


def answers(host: str, port: int) -> bool:
    return port_answers(host, port, CONNECT_SECONDS) is None


def require_answering(address: str) -> None:
    """Before ray.init(address=...): the cluster is found and its port answers, or one line at once. Ray itself
    retries a dead address for minutes (its connect timeouts are internal settings, not public options)."""
    shown = mask_url(address)
    if address == "auto":
        shown, address = "auto", auto_address()
        if address == "auto":  # this Ray resolves it some other way: ray.init decides
            return
    host, port = split_address(address)
    if "://" in address:  # Ray Client: dialled as given
        if not answers(host, port):
            raise UserError(f"ray: nothing answers at {shown} ({host}:{port}); check the address, or {start_hint()}")
        require_ray_server(host, port, shown)
        return
    dialled = ray_dials(host)
    if answers(dialled, port):
        require_ray_server(dialled, port, shown)
        return
    if dialled != host and answers(host, port):
        # a loopback address Ray would replace by the network address (where nothing listens): a head started
        # bound to 127.0.0.1 only, joined on loopback as a private cluster is
        loopback_only()
        require_ray_server(host, port, shown)
        return
    where = f"{shown} ({mask_url(address)})" if shown != mask_url(address) else shown
    raise UserError(f"ray: nothing answers at {where}; check the address and that its cluster runs, or {start_hint()}")


def require_ray_server(host: str, port: int, shown: str) -> None:
    """What answers is a gRPC server, as a Ray head (and the Ray Client server) is; TLS's handshake is not ours
    to make, so a cluster with RAY_USE_TLS is left to ray.init."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return
    if not speaks_grpc(host, port, CONNECT_SECONDS):
        raise UserError(f"ray: {shown} answers, but not as a Ray cluster (no gRPC server at {host}:{port}); check "
                        f"the port (a head's default is 6379), or {start_hint()}")


def auto_address() -> str:
    """'auto' the way ray.init resolves it: RAY_ADDRESS, else the cluster `ray start` recorded on this machine
    (its temp folder's ray_current_cluster), else a running local GCS; one line when there is none."""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env
    try:
        from ray._private.services import get_ray_address_from_environment
    except ImportError:  # another Ray: its own lookup decides, in ray.init
        return "auto"
    try:
        return get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise UserError(f"ray: {option('ray_address', 'auto')} found no running cluster on this machine (none recorded by "
                        f"`ray start`, no RAY_ADDRESS); {start_hint()}") from None


def ray_dials(host: str) -> str:
    """The host ray.init connects to for `host`: Ray replaces a loopback one by this machine's network address
    unless the single-machine switch (loopback_only) is set."""
    try:
        from ray._private import ray_constants, services
        if services.is_localhost(host) and ray_constants.ENABLE_RAY_CLUSTER:
            return services.get_node_ip_address()
    except (ImportError, AttributeError):
        pass
    return host


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


# ------------------------------------------------------------------ the dispatcher


def dispatch(ray, task, next_job: Callable[[int], tuple | None], on_result: Callable, limit: int,
             on_error: Callable | None = None, poll: Callable[[], None] | None = None, poll_seconds: float = 0.05) -> None:
    """The one loop that runs Ray tasks: at most `limit` in flight, each result handed to on_result as it
    arrives. next_job(in_flight) gives (key, args) of the next task, or None when nothing is to start now;
    the loop ends when nothing is in flight and nothing more starts. on_error(key, RayTaskError) handles a
    task that raised (default: re-raise). poll() runs every poll_seconds while tasks run (a search's
    pruning reports)."""
    pending: dict = {}
    while True:
        while len(pending) < limit and (job := next_job(len(pending))) is not None:
            key, args = job
            pending[task.remote(*args)] = key
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_seconds if poll else None)
        if poll:
            poll()
        for ref in ready:
            key = pending.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if on_error is None:
                    raise
                on_error(key, exc)
                continue
            on_result(key, value)


def cpu_slots(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# ------------------------------------------------------------------ training tasks


def train_task(config: dict, seeds: list[int], dataset, builder=None) -> list[dict[str, bytes]]:
    """Runs on a Ray worker: train len(seeds) members (fused when more than one) in a temporary folder and
    return each run directory's files. The dataset comes from the object store, not from a path; `builder`
    (a model of the user's own) reaches the worker pickled by reference, so its module must be importable there."""
    cfg = build_config(config)
    with tempfile.TemporaryDirectory(prefix="cnnlab-ray-") as tmp:
        dirs = [RunDir(Path(tmp) / f"member-{i}") for i in range(len(seeds))]
        if len(seeds) > 1:
            train_members_fused(cfg, seeds, dirs, dataset=dataset)
        else:
            fit(replace(cfg, seed=seeds[0]), dirs[0], dataset=dataset, builder=builder)
        return [run.read_files() for run in dirs]


def run_tasks(ray, jobs: list[tuple[object, dict, list[int], list[RunDir], object]], gpus: float, dataset_ref,
              on_done=None, max_in_flight: int | None = None) -> None:
    """Submit (key, config, seeds, run_dirs, builder) jobs; write each job's run directories as its task
    finishes. builder: None, or the nn.Module or factory of a model of the user's own (one member per job).

    The caller owns the run directories (RunDir owner lock) while their task is in flight."""
    task = ray.remote(train_task).options(num_cpus=1, num_gpus=gpus, max_retries=TASK_RETRIES, name="cnnlab-train")
    waiting = list(jobs)

    def next_job(in_flight: int):
        if not waiting:
            return None
        key, config, seeds, dirs, builder = waiting.pop(0)
        return (key, dirs, builder), (config, seeds, dataset_ref, builder)

    def on_result(job, results) -> None:
        key, dirs, _ = job
        for run, files in zip(dirs, results):
            run.write_files(files)
        if on_done:
            on_done(key, [run.read_metrics() for run in dirs], None)

    def on_error(job, exc) -> None:  # the training itself failed (e.g. diverged): report, go on
        cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
        if job[2] is not None and isinstance(cause, (ImportError, AttributeError, ray.exceptions.RaySystemError)):
            raise worker_import_error(job[2], exc) from None
        if not isinstance(cause, UserError):
            raise exc
        if on_done:
            on_done(job[0], None, str(cause))

    dispatch(ray, task, next_job, on_result, max_in_flight or cpu_slots(ray), on_error)


def worker_import_error(builder, exc) -> UserError:
    """A model of the user's own the driver imports but a Ray worker cannot (its module is not on the workers'
    path): one line naming the model and the worker's error instead of Ray's traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if "Error:" in line), lines[-1] if lines else type(exc).__name__)
    return UserError(f"model {model_name(builder)}: the Ray workers cannot load it ({detail}); make its module "
                     "importable there (installed, or on their PYTHONPATH), register it with cnnlab.register_model, "
                     "or train without ray")


def put_dataset(ray, dataset):
    """The (pre-flight's) dataset in Ray's object store: workers never read the driver's paths."""
    return ray.put(dataset)
