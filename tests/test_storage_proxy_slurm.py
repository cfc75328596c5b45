"""Sweeps through the launcher's storage proxy job on the real SLURM cluster and PostgreSQL:
tasks given only the proxy, the proxy gone after the collector, a killed proxy replaced by a
relaunch with nothing lost, and tvls-cancel stopping it with the sweep.

The test node has 2 cores and the proxy takes one, so these sweeps run one task at a time.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import optuna
import pytest
from _slurm_sweeps import all_job_ids, assert_complete, cli, wait_for_queue, write_sweep
from optuna.trial import TrialState
from submitit.core.utils import DelayedSubmission

from tunevlseg.cluster import slurm
from tunevlseg.cluster.manifest import Manifest, read_manifest
from tunevlseg.cluster.worker import TrialTask
from tunevlseg.config.loader import load_experiment
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.grpc_address import read_address
from tunevlseg.tuning.storage import open_storage, parse_storage_url

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
pytest.importorskip("grpc")


def _proxied_sweep(tmp_path: Path, postgres_url: str, **kwargs: object) -> Path:
    name = f"px{uuid.uuid4().hex[:8]}"  # the database is shared: study names must be new
    path = write_sweep(tmp_path / "exp", name=name, output_dir=f"../runs/{name}", **kwargs)
    text = path.read_text().replace("output_dir:", f"storage: {postgres_url}\noutput_dir:", 1)
    text = text.replace("parallelism: 2", "parallelism: 1\n  storage_proxy: {}")
    path.write_text(text)
    return path


def _manifest(path: Path) -> Manifest:
    manifest = read_manifest(SweepPaths.of(load_experiment(path)).manifest)
    assert manifest is not None
    return manifest


def _submitted_tasks(path: Path) -> list[TrialTask]:
    """The TrialTask of every array task submitit pickled for the sweep."""
    jobs = SweepPaths.of(load_experiment(path)).jobs
    tasks = []
    for pickled in jobs.glob("*/*_submitted.pkl"):
        submission = DelayedSubmission.load(pickled)
        if submission.args and isinstance(submission.args[0], TrialTask):
            tasks.append(submission.args[0])
    return tasks


def test_a_sweep_runs_through_the_proxy_which_ends_after_the_collector(
    tmp_path: Path, postgres_url: str
) -> None:
    experiment = _proxied_sweep(tmp_path, postgres_url, n_trials=3)
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    [proxy] = _manifest(experiment).proxy_job_ids()
    assert f"storage proxy job {proxy} (started now" in launched.stderr

    address_file = SweepPaths.of(load_experiment(experiment)).storage_proxy
    tasks = _submitted_tasks(experiment)
    assert len(tasks) == 3  # the tasks were given the proxy's address file, not the database
    assert {task.storage for task in tasks} == {f"grpc+file://{address_file.resolve()}"}

    wait_for_queue(all_job_ids(experiment))
    assert_complete(experiment)
    wait_for_queue([proxy], timeout=120)  # it leaves by itself once the collector has ended
    address = read_address(address_file)
    assert address is not None and address.job_id == proxy and address.stopped
    results = SweepPaths.of(load_experiment(experiment)).results
    assert (results / "main_table.md").is_file()


def _wait_for_a_running_trial(experiment: Path, postgres_url: str) -> None:
    storage = open_storage(parse_storage_url(postgres_url))
    sweep = load_experiment(experiment).spec.name
    deadline = time.monotonic() + 300
    while True:
        names = [name for name in optuna.get_all_study_names(storage) if name.startswith(sweep)]
        studies = [optuna.load_study(study_name=name, storage=storage) for name in names]
        if any(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) for study in studies):
            return
        assert time.monotonic() < deadline, "no trial started within 300 s"
        time.sleep(1)


def test_a_killed_proxy_is_replaced_by_a_relaunch_and_nothing_is_lost(
    tmp_path: Path, postgres_url: str
) -> None:
    experiment = _proxied_sweep(tmp_path, postgres_url, n_trials=3, max_epochs=2)
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    [first] = _manifest(experiment).proxy_job_ids()
    _wait_for_a_running_trial(experiment, postgres_url)

    slurm.cancel([first])  # the proxy dies while a trial trains
    wait_for_queue([first], timeout=120)
    relaunched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert relaunched.returncode == 0, relaunched.stderr
    proxies = _manifest(experiment).proxy_job_ids()
    assert len(proxies) == 2 and proxies[0] == first, relaunched.stderr
    assert f"storage proxy job {proxies[1]}" in relaunched.stderr

    wait_for_queue(all_job_ids(experiment))
    assert_complete(experiment)  # each trial complete or pruned exactly once
    wait_for_queue([proxies[1]], timeout=120)


def test_tvls_cancel_cancels_the_proxy_with_the_sweep(tmp_path: Path, postgres_url: str) -> None:
    experiment = _proxied_sweep(tmp_path, postgres_url, n_trials=2)
    launched = cli("tunevlseg.cli.launch", str(experiment), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    [proxy] = _manifest(experiment).proxy_job_ids()
    cancelled = cli("tunevlseg.cli.cancel", str(experiment), "--yes", "--json", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    kinds = {job["job_id"]: job["kind"] for job in json.loads(cancelled.stdout)["cancelled"]}
    assert kinds.get(proxy) == "proxy", kinds
    assert not slurm.queued_tasks([proxy, *all_job_ids(experiment)])
