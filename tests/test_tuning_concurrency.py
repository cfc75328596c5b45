"""16 workers claim and finish trials in parallel against a journal file and a real PostgreSQL:
no trial lost, none run twice, the budget respected.

The workers use the real claim path of the array tasks (``claim_trial``: WAITING -> RUNNING,
owner stamps, TPE sampling with the constant liar); only the training is replaced by a cheap
function of the parameters, since the storage is what is under test.
"""

from __future__ import annotations

import multiprocessing
import random
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tunevlseg.cluster.worker import TaskOutcome, TrialTask, claim_trial
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import parse_experiment
from tunevlseg.tuning.storage import StorageURL, open_storage, parse_storage_url
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies, progress
from tunevlseg.tuning.trial_attrs import trial_attrs

WORKERS = 16
TRIALS = 40


def _worker(storage_url: str, study: str, seed: int, start: Any) -> list[int]:
    """Try to claim every trial in a random order; finish the ones this worker wins.

    Every worker opens the storage, then waits for the others (``start``, a barrier): a
    worker that started early would otherwise claim every trial before the last ones have
    imported anything, and the race under test would not happen.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(parse_storage_url(storage_url))
    start.wait(timeout=300)
    numbers = list(range(TRIALS))
    random.Random(seed).shuffle(numbers)
    won = []
    for number in numbers:
        claim = claim_trial(storage, TrialTask(storage_url, study, number))
        if isinstance(claim, TaskOutcome):
            continue
        value = -abs(claim.params["prompt_depth"] - 4) - abs(claim.params["lr"] - 1e-3)
        claim.study.tell(claim.trial, value)
        won.append(number)
    return won


def _sweep(tmp_path: Path, storage: str) -> tuple[StorageURL, str]:
    name = f"c{uuid.uuid4().hex[:8]}"
    text = (
        f"name: {name}\noutput_dir: out\nstorage: {storage}\nmodels: [clipseg]\nlearners: [coop]\n"
        f"datasets: [{{name: d, root: d}}]\nsearch: {{n_trials: {TRIALS}, n_startup_trials: 4}}\n"
    )
    experiment = parse_experiment(text, tmp_path / "c.yaml")
    spec = expand(experiment).studies[0]
    url = parse_storage_url(storage).resolved(tmp_path)
    backend = open_storage(url)
    ensure_studies(backend, [spec])
    assert enqueue_missing(backend, spec) == list(range(TRIALS))
    return url, spec.name


def _race(url: StorageURL, study: str) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(WORKERS) as pool:
        start = manager.Barrier(WORKERS)
        results = pool.starmap(_worker, [(url.url, study, seed, start) for seed in range(WORKERS)])
    claimed = [number for won in results for number in won]
    assert sorted(claimed) == list(range(TRIALS)), "a trial was lost or run twice"
    backend = open_storage(url)
    trials = optuna.load_study(study_name=study, storage=backend).trials
    assert len(trials) == TRIALS  # the budget: no trial beyond n_trials was created
    assert all(t.state == TrialState.COMPLETE for t in trials)
    wins = [len(won) for won in results]
    assert len({trial_attrs(t)["tvls.pid"] for t in trials}) > 1, wins  # really done in parallel
    assert len({(t.params["lr"], t.params["prompt_depth"]) for t in trials}) > TRIALS // 2


@pytest.mark.slow
def test_sixteen_workers_on_a_journal_file(tmp_path: Path) -> None:
    url, study = _sweep(tmp_path, f"journal://{tmp_path}/sweep.journal")
    _race(url, study)


@pytest.mark.slow
def test_sixteen_workers_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    url, study = _sweep(tmp_path, postgres_url)
    _race(url, study)
    spec_progress = progress(
        open_storage(url),
        expand(
            parse_experiment(
                f"name: {study.split('/')[0]}\noutput_dir: out\nstorage: {postgres_url}\nmodels: [clipseg]\n"
                f"learners: [coop]\ndatasets: [{{name: d, root: d}}]\n"
                f"search: {{n_trials: {TRIALS}, n_startup_trials: 4}}\n",
                tmp_path / "c.yaml",
            )
        ).studies[0],
    )
    assert (spec_progress.complete, spec_progress.to_enqueue) == (TRIALS, 0)
