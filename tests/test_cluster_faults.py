"""Fault injection on the real SLURM cluster: every sweep ends with exactly ``n_trials`` COMPLETE
trials, none RUNNING, none run twice, and the interrupted trials continued from their checkpoint.

(a) preemption by a job in the high partition, (b) ``scontrol requeue``, (c) ``scancel`` of a
running task then relaunch, (d) SIGKILL of the trial process then relaunch, (e) the whole array
cancelled half-way then relaunch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from _slurm_sweeps import all_job_ids, assert_complete, cli, wait_for_queue, write_sweep
from optuna.trial import TrialState

from tunevlseg.cluster import slurm
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.trial_attrs import trial_attrs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
EPOCHS = 24  # ~0.3 s each here: a trial interrupted in its first EARLY_EPOCHS has seconds left
EARLY_EPOCHS = 8  # seen early enough by polling; 16+ epochs (5 s here) are left to interrupt


@dataclass(frozen=True)
class Running:
    """A RUNNING trial whose first epoch checkpoint is on disk."""

    number: int
    lineage: int
    run_dir: Path
    task: str  # "<job>_<index>"
    pid: int


def launch(tmp_path: Path, name: str, n_trials: int) -> Path:
    experiment = write_sweep(
        tmp_path / "exp",
        name=name,
        output_dir=f"../runs/{name}",
        n_trials=n_trials,
        max_epochs=EPOCHS,
        image_size=64,
    )
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    return experiment


def trials(experiment: Path) -> list[optuna.trial.FrozenTrial]:
    loaded = load_experiment(experiment)
    spec = expand(loaded).studies[0]
    return optuna.load_study(
        study_name=spec.name, storage=open_storage(sweep_storage(loaded))
    ).trials


def wait_for_checkpoint(experiment: Path, timeout: float = 600) -> Running:
    """Until a trial is RUNNING with a checkpoint of one of its first epochs on disk (bounded).

    A trial with most of its epochs still to run is certain to be interrupted by a cancel:
    Lightning stops fitting at the next batch after SIGTERM. Near its end the trial could
    instead be past fitting (testing, telling the result) and finish within KillWait, and the
    test would have nothing to resume.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in trials(experiment):
            attrs = trial_attrs(trial)
            checkpoint = (
                Path(attrs.get("tvls.run_dir", "/nonexistent")) / "checkpoints" / "last.ckpt"
            )
            run_dir = checkpoint.parent.parent
            if trial.state == TrialState.RUNNING and _early_checkpoint(checkpoint):
                return Running(
                    trial.number,
                    attrs["tvls.lineage"],
                    run_dir,
                    slurm.task_key(
                        attrs["tvls.slurm_job_id"], attrs.get("tvls.slurm_array_task_id")
                    ),
                    attrs["tvls.pid"],
                )
        time.sleep(0.2)
    raise AssertionError("no trial reached its first checkpoint")


def _early_checkpoint(checkpoint: Path) -> bool:
    """The checkpoint exists and was written in one of the first EARLY_EPOCHS of the EPOCHS epochs."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except (FileNotFoundError, EOFError, RuntimeError):
        return False  # not written yet (or being replaced: the writer renames atomically)
    return int(state["epoch"]) <= EARLY_EPOCHS - 1


def finish(experiment: Path, tmp_path: Path, relaunch: bool) -> None:
    wait_for_queue(all_job_ids(experiment))
    if relaunch:
        again = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "recovered" in again.stderr and "with its checkpoint" in again.stderr
        wait_for_queue(all_job_ids(experiment))
    assert_complete(experiment)


def assert_continued(experiment: Path, interrupted: Running) -> None:
    """The interrupted lineage finished once, resuming from a checkpoint, all epochs run."""
    done = [t for t in trials(experiment) if t.state == TrialState.COMPLETE]
    lineages = [trial_attrs(t)["tvls.lineage"] for t in done]
    assert len(lineages) == len(set(lineages)), "a trial completed twice"
    result = json.loads((interrupted.run_dir / "result.json").read_text())
    assert result["resumed_from_epoch"] is not None and result["resumed_from_epoch"] >= 1, result
    assert result["epochs_run"] == EPOCHS
    finished = next(t for t in done if trial_attrs(t)["tvls.lineage"] == interrupted.lineage)
    assert trial_attrs(finished)["resumed_from_epoch"] == result["resumed_from_epoch"]


def test_a_preemption_by_the_high_partition(tmp_path: Path) -> None:
    experiment = launch(tmp_path, "preempt", 2)
    running = wait_for_checkpoint(experiment)
    high = subprocess.run(
        ["sbatch", "--parsable", "-p", "high", "-c", "2", "--wrap", "sleep 3"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    finish(experiment, tmp_path, relaunch=False)
    wait_for_queue([high])
    assert_continued(experiment, running)
    restarted = [
        t for t in trials(experiment) if trial_attrs(t).get("tvls.slurm_restart_count", 0) > 0
    ]
    assert restarted, "no task was requeued by the preemption"


def test_b_scontrol_requeue(tmp_path: Path) -> None:
    experiment = launch(tmp_path, "requeue", 2)
    running = wait_for_checkpoint(experiment)
    subprocess.run(["scontrol", "requeue", running.task], check=True)
    finish(experiment, tmp_path, relaunch=False)
    assert_continued(experiment, running)


def test_c_scancel_of_a_running_task_then_relaunch(tmp_path: Path) -> None:
    experiment = launch(tmp_path, "cancel", 2)
    running = wait_for_checkpoint(experiment)
    subprocess.run(["scancel", running.task], check=True)
    finish(experiment, tmp_path, relaunch=True)
    assert_continued(experiment, running)
    failed = [t for t in trials(experiment) if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [running.number]
    assert "is no longer queued" in failed[0].user_attrs["tvls.failure"]


def test_d_sigkill_of_the_trial_process_then_relaunch(tmp_path: Path) -> None:
    experiment = launch(tmp_path, "sigkill", 2)
    running = wait_for_checkpoint(experiment)
    os.kill(running.pid, signal.SIGKILL)
    finish(experiment, tmp_path, relaunch=True)
    assert_continued(experiment, running)


def test_e_whole_array_cancelled_half_way_then_relaunch(tmp_path: Path) -> None:
    experiment = launch(tmp_path, "halfway", 4)
    deadline = time.monotonic() + 600
    while not any(t.state == TrialState.COMPLETE for t in trials(experiment)):
        assert time.monotonic() < deadline, "no trial completed"
        time.sleep(0.5)
    running = wait_for_checkpoint(experiment)
    subprocess.run(["scancel", *all_job_ids(experiment)], check=True)
    finish(experiment, tmp_path, relaunch=True)
    assert_continued(experiment, running)
    assert len([t for t in trials(experiment) if t.state == TrialState.COMPLETE]) == 4


def _validated_epochs(run_dir: Path) -> int:
    """Epochs validated so far by the first attempt (its metrics.csv), 0 when none yet."""
    metrics = run_dir / "logs" / "version_0" / "metrics.csv"
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return 0
    if not lines:
        return 0
    header = lines[0].split(",")
    if "val_dice" not in header:
        return 0
    column, epoch = header.index("val_dice"), header.index("epoch")
    epochs = [
        int(row.split(",")[epoch])
        for row in lines[1:]
        if row.split(",")[column : column + 1] not in ([], [""])
    ]
    return max(epochs) + 1 if epochs else 0


def test_f_requeue_during_a_plateau_resumes_at_the_next_epoch(tmp_path: Path) -> None:
    """A learning rate too small to change anything: validation never improves after epoch 0.
    ``last.ckpt`` used to follow the best checkpoint, so a requeue restarted at epoch 1."""
    experiment = write_sweep(
        tmp_path / "exp",
        name="plateau",
        output_dir="../runs/plateau",
        n_trials=1,
        max_epochs=EPOCHS,
        image_size=64,
    )
    experiment.write_text(
        experiment.read_text().replace(
            "space: {prompt_depth: {low: 1, high: 2}}",
            "space: {prompt_depth: 1, lr: {low: 1.0e-12, high: 2.0e-12}}",
        )
    )
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    deadline = time.monotonic() + 600
    while True:
        (trial,) = trials(experiment)
        run_dir = Path(trial_attrs(trial).get("tvls.run_dir", "/nonexistent"))
        if trial.state == TrialState.RUNNING and _validated_epochs(run_dir) >= EARLY_EPOCHS:
            break
        assert time.monotonic() < deadline and not trial.state.is_finished(), (
            "no plateau to interrupt"
        )
        time.sleep(0.2)
    job, index = (
        trial_attrs(trial)["tvls.slurm_job_id"],
        trial_attrs(trial).get("tvls.slurm_array_task_id"),
    )
    subprocess.run(["scontrol", "requeue", job if index is None else f"{job}_{index}"], check=True)
    finish(experiment, tmp_path, relaunch=False)
    (trial,) = trials(experiment)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["best_epoch"] == 0  # a plateau indeed
    assert result["resumed_from_epoch"] >= EARLY_EPOCHS, result  # not epoch 1
    assert result["epochs_run"] == EPOCHS
