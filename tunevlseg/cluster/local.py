"""Run tasks on this machine, a few at a time, each trial in its own process forked from a
long-lived worker that imported the trial's modules once.

A fresh Python process per trial paid ~7 s of one core importing torch, lightning,
transformers and tunevlseg before a demo trial trained for 2-3 s. The launch now starts one
fork server (the standard library's ``multiprocessing`` "forkserver", started on the first
trial with :mod:`tunevlseg.cluster.preload` imported) and every trial is a child forked from it
(:mod:`tunevlseg.cluster.trial_process`): the imports are paid once per launch, while each trial
is still its own process, with its own pid stamped on its trial, its own log files, and its own
death (a SIGKILL or a segfault ends one trial; the server goes on forking the next ones). One
server for every slot rather than one worker per slot: the imports are paid once, not once per
slot, and the standard library handles the forking, the reaping and the exit statuses.

This launcher keeps at most ``parallelism`` trials running (the role SLURM's ``%N`` array
throttle plays on a cluster), stops a trial at ``timeout_min`` (SIGTERM, then SIGKILL: it stays
RUNNING and a relaunch continues it from its checkpoint) and, on Ctrl-C, interrupts every
running trial and waits for it to end, so a relaunch never finds one still alive.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunevlseg.cluster.trial_process import LocalJobPaths, run_trial_process
from tunevlseg.cluster.worker import THREADS_ENV, TrialTask, TrialWorker

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext
    from multiprocessing.process import BaseProcess

PRELOADED = ("tunevlseg.cluster.preload", "tunevlseg.cluster.trial_process")
"""What the fork server imports before it forks its first trial."""

STOP_GRACE_S = 30.0
"""How long a trial told to stop (time-out, Ctrl-C) may take before it is killed: it writes
nothing on the way out, so this only bounds a process stuck in native code."""


@dataclass(frozen=True)
class TaskEvent:
    """A task started or ended; ``outcome`` is the worker's result or the error text.

    ``job_id`` is the trial process's pid (the name of its folder of logs).
    """

    kind: str  # "started", "finished", "failed"
    task: TrialTask
    job_id: str
    outcome: dict[str, Any] | None = None
    error: str = ""


@dataclass
class _RunningTrial:
    process: BaseProcess
    task: TrialTask
    started: float
    stop_sent: float | None = None  # when the time-out's SIGTERM was sent

    @property
    def job_id(self) -> str:
        return str(self.process.pid)


def fork_server() -> ForkServerContext:
    """The multiprocessing context whose processes are forked from the preloaded server."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOADED))  # read when the server starts (once)
    return context


class LocalLauncher:
    """Runs trial tasks as local processes, ``parallelism`` at a time, until all have ended."""

    def __init__(self, folder: Path, *, parallelism: int, timeout_min: float) -> None:
        self.folder = folder
        self.parallelism = max(1, parallelism)
        self.timeout_s = 60.0 * timeout_min
        folder.mkdir(parents=True, exist_ok=True)

    def run(
        self,
        tasks: Sequence[TrialTask],
        on_event: Callable[[TaskEvent], None] = lambda event: None,
        poll_seconds: float = 0.5,
    ) -> list[TaskEvent]:
        """Run every task; returns the end event of each. Ctrl-C stops the running ones."""
        pending = list(tasks)
        running: list[_RunningTrial] = []
        ended: list[TaskEvent] = []
        worker = TrialWorker()
        # Each trial process gets this environment: its share of the cores.
        os.environ.setdefault(THREADS_ENV, str(max(1, (os.cpu_count() or 1) // self.parallelism)))
        context = fork_server()
        try:
            while pending or running:
                while pending and len(running) < self.parallelism:
                    trial = self._start(context, worker, pending.pop(0))
                    running.append(trial)
                    on_event(TaskEvent("started", trial.task, trial.job_id))
                multiprocessing.connection.wait(
                    [trial.process.sentinel for trial in running], timeout=poll_seconds
                )
                still_running = []
                for trial in running:
                    if trial.process.exitcode is None:
                        self._enforce_timeout(trial)
                        still_running.append(trial)
                        continue
                    event = self._end_event(trial)
                    ended.append(event)
                    on_event(event)
                running = still_running
        except KeyboardInterrupt:
            _interrupt([trial.process for trial in running])
            raise
        return ended

    def _start(self, context: ForkServerContext, worker: Any, task: TrialTask) -> _RunningTrial:
        process = context.Process(
            target=run_trial_process,
            args=(worker, task, str(self.folder), dict(os.environ)),
            name=f"{task.study}#{task.trial_number}",
        )
        process.start()
        return _RunningTrial(process, task, time.monotonic())

    def _enforce_timeout(self, trial: _RunningTrial) -> None:
        """SIGTERM at the time limit (the trial stays RUNNING: interrupted, not failed), SIGKILL
        if it is still there ``STOP_GRACE_S`` later."""
        now = time.monotonic()
        if trial.stop_sent is None and now - trial.started >= self.timeout_s:
            trial.stop_sent = now
            _signal(trial.process, signal.SIGTERM)
        elif trial.stop_sent is not None and now - trial.stop_sent >= STOP_GRACE_S:
            _signal(trial.process, signal.SIGKILL)

    def _end_event(self, trial: _RunningTrial) -> TaskEvent:
        paths = LocalJobPaths(self.folder, trial.job_id)
        code = trial.process.exitcode
        if code == 0:
            try:
                outcome = pickle.loads(paths.result.read_bytes())
            except (OSError, pickle.UnpicklingError, EOFError):
                pass
            else:
                return TaskEvent("finished", trial.task, trial.job_id, outcome=outcome)
        if trial.stop_sent is not None:
            text = f"timed out after {self.timeout_s / 60:g} min (cluster.timeout_min)"
        elif code is not None and code < 0:
            text = f"killed by {signal.Signals(-code).name}"
        else:
            text = last_exception_line(paths.stderr) or f"ended with exit status {code}"
        return TaskEvent("failed", trial.task, trial.job_id, error=f"{text} (log: {paths.stderr})")


def _signal(process: BaseProcess, signum: int) -> None:
    if process.pid is not None:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(process.pid, signum)


def _interrupt(processes: Sequence[BaseProcess]) -> None:
    """Ctrl-C: interrupt the trials as the terminal does (they stay RUNNING, checkpoints kept)
    and wait until each has ended before the launch lets go of the sweep's lock, so a relaunch
    never finds one still alive; one that does not end in time, or a second Ctrl-C, kills them.
    """
    for process in processes:
        _signal(process, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        pass
    for process in processes:
        if process.exitcode is None:
            _signal(process, signal.SIGKILL)
            process.join(5)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def last_exception_line(log: Path) -> str | None:
    """The last ``SomeError: message`` line of a task's stderr log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), None)
