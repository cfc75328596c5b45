"""Sweeps whose SLURM jobs slurmctld has forgotten: resumed and shown as if they had just ended.

slurmctld purges an ended job ``MinJobAge`` seconds after its end (300 s by default); ``squeue -j``
then refuses its id with "Invalid job id specified" (exit 1) when it is the only id asked about
(SLURM 22.05 filters a list of several ids itself and says nothing). The manifest keeps every id
for ever, so ``tvls-status`` and ``tvls-launch`` must take such ids as "not queued".

Most tests use ids SLURM never had (above ``MaxJobId``, so never assigned); one waits for a real
purge with a short ``MinJobAge``. Two use a stand-in ``squeue`` to reach the branches this
cluster's SLURM version never takes (a refused list of ids; slurmctld down).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from _slurm_sweeps import cli, wait_for_queue, write_sweep

from tunevlseg.cluster import slurm
from tunevlseg.cluster.manifest import read_manifest
from tunevlseg.config.loader import load_experiment

NEVER = "99999999"
"""A job id above SLURM's default MaxJobId (67,043,328 - 1): no job ever had it."""


def _manifest_path(experiment: Path) -> Path:
    """The sweep's manifest, in ``<output_dir>/`` or ``<output_dir>/<sweep>/``."""
    loaded = load_experiment(experiment)
    candidates = [
        loaded.output_dir / "manifest.json",
        loaded.output_dir / loaded.spec.name / "manifest.json",
    ]
    found = [path for path in candidates if path.is_file()]
    assert found, f"no manifest in {candidates}"
    return found[0]


def _job_ids(experiment: Path) -> list[str]:
    """Every job the sweep submitted: its arrays and collectors."""
    manifest = read_manifest(_manifest_path(experiment))
    assert manifest is not None
    collectors = [launch.get("collector_job_id") for launch in manifest.launches]
    return manifest.array_job_ids() + [str(job) for job in collectors if job]


def _launch_and_wait(tmp_path: Path, name: str) -> Path:
    experiment = write_sweep(tmp_path / "exp", name=name, output_dir=f"../runs/{name}", n_trials=1)
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    wait_for_queue(_job_ids(experiment))
    return experiment


def _assert_complete_and_nothing_submitted(experiment: Path, tmp_path: Path, launches: int) -> None:
    """Status and a relaunch both succeed and see a finished sweep; no job is submitted."""
    status = cli("tunevlseg.cli.status", str(experiment), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    # Finished is what matters here (how the trial ended is other tests' business).
    assert report["totals"]["remaining"] == 0 and report["totals"]["n_trials"] == 1, report
    assert report["totals"]["queued"] == report["totals"]["on_nodes"] == 0
    table = cli("tunevlseg.cli.status", str(experiment), cwd=tmp_path)
    assert table.returncode == 0 and "1 studies: complete" in table.stderr, table.stderr
    again = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "The sweep is complete" in again.stderr
    manifest = read_manifest(_manifest_path(experiment))
    assert manifest is not None and len(manifest.launches) == launches


def _wait_purged(job_ids: list[str], timeout: float = 240) -> float:
    """Until slurmctld has forgotten every one of these jobs; returns the seconds waited.

    slurmctld purges on a periodic timer, not at MinJobAge sharp, so this polls (bounded).
    """
    start = time.monotonic()
    left = list(job_ids)
    while left:
        for job in list(left):
            shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
            if shown.returncode != 0 and "Invalid job id" in shown.stderr:
                left.remove(job)
        if left:
            assert time.monotonic() - start < timeout, f"jobs {left} not purged after {timeout} s"
            time.sleep(1)
    return time.monotonic() - start


@pytest.mark.usefixtures("slurm_cluster")
def test_an_id_slurm_never_had_is_not_queued() -> None:
    alone = subprocess.run(["squeue", "-h", "-j", NEVER], capture_output=True, text=True)
    assert alone.returncode == 1 and "Invalid job id specified" in alone.stderr  # what is handled
    assert slurm.queued_tasks(["999999"]) == []
    assert slurm.queued_tasks([NEVER]) == []
    assert slurm.queued_tasks([NEVER, "999999"]) == []


@pytest.mark.usefixtures("slurm_cluster")
def test_a_queued_job_is_found_next_to_an_unknown_id(tmp_path: Path) -> None:
    held = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--hold",
            "--array=0-2",
            "-J",
            "tvls-purged-test",
            "-o",
            "/dev/null",
            "--wrap",
            "true",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    job = held.stdout.strip().split(";")[0]
    try:
        expected = [(job, 0, "PENDING"), (job, 1, "PENDING"), (job, 2, "PENDING")]
        for ids in ([job], [job, NEVER], [NEVER, job, "999999"]):
            tasks = slurm.queued_tasks(ids)
            assert sorted((t.job_id, t.index, t.state) for t in tasks) == expected, ids
    finally:
        slurm.cancel([job])


FAKE_SQUEUE = """\
#!/usr/bin/env bash
# A stand-in squeue: logs its arguments, then acts as $FAKE_SQUEUE_MODE says.
echo "$*" >>"$FAKE_SQUEUE_LOG"
case "$FAKE_SQUEUE_MODE" in
  down) echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2; exit 1 ;;
esac
for arg in "$@"; do
  if [ "$arg" = "-j" ]; then echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi
done
printf '%s\\n' "7_0|RUNNING" "7_1|PENDING" "8|RUNNING" "70_0|PENDING" "9|COMPLETING" "12+0|RUNNING"
"""


@pytest.fixture
def fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``squeue`` first on PATH that refuses every ``-j`` list, as some SLURM versions may."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "squeue"
    script.write_text(FAKE_SQUEUE)
    script.chmod(0o755)
    log = tmp_path / "squeue.log"
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SQUEUE_LOG", str(log))
    monkeypatch.setenv("FAKE_SQUEUE_MODE", "refuse-lists")
    return log


def test_a_refused_list_of_ids_is_filtered_from_one_listing(fake_squeue: Path) -> None:
    tasks = slurm.queued_tasks(["7", NEVER, "9"])
    assert [(t.key, t.state) for t in tasks] == [
        ("7_0", "RUNNING"),
        ("7_1", "PENDING"),
        ("9_0", "COMPLETING"),
    ]
    calls = fake_squeue.read_text().splitlines()
    assert len(calls) == 2 and "-j" in calls[0].split() and "-j" not in calls[1].split()
    assert "--all" in calls[1].split()  # like -j, the listing includes hidden partitions
    fake_squeue.write_text("")
    assert slurm.queued_tasks([NEVER]) == []  # a lone refused id needs no second call
    assert len(fake_squeue.read_text().splitlines()) == 1


def test_a_controller_that_does_not_answer_still_raises(
    fake_squeue: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SQUEUE_MODE", "down")
    for ids in ([NEVER], ["7", NEVER]):
        with pytest.raises(slurm.SlurmError, match="Unable to contact slurm controller"):
            slurm.queued_tasks(ids)


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_status_and_relaunch_take_unknown_array_ids_as_ended(tmp_path: Path) -> None:
    experiment = _launch_and_wait(tmp_path, "unknown")
    path = _manifest_path(experiment)
    data = json.loads(path.read_text())
    # As after a purge: the sweep's only array id is one slurmctld does not know.
    for launch in data["launches"]:
        for array in launch["arrays"]:
            array["job_id"] = NEVER
    path.write_text(json.dumps(data))
    _assert_complete_and_nothing_submitted(experiment, tmp_path, launches=1)
    # An extra array with another unknown id next to it (squeue -j with a list of ids).
    data = json.loads(path.read_text())
    data["launches"][0]["arrays"].append({"job_id": "999999", "tasks": []})
    path.write_text(json.dumps(data))
    _assert_complete_and_nothing_submitted(experiment, tmp_path, launches=1)


@pytest.mark.slow
def test_sweep_is_shown_and_resumed_after_slurm_purged_its_jobs(
    tmp_path: Path, short_min_job_age: int
) -> None:
    experiment = _launch_and_wait(tmp_path, "purged")
    ids = _job_ids(experiment)
    waited = _wait_purged(ids)
    print(
        f"jobs {ids} purged {waited:.0f} s after they left the queue (MinJobAge={short_min_job_age})"
    )
    alone = subprocess.run(["squeue", "-h", "-j", ids[0]], capture_output=True, text=True)
    assert alone.returncode == 1 and "Invalid job id specified" in alone.stderr
    _assert_complete_and_nothing_submitted(experiment, tmp_path, launches=1)
