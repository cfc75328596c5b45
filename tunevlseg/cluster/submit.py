"""Submit trial tasks as SLURM job arrays (one trial per array task) and the collector job.

submitit writes the job scripts, pickles the tasks and requeues checkpointable ones on
preemption or time-out (container tasks from the host: see ``requeue.py``). This module only
translates the experiment's cluster settings into submitit parameters, splits the tasks into
arrays whose indices stay below ``MaxArraySize``, and chains the collector job after every
array (``afterany``).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from tunevlseg.cluster import slurm
from tunevlseg.cluster.plan import chunk
from tunevlseg.cluster.requeue import HostRequeueWorker
from tunevlseg.cluster.worker import TrialTask
from tunevlseg.config.schema import ClusterSettings


@dataclass(frozen=True)
class SubmittedArray:
    job_id: str
    tasks: list[TrialTask]


def _gres(cluster: ClusterSettings) -> str | None:
    settings = cluster.slurm
    if settings.gpus == 0:
        return None
    kind = f"{settings.gpu_type}:" if settings.gpu_type else ""
    return f"gpu:{kind}{settings.gpus}"


def array_parameters(cluster: ClusterSettings, job_name: str, setup: list[str]) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters of the trial arrays."""
    settings = cluster.slurm
    optional = {
        "partition": settings.partition,
        "account": settings.account,
        "qos": settings.qos,
        "constraint": settings.constraint,
        "gres": _gres(cluster),
    }
    return {
        "job_name": job_name,
        "time": cluster.timeout_min,
        "cpus_per_task": settings.cpus_per_task,
        "mem": _memory(settings.mem_gb),
        "signal_delay_s": settings.signal_delay_s,
        "array_parallelism": cluster.parallelism,
        "setup": setup,
        "additional_parameters": {"requeue": True, **settings.extra},
        **{key: value for key, value in optional.items() if value is not None},
    }


def collector_parameters(
    cluster: ClusterSettings, job_name: str, setup: list[str], after: Sequence[str]
) -> dict[str, Any]:
    """The collector: small, no GPU, after every array has ended (whatever its outcome)."""
    settings = cluster.slurm
    optional = {
        "partition": settings.collector_partition or settings.partition,
        "account": settings.account,
        "qos": settings.qos,
    }
    extra = {"dependency": f"afterany:{':'.join(after)}"} if after else {}
    return {
        "job_name": f"{job_name}-collect",
        "time": settings.collector_timeout_min,
        "cpus_per_task": 1,
        "mem": "4GB",
        "setup": setup,
        "additional_parameters": extra,
        **{key: value for key, value in optional.items() if value is not None},
    }


def _memory(mem_gb: float) -> str:
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def _submit_command(python: str, folder: Path) -> str:
    """What submitit runs in a task (as its executors build it: the folder is quoted)."""
    return f"{python} -u -m submitit.core._submit {shlex.quote(str(folder))}"


def render_array_script(folder: Path, python: str, parameters: dict[str, Any], n_tasks: int) -> str:
    """The sbatch script submitit will write for an array of ``n_tasks`` (for --dry-run)."""
    command = _submit_command(python, folder)
    return _make_sbatch_string(command=command, folder=str(folder), map_count=n_tasks, **parameters)


def render_script(folder: Path, python: str, parameters: dict[str, Any]) -> str:
    """The sbatch script of a single job (the collector), for --dry-run."""
    return _make_sbatch_string(
        command=_submit_command(python, folder), folder=str(folder), **parameters
    )


class SlurmLauncher:
    """Submits trial arrays and the collector through submitit's ``SlurmExecutor``."""

    def __init__(
        self, folder: Path, python: str, max_array_size: int, max_timeouts: int = 3
    ) -> None:
        self.folder = folder
        self.python = python
        self.max_array_size = max_array_size
        self.max_timeouts = max_timeouts

    def _executor(self, parameters: dict[str, Any]) -> submitit.SlurmExecutor:
        executor = submitit.SlurmExecutor(
            folder=str(self.folder / "%j"), python=self.python, max_num_timeout=self.max_timeouts
        )
        executor.update_parameters(**parameters)
        return executor

    def submit_arrays(
        self, tasks: Sequence[TrialTask], parameters: dict[str, Any]
    ) -> list[SubmittedArray]:
        """One array per chunk; if any submission fails, the earlier ones are cancelled."""
        executor = self._executor(parameters)
        submitted: list[SubmittedArray] = []
        try:
            for part in chunk(list(tasks), self.max_array_size):
                # A one-task "array" is submitted by submitit as a plain job (id without
                # "_<index>"); slurm.queued_tasks treats that as index 0.
                # HostRequeueWorker: TrialWorker that requeues through the host wrapper when
                # the task runs in a container (requeue.py); the same as TrialWorker otherwise.
                jobs = executor.map_array(HostRequeueWorker(), part)
                submitted.append(SubmittedArray(jobs[0].job_id.split("_")[0], list(part)))
        except Exception:
            slurm.cancel(array.job_id for array in submitted)
            raise
        return submitted

    def submit_collector(
        self, function: Callable[..., Any], args: Sequence[Any], parameters: dict[str, Any]
    ) -> str:
        return self.submit_job(function, args, parameters)

    def submit_job(
        self, function: Callable[..., Any], args: Sequence[Any], parameters: dict[str, Any]
    ) -> str:
        """One plain job (the collector, the storage proxy); returns its id."""
        job = self._executor(parameters).submit(function, *args)
        return str(job.job_id)
