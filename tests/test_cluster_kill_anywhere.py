"""A task killed (SIGKILL, as a lost node) at every instant between taking its trial and its
first epoch, on the real SLURM cluster: the next launch finds each trial (through its owner
stamp, or the manifest when the stamp cannot say) and runs it to the end, once.

A kill right after the claim used to leave the trial RUNNING with no owner: recovery skipped it
forever and a relaunch ran nothing. Recovery now also looks the trial up in the manifest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from _slurm_sweeps import all_job_ids, assert_complete, wait_for_queue, write_sweep
from optuna.trial import TrialState

from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.failpoints import ENV, POINTS
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.trial_attrs import trial_attrs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def _launch(experiment: Path, cwd: Path, failpoint: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoint:
        env[ENV] = failpoint  # sbatch exports the launch's environment to the task
    return subprocess.Popen(
        [sys.executable, "-m", "tunevlseg.cli.launch", str(experiment)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(processes: list[subprocess.Popen[str]]) -> list[str]:
    errors = []
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        errors.append(stderr)
    return errors


def test_a_kill_at_every_step_before_the_first_epoch_is_recovered(tmp_path: Path) -> None:
    experiments = {
        point: write_sweep(
            tmp_path / "exp", name=f"kill-{point}", output_dir=f"../runs/kill-{point}", n_trials=1
        )
        for point in POINTS
    }
    _finish([_launch(path, tmp_path, point) for point, path in experiments.items()])
    for path in experiments.values():
        wait_for_queue(all_job_ids(path))
    for point, path in experiments.items():
        loaded = load_experiment(path)
        spec = expand(loaded).studies[0]
        (trial,) = optuna.load_study(
            study_name=spec.name, storage=open_storage(sweep_storage(loaded))
        ).trials
        assert trial.state == TrialState.RUNNING, (point, trial.state, trial.user_attrs)

    relaunched = _finish([_launch(path, tmp_path, None) for path in experiments.values()])
    for point, stderr in zip(POINTS, relaunched, strict=True):
        assert "recovered" in stderr and "re-queued as trial 1" in stderr, (point, stderr)
        assert "Submitted 1 trial(s)" in stderr, (point, stderr)
    for path in experiments.values():
        wait_for_queue(all_job_ids(path))
    for point, path in experiments.items():
        assert_complete(path)
        loaded = load_experiment(path)
        spec = expand(loaded).studies[0]
        trials = optuna.load_study(
            study_name=spec.name, storage=open_storage(sweep_storage(loaded))
        ).trials
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(done) == 1, point
        assert trial_attrs(done[0])["tvls.lineage"] == 0, point  # the first attempt's folder
