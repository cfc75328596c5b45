"""``tvls-logs``: a trial's task log found from the sweep alone, on local and SLURM runs.

The quick tests fill a real journal storage through the project's own functions (no task runs)
and check how a study and a trial are named and what is said when there is no log. The slow
ones run real tasks: a local sweep whose task is killed after its claim (so the trial has two
attempts), and a one-trial sweep on the real SLURM cluster, followed with ``-f`` to its end and
interrupted with Ctrl-C. Every expected log is found independently of the command: through
submitit's own pickle of the task, or the manifest's job id.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _slurm_sweeps import all_job_ids, cli, wait_for_queue, write_sweep
from optuna.trial import TrialState
from submitit.core.utils import DelayedSubmission

from tunevlseg.cli.logs import main
from tunevlseg.cluster import slurm
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.manifest import read_manifest
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies
from tunevlseg.tuning.trial_attrs import trial_attrs

SWEEP = """\
name: lg
output_dir: ../runs/lg
models: [clipseg]
learners: [coop, vpt]
datasets: [{name: kvasir, root: ../data}, {name: busi, root: ../data}]
search: {n_trials: 2}
"""

HEADER = re.compile(r"^==> (.+?)( \(empty\))? <==$", re.MULTILINE)


@pytest.fixture
def enqueued(tmp_path: Path) -> tuple[Path, list[str]]:
    """Four studies with their trials WAITING (as right after a launch), no task started."""
    path = tmp_path / "exp" / "lg.yaml"
    path.parent.mkdir()
    path.write_text(SWEEP)
    experiment = load_experiment(path)
    storage = open_storage(sweep_storage(experiment))
    specs = expand(experiment).studies
    ensure_studies(storage, specs)
    for spec in specs:
        enqueue_missing(storage, spec)
    return path, [spec.name for spec in specs]


def test_no_storage_means_nothing_was_launched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "exp" / "lg.yaml"
    path.parent.mkdir()
    path.write_text(SWEEP)
    assert main([str(path), "coop/kvasir"]) == 1
    assert "nothing was launched" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # reading logs never creates the storage


def test_a_study_is_named_by_any_part_that_names_it_alone(
    enqueued: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, names = enqueued
    target = "lg/clipseg-coop/kvasir"
    assert target in names
    for query in (target, "clipseg-coop/kvasir", "coop/kvasir"):
        assert main([str(path), query]) == 1  # found, but no task has started: no log
        err = capsys.readouterr().err
        assert f"no trial of {target} has a log yet (2 trial(s): 2 WAITING)" in err, (query, err)

    assert main([str(path), "coop"]) == 2  # two data sets
    err = capsys.readouterr().err
    assert "'coop' names 2 studies" in err
    assert "lg/clipseg-coop/busi" in err and "lg/clipseg-coop/kvasir" in err

    assert main([str(path), "maple"]) == 2
    err = capsys.readouterr().err
    assert "no study of this sweep matches 'maple'" in err
    assert all(name in err for name in names)  # what exists, to pick from


def test_a_trial_without_a_log_and_bad_trials_say_what_exists(
    enqueued: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = enqueued
    assert main([str(path), "vpt/busi#1"]) == 1
    err = capsys.readouterr().err
    assert "lg/clipseg-vpt/busi#1 has no log yet (#1 WAITING)" in err
    assert "no trial of the study has a log yet" in err
    assert main([str(path), "vpt/busi#7"]) == 2
    assert "has no trial #7 (its trials: #0-#1)" in capsys.readouterr().err
    assert main([str(path), "vpt/busi#last"]) == 2
    assert "STUDY#TRIAL" in capsys.readouterr().err


def test_help_shows_an_example() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.logs", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0
    assert "examples:" in shown.stdout and "tvls-logs experiments/" in shown.stdout
    assert "--attempt" in shown.stdout and "--follow" in shown.stdout


# --------------------------------------------------------------------------- real tasks


def _logs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli("tunevlseg.cli.logs", *args, cwd=cwd)


def _shown_files(stdout: str) -> list[Path]:
    return [Path(match.group(1)) for match in HEADER.finditer(stdout)]


def _per_file(stdout: str) -> dict[Path, str]:
    """What the output shows of each file: the text after each of its headers, joined."""
    shown: dict[Path, str] = {}
    headers = list(HEADER.finditer(stdout))
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(stdout)
        path = Path(header.group(1))
        shown[path] = shown.get(path, "") + stdout[header.end() + 1 : end]
    return shown


def _assert_whole_files_shown(stdout: str, files: list[Path]) -> None:
    """Each file's complete content is in the output, right after its header."""
    for path in files:
        content = path.read_text()
        if content:
            assert f"==> {path} <==\n{content}" in stdout, path
        else:
            assert f"==> {path} (empty) <==" in stdout, path


def _task_of(log: Path) -> tuple[str, int]:
    """(study, trial) of the task that wrote ``log``, from submitit's pickle of the task."""
    job = log.parent.name
    task = DelayedSubmission.load(log.parent / f"{job}_submitted.pkl").args[0]
    return task.study, task.trial_number


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


@pytest.mark.slow
def test_local_trial_killed_after_its_claim_then_rerun_has_two_attempts(tmp_path: Path) -> None:
    experiment = write_sweep(tmp_path / "exp", name="lk", output_dir="../runs/lk", n_trials=1)
    study = expand(load_experiment(experiment)).studies[0].name
    killed = subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.launch", str(experiment), "--local"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TVLS_FAILPOINT": "sampled"},  # SIGKILL right after the claim
    )
    assert "1 trial(s) failed" in killed.stderr, killed.stderr[-2000:]
    (trial,) = _trials(experiment)
    assert trial.state == TrialState.RUNNING  # its process is gone; nothing recovered it yet

    shown = _logs(str(experiment), "coop", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"{study}#0 (the study's most recent trial with a log): attempt 1 of 1" in shown.stderr
    files = _shown_files(shown.stdout)
    job = files[0].parent.name  # submitit's local job id
    assert [f.name for f in files] == [f"{job}_0_log.out", f"{job}_0_log.err"]
    assert _task_of(files[0]) == (study, 0)
    _assert_whole_files_shown(shown.stdout, files)

    # -f ends by itself: the task is gone, the trial can only wait for the next launch
    followed = subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.logs", str(experiment), f"{study}#0", "-f"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert followed.returncode == 0, followed.stderr
    assert "has ended but trial #0 is still RUNNING" in followed.stderr
    assert f"tvls-launch {experiment} --local" in followed.stderr

    again = cli("tunevlseg.cli.launch", str(experiment), "--local", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    first, rerun = sorted(_trials(experiment), key=lambda t: t.number)
    assert first.state == TrialState.FAIL and rerun.state == TrialState.COMPLETE
    assert trial_attrs(rerun)["tvls.retry_of"] == 0

    latest = _logs(str(experiment), f"{study}#0", cwd=tmp_path)  # the trial asked for ...
    assert latest.returncode == 0, latest.stderr
    assert f"attempt 2 of 2, trial #{rerun.number} (COMPLETE, re-run of #0)" in latest.stderr
    reason = trial_attrs(first)["tvls.failure"]
    assert f"trial #0 failed: {reason} (--attempt N shows its other runs)" in latest.stderr
    files = _shown_files(latest.stdout)
    assert _task_of(files[0]) == (study, rerun.number)  # ... shown by its re-run's log
    _assert_whole_files_shown(latest.stdout, files)
    by_rerun = _logs(str(experiment), f"{study}#{rerun.number}", cwd=tmp_path)
    assert by_rerun.stdout == latest.stdout and "failed" not in by_rerun.stderr

    earlier = _logs(str(experiment), f"{study}#0", "--attempt", "1", cwd=tmp_path)
    assert earlier.returncode == 0, earlier.stderr
    assert "attempt 1 of 2, trial #0 (FAIL)" in earlier.stderr
    assert f"\nfailed: {reason}" in earlier.stderr
    files = _shown_files(earlier.stdout)
    assert _task_of(files[0]) == (study, 0)
    _assert_whole_files_shown(earlier.stdout, files)

    missing = _logs(str(experiment), f"{study}#0", "--attempt", "3", cwd=tmp_path)
    assert missing.returncode == 2
    assert "has 2 attempt(s) with a log: 1 = trial #0" in missing.stderr


def _wait_running(experiment: Path, timeout: float = 900) -> optuna.trial.FrozenTrial:
    """Until a trial is RUNNING under its stamped SLURM task (bounded: others share the cluster)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in _trials(experiment):
            if trial.state == TrialState.RUNNING and trial_attrs(trial).get("tvls.slurm_job_id"):
                return trial
        time.sleep(0.5)
    raise AssertionError(f"no trial started within {timeout} s")


def _wait_for_text(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in {path} after {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_slurm_trial_is_followed_to_its_end_and_ctrl_c_stops_quietly(tmp_path: Path) -> None:
    # One trial: submitit submits a one-task plan as a plain job (jobs/<job>/<job>_0_log.*).
    experiment = write_sweep(
        tmp_path / "exp", name="lf", output_dir="../runs/lf", n_trials=1, max_epochs=100
    )
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    study = expand(load_experiment(experiment)).studies[0].name
    try:
        running = _wait_running(experiment)
        target = f"{study}#{running.number}"
        command = [sys.executable, "-m", "tunevlseg.cli.logs", str(experiment), target, "-f"]
        outputs = {
            name: (tmp_path / f"{name}.out", tmp_path / f"{name}.err")
            for name in ("follow", "stop")
        }
        handles = {name: (out.open("w"), err.open("w")) for name, (out, err) in outputs.items()}
        follow, stop = (
            subprocess.Popen(
                command, cwd=tmp_path, stdout=handles[name][0], stderr=handles[name][1]
            )
            for name in ("follow", "stop")
        )

        _wait_for_text(outputs["stop"][0], "==> ")
        assert stop.poll() is None, "-f returned while the trial runs"
        stop.send_signal(signal.SIGINT)
        assert stop.wait(timeout=30) == 130
        stopped = outputs["stop"][1].read_text()
        assert "Traceback" not in stopped and "interrupted" not in stopped, stopped

        assert follow.wait(timeout=900) == 0, outputs["follow"][1].read_text()
        for out, err in handles.values():
            out.close()
            err.close()
        (trial,) = _trials(experiment)
        assert trial.state == TrialState.COMPLETE
        said = outputs["follow"][1].read_text()
        assert f"trial #{trial.number} is COMPLETE (value {trial.value:.4f})" in said
        followed = outputs["follow"][0].read_text()
        (job,) = read_manifest(SweepPaths.of(load_experiment(experiment)).manifest).array_job_ids()
        log_out = SweepPaths.of(load_experiment(experiment)).jobs / job / f"{job}_0_log.out"
        log_err = log_out.with_name(f"{job}_0_log.err")
        assert _shown_files(followed)[:2] == [log_out, log_err]
        # everything the task wrote reached the follower, its last lines too, and nothing else
        assert _per_file(followed) == {path: path.read_text() for path in (log_out, log_err)}
        assert "Job completed successfully" in _per_file(followed)[log_out]

        # without a trial number: the trial whose task started last
        latest = _logs(str(experiment), "coop", cwd=tmp_path)
        assert latest.returncode == 0
        assert f"{study}#{trial.number} (the study's most recent trial with a log)" in latest.stderr
        assert f"SLURM task {job}_0" in latest.stderr
    finally:
        ids = all_job_ids(experiment)
        slurm.cancel(ids)  # ours only, by id; a no-op when they have ended
        wait_for_queue(ids)
