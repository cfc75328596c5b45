"""Sweeps on the real single-node SLURM cluster (slurm/up.sh): arrays, chunks, collector, status.

``tvls-launch`` returns right after submitting; the tests then wait for the queue to drain
(polling squeue, bounded), as a user would, and check the storage, the tables and the status.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunevlseg.cluster import slurm
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.manifest import read_manifest
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import open_storage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
ROOT = Path(__file__).resolve().parents[1]

SWEEP = """\
name: {name}
output_dir: {output_dir}
models:
  - {{name: clipseg, pretrained: ../assets/clipseg-tiny, image_size: 32, synthetic: true}}
learners: {learners}
datasets:
  - {{name: synth, root: ../assets/synth, synthetic: true}}
data: {{num_workers: 0}}
training: {{max_epochs: 1, patience: 1, batch_size: 8, effective_batch_size: 8, precision: "32"}}
search: {{n_trials: {n_trials}, n_startup_trials: 1, space: {{prompt_depth: {{low: 1, high: 2}}}}}}
cluster:
  parallelism: 2
  timeout_min: 30
  hf_home: {hf_home}
  slurm: {{cpus_per_task: 1, mem_gb: 2, gpus: 1, extra: {extra}}}
"""


def write_sweep(folder: Path, *, name: str = "sl", learners: str = "[coop]", n_trials: int = 2,
                output_dir: str = "../runs/sl", hf_home: str = "../hf", extra: str = "{}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(
        SWEEP.format(name=name, learners=learners, n_trials=n_trials, output_dir=output_dir,
                     hf_home=hf_home, extra=extra)
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


def all_job_ids(output_dir: Path) -> list[str]:
    manifest = read_manifest(SweepPaths(output_dir).manifest)
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
        assert len(complete) == spec.n_trials, (spec.name, [t.state for t in trials])
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        for trial in complete:
            assert trial.user_attrs["tvls.slurm_job_id"]
            assert "tvls.slurm_array_task_id" in trial.user_attrs  # None for a one-task plan
            assert 0.0 <= trial.user_attrs["test_dice"] <= 1.0


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
    assert totals["queued"] + totals["on_nodes"] + totals["complete"] >= 12

    output_dir = load_experiment(experiment).output_dir
    wait_for_queue(all_job_ids(output_dir))
    assert_complete(experiment)
    table = (output_dir / "results" / "main_table.md").read_text()
    expected = [
        "| clipseg | CoOp |", "|  | CoCoOp |", "|  | VPT |", "|  | Shared Attention |",
        "| cris | CoOp |", "|  | CoCoOp |",
    ]
    rows = [line for line in table.splitlines() if re.match(r"^\| (clipseg|cris|) +\|", line)]
    assert [row[: len(prefix)] for row, prefix in zip(rows, expected, strict=True)] == expected
    for row in rows:
        assert re.search(r"\| \d+\.\d\d \| \d+\.\d\d ± 0\.00 \|$", row), row
    assert "–" not in table

    status = cli("tunevlseg.cli.status", str(experiment), "--json", cwd=tmp_path)
    report = json.loads(status.stdout)
    assert report["totals"]["remaining"] == 0 and report["totals"]["complete"] == 12

    again = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert again.returncode == 0 and "The sweep is complete" in again.stderr
    manifest = read_manifest(SweepPaths(output_dir).manifest)
    assert manifest is not None and len(manifest.launches) == 1


def test_plan_above_max_array_size_runs_in_chunks_without_accounting(
    tmp_path: Path, small_cluster_without_accounting: int
) -> None:
    assert not slurm.has_accounting()
    assert subprocess.run(["sacct", "-n"], capture_output=True).returncode != 0
    experiment = write_sweep(tmp_path / "exp", name="chunks", output_dir="../runs/chunks", n_trials=25)
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    assert "as 3 array job(s)" in launched.stderr
    output_dir = load_experiment(experiment).output_dir
    manifest = read_manifest(SweepPaths(output_dir).manifest)
    assert manifest is not None
    arrays = manifest.launches[0]["arrays"]
    assert [len(a["tasks"]) for a in arrays] == [11, 11, 3]
    status = cli("tunevlseg.cli.status", str(experiment), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    totals = json.loads(status.stdout)["totals"]
    # every task is still queued or has finished its trial (COMPLETING may count twice)
    assert totals["queued"] + totals["on_nodes"] + totals["complete"] >= 25
    wait_for_queue(all_job_ids(output_dir), timeout=1500)
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
    wait_for_queue(all_job_ids(output_dir))
    assert_complete(experiment)
    assert (output_dir / "results" / "main_table.md").is_file()
    assert not marker.exists(), "a value from the YAML ran as a command"


def test_folder_slurm_would_rewrite_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    experiment = write_sweep(tmp_path / "exp", name="pct", output_dir=json.dumps("../runs/a%jb\\c"))
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 1
    assert "which SLURM rewrites in job log file names" in launched.stderr
    assert not (tmp_path / "runs").exists()
