"""The sweep's storage proxy as a SLURM job: Optuna's gRPC proxy in front of PostgreSQL.

With ``cluster.storage_proxy`` set (and a ``postgresql://`` storage), a SLURM launch starts one
small job that serves the sweep's storage over gRPC, and its tasks talk only to it: hundreds
of tasks then hold no database connection, the proxy holds ``storage_proxy.connections``.

* **Where it is.** Its node and port are known only once it runs, and after a requeue or a
  restart they may change. So it writes them to ``<output_dir>/<sweep>/storage-proxy.json``
  (:mod:`tunevlseg.tuning.grpc_address`) once it listens, and the tasks, given
  ``grpc+file://`` that file, read it before they connect and again when the proxy does not
  answer (:mod:`tunevlseg.tuning.proxy_client`, inside the tasks' storage retries).
* **Before the tasks.** A newly submitted proxy job is a dependency ``after:<proxy>`` of the
  arrays: they start once it has started. It listens a few seconds later; a task that comes
  first finds no address yet, or a stopped one, and waits within ``cluster.storage_retry_s``
  like during any outage. We do not make the launcher wait for the job to start: on a busy
  cluster that can take hours.
* **Its end.** Every :data:`POLL_S` it asks ``squeue`` about the manifest's arrays and
  collectors; once none is queued it takes the sweep's launch lock (so no launch is between
  reading the queue and writing the manifest), asks again, marks the address file stopped and
  exits. The collector runs ``afterany`` the arrays, so the proxy ends after the collector.
  ``tvls-cancel`` cancels it with the sweep's other jobs. On a time limit or preemption it is
  requeued (submitit's checkpoint), marking its address stopped first.
* **Reused or replaced.** A launch reuses the manifest's last proxy job while ``squeue`` holds
  it and its address is not marked stopped; otherwise (killed, timed out for good, purged) it
  marks the old address stopped and submits a new one.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit
from submitit.core.utils import DelayedSubmission

from tunevlseg.cluster import slurm
from tunevlseg.cluster.lock import SweepBusyError, sweep_lock
from tunevlseg.cluster.manifest import read_manifest
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.grpc_address import ProxyAddress, mark_stopped, read_address, write_address
from tunevlseg.tuning.storage import StorageURL, proxy_task_url

if TYPE_CHECKING:
    import grpc

    from tunevlseg.config.loader import Experiment
    from tunevlseg.config.schema import ClusterSettings

log = logging.getLogger(__name__)

POLL_S = 15.0
"""How often the proxy asks whether the sweep's jobs have all left the queue."""
LISTEN_HOST = "0.0.0.0"
STOP_GRACE_S = 5.0
"""Calls in flight when the proxy stops get this long to finish."""


def job_name(sweep: str) -> str:
    return f"tvls-{sweep}-storage-proxy"


def proxy_parameters(cluster: ClusterSettings, name: str, setup: list[str]) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters of the proxy job: one core, no GPU, long-lived,
    requeued after a time limit (it then marks its address stopped; tasks wait for it)."""
    settings, proxy = cluster.slurm, cluster.storage_proxy
    assert proxy is not None
    optional = {
        "partition": proxy.partition or settings.collector_partition or settings.partition,
        "account": settings.account,
        "qos": settings.qos,
    }
    return {
        "job_name": name,
        "time": proxy.timeout_min,
        "cpus_per_task": 1,
        "mem": f"{proxy.mem_gb}GB",
        "signal_delay_s": settings.signal_delay_s,
        "setup": setup,
        "additional_parameters": {"requeue": True},
        **{key: value for key, value in optional.items() if value is not None},
    }


def after_proxy(parameters: dict[str, Any], proxy_job_id: str) -> dict[str, Any]:
    """The array parameters with ``after:<proxy>`` added to any dependency already set."""
    extra = dict(parameters.get("additional_parameters", {}))
    own = extra.get("dependency")
    extra["dependency"] = f"{own},after:{proxy_job_id}" if own else f"after:{proxy_job_id}"
    return {**parameters, "additional_parameters": extra}


# --------------------------------------------------------------------------- the launcher's side


@dataclass(frozen=True)
class ProxyJob:
    """The proxy a launch's tasks use."""

    job_id: str
    reused: bool
    task_url: StorageURL


def reusable_proxy(proxy_job_ids: Sequence[str], address_file: Path) -> str | None:
    """The newest recorded proxy job if SLURM still holds it and it has not stopped by itself."""
    if not proxy_job_ids:
        return None
    newest = proxy_job_ids[-1]
    if not slurm.queued_tasks([newest]):
        return None
    address = read_address(address_file)
    if address is not None and address.stopped and address.job_id == newest:
        return None  # it is exiting: the sweep's jobs had all ended
    return newest


def ensure_proxy(
    experiment: Experiment,
    proxy_job_ids: Sequence[str],
    backing: StorageURL,
    submit: Callable[[Callable[..., Any], Sequence[Any], dict[str, Any]], str],
    setup: list[str],
) -> ProxyJob:
    """Reuse the sweep's running proxy, or submit a new one (the caller holds the launch lock).

    ``submit(function, args, parameters)`` submits one job and returns its id.
    """
    paths = SweepPaths.of(experiment)
    task_url = proxy_task_url(paths.storage_proxy)
    running = reusable_proxy(proxy_job_ids, paths.storage_proxy)
    if running is not None:
        return ProxyJob(running, True, task_url)
    # A proxy that is gone without saying so: tasks must wait for the new one, not call
    # whatever process holds that port now.
    mark_stopped(paths.storage_proxy)
    settings = experiment.spec.cluster.storage_proxy
    assert settings is not None
    job_id = submit(
        StorageProxyJob(),
        [
            backing.url,
            str(paths.storage_proxy),
            str(paths.sweep_dir),
            settings.port,
            settings.connections,
        ],
        proxy_parameters(experiment.spec.cluster, job_name(experiment.spec.name), setup),
    )
    return ProxyJob(job_id, False, task_url)


# --------------------------------------------------------------------------- the job's side


def make_server(storage: Any, port: int, threads: int) -> tuple[grpc.Server, int]:
    """Optuna's proxy servicer on a gRPC server that accepts our clients' keep-alive pings and
    tells which port it bound (``port`` 0: a free one). What ``optuna.storages.
    run_grpc_proxy_server`` builds, which takes neither options nor reports the port."""
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    from tunevlseg.tuning.proxy_client import SERVER_OPTIONS

    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=SERVER_OPTIONS)
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
    bound = server.add_insecure_port(f"{LISTEN_HOST}:{port}")
    if not bound:
        raise OSError(f"the storage proxy cannot listen on port {port} (in use?)")
    return server, bound


def sweep_jobs_queued(sweep_dir: Path) -> bool:
    """True while any array or collector the manifest records is in the queue (or SLURM does
    not answer: the proxy then stays, as it cannot tell)."""
    manifest = read_manifest(sweep_dir / "manifest.json")
    if manifest is None:
        return True  # the launch that started us has not written it yet
    collectors = [launch.get("collector_job_id") for launch in manifest.launches]
    ids = manifest.array_job_ids() + [str(job_id) for job_id in collectors if job_id]
    try:
        return bool(slurm.queued_tasks(ids))
    except slurm.SlurmError as error:
        log.warning("cannot ask squeue (%s); the storage proxy stays up", error)
        return True


def stop_if_sweep_ended(sweep_dir: Path, address_file: Path, job_id: str | None) -> bool:
    """Mark the address stopped and return True once no job of the sweep is queued, checked
    again under the launch lock: a launch reuses this proxy only while holding that lock."""
    if sweep_jobs_queued(sweep_dir):
        return False
    try:
        with sweep_lock(sweep_dir / "launch.lock", wait_s=0):
            if sweep_jobs_queued(sweep_dir):
                return False
            mark_stopped(address_file, job_id)
            return True
    except SweepBusyError:
        return False  # a launch (or cancel, or repair) is at work: look again later


def serve(
    backing_url: str,
    address_file: Path,
    sweep_dir: Path,
    port: int | None,
    connections: int,
    *,
    poll_s: float = POLL_S,
) -> None:
    """Serve the storage until the sweep's jobs have all left the queue."""
    import optuna

    from tunevlseg.tuning.retry import with_retries
    from tunevlseg.tuning.storage import open_storage, parse_storage_url

    def open_backing() -> Any:
        rdb = open_storage(parse_storage_url(backing_url), connections=connections)
        rdb.get_all_studies()  # reach the database now: a proxy in front of nothing is no use
        return optuna.storages.get_storage(rdb)  # Optuna's cache of finished trials, as advised

    storage = with_retries(open_backing, what="opening the storage behind the proxy")
    server, bound = make_server(storage, port or 0, threads=connections)
    server.start()
    job_id = os.environ.get("SLURM_JOB_ID")
    address = ProxyAddress(socket.gethostname(), bound, job_id, os.getpid(), time.time())
    write_address(address_file, address)
    log.warning("storage proxy of %s listening on %s (job %s)", backing_url, address.target, job_id)
    try:
        while not stop_if_sweep_ended(sweep_dir, address_file, job_id):
            time.sleep(poll_s)
        log.warning("the sweep's jobs have all ended: the storage proxy stops")
    finally:
        server.stop(STOP_GRACE_S).wait()


class StorageProxyJob(submitit.helpers.Checkpointable):
    """What the proxy job runs; on a time limit or preemption it is requeued, having said so."""

    def __call__(
        self,
        backing_url: str,
        address_file: str,
        sweep_dir: str,
        port: int | None,
        connections: int,
    ) -> str:
        serve(backing_url, Path(address_file), Path(sweep_dir), port, connections)
        return "stopped: the sweep's jobs have ended"

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        # Tasks then wait for the requeued proxy instead of calling a dead port.
        mark_stopped(Path(args[1]), os.environ.get("SLURM_JOB_ID"))
        return super().checkpoint(*args, **kwargs)
