"""``tvls-logs FILE STUDY[#TRIAL]``: the task log (stdout, then stderr) of one trial of a sweep.

A trial's log is written by the submitit task that ran it, in the sweep's jobs folder, under a
name that says nothing about the trial (``jobs/<job>_<index>/<job>_<index>_0_log.out`` for a
SLURM array task, ``jobs/<job>/<job>_0_log.out`` for a one-task plan, ``jobs/local/<pid>/...``
for a local task). Finding it by hand means reading the manifest, the trial's owner stamp or
submitit's pickles; this command does that mapping:

* SLURM: the manifest's arrays give each ``<job>_<index>`` its (study, trial), and the trial's
  owner stamp (``tvls.slurm_job_id`` / ``tvls.slurm_array_task_id``) names the task that ran it.
* local: the manifest keeps no local job ids (a local job id is the pid of the trial process,
  ``cluster/trial_process.py``), so each local job's pickled task (``<pid>_submitted.pkl``,
  written by the trial process itself) is read back for its (study, trial).

A trial may have run more than once: a task killed before it claimed the trial is followed by
another task for the same trial, and a trial whose task died is failed and re-run as a new trial
with the same parameters and folder (``tvls.lineage``, ``tvls.retry_of``). These runs are the
trial's *attempts*, oldest first, each one task log; the latest is shown unless ``--attempt N``
asks for another. A SLURM requeue of a task (preemption, time-out) is not a new attempt: SLURM
appends the next run to the same files (submitit's ``--open-mode=append``), one "Starting with
JobEnvironment" line per run.

``-f`` keeps printing what the task writes until the trial is finished in the storage and its
task has ended (or the task is gone while the trial is still RUNNING, which the next launch
recovers), or until Ctrl-C (exit 130, quietly).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tunevlseg.cli import _app
from tunevlseg.tuning.trial_attrs import trial_attrs

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from tunevlseg.cluster.manifest import Manifest
    from tunevlseg.paths import SweepPaths

EPILOG = """\
examples:
  tvls-logs experiments/demo.yaml cris-coop              # its most recent trial with a log
  tvls-logs experiments/demo.yaml clipseg-vpt#1          # trial 1, its latest attempt
  tvls-logs experiments/demo.yaml clipseg-vpt#1 --attempt 1   # its first run (before a re-run)
  tvls-logs experiments/medical.yaml maple/kvasir-seg#12 -f   # follow it until the trial ends

STUDY is the study's full name (tvls-status lists them), its name without the sweep, or any
part of it that names one study only (a suffix such as maple/kvasir-seg, or a model-learner
such as cris-coop). Exit 1: no log yet; exit 2: unknown study or trial, or a bad argument."""

POLL_S = 0.3
"""How often -f looks for new bytes in the log files."""
CHECK_S = 2.0
"""How often -f asks the storage (and SLURM or the process table) whether the trial ended."""
GRACE_S = 15.0
"""After the trial is finished, how long -f waits for its task to write its last lines."""
PARTIAL_S = 1.0
"""How long -f holds back a line the task has not ended yet."""
CHUNK = 1 << 16


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser("tvls-logs", "Print the task log (stdout and stderr) of one trial of a sweep.")
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument(
        "target",
        metavar="STUDY[#TRIAL]",
        help="the study (full name or an unambiguous part of it) and optionally the trial "
        "number; without it, the study's most recent trial that has a log",
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing the log as it grows until the trial ends (Ctrl-C stops)",
    )
    p.add_argument(
        "--attempt",
        type=_app.positive_int,
        metavar="N",
        help="the trial's N-th run (1 = its first) instead of the latest",
    )
    return p


# --------------------------------------------------------------------------- finding the logs


@dataclass(frozen=True)
class TaskLog:
    """The two files one submitit task wrote, and when that task first started."""

    kind: str  # "slurm" or "local"
    task: str  # "<job>_<index>" (SLURM) or the local job id (its trial process's pid)
    out: Path
    err: Path
    started: float

    @property
    def files(self) -> list[Path]:
        return [path for path in (self.out, self.err) if path.is_file()]

    def describe(self) -> str:
        return f"SLURM task {self.task}" if self.kind == "slurm" else f"local task {self.task}"


_STAMP = re.compile(rb"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\)")
"""The time in submitit's log lines: ``submitit INFO (2026-11-29 19:43:00,718) - ...``."""
_RUN_START = b"Starting with JobEnvironment("
"""The line submitit writes first in every run of a task (a requeued task appends another)."""


def _started(out: Path, err: Path) -> float:
    """When the task first started: the time of submitit's first line, else the files' age."""
    try:
        with out.open("rb") as file:
            head = file.read(4096)
        match = _STAMP.search(head)
        if match:
            return (
                datetime.strptime(match.group(1).decode(), "%Y-%m-%d %H:%M:%S").timestamp()
                + int(match.group(2)) / 1000
            )
    except (OSError, ValueError):
        pass
    times = [path.stat().st_mtime for path in (out, err) if path.is_file()]
    return min(times) if times else 0.0


def slurm_task_log(jobs: Path, key: str) -> TaskLog | None:
    """The log of SLURM task ``<job>_<index>``, if it has one yet.

    submitit formats its folder ``jobs/%j`` with ``%j`` = ``<job>_<index>`` for an array task;
    a one-task plan is submitted as a plain job (``%j`` = ``<job>``), which the manifest and
    the owner stamp both record as index 0.
    """
    job, _, index = key.partition("_")
    candidates = [(jobs / key, key)]
    if index in ("", "0"):
        candidates.append((jobs / job, job))
    for folder, job_id in candidates:
        out, err = folder / f"{job_id}_0_log.out", folder / f"{job_id}_0_log.err"
        if out.is_file() or err.is_file():
            return TaskLog("slurm", key, out, err, _started(out, err))
    return None


def local_task_logs(folder: Path) -> dict[tuple[str, int], list[TaskLog]]:
    """(study, trial) -> the local tasks that ran it, from each local job's pickled task.

    The pickles are the launch's own (each trial process writes its ``TrialWorker`` and
    ``TrialTask``); one that cannot be read (cut short, another program's) is skipped.
    """
    from submitit.core.utils import DelayedSubmission

    from tunevlseg.cluster.worker import TrialTask

    found: dict[tuple[str, int], list[TaskLog]] = {}
    if not folder.is_dir():
        return found
    for job in folder.iterdir():
        pickle = job / f"{job.name}_submitted.pkl"
        if not job.name.isdigit() or not pickle.is_file():
            continue
        try:
            task = DelayedSubmission.load(pickle).args[0]
        except Exception:  # noqa: BLE001 - unreadable: not one of ours to show
            continue
        if not isinstance(task, TrialTask):
            continue
        out, err = job / f"{job.name}_0_log.out", job / f"{job.name}_0_log.err"
        if out.is_file() or err.is_file():
            log = TaskLog("local", job.name, out, err, _started(out, err))
            found.setdefault((task.study, task.trial_number), []).append(log)
    return found


def study_logs(
    paths: SweepPaths, manifest: Manifest | None, study: str, trials: Iterable[FrozenTrial]
) -> dict[int, list[TaskLog]]:
    """Trial number -> its task logs, oldest first, from the manifest, the owner stamps and the
    local jobs' pickles."""
    from tunevlseg.cluster.slurm import task_key
    from tunevlseg.tuning import recovery

    keys: dict[int, set[str]] = {}
    if manifest is not None:
        for key, (name, number) in manifest.task_index().items():
            if name == study:
                keys.setdefault(number, set()).add(key)
    for trial in trials:
        owner = trial_attrs(trial)
        job = owner.get(recovery.SLURM_JOB_ATTR)
        if job:
            key = task_key(str(job), owner.get(recovery.SLURM_TASK_ATTR))
            keys.setdefault(trial.number, set()).add(key)
    logs: dict[int, list[TaskLog]] = {}
    for number, task_keys in keys.items():
        for key in task_keys:
            log = slurm_task_log(paths.jobs, key)
            if log is not None:
                logs.setdefault(number, []).append(log)
    for (name, number), local in local_task_logs(paths.jobs / "local").items():
        if name == study:
            logs.setdefault(number, []).extend(local)
    for entries in logs.values():
        entries.sort(key=lambda log: (log.started, log.task))
    return logs


# --------------------------------------------------------------------------- which study, trial


def resolve_study(query: str, names: Iterable[str]) -> str:
    """The one study ``query`` names: its full name, its name without the sweep, a suffix of
    it, one of its parts (``coop`` in ``sweep/clipseg-coop/kvasir``), or a substring; the
    first of these rules that matches anything decides, and must match one study only."""
    names = sorted(set(names))
    if not names:
        raise _app.CommandError(
            "the sweep has no studies yet: nothing was launched", _app.EXIT_FAILED
        )

    def parts(name: str) -> set[str]:
        pieces = name.split("/")
        return {*pieces, *(p for piece in pieces for p in piece.split("-"))}

    rules = (
        lambda name: query in (name, name.split("/", 1)[-1]),
        lambda name: name.endswith(query),
        lambda name: query in parts(name),
        lambda name: query in name,
    )
    for rule in rules:
        matches = [name for name in names if rule(name)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise _app.CommandError(
                f"{query!r} names {len(matches)} studies: {_listing(matches)}", _app.EXIT_USAGE
            )
    raise _app.CommandError(
        f"no study of this sweep matches {query!r}; its studies: {_listing(names)}", _app.EXIT_USAGE
    )


def _listing(names: list[str], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def parse_target(text: str) -> tuple[str, int | None]:
    study, sep, trial = text.rpartition("#")
    if not sep:
        return text, None
    if not study or not trial.isdigit():
        raise _app.CommandError(
            f"expected STUDY or STUDY#TRIAL (a trial number), got {text!r}", _app.EXIT_USAGE
        )
    return study, int(trial)


@dataclass(frozen=True)
class Attempt:
    trial: FrozenTrial
    log: TaskLog


@dataclass
class Selection:
    """The attempt to show, among the runs of the trial asked for."""

    study: str
    asked: int  # the trial number the user gave (or the one chosen for them)
    attempts: list[Attempt]
    index: int  # into attempts
    runs: list[FrozenTrial]  # the asked trial and its re-runs, logged or not

    @property
    def attempt(self) -> Attempt:
        return self.attempts[self.index]

    @property
    def asked_trial(self) -> FrozenTrial:
        return next(t for t in self.runs if t.number == self.asked)

    @property
    def later(self) -> list[FrozenTrial]:
        """Re-runs newer than every run with a log (WAITING, or not started yet)."""
        last_logged = max(a.trial.number for a in self.attempts)
        return [t for t in self.runs if t.number > last_logged]


def _lineage(trial: FrozenTrial) -> int:
    from tunevlseg.tuning import recovery

    return int(trial_attrs(trial).get(recovery.LINEAGE_ATTR, trial.number))


def runs_of(trials: list[FrozenTrial], number: int) -> list[FrozenTrial]:
    """The trial and every re-run of it (same lineage: same parameters and folder), in order."""
    by_number = {trial.number: trial for trial in trials}
    lineage = _lineage(by_number[number])
    return sorted((t for t in trials if _lineage(t) == lineage), key=lambda t: t.number)


def _state(trial: FrozenTrial) -> str:
    return trial.state.name


def _no_log_message(
    study: str,
    number: int,
    runs: list[FrozenTrial],
    logs: dict[int, list[TaskLog]],
    manifest: Manifest | None,
) -> str:
    """Why trial ``number`` has no log, and which trials of the study have one."""
    states = ", ".join(f"#{t.number} {_state(t)}" for t in runs)
    queued = _queued_tasks_of(manifest, study, {t.number for t in runs})
    where = f"; in the SLURM queue: {queued}" if queued else ""
    have = sorted(logs)
    listed = ", ".join(f"#{n}" for n in have[:20]) + (" ..." if len(have) > 20 else "")
    others = f"trials with a log: {listed}" if have else "no trial of the study has a log yet"
    return f"{study}#{number} has no log yet ({states}{where}); {others}"


def _queued_tasks_of(manifest: Manifest | None, study: str, numbers: set[int]) -> str:
    """``<job>_<index> PENDING`` for the queued SLURM tasks of these trials (best effort)."""
    from tunevlseg.cluster import slurm

    if manifest is None:
        return ""
    index = manifest.task_index()
    keys = {key for key, (name, n) in index.items() if name == study and n in numbers}
    if not keys or not slurm.available():
        return ""
    try:
        queued = slurm.queued_tasks({key.split("_")[0] for key in keys})
    except slurm.SlurmError:
        return ""
    return ", ".join(f"{t.key} {t.state}" for t in queued if t.key in keys)


def select(
    study: str,
    trials: list[FrozenTrial],
    logs: dict[int, list[TaskLog]],
    number: int | None,
    attempt: int | None,
    manifest: Manifest | None,
) -> Selection:
    """The attempt to show; a CommandError names what exists when there is none."""
    known = {trial.number for trial in trials}
    if number is None:
        if not logs:
            raise _app.CommandError(
                f"no trial of {study} has a log yet ({len(trials)} trial(s): "
                f"{_state_counts(trials)})",
                _app.EXIT_FAILED,
            )
        # the trial whose task started last (among trials the storage knows)
        latest = max(
            ((log.started, n) for n, entries in logs.items() if n in known for log in entries),
            default=None,
        )
        if latest is None:
            raise _app.CommandError(f"the logs of {study} name no trial its storage holds")
        number = latest[1]
    if number not in known:
        span = f"#{min(known)}-#{max(known)}" if known else "none yet"
        raise _app.CommandError(
            f"{study} has no trial #{number} (its trials: {span})", _app.EXIT_USAGE
        )
    runs = runs_of(trials, number)
    attempts = [Attempt(trial, log) for trial in runs for log in logs.get(trial.number, [])]
    if not attempts:
        raise _app.CommandError(
            _no_log_message(study, number, runs, logs, manifest), _app.EXIT_FAILED
        )
    if attempt is not None and attempt > len(attempts):
        listed = "; ".join(
            f"{i} = trial #{a.trial.number} ({a.log.describe()})" for i, a in enumerate(attempts, 1)
        )
        raise _app.CommandError(
            f"{study}#{number} has {len(attempts)} attempt(s) with a log: {listed}", _app.EXIT_USAGE
        )
    index = len(attempts) - 1 if attempt is None else attempt - 1
    return Selection(study, number, attempts, index, runs)


def _state_counts(trials: list[FrozenTrial]) -> str:
    from collections import Counter

    counts = Counter(_state(t) for t in trials)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"


# --------------------------------------------------------------------------- printing


class LogPrinter:
    """Copies log files to stdout byte for byte, with a ``==> file <==`` line (as ``tail``
    prints) whenever the output moves to another file.

    While following, a line still being written is held back until it ends (or for
    :data:`PARTIAL_S`): printed half-way, the next file's header would cut it in two.
    """

    def __init__(self, files: list[Path], out: BinaryIO) -> None:
        self.files = files
        self.out = out
        self.offsets = dict.fromkeys(files, 0)
        self.partial_since: dict[Path, float] = {}
        self.current: Path | None = None
        self.ends_with_newline = True

    def _header(self, path: Path, note: str = "") -> None:
        if not self.ends_with_newline:
            self.out.write(b"\n")
        self.out.write(f"==> {path}{note} <==\n".encode())
        self.current = path
        self.ends_with_newline = True

    def _write(self, path: Path, data: bytes) -> None:
        if self.current != path:
            self._header(path)
        self.out.write(data)
        self.offsets[path] += len(data)
        self.ends_with_newline = data.endswith(b"\n")

    def _copy(self, path: Path, whole: bool) -> bool:
        """Print what ``path`` holds past its offset (``whole``: a partial last line too);
        True when something was printed."""
        try:
            size = path.stat().st_size
        except OSError:
            return False
        if size < self.offsets[path]:  # rewritten from the start
            self.offsets[path] = 0
            self._header(path, " (rewritten)")
        if size == self.offsets[path]:
            return False
        with path.open("rb") as file:
            file.seek(self.offsets[path])
            if whole:
                while chunk := file.read(CHUNK):
                    self._write(path, chunk)
                self.partial_since.pop(path, None)
                self.out.flush()
                return True
            data = file.read(size - self.offsets[path])
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            since = self.partial_since.setdefault(path, time.monotonic())
            if time.monotonic() - since < PARTIAL_S:
                data = data[:complete]
            else:
                self.partial_since.pop(path)
        else:
            self.partial_since.pop(path, None)
        if not data:
            return False
        self._write(path, data)
        self.out.flush()
        return True

    def print_all(self, whole: bool = True) -> None:
        """Every file as it is now; an empty one is named, so its emptiness is visible."""
        for path in self.files:
            if not path.is_file():
                continue
            if not self._copy(path, whole) and self.current != path:
                self._header(path, "" if path.stat().st_size else " (empty)")
        self.out.flush()

    def pump(self, whole: bool = False) -> bool:
        printed = False
        for path in self.files:
            printed = self._copy(path, whole) or printed
        return printed

    def finish(self) -> None:
        if not self.ends_with_newline:
            self.out.write(b"\n")
            self.ends_with_newline = True
        self.out.flush()


def task_alive(log: TaskLog, trial: FrozenTrial) -> bool | None:
    """Is the task still queued or running? None when this machine cannot tell."""
    from tunevlseg.cluster import slurm
    from tunevlseg.tuning import recovery

    if log.kind == "slurm":
        try:
            return any(
                task.key == log.task for task in slurm.queued_tasks([log.task.split("_")[0]])
            )
        except slurm.SlurmError:
            return None
    host = trial_attrs(trial).get(recovery.HOST_ATTR)
    if host is not None and host != socket.gethostname():
        return None
    # A local job id is the pid of the trial process, forked from the launch's fork server
    # (logs written before: of submitit's local controller, alive as long as its task).
    try:
        command = Path(f"/proc/{int(log.task)}/cmdline").read_bytes()
        state = Path(f"/proc/{int(log.task)}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, ValueError, IndexError):
        return False if Path("/proc/self").exists() else None
    ours = b"multiprocessing.forkserver" in command or b"submitit.local._local" in command
    return ours and state != "Z"


def _ending(trial: FrozenTrial) -> str:
    from tunevlseg.cli.status import one_line_reason
    from tunevlseg.tuning import recovery

    if trial.state.name == "COMPLETE":
        return f"trial #{trial.number} is COMPLETE (value {trial.value:.4f})"
    if trial.state.name == "FAIL":
        reason = one_line_reason(trial_attrs(trial).get(recovery.FAILURE_ATTR))
        return f"trial #{trial.number} FAILED: {reason}"
    return f"trial #{trial.number} is {trial.state.name}"


def follow(
    printer: LogPrinter, storage: BaseStorage, selection: Selection, experiment: Path
) -> int:
    """Print what the task writes until nothing more will come (see the module docstring)."""
    attempt = selection.attempt
    trial = attempt.trial
    finished_at: float | None = None
    gone_checks = 0
    next_check = 0.0
    err = _app.messages()
    while True:
        printer.pump()
        now = time.monotonic()
        if now >= next_check:
            next_check = now + CHECK_S
            trial = storage.get_trial(attempt.trial._trial_id)
            alive = task_alive(attempt.log, trial)
            if trial.state.is_finished():
                finished_at = finished_at or now
                if alive is not True or now - finished_at >= GRACE_S:
                    break
            elif alive is False:
                gone_checks += 1  # twice in a row: not a requeue caught between two states
                if gone_checks >= 2:
                    printer.pump(whole=True)
                    printer.finish()
                    local = " --local" if attempt.log.kind == "local" else ""
                    err.print(
                        f"{attempt.log.describe()} has ended but trial #{trial.number} is still "
                        f"{trial.state.name}: nothing runs it now; `tvls-launch {experiment}{local}` "
                        "will run it again (from its checkpoint)",
                        markup=False,
                    )
                    return _app.EXIT_OK
            else:
                gone_checks = 0
        time.sleep(POLL_S)
    printer.pump(whole=True)
    printer.finish()
    err.print(_ending(trial), markup=False)
    return _app.EXIT_OK


def _announce(selection: Selection, chose_trial: bool) -> None:
    """Say which log is shown (stderr), and, for a failed trial, why it failed."""
    from tunevlseg.cli.status import one_line_reason
    from tunevlseg.tuning import recovery

    err = _app.messages()
    attempt = selection.attempt
    trial = attempt.trial
    chosen = " (the study's most recent trial with a log)" if chose_trial else ""
    retry_of = trial_attrs(trial).get(recovery.RETRY_OF_ATTR)
    rerun = f", re-run of #{retry_of}" if retry_of is not None else ""
    err.print(
        f"{selection.study}#{selection.asked}{chosen}: attempt {selection.index + 1} of "
        f"{len(selection.attempts)}, trial #{trial.number} ({trial.state.name}{rerun}), "
        f"{attempt.log.describe()}",
        markup=False,
    )
    runs = _run_count(attempt.log.out)
    if runs > 1:
        err.print(f"the task was requeued: its log holds its {runs} runs, in order", markup=False)
    for later in selection.later:
        err.print(f"re-run as trial #{later.number} ({later.state.name}): no log yet", markup=False)
    asked = selection.asked_trial
    if asked.number != trial.number and asked.state.name == "FAIL":  # named, but not shown
        reason = one_line_reason(trial_attrs(asked).get(recovery.FAILURE_ATTR))
        err.print(
            f"[red]trial #{asked.number} failed:[/red] {_escape(reason)} "
            f"(--attempt N shows its other runs)"
        )
    if trial.state.name == "FAIL":
        reason = one_line_reason(trial_attrs(trial).get(recovery.FAILURE_ATTR))
        err.print(f"[red]failed:[/red] {_escape(reason)}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _run_count(out: Path) -> int:
    """How many runs of the task the stdout log holds (submitit's start line of each)."""
    count = 0
    tail = b""
    try:
        with out.open("rb") as file:
            while chunk := file.read(CHUNK):
                count += (tail + chunk).count(_RUN_START)
                tail = chunk[-len(_RUN_START) + 1 :]
    except OSError:
        return 0
    return count


def _study_names(storage: BaseStorage, experiment_names: list[str], sweep: str) -> list[str]:
    """The file's studies, and any other study of this sweep the storage holds (the file may
    have changed since they were created)."""
    stored = [
        s.study_name for s in storage.get_all_studies() if s.study_name.startswith(f"{sweep}/")
    ]
    return sorted(set(experiment_names) | set(stored))


def command(args: argparse.Namespace) -> int:
    """Ctrl-C ends ``-f`` (or a long read) on purpose: exit 130 without a message."""
    try:
        return _show(args)
    except KeyboardInterrupt:
        _flush_quietly()
        return _app.EXIT_INTERRUPTED


def _show(args: argparse.Namespace) -> int:
    import optuna

    from tunevlseg.cli.status import open_existing_storage
    from tunevlseg.cluster.manifest import read_manifest
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.paths import SweepPaths

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    query, number = parse_target(args.target)
    experiment = load_experiment(args.experiment)
    paths = SweepPaths.of(experiment)
    storage = open_existing_storage(experiment)
    if storage is None:
        raise _app.CommandError(
            f"sweep {experiment.spec.name} has no study storage yet: nothing was launched, so "
            "there is no log",
            _app.EXIT_FAILED,
        )
    listed = [spec.name for spec in expand(experiment).studies]
    names = _study_names(storage, listed, experiment.spec.name)
    study = resolve_study(query, names)
    try:
        study_id = storage.get_study_id_from_name(study)
    except KeyError:
        raise _app.CommandError(f"{study} has no trial yet: it was never launched") from None
    trials = storage.get_all_trials(study_id, deepcopy=False)
    manifest = read_manifest(paths.manifest)
    logs = study_logs(paths, manifest, study, trials)
    selection = select(study, trials, logs, number, args.attempt, manifest)
    _announce(selection, chose_trial=number is None)
    printer = LogPrinter([selection.attempt.log.out, selection.attempt.log.err], sys.stdout.buffer)
    try:
        printer.print_all(whole=not args.follow)
        if args.follow:
            return follow(printer, storage, selection, experiment.path)
        printer.finish()
    except BrokenPipeError:  # | head: the reader has what it wanted
        _silence_stdout()
        return _app.EXIT_OK
    return _app.EXIT_OK


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        _silence_stdout()


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
