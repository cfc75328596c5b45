"""Requeue container tasks from the host: the image has no SLURM client.

On USR2 (sent ``signal_delay_s`` before the time limit, and on preemption) submitit checkpoints
the task and runs ``scontrol requeue <job>`` from inside it
(``submitit.slurm.slurm.SlurmJobEnvironment._requeue``). Inside an Apptainer image there is no
``scontrol`` (nor munge, nor slurm.conf), so that call fails, the task ends FAILED and only the
next ``tvls-launch`` would continue its trial.

The requeue is therefore split across the container boundary:

* the task's interpreter command is :func:`host_wrapper` around ``apptainer exec ... python3``:
  a few lines of bash that run on the host (SLURM's step), export the marker folder to the
  container, run the container, and then, if the task left a marker named by its SLURM id,
  remove it and run ``scontrol requeue <id>`` on the host, where SLURM's commands work;
* inside the container, :func:`install` replaces submitit's ``_requeue`` (the only place it
  calls ``scontrol``) by :func:`_requeue_through_host`, which writes that marker. submitit then
  exits the task as it always does after a requeue (``sys.exit(-1)``), and the wrapper exits
  with the task's status.

The marker is named by the id submitit would have requeued (``<array job>_<index>``, or the job
id of a plain job), so tasks sharing the folder never see each other's markers.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from submitit.core.utils import DelayedSubmission
from submitit.slurm.slurm import SlurmJobEnvironment

from tunevlseg.cluster.worker import TrialTask, TrialWorker

MARKER_DIR_ENV = "TVLS_REQUEUE_DIR"
"""Set by the host wrapper: the folder of requeue markers; its presence says a wrapper waits."""

WRAPPER_NAME = "tvls-requeue"
"""``$0`` of the wrapper's ``bash -c`` (shown by ``ps`` and in bash's error messages)."""

_LOG = logging.getLogger("submitit")  # its task log, where its own "Requeued job" line goes
_SUBMITIT_REQUEUE = SlurmJobEnvironment._requeue  # what install() replaces, kept as the first try

# The wrapper, run by srun on the host as: bash -c WRAPPER tvls-requeue <marker dir> <command>...
# * USR2 and TERM are trapped (not ignored): SLURM signals every process of the step, and the
#   wrapper must outlive the signal to requeue; a trapped signal is reset to its default in the
#   container, so the task still gets it. bash runs the no-op trap after the command returns.
# * The id is computed as submitit's JobEnvironment.job_id; a marker left by an earlier run of
#   this task (a wrapper killed before it could act) is removed before the task starts.
# * The marker folder reaches the task both ways Apptainer passes variables: the host
#   environment (no --cleanenv) and APPTAINERENV_<name> (also with --cleanenv). Not --env: it
#   splits its value at commas.
# No single quote in it, so that the job script shows it in one readable quoted word.
WRAPPER = "; ".join(
    [
        "trap : USR2 TERM",
        "dir=$1",
        "shift",
        f'export {MARKER_DIR_ENV}="$dir" APPTAINERENV_{MARKER_DIR_ENV}="$dir"',
        "id=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID}",
        "id=${id:-${SLURM_JOB_ID-}}",
        'if [ -n "$id" ]; then rm -f -- "$dir/$id"; fi',
        '"$@"',
        "status=$?",
        (
            'if [ -n "$id" ] && [ -e "$dir/$id" ]; then '
            'rm -f -- "$dir/$id"; '
            f'if scontrol requeue "$id"; then echo "{WRAPPER_NAME}: requeued $id from the host" >&2; '
            f'else echo "{WRAPPER_NAME}: scontrol requeue $id failed" >&2; fi; '
            "fi"
        ),
        "exit $status",
    ]
)


def host_wrapper(marker_dir: Path, command: Sequence[str]) -> list[str]:
    """The words that run ``command`` (the container) and requeue its task from the host after."""
    return ["bash", "-c", WRAPPER, WRAPPER_NAME, str(marker_dir), *command]


def marker_path(marker_dir: Path, job_id: str) -> Path:
    """The marker of task ``job_id`` (submitit's ``JobEnvironment.job_id``, as the wrapper's ``id``)."""
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise ValueError(f"not a SLURM job id: {job_id!r}")
    return marker_dir / job_id


def write_marker(marker_dir: Path, job_id: str, countdown: int) -> Path:
    """Ask the host wrapper to requeue ``job_id`` once this task has exited."""
    path = marker_path(marker_dir, job_id)
    marker_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"requeue {job_id} (remaining time-outs {countdown}) asked at {time.time():.0f}\n"
    )
    return path


def _requeue_through_host(env: SlurmJobEnvironment, countdown: int) -> None:
    """``SlurmJobEnvironment._requeue`` for a task behind the host wrapper.

    submitit's own ``scontrol requeue`` is kept where it works (an image that has a SLURM
    client); the marker is written when ``scontrol`` is missing, or present but failing (a
    client without the host's munge socket or slurm.conf).
    """
    if shutil.which("scontrol"):
        try:
            _SUBMITIT_REQUEUE(env, countdown)
            return
        except (OSError, subprocess.SubprocessError) as error:
            _LOG.warning("scontrol requeue failed in the task (%s): asking the host", error)
    path = write_marker(Path(os.environ[MARKER_DIR_ENV]), env.job_id, countdown)
    _LOG.warning(
        "no working scontrol in the task: the host wrapper requeues %s (%s)", env.job_id, path
    )


def install(environ: Mapping[str, str] | None = None) -> bool:
    """Route submitit's requeue through the host wrapper, if this task runs behind one.

    Replaces ``SlurmJobEnvironment._requeue`` (submitit 1.5: the method its USR2 handler calls
    after the checkpoint, and the only one that runs ``scontrol``) in this process only, on the
    class because submitit's instance is out of reach (local to ``process_job``). Idempotent; a
    no-op without the wrapper's variable (host Python, local runs).
    """
    if not (os.environ if environ is None else environ).get(MARKER_DIR_ENV):
        return False
    SlurmJobEnvironment._requeue = _requeue_through_host  # type: ignore[method-assign, assignment]
    return True


class HostRequeueWorker(TrialWorker):
    """:class:`TrialWorker` that installs the host requeue before it can be needed.

    Installed when the task starts, and again in ``checkpoint``: submitit's USR2 handler calls
    ``checkpoint`` right before ``_requeue``, so even a signal in the task's first instant (before
    ``__call__``) is requeued through the host.
    """

    def __call__(self, task: TrialTask) -> dict[str, Any]:
        install()
        return super().__call__(task)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        install()
        return super().checkpoint(*args, **kwargs)
