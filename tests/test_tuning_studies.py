"""Studies in a real journal storage: exact budgets, changed definitions, stale trials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunevlseg.config.grid import StudySpec, expand
from tunevlseg.config.loader import parse_experiment
from tunevlseg.tuning import recovery
from tunevlseg.tuning.storage import default_storage, open_storage
from tunevlseg.tuning.studies import (
    SPEC_ATTR,
    StudyConflictError,
    enqueue_missing,
    ensure_studies,
    load_spec,
    progress,
)

TEXT = """\
name: s
output_dir: out
models: [clipseg]
learners: [coop, vpt]
datasets: [{name: d, root: data}]
search: {n_trials: 3, max_retries: 1}
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[optuna.storages.BaseStorage, list[StudySpec]]:
    studies = expand(parse_experiment(TEXT, tmp_path / "s.yaml")).studies
    return open_storage(default_storage(tmp_path)), studies


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_studies_hold_their_spec(setup) -> None:  # type: ignore[no-untyped-def]
    storage, studies = setup
    ensure_studies(storage, studies)
    for spec in studies:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        assert load_spec(study) == spec
        assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_enqueue_covers_the_budget_exactly_once(setup) -> None:  # type: ignore[no-untyped-def]
    storage, studies = setup
    ensure_studies(storage, studies)
    spec = studies[0]
    assert enqueue_missing(storage, spec) == [0, 1, 2]
    assert enqueue_missing(storage, spec) == [0, 1, 2]
    study = optuna.load_study(study_name=spec.name, storage=storage)
    trial = study.ask()  # claims the first waiting trial
    study.tell(trial, 0.5)
    assert enqueue_missing(storage, spec) == [1, 2]
    state = progress(storage, spec)
    assert (state.complete, state.waiting, state.remaining, state.to_enqueue) == (1, 2, 2, 0)


def test_changed_definition_is_refused_with_the_difference(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storage, studies = setup
    ensure_studies(storage, studies)
    changed = expand(
        parse_experiment(TEXT.replace("n_trials: 3", "n_trials: 5"), tmp_path / "s.yaml")
    ).studies
    with pytest.raises(StudyConflictError) as caught:
        ensure_studies(storage, changed)
    assert "search.n_trials: 3 -> 5" in str(caught.value)
    stored = optuna.load_study(study_name=studies[0].name, storage=storage).user_attrs[SPEC_ATTR]
    assert stored["search"]["n_trials"] == 3
    ensure_studies(storage, changed, force=True)
    assert load_spec(optuna.load_study(study_name=studies[0].name, storage=storage)).n_trials == 5


def _start_running(storage, spec: StudySpec, pid: int, attempt: int = 1) -> optuna.Trial:  # type: ignore[no-untyped-def]
    study = optuna.load_study(study_name=spec.name, storage=storage)
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.set_user_attr(recovery.HOST_ATTR, socket.gethostname())
    trial.set_user_attr(recovery.PID_ATTR, pid)
    trial.set_user_attr(recovery.ATTEMPT_ATTR, attempt)
    return trial


def test_stale_trial_is_requeued_with_its_params_and_folder(setup) -> None:  # type: ignore[no-untyped-def]
    storage, studies = setup
    ensure_studies(storage, studies)
    spec = studies[0]
    stale = _start_running(storage, spec, _dead_pid())
    alive = _start_running(storage, spec, 1)  # pid 1 is alive: never touched
    actions = recovery.recover_stale(storage, spec)
    assert len(actions) == 1 and "re-queued" in actions[0]
    trials = optuna.load_study(study_name=spec.name, storage=storage).trials
    assert trials[stale.number].state == TrialState.FAIL
    assert "is gone" in trials[stale.number].user_attrs[recovery.FAILURE_ATTR]
    assert trials[alive.number].state == TrialState.RUNNING
    retry = trials[-1]
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs["fixed_params"] == {"lr": stale.params["lr"]}
    assert retry.user_attrs[recovery.LINEAGE_ATTR] == stale.number
    assert retry.user_attrs[recovery.ATTEMPT_ATTR] == 2


def test_retry_limit_fails_for_good(setup) -> None:  # type: ignore[no-untyped-def]
    storage, studies = setup
    ensure_studies(storage, studies)
    spec = studies[0]
    _start_running(storage, spec, _dead_pid(), attempt=2)  # max_retries is 1
    actions = recovery.recover_stale(storage, spec)
    assert "failed for good" in actions[0]
    states = [t.state for t in optuna.load_study(study_name=spec.name, storage=storage).trials]
    assert states == [TrialState.FAIL]


def test_a_trial_stopped_on_purpose_is_rerun_without_using_a_retry(setup) -> None:  # type: ignore[no-untyped-def]
    """tvls-cancel marks the trials it stops: cancelling and resuming must not fail them for good."""
    storage, studies = setup
    ensure_studies(storage, studies)
    spec = studies[0]
    stopped = _start_running(storage, spec, _dead_pid(), attempt=2)  # max_retries is 1
    frozen = storage.get_trial(stopped._trial_id)
    recovery.mark_stopped(storage, frozen, "tvls-cancel")
    actions = recovery.recover_stale(storage, spec)
    assert "re-queued" in actions[0] and "stopped by tvls-cancel" in actions[0]
    trials = optuna.load_study(study_name=spec.name, storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs[recovery.ATTEMPT_ATTR] == 2  # the same attempt, not 3


def test_a_stop_mark_of_an_earlier_owner_does_not_spare_a_crash(setup) -> None:  # type: ignore[no-untyped-def]
    """The mark names the owner it stopped: another owner's crash still uses a retry."""
    storage, studies = setup
    ensure_studies(storage, studies)
    spec = studies[0]
    trial = _start_running(storage, spec, 1, attempt=2)
    recovery.mark_stopped(storage, storage.get_trial(trial._trial_id), "tvls-cancel")
    trial.set_user_attr(recovery.PID_ATTR, _dead_pid())  # since then owned by a process that died
    actions = recovery.recover_stale(storage, spec)
    assert "failed for good" in actions[0] and "stopped by" not in actions[0]


def test_ctrl_c_of_a_local_launch_marks_the_trials_it_stopped(setup) -> None:  # type: ignore[no-untyped-def]
    """Its own trials whose process is gone, once; not another launch's, not a live one."""
    from tunevlseg.cluster.launch import mark_interrupted
    from tunevlseg.cluster.worker import TrialTask

    storage, studies = setup
    ensure_studies(storage, studies)
    spec = studies[0]
    stopped = _start_running(storage, spec, _dead_pid())
    cancelled = _start_running(storage, spec, _dead_pid())
    recovery.mark_stopped(storage, storage.get_trial(cancelled._trial_id), "tvls-cancel")
    alive = _start_running(storage, spec, os.getpid())
    elsewhere = _start_running(storage, spec, _dead_pid())  # not one of this launch's tasks
    tasks = [
        TrialTask("journal://unused", spec.name, t.number) for t in (stopped, cancelled, alive)
    ]
    assert mark_interrupted(storage, tasks) == 1
    by = {
        t.number: recovery.stopped_by(t)
        for t in optuna.load_study(study_name=spec.name, storage=storage).trials
    }
    assert by == {
        stopped.number: "Ctrl-C",
        cancelled.number: "tvls-cancel",
        alive.number: None,
        elsewhere.number: None,
    }


def test_a_setting_added_to_the_schema_later_is_no_change(setup) -> None:  # type: ignore[no-untyped-def]
    """A study stored by an older version (without a newer key) relaunches without --force."""
    from tunevlseg.tuning.studies import SPEC_HASH_ATTR

    storage, studies = setup
    ensure_studies(storage, studies)
    study = optuna.load_study(study_name=studies[0].name, storage=storage)
    older = dict(study.user_attrs[SPEC_ATTR])
    older["data"] = {k: v for k, v in older["data"].items() if k != "cache_dir"}
    study.set_user_attr(SPEC_ATTR, older)
    study.set_user_attr(SPEC_HASH_ATTR, "written-by-an-older-version")
    ensure_studies(storage, studies)  # no StudyConflictError
    assert load_spec(optuna.load_study(study_name=studies[0].name, storage=storage)) == studies[0]
