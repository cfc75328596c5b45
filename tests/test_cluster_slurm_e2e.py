"""Sweeps on the real single-node SLURM cluster (slurm/up.sh): arrays, chunks, collector, status.

``tvls-launch`` returns right after submitting; the tests then wait for the queue to drain
(polling squeue, bounded), as a user would, and check the storage, the tables and the status.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from _curves import assert_pruned_by_other_tasks
from _demo_table import assert_demo_main_table
from _slurm_sweeps import all_job_ids, assert_complete, cli, wait_for_queue, write_sweep

from tunevlseg.cluster import slurm
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.manifest import read_manifest
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_as_arrays_and_the_collector_writes_the_table(tmp_path: Path) -> None:
    folder = tmp_path / "experiments"
    folder.mkdir()
    experiment = folder / "demo.yaml"
    experiment.write_text((ROOT / "experiments" / "demo.yaml").read_text())
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    assert "Submitted 12 trial(s) of 6 studies as 1 array job(s)" in launched.stderr

    status = cli("tunevlseg.cli.status", str(experiment), "--json", cwd=tmp_path)
    totals = json.loads(status.stdout)["totals"]
    assert totals["queued"] + totals["on_nodes"] + totals["complete"] + totals["pruned"] >= 12

    wait_for_queue(all_job_ids(experiment))
    assert_complete(experiment)  # every trial's learning curve whole, pruned ones included
    loaded = load_experiment(experiment)
    storage = open_storage(sweep_storage(loaded))
    for spec in expand(loaded).studies:  # the demo prunes with ASHA across its array tasks
        assert_pruned_by_other_tasks(
            optuna.load_study(study_name=spec.name, storage=storage).trials
        )
    table = (SweepPaths.of(load_experiment(experiment)).results / "main_table.md").read_text()
    assert_demo_main_table(table)

    status = cli("tunevlseg.cli.status", str(experiment), "--json", cwd=tmp_path)
    report = json.loads(status.stdout)
    totals = report["totals"]  # the demo prunes: a pruned trial is done too
    assert totals["remaining"] == 0 and totals["complete"] + totals["pruned"] == 12

    again = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert again.returncode == 0 and "The sweep is complete" in again.stderr
    manifest = read_manifest(SweepPaths.of(load_experiment(experiment)).manifest)
    assert manifest is not None and len(manifest.launches) == 1


def test_plan_above_max_array_size_runs_in_chunks_without_accounting(
    tmp_path: Path, small_cluster_without_accounting: int
) -> None:
    assert not slurm.has_accounting()
    assert subprocess.run(["sacct", "-n"], capture_output=True).returncode != 0
    experiment = write_sweep(
        tmp_path / "exp", name="chunks", output_dir="../runs/chunks", n_trials=25
    )
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    assert "as 3 array job(s)" in launched.stderr
    manifest = read_manifest(SweepPaths.of(load_experiment(experiment)).manifest)
    assert manifest is not None
    arrays = manifest.launches[0]["arrays"]
    assert [len(a["tasks"]) for a in arrays] == [11, 11, 3]
    status = cli("tunevlseg.cli.status", str(experiment), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    totals = json.loads(status.stdout)["totals"]
    # every task is still queued or has finished its trial (COMPLETING may count twice)
    assert totals["queued"] + totals["on_nodes"] + totals["complete"] >= 25
    wait_for_queue(all_job_ids(experiment), timeout=1500)
    assert_complete(experiment)
    status = cli("tunevlseg.cli.status", str(experiment), "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["totals"]["remaining"] == 0


def test_hostile_values_are_quoted_not_run(tmp_path: Path) -> None:
    marker = Path(f"/tmp/tvls-injected-{uuid.uuid4().hex}")
    evil = f"x y;$(touch {marker})`touch {marker}`'\"q&|<>"
    experiment = write_sweep(
        tmp_path / "exp",
        name="evil",
        output_dir=json.dumps(f"../runs/{evil}"),
        hf_home=json.dumps(f"../hf {evil}"),
        n_trials=1,
        extra=json.dumps({"comment": evil}),
    )
    dry = cli("tunevlseg.cli.launch", str(experiment), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    output_dir = load_experiment(experiment).output_dir
    assert "$(touch" in str(output_dir)
    wait_for_queue(all_job_ids(experiment))
    assert_complete(experiment)
    assert (SweepPaths.of(load_experiment(experiment)).results / "main_table.md").is_file()
    assert not marker.exists(), "a value from the YAML ran as a command"


def test_folder_slurm_would_rewrite_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    experiment = write_sweep(tmp_path / "exp", name="pct", output_dir=json.dumps("../runs/a%jb\\c"))
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 1
    assert "which SLURM rewrites in job log file names" in launched.stderr
    assert not (tmp_path / "runs").exists()


def test_sqlite_is_refused_for_parallel_slurm_tasks_before_anything_is_written(
    tmp_path: Path,
) -> None:
    experiment = write_sweep(tmp_path / "exp", name="lite")
    text = experiment.read_text().replace(
        "output_dir:", "storage: sqlite:///../runs/lite.db\noutput_dir:"
    )
    experiment.write_text(text)
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 1
    assert "sqlite storage cannot take parallel tasks" in launched.stderr
    assert not (tmp_path / "runs").exists()
