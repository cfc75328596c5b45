"""The interpreter command of a task: host Python, or Python inside an Apptainer image.

Apptainer is a prefix on the interpreter, not a different launcher: submitit runs
``<python> -u -m submitit.core._submit <folder>`` either way. The environment a task needs
(``HF_HOME``, ``HF_HUB_OFFLINE=1``, ``PYTHONNOUSERSITE=1``) is set before Python starts:
``--env`` flags for the container, ``export`` lines in the job script for the host. There is no
``--cleanenv``: SLURM's and submitit's variables must reach the task.

The image has no SLURM client, so submitit cannot requeue a preempted or timed-out task from
inside it: with a ``requeue_dir``, the container command is wrapped by
:func:`tunevlseg.cluster.requeue.host_wrapper`, which requeues it from the host.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from tunevlseg.cluster.requeue import host_wrapper
from tunevlseg.config.schema import ContainerSettings


def task_environment(hf_home: Path, storage_retry_s: int | None = None) -> dict[str, str]:
    """Variables every task needs: the shared model cache, offline, no user site-packages, and
    how long storage calls are retried through an outage (``cluster.storage_retry_s``)."""
    from tunevlseg.tuning.retry import BUDGET_ENV

    environment = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    if storage_retry_s is not None:
        environment[BUDGET_ENV] = str(storage_retry_s)
    return environment


def bind_paths(paths: Iterable[Path], extra: Iterable[str] = ()) -> list[str]:
    """The folders a task reads or writes, without duplicates or nested repeats."""
    folders = sorted({str(Path(p).resolve()) for p in paths})
    kept: list[str] = []
    for folder in folders:
        if not any(folder == k or folder.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(folder)
    return kept + [b for b in extra if b not in kept]


def python_command(
    container: ContainerSettings,
    environment: dict[str, str],
    binds: list[str],
    requeue_dir: Path | None = None,
) -> str:
    """The shell words that start Python for a task (already quoted).

    ``requeue_dir``: the folder of the tasks' requeue markers (container only; host Python runs
    submitit's own ``scontrol requeue``). Without it a container task cannot be requeued.
    """
    if container.image is None:
        return shlex.quote(sys.executable)
    words = [container.apptainer, "exec", "--nv"]
    for bind in binds:
        words += ["--bind", bind]
    for key, value in environment.items():
        words += ["--env", f"{key}={value}"]
    words += [str(container.image), "python3"]
    if requeue_dir is not None:
        words = host_wrapper(requeue_dir, words)
    return shlex.join(words)


def setup_lines(container: ContainerSettings, environment: dict[str, str]) -> list[str]:
    """Job-script lines before the task starts (host Python only: the container gets --env)."""
    if container.image is not None:
        return []
    return [f"export {key}={shlex.quote(value)}" for key, value in environment.items()]
