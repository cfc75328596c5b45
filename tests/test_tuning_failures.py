"""Failed trials in a real journal storage: errors counted once, infrastructure failures re-run
with their parameters, a study stopped by repeated errors, ``--retry-failed``, and recovery that
can be repeated after a kill at any step without making two re-runs."""

from __future__ import annotations

import errno
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunevlseg.config.grid import StudySpec, expand
from tunevlseg.config.loader import parse_experiment
from tunevlseg.tuning import failures, recovery
from tunevlseg.tuning.storage import default_storage, open_storage
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies, progress

TEXT = """\
name: f
output_dir: out
models: [clipseg]
learners: [coop]
datasets: [{name: d, root: data}]
search: {n_trials: 4, max_retries: 1, max_failures: 2}
"""


@pytest.fixture
def study(tmp_path: Path) -> tuple[optuna.Study, StudySpec]:
    spec = expand(parse_experiment(TEXT, tmp_path / "f.yaml")).studies[0]
    storage = open_storage(default_storage(tmp_path))
    ensure_studies(storage, [spec])
    return optuna.load_study(study_name=spec.name, storage=storage), spec


def _fail_with_error(study: optuna.Study, reason: str) -> optuna.Trial:
    """What the worker records for an error of the trial's own (see worker._record_failure)."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.set_user_attr(recovery.FAILURE_ATTR, reason)
    trial.set_user_attr(failures.KIND_ATTR, "error")
    trial.set_user_attr(failures.FINAL_ATTR, True)
    study.tell(trial, state=TrialState.FAIL)
    return trial


def test_an_error_takes_its_place_in_the_budget(study) -> None:  # type: ignore[no-untyped-def]
    optuna_study, spec = study
    _fail_with_error(optuna_study, "ValueError: bad mask")
    state = progress(optuna_study._storage, spec)
    assert (state.failed, state.done, state.remaining, state.to_enqueue) == (1, 1, 3, 3)
    assert state.stopped is None
    assert len(enqueue_missing(optuna_study._storage, spec)) == 3  # not 4: no fresh trial for it


def test_repeated_errors_stop_the_study_until_retry_failed(study) -> None:  # type: ignore[no-untyped-def]
    optuna_study, spec = study
    first = _fail_with_error(optuna_study, "ValueError: bad mask\n")
    _fail_with_error(optuna_study, "Traceback ...\nValueError: bad mask in 7.png")
    state = progress(optuna_study._storage, spec)
    assert state.stopped is not None
    assert "2 trials failed with errors" in state.stopped and "bad mask in 7.png" in state.stopped
    assert state.to_enqueue == 0
    assert enqueue_missing(optuna_study._storage, spec) == []  # nothing new, nothing run

    actions = recovery.retry_failed(optuna_study._storage, spec)
    assert len(actions) == 2 and "re-queued as trial" in actions[0]
    assert recovery.retry_failed(optuna_study._storage, spec) == []  # once per failed trial
    state = progress(optuna_study._storage, spec)
    assert state.stopped is None and state.failed == 0 and state.waiting == 2
    rerun = optuna_study.trials[2]
    assert rerun.system_attrs["fixed_params"] == {"lr": first.params["lr"]}
    assert rerun.user_attrs[recovery.LINEAGE_ATTR] == first.number


def _running(study: optuna.Study, attempt: int = 1) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.set_user_attr(recovery.ATTEMPT_ATTR, attempt)
    return study._storage.get_trial(trial._trial_id)


def test_requeue_after_a_kill_half_way_makes_one_rerun(study) -> None:  # type: ignore[no-untyped-def]
    """A launch killed after enqueueing the re-run but before failing the trial: the next one
    finds the trial RUNNING again, and must not add a second re-run of the same folder."""
    optuna_study, spec = study
    trial = _running(optuna_study)
    first = recovery.enqueue_rerun(optuna_study, trial, 2)  # ... and the launch dies here
    line = recovery.fail_and_requeue(optuna_study, trial, "task gone", spec.search.max_retries)
    assert f"re-queued as trial {first}" in line
    states = [t.state for t in optuna_study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]


def test_infrastructure_failures_are_told_apart() -> None:
    assert failures.is_infrastructure(MemoryError())
    assert failures.is_infrastructure(OSError(errno.ENOSPC, "No space left on device"))
    assert failures.is_infrastructure(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    wrapped = RuntimeError("while telling")
    wrapped.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert failures.is_infrastructure(wrapped)
    assert not failures.is_infrastructure(FileNotFoundError(errno.ENOENT, "no such file", "x.png"))
    assert not failures.is_infrastructure(ValueError("prompt_key 'p9' missing"))
    assert not failures.is_infrastructure(KeyError("p9"))
