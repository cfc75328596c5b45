"""What SLURM knows: configuration, queued array tasks, ended jobs, and a partition's nodes.

``squeue`` and ``scontrol`` work on every cluster; ``sacct`` needs accounting (slurmdbd), which
some clusters lack, so it is only ever used as an extra source, never required.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_MAX_ARRAY_SIZE = 1001


class SlurmError(Exception):
    """A SLURM command failed; the message holds the command and what it printed."""


def _call(command: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a SLURM command and hand back its exit code and output, whatever the exit code.

    Callers that can tell a harmless refusal (an unknown job id) from a real failure look at
    the result themselves; everything else goes through :func:`_run`.
    """
    if shutil.which(command[0]) is None:
        raise SlurmError(f"{command[0]} not found: is this a SLURM login node?")
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(command)} did not answer within {timeout:.0f} s") from None


def _failure(command: Sequence[str], done: subprocess.CompletedProcess[str]) -> SlurmError:
    return SlurmError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")


def _run(command: Sequence[str], timeout: float = 60) -> str:
    done = _call(command, timeout)
    if done.returncode != 0:
        raise _failure(command, done)
    return done.stdout


def available() -> bool:
    """True when sbatch and squeue exist and slurmctld answers."""
    if shutil.which("sbatch") is None:
        return False
    try:
        _run(["scontrol", "ping"], timeout=20)
    except SlurmError:
        return False
    return True


def config_value(key: str) -> str | None:
    """One entry of ``scontrol show config``."""
    for line in _run(["scontrol", "show", "config"]).splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return None


def max_array_size() -> int:
    """``MaxArraySize``: array indices must stay below it."""
    value = config_value("MaxArraySize")
    return int(value) if value and value.isdigit() else DEFAULT_MAX_ARRAY_SIZE


def has_accounting() -> bool:
    value = config_value("AccountingStorageType") or ""
    return value not in ("", "accounting_storage/none", "(null)")


@dataclass(frozen=True)
class QueuedTask:
    """An array task SLURM still holds (pending, running, requeued, ...)."""

    job_id: str  # the array's job id
    index: int
    state: str

    @property
    def key(self) -> str:
        return task_key(self.job_id, self.index)

    @property
    def running(self) -> bool:
        return self.state in ("RUNNING", "COMPLETING", "SUSPENDED")


_TASK_ID = re.compile(r"^(\d+)(?:_(\d+))?$")
"""``<job>_<index>`` for array tasks; a plain job id counts as index 0 (one-task arrays)."""


def task_key(job_id: str, index: int | str | None) -> str:
    return f"{job_id}_{int(index or 0)}"


_UNKNOWN_JOB = "Invalid job id specified"
"""What squeue prints (exit 1) when asked about a job slurmctld no longer holds (or never had)."""


def queued_tasks(job_ids: Iterable[str]) -> list[QueuedTask]:
    """Array tasks of these jobs still in the queue (one entry per task, arrays expanded).

    A job that ended more than ``MinJobAge`` (300 s by default) ago is purged from slurmctld,
    and ``squeue -j`` then refuses it with "Invalid job id specified": SLURM 22.05 does so for
    a lone id (it asks for that one job) but filters a list of several ids locally and says
    nothing. A purged or unknown id is simply not queued, so a sweep can be resumed or shown
    days after its jobs ended. The common case stays one ``squeue -j`` call; only when SLURM
    refuses a list of ids is the whole queue listed (one call, however many jobs) and filtered
    here. Any other failure, such as slurmctld being down, still raises :class:`SlurmError`.
    """
    ids = sorted(set(job_ids))
    if not ids:
        return []
    fields = ["-h", "-r", "-o", "%i|%T"]
    command = ["squeue", *fields, "-j", ",".join(ids)]
    done = _call(command)
    wanted: set[str] | None = None  # squeue -j already kept only these jobs
    if done.returncode != 0:
        if _UNKNOWN_JOB not in done.stderr + done.stdout:
            raise _failure(command, done)
        if len(ids) == 1:
            return []  # the one job asked about is not in slurmctld's memory: nothing queued
        # --all: a job listed by id shows even in a hidden partition; keep that without -j.
        command = ["squeue", *fields, "--all"]
        done = _call(command)
        if done.returncode != 0:
            raise _failure(command, done)
        wanted = set(ids)
    tasks = []
    for line in done.stdout.splitlines():
        task_id, _, state = line.strip().partition("|")
        match = _TASK_ID.match(task_id)
        if match and (wanted is None or match.group(1) in wanted):
            tasks.append(QueuedTask(match.group(1), int(match.group(2) or 0), state))
    return tasks


def cancel(job_ids: Iterable[str]) -> None:
    ids = sorted(set(job_ids))
    if ids:
        _run(["scancel", *ids])


def ended_states(job_ids: Iterable[str]) -> dict[str, str]:
    """``{"<job>_<index>": state}`` from sacct for ended tasks; empty without accounting.

    Unlike squeue, sacct keeps jobs slurmctld has purged, and answers an unknown id with no
    row (exit 0), so purged jobs need no special case here.
    """
    ids = sorted(set(job_ids))
    if not ids or not has_accounting():
        return {}
    try:
        output = _run(["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobID,State"])
    except SlurmError:
        return {}
    states = {}
    for line in output.splitlines():
        task_id, _, state = line.partition("|")
        match = _TASK_ID.match(task_id)
        if match:
            states[task_key(match.group(1), match.group(2))] = state.split()[0] if state else ""
    return states


def partition_nodes(partition: str | None) -> dict[str, frozenset[str]]:
    """The nodes a job of ``partition`` may run on, each with its features (``--constraint``).

    ``partition`` is what ``sbatch --partition`` takes, a comma-separated list included; None
    means the cluster's default partition (``sinfo`` marks it with ``*``). One ``sinfo`` call:
    ``-p`` for named partitions, else ``--all`` so that a hidden default partition is listed
    too (sinfo refuses both at once); a partition SLURM does not know has no nodes.
    """
    command = ["sinfo", "-h", "-N", "-o", "%N|%P|%f"]
    command += ["--all"] if partition is None else ["-p", partition]
    nodes: dict[str, frozenset[str]] = {}
    for line in _run(command, timeout=30).splitlines():
        name, _, rest = line.strip().partition("|")
        part, _, features = rest.partition("|")
        if not name or (partition is None and not part.endswith("*")):
            continue
        listed = frozenset(f for f in features.split(",") if f and f != "(null)")
        nodes[name] = nodes.get(name, frozenset()) | listed
    return nodes


def hostnames(expression: str) -> list[str]:
    """A SLURM host list (``node[01-04],gpu7``) expanded by ``scontrol show hostnames``."""
    return _run(["scontrol", "show", "hostnames", expression], timeout=30).split()
