"""A trial longer than ``timeout_min`` on the real SLURM cluster: each time-out requeues the task
and it resumes at the epoch after its last one; the number of time-outs does not end the trial
(submitit allows 3 by default; ``cluster.max_timeouts`` sets it, default 1000)."""

from __future__ import annotations

import csv
import itertools
import pickle
from pathlib import Path

import optuna
import pytest
from _slurm_sweeps import all_job_ids, cli, wait_for_queue, write_sweep
from optuna.trial import TrialState

from tunevlseg.cluster import slurm
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.manifest import read_manifest
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.trial_attrs import trial_attrs

pytestmark = pytest.mark.usefixtures("slurm_cluster")


def test_max_timeouts_reaches_the_submitted_task(tmp_path: Path) -> None:
    experiment = write_sweep(
        tmp_path / "exp",
        name="countdown",
        output_dir="../runs/countdown",
        n_trials=1,
        extra="{hold: true}",
    )
    experiment.write_text(
        experiment.read_text().replace("timeout_min: 30", "timeout_min: 30\n  max_timeouts: 17")
    )
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    try:
        paths = SweepPaths.of(load_experiment(experiment))
        manifest = read_manifest(paths.manifest)
        assert manifest is not None
        (job,) = manifest.array_job_ids()
        (pickled,) = (paths.jobs / job).glob("*_submitted.pkl")
        with pickled.open("rb") as file:
            assert pickle.load(file)._timeout_countdown == 17
    finally:
        slurm.cancel(all_job_ids(experiment))


def _epochs_by_attempt(run_dir: Path) -> list[tuple[int, int]]:
    """(first epoch trained, last epoch validated) of each attempt, from its metrics.csv."""
    spans = []
    for version in sorted(
        (run_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1])
    ):
        with (version / "metrics.csv").open() as file:
            rows = list(csv.DictReader(file))
        trained = [int(r["epoch"]) for r in rows if r.get("epoch")]
        validated = [int(r["epoch"]) for r in rows if r.get("val_dice")]
        if trained:
            spans.append((min(trained), max(validated) if validated else -1))
    return spans


@pytest.mark.slow
def test_a_trial_longer_than_its_time_limit_resumes_after_every_timeout(tmp_path: Path) -> None:
    # ~100-320 epochs fit in a 1-minute slot here, depending on the load: at least two slots
    epochs = 640
    experiment = write_sweep(
        tmp_path / "exp",
        name="longer",
        output_dir="../runs/longer",
        n_trials=1,
        max_epochs=epochs,
        image_size=64,
    )
    text = experiment.read_text().replace("timeout_min: 30", "timeout_min: 1")
    experiment.write_text(text.replace("gpus: 1,", "gpus: 1, signal_delay_s: 25,"))
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    wait_for_queue(all_job_ids(experiment), timeout=1500)

    loaded = load_experiment(experiment)
    spec = expand(loaded).studies[0]
    (trial,) = optuna.load_study(
        study_name=spec.name, storage=open_storage(sweep_storage(loaded))
    ).trials
    assert trial.state == TrialState.COMPLETE, trial_attrs(trial).get("tvls.failure")
    assert trial_attrs(trial)["epochs_run"] == epochs
    assert trial_attrs(trial)["tvls.slurm_restart_count"] >= 1  # it outlived its time limit
    spans = _epochs_by_attempt(Path(trial_attrs(trial)["tvls.run_dir"]))
    assert len(spans) == trial_attrs(trial)["tvls.slurm_restart_count"] + 1, spans
    for (_, last), (first, _) in itertools.pairwise(spans):
        # At the next epoch: at most the epoch whose checkpoint the time-out cut off (validated,
        # not yet saved) is trained again; before, a plateau lost every epoch since its start.
        assert last <= first <= last + 1, spans
