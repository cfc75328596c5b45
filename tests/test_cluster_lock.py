"""The sweep's launch lock (two real processes) and the liveness of trials whose owner stamp
cannot place them (found through the manifest instead)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from tunevlseg.cluster.liveness import SweepLiveness
from tunevlseg.cluster.lock import SweepBusyError, sweep_lock
from tunevlseg.cluster.manifest import Manifest
from tunevlseg.tuning import recovery

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tunevlseg.cluster.lock import sweep_lock
    with sweep_lock(Path(sys.argv[1]), wait_s=0):
        print("held", flush=True)
        sys.stdin.readline()   # hold until told to go
""")


def _holder(lock: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_launch_waits_then_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "sweep" / "launch.lock"
    holder = _holder(lock)
    told: list[str] = []
    try:
        with (
            pytest.raises(SweepBusyError) as caught,
            sweep_lock(lock, wait_s=0.5, on_wait=told.append),
        ):
            pass
        assert f"pid {holder.pid} on" in str(caught.value) and str(lock) in str(caught.value)
        assert len(told) == 1 and f"pid {holder.pid}" in told[0]
    finally:
        holder.communicate("go\n", timeout=30)
    with sweep_lock(lock, wait_s=0):  # released when the holder ended
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    lock = tmp_path / "launch.lock"
    holder = _holder(lock)
    holder.kill()
    holder.wait(timeout=30)
    with sweep_lock(lock, wait_s=5):
        assert "pid" in lock.read_text()


def _unstamped_running(
    tmp_path: Path, number_of_trials: int = 1
) -> tuple[str, list[optuna.trial.FrozenTrial]]:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s/clipseg-coop/d", storage=storage)
    trials = []
    for _ in range(number_of_trials):
        trial = study.ask()
        trial.set_user_attr(recovery.HOST_ATTR, "some-node")  # a stamp cut short: no pid, no job
        trials.append(storage.get_trial(trial._trial_id))
    return study.study_name, trials


def _manifest(**launch: object) -> Manifest:
    manifest = Manifest("x.yaml", "", "s", "journal://x", "", 1, 2)
    manifest.launches.append({"arrays": [], "local_tasks": [], **launch})
    return manifest


def test_an_unstamped_trial_is_judged_by_its_manifest_task(tmp_path: Path) -> None:
    study, (first, second) = _unstamped_running(tmp_path, 2)
    manifest = _manifest(arrays=[{"job_id": "41", "tasks": [[study, 0], [study, 1]]}])
    liveness = SweepLiveness(manifest, queued={"41_1"})
    assert liveness(study, first) is False  # task 41_0 has left the queue
    assert liveness(study, second) is True  # task 41_1 is still queued
    assert "SLURM task 41_0 is no longer queued" in liveness.reason(study, first)
    assert SweepLiveness(manifest, queued=None)(study, first) is None  # SLURM not asked: unknown


def test_an_unstamped_trial_of_a_local_launch_is_stale_under_the_lock(tmp_path: Path) -> None:
    study, (trial,) = _unstamped_running(tmp_path)
    assert SweepLiveness(_manifest(local_tasks=[[study, 0]]), queued=None)(study, trial) is False
    assert SweepLiveness(_manifest(), queued=None)(study, trial) is None  # nothing says: leave it
