"""Two and three ``tvls-launch`` of one file started at the same moment, on the real SLURM
cluster: each trial is submitted once, one collector, no manifest entry lost, and no study
reported as changed because another launch was half-way through creating it."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from _slurm_sweeps import write_sweep
from optuna.trial import TrialState

from tunevlseg.cluster import slurm
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.manifest import read_manifest
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage

pytestmark = pytest.mark.usefixtures("slurm_cluster")


@pytest.mark.parametrize("launches", [2, 3])
def test_simultaneous_launches_submit_each_trial_once(tmp_path: Path, launches: int) -> None:
    name = f"together{launches}"
    # Held jobs never start: the test looks at what was submitted, not at training.
    experiment = write_sweep(
        tmp_path / "exp",
        name=name,
        output_dir=f"../runs/{name}",
        learners="[coop, vpt]",
        n_trials=3,
        extra="{hold: true}",
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tunevlseg.cli.launch", str(experiment)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(launches)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    loaded = load_experiment(experiment)
    manifest = read_manifest(SweepPaths.of(loaded).manifest)
    assert manifest is not None
    try:
        for process, (_, stderr) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, stderr
            assert "changed the definition" not in stderr
        submitted = sum(("Submitted" in err for _, err in outputs))
        assert submitted == 1, [err for _, err in outputs]
        assert (
            sum(
                "Nothing to submit: the 6 remaining trial(s) are queued" in err
                for _, err in outputs
            )
            == launches - 1
        )

        tasks = Counter(manifest.task_index().values())
        assert len(tasks) == 6 and set(tasks.values()) == {1}, tasks  # every trial in one task
        collectors = [
            launch["collector_job_id"] for launch in manifest.launches if launch["collector_job_id"]
        ]
        assert len(collectors) == 1
        queued = slurm.queued_tasks(manifest.array_job_ids())
        assert len(queued) == 6
        storage = open_storage(sweep_storage(loaded))
        for spec in expand(loaded).studies:
            trials = optuna.load_study(study_name=spec.name, storage=storage).trials
            assert [t.state for t in trials] == [TrialState.WAITING] * 3, spec.name
    finally:
        slurm.cancel([*manifest.array_job_ids(), *(manifest.last_collector_job_id or "").split()])
