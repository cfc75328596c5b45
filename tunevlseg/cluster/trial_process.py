"""One local trial process: forked by the launch's fork server, it runs one task and exits.

The process is a fresh child of a server that imported the trial's modules already
(:mod:`tunevlseg.cluster.preload`), so it starts in milliseconds, owns its trial under its own
pid (the owner stamp, the liveness check and ``TVLS_FAILPOINT`` all act on this process) and
dies alone: a SIGKILL or a segfault here ends this trial only.

Its files keep the layout of submitit's local jobs, which ``tvls-logs`` reads: in
``<folder>/<pid>/``, ``<pid>_submitted.pkl`` (the worker and its :class:`TrialTask`),
``<pid>_0_log.out`` and ``<pid>_0_log.err`` (this trial attempt's output, nobody else's) and,
when the worker returned, ``<pid>_0_result.pkl``.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.core.utils import DelayedSubmission

from tunevlseg.cluster.worker import TrialTask


@dataclass(frozen=True)
class LocalJobPaths:
    """The files of one local trial process (job id = its pid)."""

    folder: Path
    job_id: str

    @property
    def dir(self) -> Path:
        return self.folder / self.job_id

    @property
    def stdout(self) -> Path:
        return self.dir / f"{self.job_id}_0_log.out"

    @property
    def stderr(self) -> Path:
        return self.dir / f"{self.job_id}_0_log.err"

    @property
    def submitted(self) -> Path:
        return self.dir / f"{self.job_id}_submitted.pkl"

    @property
    def result(self) -> Path:
        return self.dir / f"{self.job_id}_0_result.pkl"


def _log_to(paths: LocalJobPaths) -> None:
    """Send this process's output (file descriptors 1 and 2: Python's and native libraries')
    to the trial's own log files, a line at a time so ``tvls-logs -f`` follows it."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    for fd, path in ((1, paths.stdout), (2, paths.stderr)):
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, fd)
        os.close(log)
    # The same stream objects (handlers created at import time hold them), line-buffered.
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
        else:
            setattr(sys, name, open(fd, "w", buffering=1, closefd=False))  # noqa: SIM115


def _started_line(task: TrialTask) -> str:
    """The first line of the log, in submitit's time format (``tvls-logs`` orders attempts by
    it): ``tunevlseg INFO (2026-01-31 12:00:00,123) - ...``."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    return (
        f"tunevlseg INFO ({stamp}) - Starting trial {task.study}#{task.trial_number} in process "
        f"{os.getpid()} (forked from the local worker {os.getppid()})"
    )


def run_trial_process(
    worker: Callable[[TrialTask], Any], task: TrialTask, folder: str, environ: Mapping[str, str]
) -> None:
    """The target of a local trial process.

    ``environ`` is the launch's environment when it started this trial: the fork server was
    started by the first launch of this Python process and kept that one's environment.
    """
    os.environ.clear()
    os.environ.update(environ)
    paths = LocalJobPaths(Path(folder), str(os.getpid()))
    paths.dir.mkdir(parents=True, exist_ok=True)
    paths.result.unlink(missing_ok=True)  # a pid used again: not this attempt's result
    _log_to(paths)
    DelayedSubmission(worker, task).dump(paths.submitted)
    print(_started_line(task), flush=True)
    outcome = worker(task)  # an exception: traceback in the log, exit status 1
    partial = paths.result.with_suffix(".tmp")
    partial.write_bytes(pickle.dumps(outcome))
    partial.replace(paths.result)
