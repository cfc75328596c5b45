"""Helpers of the tests that run sweeps on the real SLURM cluster (slurm/up.sh)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
from _curves import assert_curves
from optuna.trial import TrialState

from tunevlseg.cluster import slurm
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.manifest import read_manifest
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage
from tunevlseg.tuning.trial_attrs import trial_attrs

SWEEP = """\
name: {name}
output_dir: {output_dir}
models:
  - {{name: clipseg, pretrained: ../assets/clipseg-tiny-{image_size}, image_size: {image_size}, synthetic: true}}
learners: {learners}
datasets:
  - {{name: synth, root: ../assets/synth-{image_size}, synthetic: true}}
data: {{num_workers: 0}}
training: {{max_epochs: {max_epochs}, patience: {max_epochs}, batch_size: 8, effective_batch_size: 8, precision: "32"}}
search: {{n_trials: {n_trials}, n_startup_trials: 1, space: {{prompt_depth: {{low: 1, high: 2}}}}}}
cluster:
  parallelism: 2
  timeout_min: 30
  hf_home: {hf_home}
  slurm: {{cpus_per_task: 1, mem_gb: 2, gpus: 1, extra: {extra}}}
"""


def write_sweep(
    folder: Path,
    *,
    name: str = "sl",
    learners: str = "[coop]",
    n_trials: int = 2,
    output_dir: str = "../runs/sl",
    hf_home: str = "../hf",
    extra: str = "{}",
    max_epochs: int = 1,
    image_size: int = 32,
) -> Path:
    """A tiny sweep (synthetic model and data) whose tasks fit the 2-core test node."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(
        SWEEP.format(
            name=name,
            learners=learners,
            n_trials=n_trials,
            output_dir=output_dir,
            hf_home=hf_home,
            extra=extra,
            max_epochs=max_epochs,
            image_size=image_size,
        )
    )
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def wait_for_queue(job_ids: list[str], timeout: float = 900) -> None:
    """Until SLURM holds no task of these jobs (bounded; fails the test on time-out)."""
    deadline = time.monotonic() + timeout
    while slurm.queued_tasks(job_ids):
        assert time.monotonic() < deadline, f"jobs {job_ids} still queued after {timeout} s"
        time.sleep(1)


def all_job_ids(experiment_path: Path) -> list[str]:
    manifest = read_manifest(SweepPaths.of(load_experiment(experiment_path)).manifest)
    assert manifest is not None
    ids = manifest.array_job_ids()
    if manifest.last_collector_job_id:
        ids.append(manifest.last_collector_job_id)
    return ids


def assert_complete(experiment_path: Path) -> None:
    experiment = load_experiment(experiment_path)
    storage = open_storage(sweep_storage(experiment))
    for spec in expand(experiment).studies:
        trials = optuna.load_study(study_name=spec.name, storage=storage).trials
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        assert complete, (spec.name, [t.state for t in trials])
        assert len(complete) + len(pruned) == spec.n_trials, (spec.name, [t.state for t in trials])
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        assert_curves(trials, spec.search.direction)
        for trial in complete:
            assert trial_attrs(trial)["tvls.slurm_job_id"]
            assert "tvls.slurm_array_task_id" in trial_attrs(trial)  # None for a one-task plan
            assert 0.0 <= trial_attrs(trial)["test_dice"] <= 1.0
