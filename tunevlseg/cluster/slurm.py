"""What SLURM knows: configuration, queued array tasks, and ended jobs.

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


def _run(command: Sequence[str], timeout: float = 60) -> str:
    if shutil.which(command[0]) is None:
        raise SlurmError(f"{command[0]} not found: is this a SLURM login node?")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(command)} did not answer within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")
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


def queued_tasks(job_ids: Iterable[str]) -> list[QueuedTask]:
    """Array tasks of these jobs still in the queue (one entry per task, arrays expanded)."""
    ids = sorted(set(job_ids))
    if not ids:
        return []
    output = _run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T"])
    tasks = []
    for line in output.splitlines():
        task_id, _, state = line.strip().partition("|")
        match = _TASK_ID.match(task_id)
        if match:
            tasks.append(QueuedTask(match.group(1), int(match.group(2) or 0), state))
    return tasks


def cancel(job_ids: Iterable[str]) -> None:
    ids = sorted(set(job_ids))
    if ids:
        _run(["scancel", *ids])


def ended_states(job_ids: Iterable[str]) -> dict[str, str]:
    """``{"<job>_<index>": state}`` from sacct for ended tasks; empty without accounting."""
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
