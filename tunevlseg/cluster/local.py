"""Run tasks on this machine through submitit's local executor, a few at a time.

Each task is its own process started by submitit exactly as on a cluster node (pickled callable,
``submitit.core._submit``), so the local demo exercises the same worker entry point as SLURM
array tasks. submitit's local executor starts every submitted job at once; this launcher keeps at
most ``parallelism`` running, the role SLURM's ``%N`` array throttle plays on a cluster.

Task logs land in ``<folder>/<job id>/`` (the executor's folder is ``<folder>/%j``). submitit's
local controller process (``submitit.local._local``) is handed that template unformatted and
runs ``Path(template).mkdir(exist_ok=True)`` before it opens the logs in the formatted folder,
so each task start leaves an empty folder literally named ``%j`` beside the real ones. Nothing
is ever written into it; the launcher removes it when its tasks have ended
(:meth:`LocalLauncher.remove_template_folder`).
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from tunevlseg.cluster.worker import THREADS_ENV, TrialTask, TrialWorker

JOB_ID_TAG = "%j"
"""submitit's placeholder for the job id in a folder name."""


@dataclass(frozen=True)
class TaskEvent:
    """A task started or ended; ``outcome`` is the worker's result or the error text."""

    kind: str  # "started", "finished", "failed"
    task: TrialTask
    job_id: str
    outcome: dict[str, Any] | None = None
    error: str = ""


class LocalLauncher:
    """Runs trial tasks as local processes, ``parallelism`` at a time, until all have ended."""

    def __init__(self, folder: Path, *, parallelism: int, timeout_min: int) -> None:
        self.folder = folder
        self.parallelism = max(1, parallelism)
        self.executor = submitit.LocalExecutor(folder=str(folder / JOB_ID_TAG))
        # submitit's controller process (one per task) shares our terminal: on Ctrl-C it would
        # print its own KeyboardInterrupt traceback there. Its stderr goes to a log instead.
        folder.mkdir(parents=True, exist_ok=True)
        quiet = f"exec 2>>{shlex.quote(str(folder / 'controllers.log'))}"
        self.executor.update_parameters(timeout_min=timeout_min, setup=[quiet])

    def run(
        self,
        tasks: Sequence[TrialTask],
        on_event: Callable[[TaskEvent], None] = lambda event: None,
        poll_seconds: float = 0.5,
    ) -> list[TaskEvent]:
        """Run every task; returns the end event of each. Ctrl-C cancels the running ones."""
        pending = list(tasks)
        running: list[tuple[submitit.Job[Any], TrialTask]] = []
        ended: list[TaskEvent] = []
        worker = TrialWorker()
        # Each task process inherits this environment: its share of the cores.
        os.environ.setdefault(THREADS_ENV, str(max(1, (os.cpu_count() or 1) // self.parallelism)))
        try:
            while pending or running:
                while pending and len(running) < self.parallelism:
                    task = pending.pop(0)
                    job = self.executor.submit(worker, task)
                    running.append((job, task))
                    on_event(TaskEvent("started", task, str(job.job_id)))
                still_running = []
                for job, task in running:
                    if not job.done():
                        still_running.append((job, task))
                        continue
                    event = _end_event(job, task)
                    ended.append(event)
                    on_event(event)
                running = still_running
                if running:
                    time.sleep(poll_seconds)
        except KeyboardInterrupt:
            for job, _task in running:
                job.cancel(check=False)
            _wait_until_done([job for job, _task in running], seconds=30)
            raise
        finally:
            self.remove_template_folder()
        return ended

    def remove_template_folder(self) -> None:
        """Remove the empty ``%j`` folder submitit's controllers create (see the module's
        docstring). Left alone if anything is in it: it is then not submitit's empty folder."""
        try:
            (self.folder / JOB_ID_TAG).rmdir()
        except OSError:  # absent, or not empty
            pass


def _wait_until_done(jobs: Sequence[submitit.Job[Any]], seconds: float) -> None:
    """Let cancelled tasks finish their last storage write before the launch lets go of the
    sweep's lock: a relaunch must not find them still alive."""
    deadline = time.monotonic() + seconds
    while any(not job.done() for job in jobs) and time.monotonic() < deadline:
        try:
            time.sleep(0.2)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            return


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def last_exception_line(log: Path) -> str | None:
    """The last ``SomeError: message`` line of a task's stderr log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), None)


def _end_event(job: submitit.Job[Any], task: TrialTask) -> TaskEvent:
    try:
        outcome = job.result()
    except Exception as error:  # the traceback is in the task's log: show its last line
        text = last_exception_line(job.paths.stderr) or type(error).__name__
        return TaskEvent("failed", task, str(job.job_id), error=f"{text} (log: {job.paths.stderr})")
    return TaskEvent("finished", task, str(job.job_id), outcome=outcome)
