"""Local trials are forked from one long-lived worker that imported the trial's modules once.

Each trial is still its own process: its own pid (the one its trial is stamped with), its own
log files, its own death. The tasks here run a probe instead of training (the probe is pickled
by reference to this module, which the trial process imports): what each trial process saw.
This module imports neither torch nor lightning, so a trial finding them loaded got them from
the worker it was forked from.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from submitit.core.utils import DelayedSubmission

from tunevlseg import failpoints
from tunevlseg.cluster import local
from tunevlseg.cluster.local import LocalLauncher, TaskEvent
from tunevlseg.cluster.worker import THREADS_ENV, TrialTask

KILLED = 1
"""The trial the probe SIGKILLs at a failpoint, as a lost node would."""
FAILING = 3
"""The trial whose probe raises."""


def probe(task: TrialTask) -> dict[str, Any]:
    """What the trial process saw; prints a line naming its trial on stdout and stderr."""
    heavy_loaded = all(name in sys.modules for name in ("torch", "lightning", "transformers"))
    from tunevlseg.cluster import preload

    print(f"stdout of trial {task.trial_number}", flush=True)
    print(f"stderr of trial {task.trial_number}", file=sys.stderr, flush=True)
    if task.trial_number == KILLED:
        failpoints.failpoint("claimed")  # TVLS_FAILPOINT=claimed: SIGKILL
    if task.trial_number == FAILING:
        raise ValueError(f"trial {task.trial_number} has a bad parameter")
    return {
        "pid": os.getpid(),
        "parent": os.getppid(),
        "preloaded_in": preload.IMPORTED_IN_PID,
        "heavy_loaded": heavy_loaded,
        "threads": os.environ.get(THREADS_ENV),
    }


def sleeper(task: TrialTask) -> None:
    time.sleep(600)  # stopped by the launcher's time limit long before


RunProbes = Callable[[list[int]], tuple[Path, dict[int, TaskEvent]]]
"""Runs the probe as trials with these numbers, one at a time: the jobs folder, end events."""


@pytest.fixture
def run_probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunProbes:
    monkeypatch.setenv(THREADS_ENV, "1")
    monkeypatch.setenv(failpoints.ENV, "claimed")
    monkeypatch.setattr(local, "TrialWorker", lambda: probe)
    folder = tmp_path / "jobs" / "local"

    def run(numbers: list[int]) -> tuple[Path, dict[int, TaskEvent]]:
        tasks = [TrialTask("journal:///nowhere.journal", "s/clipseg-coop/d", n) for n in numbers]
        ended = LocalLauncher(folder, parallelism=1, timeout_min=30).run(tasks, poll_seconds=0.05)
        return folder, {event.task.trial_number: event for event in ended}

    return run


def test_one_worker_runs_trial_after_trial_each_in_its_own_process(run_probes: RunProbes) -> None:
    _, events = run_probes([0, 2, 4])

    errors = [event.error for event in events.values()]
    assert [events[n].kind for n in (0, 2, 4)] == ["finished"] * 3, errors
    seen = [events[n].outcome or {} for n in (0, 2, 4)]
    pids = {outcome["pid"] for outcome in seen}
    assert len(pids) == 3  # a process per trial...
    assert {int(events[n].job_id) for n in (0, 2, 4)} == pids  # ...named by its pid
    (worker,) = {outcome["parent"] for outcome in seen}  # ...all forked from one worker
    assert worker not in pids and worker != os.getpid()
    # The trial modules were imported once, by the worker, before it forked the trials.
    assert {outcome["preloaded_in"] for outcome in seen} == {worker}
    assert all(outcome["heavy_loaded"] for outcome in seen)
    assert {outcome["threads"] for outcome in seen} == {"1"}  # the launch's environment


def test_a_killed_or_raising_trial_leaves_the_next_trials_running(run_probes: RunProbes) -> None:
    _, events = run_probes([0, KILLED, 2, FAILING, 4])

    killed, failing = events[KILLED], events[FAILING]
    assert killed.kind == "failed" and killed.error.startswith("killed by SIGKILL"), killed.error
    assert failing.kind == "failed"
    bad = f"ValueError: trial {FAILING} has a bad parameter"
    assert failing.error.startswith(bad), failing.error
    assert [events[n].kind for n in (0, 2, 4)] == ["finished"] * 3
    parents = {(events[n].outcome or {}).get("parent") for n in (0, 2, 4)}
    assert len(parents) == 1  # the same worker went on
    # The killed trial's pid (the one its trial was stamped with) is gone, not a zombie that
    # would make its claim look alive to the liveness check.
    with pytest.raises(ProcessLookupError):
        os.kill(int(killed.job_id), 0)


def test_each_trial_attempt_has_its_own_logs_and_task_pickle(run_probes: RunProbes) -> None:
    folder, events = run_probes([0, KILLED, 2])

    assert len({event.job_id for event in events.values()}) == 3
    for number, event in events.items():
        job = folder / event.job_id
        out = (job / f"{event.job_id}_0_log.out").read_text()
        err = (job / f"{event.job_id}_0_log.err").read_text()
        assert f"Starting trial s/clipseg-coop/d#{number} in process {event.job_id}" in out
        assert f"stdout of trial {number}" in out and f"stderr of trial {number}" in err
        others = [n for n in events if n != number]
        assert not [n for n in others if f"of trial {n}" in out + err]
        # what tvls-logs reads to map the folder to its trial
        task = DelayedSubmission.load(job / f"{event.job_id}_submitted.pkl").args[0]
        assert (task.study, task.trial_number) == ("s/clipseg-coop/d", number)


def test_a_trial_past_its_time_limit_is_stopped_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(THREADS_ENV, "1")
    monkeypatch.setattr(local, "TrialWorker", lambda: sleeper)
    launcher = LocalLauncher(tmp_path / "jobs", parallelism=1, timeout_min=0.05)
    task = TrialTask("journal:///nowhere.journal", "s/clipseg-coop/d", 0)

    (event,) = launcher.run([task], poll_seconds=0.05)

    assert event.kind == "failed", event
    assert event.error.startswith("timed out after 0.05 min (cluster.timeout_min)"), event.error
    with pytest.raises(ProcessLookupError):
        os.kill(int(event.job_id), 0)
