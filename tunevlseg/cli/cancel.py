"""``tvls-cancel FILE``: stop a sweep's queued and running SLURM jobs, so a later
``tvls-launch FILE`` resumes it.

What is cancelled, and only that: the array jobs and collector jobs the sweep's manifest records,
by job id (``scancel <id>``, never by name or user, so nobody else's jobs are touched). A job id
the queue holds under another name than this sweep's (``tvls-<sweep>``, ``tvls-<sweep>-collect``)
or for another user is left alone: SLURM reuses ids after a reset of its state, and the
manifest's ids are kept for ever.

The storage is touched once: each RUNNING trial whose owner is stopped is marked "stopped by
tvls-cancel" first (:func:`tunevlseg.tuning.recovery.mark_stopped`). A trial whose task is
cancelled stays RUNNING; the next ``tvls-launch`` finds its stamped task gone (from ``squeue``,
or its process gone) and fails it with that reason and re-queues it with its parameters and
checkpoint folder (:mod:`tunevlseg.cluster.liveness`,
:func:`tunevlseg.tuning.recovery.recover_stale`). Thanks to the mark, that re-run does not use
one of the trial's ``search.max_retries``: cancelling and resuming a sweep must not fail trials
for good. Trials whose tasks were still pending stay WAITING and are simply submitted again.
Telling any trial FAIL here would be wrong: an error of the trial's own counts in the budget.

Order and timing matter for that resume:

* the sweep's launch lock is held throughout, so a launch cannot read the queue half-way
  through (and take the tasks being cancelled for queued, submitting nothing), nor submit
  arrays this command would miss;
* collectors are cancelled before the arrays: once its arrays are gone, a collector's
  ``afterany`` dependency is met and it would start on a half-finished sweep;
* the command returns when the cancelled jobs have left the queue (a running task takes up to
  SLURM's ``KillWait`` to end): a relaunch right after must not find them still listed.

A local sweep (``tvls-launch --local``) runs only as long as its launch: it holds the sweep's
lock and writes its holder (pid, host) into it. If that holder is a ``tvls-launch ... --local``
on this machine, this command interrupts it as Ctrl-C in its terminal would (SIGINT to the
launch and to every process it started: its trials stop, stay RUNNING and keep their
checkpoints, and the launch exits as after Ctrl-C); otherwise it says to press Ctrl-C where it
runs.

Confirmation: ``--yes``, or a "y" at the prompt on a terminal. Without a terminal (a script, a
pipe) and without ``--yes``, nothing is cancelled (exit 2): a command that kills jobs should not
run because its input happened to be redirected.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from tunevlseg.cli import _app
from tunevlseg.tuning import recovery
from tunevlseg.tuning.trial_attrs import trial_attrs

if TYPE_CHECKING:
    from tunevlseg.cluster.manifest import Manifest
    from tunevlseg.config.loader import Experiment

EPILOG = """\
examples:
  tvls-cancel experiments/medical.yaml          # show the sweep's queued jobs, ask, cancel
  tvls-cancel experiments/medical.yaml --yes    # no question (scripts; required without a terminal)
  tvls-launch experiments/medical.yaml          # later: resume where the sweep stopped

Exit 0: cancelled, or nothing to cancel; 1: SLURM refused, the answer was no, or the jobs did
not leave the queue; 2: no confirmation (not a terminal and no --yes), or a bad experiment file.

--json prints one object with these keys:
  sweep: the sweep's name
  cancelled: the jobs cancelled, each {job_id, kind (array or collector), pending, running,
    name, user}; pending and running count tasks as squeue listed them just before
  left_alone: jobs whose id the manifest records but which squeue holds under another name or
    user (SLURM gave the id to another job): not cancelled
  local_launch: {pid, holder, stopped} when a local launch was interrupted, else null
  resume: the command that resumes the sweep, or null when nothing was stopped"""

LOCK_WAIT_S = 300.0
"""A SLURM launch holds the sweep's lock for seconds; wait for it as another launch would."""
LEAVE_QUEUE_S = 180.0
"""How long cancelled jobs may take to leave the queue (running tasks end after KillWait)."""
LOCAL_STOP_S = 120.0
"""How long an interrupted local launch may take to stop its tasks (it waits 30 s for them)."""
POLL_S = 0.5

_HOLDER = re.compile(r"pid (\d+) on (\S+) since (\S+)")
"""What :func:`tunevlseg.cluster.lock.sweep_lock` writes into the lock file it holds."""


def build_parser() -> argparse.ArgumentParser:
    p = _app.parser(
        "tvls-cancel", "Cancel a sweep's queued and running SLURM jobs; tvls-launch resumes it."
    )
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument("--yes", "-y", action="store_true", help="cancel without asking")
    p.add_argument("--json", action="store_true", help="print what was cancelled as JSON")
    return p


# --------------------------------------------------------------------------- the queue


@dataclass
class SweepJob:
    """One of the sweep's jobs that SLURM still holds."""

    job_id: str
    kind: str  # "array" or "collector"
    pending: int
    running: int
    name: str = ""
    user: str = ""


def sweep_jobs(manifest: Manifest) -> dict[str, str]:
    """Every job id the sweep ever submitted -> ``array``, ``collector`` or ``proxy`` (the
    storage proxy job, ``cluster/proxy.py``)."""
    jobs = dict.fromkeys(manifest.array_job_ids(), "array")
    for launch in manifest.launches:
        if launch.get("collector_job_id"):
            jobs[str(launch["collector_job_id"])] = "collector"
    for job_id in manifest.proxy_job_ids():
        jobs[job_id] = "proxy"
    return jobs


def expected_names(sweep: str) -> dict[str, str]:
    """The names ``tvls-launch`` gives the sweep's jobs (``cluster.launch.slurm_setup``)."""
    return {
        "array": f"tvls-{sweep}",
        "collector": f"tvls-{sweep}-collect",
        "proxy": f"tvls-{sweep}-storage-proxy",
    }


def _owners(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (name, user) from ``squeue``, for ids the queue holds (a job that has just
    ended is simply missing)."""
    if not job_ids:
        return {}
    done = subprocess.run(
        ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%F|%j|%u"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        if "Invalid job id" in done.stderr + done.stdout:
            return {}  # the only id asked about ended meanwhile
        from tunevlseg.cluster.slurm import SlurmError

        raise SlurmError(f"squeue failed: {(done.stderr or done.stdout).strip()}")
    owners = {}
    for line in done.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        name, _, user = rest.partition("|")
        owners[job_id] = (name, user)
    return owners


def queued_jobs(jobs: dict[str, str]) -> list[SweepJob]:
    """The sweep's jobs SLURM still holds, with their pending and running task counts."""
    from tunevlseg.cluster import slurm

    tasks = slurm.queued_tasks(jobs)
    pending: Counter[str] = Counter()
    running: Counter[str] = Counter()
    for task in tasks:
        (running if task.running else pending)[task.job_id] += 1
    held = sorted({task.job_id for task in tasks}, key=int)
    owners = _owners(held)
    return [
        SweepJob(
            job_id, jobs[job_id], pending[job_id], running[job_id], *owners.get(job_id, ("", ""))
        )
        for job_id in held
        if job_id in jobs
    ]


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def split_ours(found: list[SweepJob], sweep: str) -> tuple[list[SweepJob], list[SweepJob]]:
    """(this sweep's jobs, jobs whose id the manifest names but whose name or user is not ours).

    A job whose name squeue did not give (it ended between two calls) counts as ours: its id
    is the manifest's, and cancelling a job that has ended does nothing.
    """
    names, user = expected_names(sweep), _user()
    ours: list[SweepJob] = []
    foreign: list[SweepJob] = []
    for job in found:
        matches = not job.name or (job.name == names[job.kind] and job.user in ("", user))
        (ours if matches else foreign).append(job)
    return ours, foreign


def scancel(job_ids: list[str]) -> None:
    """``scancel`` these ids; ids that ended meanwhile are no error."""
    from tunevlseg.cluster.slurm import SlurmError

    if not job_ids:
        return
    done = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    text = (done.stderr + done.stdout).strip()
    harmless = ("Invalid job id", "already completing or completed", "Job has already finished")
    problems = [
        line for line in text.splitlines() if line.strip() and not any(h in line for h in harmless)
    ]
    if done.returncode != 0 and problems:
        raise SlurmError(f"scancel {' '.join(job_ids)} failed: {'; '.join(problems)}")


def wait_until_gone(job_ids: list[str], seconds: float) -> list[str]:
    """Poll ``squeue`` until none of these jobs is listed; returns those still listed."""
    from tunevlseg.cluster import slurm

    deadline = time.monotonic() + seconds
    while True:
        left = sorted({task.job_id for task in slurm.queued_tasks(job_ids)}, key=int)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_S)


# --------------------------------------------------------------------------- a local launch


def lock_holder(path: Path) -> str | None:
    """Who holds the sweep's launch lock (its own words), or None when nobody does.

    A shared ``flock`` taken and dropped at once: it fails while a launch holds the lock, and
    a launch that tries in that instant retries (it polls), so peeking disturbs nobody.
    """
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def local_launch_pid(holder: str | None) -> int | None:
    """The pid of the lock's holder if it is a ``tvls-launch ... --local`` on this machine."""
    match = _HOLDER.match(holder or "")
    if match is None or match.group(2) != socket.gethostname():
        return None
    pid = int(match.group(1))
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    launch = any(arg.endswith(b"tvls-launch") or arg == b"tunevlseg.cli.launch" for arg in argv)
    return pid if launch and b"--local" in argv else None


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process it started, directly or not (from ``/proc``), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        parent = int(stat.rpartition(")")[2].split()[1])  # the name in (...) may hold spaces
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def stop_local_launch(pid: int, lock: Path) -> bool:
    """Do what Ctrl-C in the launch's terminal does, then wait for the launch to let go of the
    sweep's lock; True when it did.

    The terminal sends SIGINT to every process of the foreground job: the launch, its local
    worker (the fork server, which ignores it; ``cluster/local.py``) and each trial process
    forked from it. Each trial process then stops, leaving its trial RUNNING with its
    checkpoint, and the launch exits as after Ctrl-C (it also interrupts its trials itself and
    waits for them; the worker ends with the launch). A second pass
    catches a task started while the first was sent. Returns once the lock is free and every
    signalled process has exited.
    """
    signalled: set[int] = set()
    for _ in range(2):
        for process in process_tree(pid):
            if process in signalled:
                continue
            signalled.add(process)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGINT)
        time.sleep(1.0)
    deadline = time.monotonic() + LOCAL_STOP_S
    # The trial processes too: one still dying after the launch let go would look alive to the
    # next launch, which would then leave its trial RUNNING instead of resuming it.
    while lock_holder(lock) is not None or any(_alive(process) for process in signalled):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def _alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie, exited but not yet reaped, has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


# --------------------------------------------------------------------------- the storage


def mark_running_trials(experiment: Experiment, owned: Callable[[dict[str, Any]], bool]) -> int:
    """Mark the sweep's RUNNING trials whose owner ``owned`` accepts as stopped by tvls-cancel,
    so that their re-runs do not use a retry; returns how many were marked.

    A storage that cannot be reached does not stop the cancel: the re-runs then count as
    retries, as a crash's would, and the warning says so.
    """
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.config.grid import expand
    from tunevlseg.tuning.storage import open_storage, sweep_storage

    marked = 0
    try:
        storage = open_storage(sweep_storage(experiment))
        names = set(optuna.get_all_study_names(storage))
        for spec in expand(experiment).studies:
            if spec.name not in names:
                continue
            study = optuna.load_study(study_name=spec.name, storage=storage)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if owned(trial_attrs(trial)):
                    recovery.mark_stopped(storage, trial, "tvls-cancel")
                    marked += 1
    except Exception as error:  # noqa: BLE001 - any storage failure; the cancel goes on
        _app.messages().print(
            f"warning: could not mark the running trials as cancelled ({error}); their re-runs "
            "will count toward search.max_retries",
            markup=False,
        )
    return marked


# --------------------------------------------------------------------------- the command


def confirm(question: str, yes: bool) -> None:
    """Go on with ``--yes`` or a "y" typed at a terminal; raise otherwise (see the docstring)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise _app.CommandError(
            "nothing was cancelled: standard input is not a terminal, so nobody can confirm; "
            "run again with --yes",
            _app.EXIT_USAGE,
        )
    try:
        answer = _app.messages().input(f"{question} [y/N] ", markup=False).strip().lower()
    except EOFError:  # Ctrl-D
        answer = ""
    if answer not in ("y", "yes"):
        raise _app.CommandError("nothing was cancelled", _app.EXIT_FAILED)


def _jobs_table(jobs: list[SweepJob], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("job", "kind", "pending", "running"):
        table.add_column(column, justify="left" if column in ("job", "kind") else "right")
    for job in jobs:
        table.add_row(job.job_id, job.kind, str(job.pending), str(job.running))
    return table


def _describe(jobs: list[SweepJob]) -> str:
    pending = sum(job.pending for job in jobs)
    running = sum(job.running for job in jobs)
    ids = ", ".join(job.job_id for job in jobs)
    return f"{len(jobs)} job(s) ({ids}): {running} task(s) running, {pending} pending"


def command(args: argparse.Namespace) -> int:
    from tunevlseg.cluster.manifest import read_manifest
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.paths import SweepPaths

    experiment = load_experiment(args.experiment)
    paths = SweepPaths.of(experiment)
    err = _app.messages()
    report: dict[str, Any] = {
        "sweep": experiment.spec.name,
        "cancelled": [],
        "left_alone": [],
        "local_launch": None,
        "resume": None,
        "marked_stopped": 0,
    }
    manifest = read_manifest(paths.manifest)
    if manifest is None:
        err.print(
            f"Nothing to cancel: sweep {experiment.spec.name} was never launched "
            f"(no {paths.manifest}).",
            markup=False,
        )
        return _finish(args, report)

    holder = lock_holder(paths.launch_lock)
    pid = local_launch_pid(holder)
    if pid is not None:
        err.print(
            f"A local launch of sweep {experiment.spec.name} is running ({holder}). Stopping it "
            "is what Ctrl-C in its terminal does: its running trials stop, stay RUNNING and keep "
            "their checkpoints.",
            markup=False,
        )
        confirm(f"Interrupt the local launch (pid {pid})?", args.yes)
        tree, host = set(process_tree(pid)), socket.gethostname()
        report["marked_stopped"] = mark_running_trials(
            experiment,
            lambda owner: (
                owner.get(recovery.HOST_ATTR) == host and owner.get(recovery.PID_ATTR) in tree
            ),
        )
        stopped = stop_local_launch(pid, paths.launch_lock)
        report["local_launch"] = {"pid": pid, "holder": holder, "stopped": stopped}
        if not stopped:
            raise _app.CommandError(
                f"the local launch (pid {pid}) still runs {LOCAL_STOP_S:.0f} s after the interrupt; "
                "press Ctrl-C in its terminal"
            )
        err.print(f"Interrupted the local launch (pid {pid}).", markup=False)
        report["resume"] = f"tvls-launch {args.experiment} --local"
        manifest = read_manifest(paths.manifest) or manifest
    if not manifest.array_job_ids():
        if pid is None:
            running = f" A launch holds the sweep's lock ({holder})." if holder else ""
            err.print(
                f"Nothing to cancel: sweep {experiment.spec.name} has no SLURM jobs (it runs with "
                f"tvls-launch --local, whose trials stop with Ctrl-C in the terminal that launched "
                f"it).{running}",
                markup=False,
            )
        return _finish(args, report)
    return _cancel_slurm(args, experiment, paths, report)


def _cancel_slurm(
    args: argparse.Namespace, experiment: Experiment, paths: Any, report: dict[str, Any]
) -> int:
    """Under the sweep's lock: the queue, the confirmation, the marks, scancel, the wait."""
    from tunevlseg.cluster import slurm
    from tunevlseg.cluster.lock import SweepBusyError, sweep_lock
    from tunevlseg.cluster.manifest import read_manifest

    err, sweep = _app.messages(), experiment.spec.name
    if not slurm.available():
        raise _app.CommandError("SLURM does not answer (scontrol ping): nothing was cancelled")

    def told(holder: str) -> None:
        err.print(f"Waiting for a launch of this sweep to finish ({holder}) ...", markup=False)

    try:
        with sweep_lock(paths.launch_lock, wait_s=LOCK_WAIT_S, on_wait=told):
            manifest = read_manifest(paths.manifest)
            assert manifest is not None  # it existed before, and nothing removes it
            jobs = sweep_jobs(manifest)
            ours, foreign = split_ours(queued_jobs(jobs), sweep)
            report["left_alone"] = [asdict(job) for job in foreign]
            for job in foreign:
                err.print(
                    f"left alone: job {job.job_id} is named {job.name!r} (user {job.user}), not this "
                    "sweep's: SLURM gave its id to another job",
                    markup=False,
                )
            if not ours:
                err.print(
                    f"Nothing to cancel: none of the sweep's {len(jobs)} SLURM job(s) is queued "
                    "or running.",
                    markup=False,
                )
                return _finish(args, report)
            if not args.yes:  # what the question is about (with --yes, the report says it)
                err.print(_jobs_table(ours, f"Queued jobs of sweep {sweep}"))
            confirm(f"Cancel {_describe(ours)}?", args.yes)
            collectors = [job.job_id for job in ours if job.kind == "collector"]
            arrays = [job.job_id for job in ours if job.kind == "array"]
            report["marked_stopped"] = mark_running_trials(
                experiment, lambda owner: str(owner.get(recovery.SLURM_JOB_ATTR)) in arrays
            )
            scancel(collectors)  # first: without its arrays, a collector would start
            scancel(arrays)
            proxies = [job.job_id for job in ours if job.kind == "proxy"]
            scancel(proxies)  # last: nothing of the sweep is left to use it
            left = wait_until_gone(collectors + arrays + proxies, LEAVE_QUEUE_S)
    except SweepBusyError as error:
        raise _app.CommandError(
            f"{error}. If it is a local launch on another machine, stop it with Ctrl-C there."
        ) from None
    except slurm.SlurmError as error:
        raise _app.CommandError(str(error)) from None
    report["cancelled"] = [asdict(job) for job in ours]
    report["resume"] = f"tvls-launch {args.experiment}"
    if left:
        raise _app.CommandError(
            f"cancelled, but job(s) {', '.join(left)} are still in the queue after "
            f"{LEAVE_QUEUE_S:.0f} s; relaunch only once `squeue -j {','.join(left)}` lists "
            "nothing (a launch would take them for queued)"
        )
    return _finish(args, report, _jobs_table(ours, f"Cancelled jobs of sweep {sweep}"))


def _finish(args: argparse.Namespace, report: dict[str, Any], table: Table | None = None) -> int:
    """The report (stdout) and what to do next (stderr)."""
    out, err = _app.data(), _app.messages()
    if args.json:
        out.print_json(json.dumps(report))
    elif table is not None:
        out.print(table)
    if report["cancelled"]:
        running = sum(job["running"] for job in report["cancelled"])
        pending = sum(job["pending"] for job in report["cancelled"])
        err.print(
            f"Cancelled {len(report['cancelled'])} job(s) ({running} task(s) running, {pending} "
            "pending). The storage is untouched: the trials those tasks ran stay RUNNING, with "
            "their checkpoints, and trials not started yet stay WAITING.",
            markup=False,
        )
    if report["resume"]:
        err.print(
            f"Resume with `{report['resume']}`: it re-runs the interrupted trials from their "
            "checkpoints (without using their search.max_retries) and submits the rest.",
            markup=False,
        )
    return _app.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return _app.run(command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
