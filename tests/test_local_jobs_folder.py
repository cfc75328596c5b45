"""Each local trial process logs under its own job id (its pid), and nothing else is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunevlseg.cluster import local
from tunevlseg.cluster.local import LocalLauncher
from tunevlseg.cluster.worker import THREADS_ENV, TrialTask


def test_local_tasks_log_under_their_job_id_and_leave_no_template_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each task process runs str(task) instead of training: a builtin pickles by reference,
    # so the task process needs nothing from this test module.
    monkeypatch.setattr(local, "TrialWorker", lambda: str)
    monkeypatch.setenv(THREADS_ENV, "1")  # the launcher would set it for the whole test session
    folder = tmp_path / "jobs" / "local"
    launcher = LocalLauncher(folder, parallelism=2, timeout_min=1)
    tasks = [TrialTask("journal:///nowhere.journal", "s/clipseg-coop/d", n) for n in range(3)]

    ended = launcher.run(tasks, poll_seconds=0.05)

    assert [event.kind for event in ended] == ["finished"] * 3, [event.error for event in ended]
    assert {event.outcome for event in ended} == {str(task) for task in tasks}
    names = sorted(path.name for path in folder.iterdir() if path.is_dir())
    assert names == sorted(event.job_id for event in ended)  # no "%j" among them
    for event in ended:  # where other code (and people) look for a task's logs
        assert (folder / event.job_id / f"{event.job_id}_0_log.err").is_file()
        assert (folder / event.job_id / f"{event.job_id}_0_log.out").is_file()
