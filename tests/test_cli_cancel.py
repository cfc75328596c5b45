"""``tvls-cancel``: a sweep's SLURM jobs cancelled by id, the storage left for the next launch.

Quick tests use held jobs on the real cluster (``sbatch --hold``: they never run) recorded in
the sweep's manifest, so the confirmation rules, the job-id-only cancel and the jobs left alone
are checked in seconds. The slow ones cancel a real sweep while its tasks train and relaunch it
to the end, and stop a running local launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from _slurm_sweeps import all_job_ids, assert_complete, cli, wait_for_queue, write_sweep
from optuna.trial import TrialState

from tunevlseg.cluster import slurm
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.manifest import Manifest, write_manifest
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.trial_attrs import trial_attrs


def _cancel(
    *args: str, cwd: Path, stdin: int | None = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    """``tvls-cancel`` as a user runs it; stdin is no terminal unless a test gives one."""
    return subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.cancel", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=stdin,
    )


def _record(
    experiment: Path,
    mode: str,
    arrays: list[tuple[str, list[tuple[str, int]]]],
    collector: str | None = None,
    local: list[tuple[str, int]] | None = None,
) -> Manifest:
    """The manifest a launch of ``experiment`` would write for these jobs."""
    loaded = load_experiment(experiment)
    manifest = Manifest(
        experiment=str(loaded.path),
        experiment_sha256=loaded.text_sha256,
        sweep=loaded.spec.name,
        storage=sweep_storage(loaded).url,
        plan_sha256="0" * 64,
        studies=1,
        trials=2,
    )
    manifest.record_launch(mode, arrays, collector_job_id=collector, local_tasks=local)
    write_manifest(SweepPaths.of(loaded).manifest, manifest)
    return manifest


def _sbatch(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
    )
    return done.stdout.strip().split(";")[0]


def _scancel(job_ids: list[str]) -> None:
    """Cancel the test's own jobs, by id (ended ones included: scancel ignores them)."""
    subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


def _queued(job_ids: list[str]) -> set[str]:
    return {task.job_id for task in slurm.queued_tasks(job_ids)}


def test_a_sweep_never_launched_has_nothing_to_cancel(tmp_path: Path) -> None:
    experiment = write_sweep(tmp_path / "exp", name="nl", output_dir="../runs/nl")
    done = _cancel(str(experiment), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Nothing to cancel: sweep nl was never launched" in done.stderr


def test_a_local_sweep_without_a_running_launch_says_how_local_sweeps_stop(tmp_path: Path) -> None:
    experiment = write_sweep(tmp_path / "exp", name="lo", output_dir="../runs/lo")
    _record(experiment, "local", [], local=[("lo/clipseg-coop/synth", 0)])
    done = _cancel(str(experiment), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "has no SLURM jobs" in done.stderr and "Ctrl-C in the terminal" in done.stderr
    report = json.loads(done.stdout)
    assert report["cancelled"] == [] and report["local_launch"] is None


def test_help_shows_an_example() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.cancel", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0
    assert "examples:" in shown.stdout and "tvls-cancel experiments/" in shown.stdout
    assert "--yes" in shown.stdout


Held = tuple[Path, str, str, str, Path]
"""The experiment, its array and collector job ids, another job's id, the collector's marker."""


@pytest.fixture
def held_jobs(tmp_path: Path, slurm_cluster: None) -> Iterator[Held]:
    """A sweep whose manifest names a held 3-task array, a collector waiting on it (it would
    write a marker file if it ever ran), and a held job of the same id list that is not the
    sweep's (another name), as after SLURM reused an id. Every job is cancelled after the test,
    by its id."""
    experiment = write_sweep(tmp_path / "exp", name="held", output_dir="../runs/held")
    marker = tmp_path / "collector-ran"
    array = _sbatch("--hold", "--array=0-2", "-J", "tvls-held", "--wrap", "sleep 600", cwd=tmp_path)
    collector = _sbatch(
        "-J",
        "tvls-held-collect",
        f"--dependency=afterany:{array}",
        "--wrap",
        f"touch {marker}",
        cwd=tmp_path,
    )
    foreign = _sbatch("--hold", "-J", "someone-elses-job", "--wrap", "sleep 600", cwd=tmp_path)
    study = "held/clipseg-coop/synth"
    arrays = [(array, [(study, 0), (study, 1), (study, 2)]), (foreign, [(study, 3)])]
    _record(experiment, "slurm", arrays, collector)
    try:
        yield experiment, array, collector, foreign, marker
    finally:
        _scancel([array, collector, foreign])


def test_without_a_terminal_and_without_yes_nothing_is_cancelled(
    held_jobs: Held, tmp_path: Path
) -> None:
    experiment, array, collector, foreign, _ = held_jobs
    done = _cancel(str(experiment), cwd=tmp_path)
    assert done.returncode == 2
    assert "nothing was cancelled: standard input is not a terminal" in done.stderr
    assert "--yes" in done.stderr
    assert array in done.stderr and collector in done.stderr  # what it would cancel
    assert _queued([array, collector, foreign]) == {array, collector, foreign}


def test_the_question_on_a_terminal_is_answered_no_then_yes(
    held_jobs: Held, tmp_path: Path
) -> None:
    experiment, array, collector, foreign, _ = held_jobs
    for answer, code in ((b"n\n", 1), (b"y\n", 0)):
        primary, secondary = os.openpty()
        try:
            os.write(primary, answer)  # typed ahead: the terminal keeps it until it is read
            done = _cancel(str(experiment), cwd=tmp_path, stdin=secondary)
        finally:
            os.close(primary)
            os.close(secondary)
        assert done.returncode == code, done.stderr
        question = f"Cancel 2 job(s) ({array}, {collector}): 0 task(s) running, 4 pending? [y/N]"
        assert question in done.stderr
        if code:
            assert "nothing was cancelled" in done.stderr
            assert _queued([array, collector]) == {array, collector}
    assert _queued([array, collector, foreign]) == {foreign}


def test_yes_cancels_the_sweeps_jobs_by_id_and_leaves_other_jobs_alone(
    held_jobs: Held, tmp_path: Path
) -> None:
    experiment, array, collector, foreign, marker = held_jobs
    done = _cancel(str(experiment), "--yes", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    cancelled = {job["job_id"]: job for job in report["cancelled"]}
    assert cancelled.keys() == {array, collector}
    job = cancelled[array]
    assert (job["kind"], job["pending"], job["running"]) == ("array", 3, 0)
    assert (cancelled[collector]["kind"], cancelled[collector]["pending"]) == ("collector", 1)
    assert [job["job_id"] for job in report["left_alone"]] == [foreign]
    assert report["resume"] == f"tvls-launch {experiment}"
    assert f"left alone: job {foreign} is named 'someone-elses-job'" in done.stderr
    # gone from the queue when the command returns, the other job still there
    assert _queued([array, collector, foreign]) == {foreign}
    assert not marker.exists(), "the collector ran after its arrays were cancelled"

    again = _cancel(str(experiment), "--yes", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (
        "Nothing to cancel: none of the sweep's 3 SLURM job(s) is queued or running" in again.stderr
    )
    assert _queued([foreign]) == {foreign}


# --------------------------------------------------------------------------- real sweeps


def _trials(experiment: Path) -> list[optuna.trial.FrozenTrial]:
    """The sweep's one study's trials; none while the launch has not created it yet."""
    loaded = load_experiment(experiment)
    spec = expand(loaded).studies[0]
    if not sweep_storage(loaded).exists:  # opening it would create it under the launch
        return []
    try:
        return optuna.load_study(
            study_name=spec.name, storage=open_storage(sweep_storage(loaded))
        ).trials
    except KeyError:
        return []


def _wait_for_a_checkpoint(experiment: Path, timeout: float = 900) -> optuna.trial.FrozenTrial:
    """Until a trial is RUNNING with a checkpoint on disk (bounded: others share the cluster)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in _trials(experiment):
            run_dir = trial_attrs(trial).get("tvls.run_dir")
            checkpoint = Path(run_dir or "/nonexistent") / "checkpoints" / "last.ckpt"
            if trial.state == TrialState.RUNNING and checkpoint.is_file():
                return trial
        time.sleep(0.3)
    raise AssertionError(f"no trial wrote a checkpoint within {timeout} s")


def _no_retries(experiment: Path) -> None:
    """``search.max_retries: 0``: a re-run that used a retry would fail its trial for good."""
    text = experiment.read_text()
    assert "n_startup_trials: 1," in text
    experiment.write_text(
        text.replace("n_startup_trials: 1,", "n_startup_trials: 1, max_retries: 0,")
    )


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_sweep_cancelled_while_it_trains_resumes_to_exactly_its_budget(tmp_path: Path) -> None:
    n_trials = 3
    experiment = write_sweep(
        tmp_path / "exp", name="cn", output_dir="../runs/cn", n_trials=n_trials, max_epochs=150
    )
    _no_retries(experiment)  # a cancel and a resume must not need one
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    loaded = load_experiment(experiment)
    study = expand(loaded).studies[0]
    first_jobs = all_job_ids(experiment)
    try:
        running = _wait_for_a_checkpoint(experiment)
        done = _cancel(str(experiment), "--yes", "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert {job["job_id"] for job in report["cancelled"]} == set(first_jobs)
        assert sum(job["running"] for job in report["cancelled"] if job["kind"] == "array") >= 1
        assert report["marked_stopped"] >= 1
        assert f"tvls-launch {experiment}" in done.stderr
        assert _queued(first_jobs) == set()  # nothing of the sweep is left in the queue

        after = _trials(experiment)
        assert not [t for t in after if t.state == TrialState.FAIL], "cancel failed a trial"
        states = {t.number: t.state for t in after}
        assert states[running.number] == TrialState.RUNNING
        assert set(states.values()) <= {TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE}

        # the cancelled trial's log is there, and says it was cancelled
        log = cli(
            "tunevlseg.cli.logs", str(experiment), f"{study.name}#{running.number}", cwd=tmp_path
        )
        assert log.returncode == 0, log.stderr
        assert "CANCELLED" in log.stdout

        again = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert f"trial {running.number}: SLURM task" in again.stderr
        assert "with its checkpoint" in again.stderr
        wait_for_queue(all_job_ids(experiment))
    finally:
        ids = all_job_ids(experiment)
        _scancel(ids)  # a failed test leaves none of its jobs behind (ours, by id)
        wait_for_queue(ids)

    assert_complete(experiment)  # exactly n_trials COMPLETE, none RUNNING or WAITING
    final = _trials(experiment)
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    lineages = [trial_attrs(t)["tvls.lineage"] for t in complete]
    assert len(complete) == n_trials and len(set(lineages)) == n_trials
    for failed in (t for t in final if t.state == TrialState.FAIL):  # only the cancelled ones,
        assert "no longer queued" in trial_attrs(failed)["tvls.failure"]  # each re-run once
        assert "stopped by tvls-cancel" in trial_attrs(failed)["tvls.failure"]
        assert lineages.count(trial_attrs(failed)["tvls.lineage"]) == 1
    study_dir = SweepPaths.of(loaded).study_dir(study.folder)
    folders = sorted(p.name for p in study_dir.iterdir() if p.is_dir())
    assert folders == sorted(f"trial-{lineage:04d}" for lineage in lineages)  # no duplicate folder
    lineage = trial_attrs(running)["tvls.lineage"]
    resumed = next(t for t in complete if trial_attrs(t)["tvls.lineage"] == lineage)
    assert trial_attrs(resumed)["resumed_from_epoch"] >= 1  # continued from its checkpoint

    # its log now: the re-run by default, the cancelled run as attempt 1 with its reason
    latest = cli(
        "tunevlseg.cli.logs", str(experiment), f"{study.name}#{running.number}", cwd=tmp_path
    )
    assert latest.returncode == 0, latest.stderr
    shown = f"attempt 2 of 2, trial #{resumed.number} (COMPLETE, re-run of #{running.number})"
    assert shown in latest.stderr
    first = cli(
        "tunevlseg.cli.logs",
        str(experiment),
        f"{study.name}#{running.number}",
        "--attempt",
        "1",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    assert "failed: SLURM task" in first.stderr and "CANCELLED" in first.stdout
    # nothing left to cancel
    idle = _cancel(str(experiment), "--yes", cwd=tmp_path)
    assert idle.returncode == 0 and "Nothing to cancel" in idle.stderr


@pytest.mark.slow
def test_a_running_local_launch_is_interrupted_and_resumes(tmp_path: Path) -> None:
    experiment = write_sweep(
        tmp_path / "exp", name="lc", output_dir="../runs/lc", n_trials=2, max_epochs=150
    )
    _no_retries(experiment)  # a cancel and a resume must not need one
    messages = tmp_path / "launch.err"
    with messages.open("w") as stderr:
        launch = subprocess.Popen(
            [sys.executable, "-m", "tunevlseg.cli.launch", str(experiment), "--local"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        running = _wait_for_a_checkpoint(experiment, timeout=600)
        done = _cancel(str(experiment), "--yes", "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["local_launch"]["pid"] == launch.pid and report["local_launch"]["stopped"]
        assert report["marked_stopped"] >= 1
        assert report["resume"] == f"tvls-launch {experiment} --local"
        # the launch ended as after Ctrl-C in its terminal
        assert launch.wait(timeout=60) == 130, messages.read_text()
        assert "running trial(s) stopped" in messages.read_text()
    finally:
        if launch.poll() is None:
            launch.kill()  # our own process, only if the test failed before it stopped
            launch.wait()
    states = {t.number: t.state for t in _trials(experiment)}
    assert states[running.number] == TrialState.RUNNING and TrialState.FAIL not in states.values()

    again = cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    final = _trials(experiment)
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    assert len(complete) == 2, ([(t.number, t.state) for t in final], again.stderr[-2000:])
    assert not [t for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({trial_attrs(t)["tvls.lineage"] for t in complete}) == 2
