"""Pruning: learning curves in the storage, the pruners as the YAML configures them, and pruned
trials that end PRUNED across processes (journal and the real PostgreSQL) and through kills.

The cross-process tests use the real claim path of the array tasks and the real epoch reporter;
only the training is replaced by known learning curves, since the storage and the pruner are
what is under test. The end-to-end tests run the real command line on the tiny models.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
from _curves import assert_curves, assert_pruned_by_other_tasks
from optuna.trial import FrozenTrial, TrialState

from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.worker import TaskOutcome, TrialTask, claim_trial
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import load_experiment, parse_experiment
from tunevlseg.config.schema import SearchSettings
from tunevlseg.failpoints import ENV
from tunevlseg.train.fit import EpochEnd
from tunevlseg.tuning.pruners import VAL_IMAGES_ATTR, build_pruner
from tunevlseg.tuning.pruning import EpochReporter, TrialPrunedAt, end_pruned
from tunevlseg.tuning.storage import StorageURL, open_storage, parse_storage_url
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies
from tunevlseg.tuning.trial_attrs import RESULT_ATTR, trial_attrs


def _study(pruner: Any, name: str = "s") -> optuna.Study:
    return optuna.create_study(direction="maximize", pruner=pruner, study_name=name)


def _end(epoch: int, value: float, **kwargs: Any) -> EpochEnd:
    return EpochEnd(epoch, {"val_dice": value, "val_iou": value, "val_loss": 1 - value}, **kwargs)


# -- the pruners as configured ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["asha", "hyperband"])
def test_resource_based_pruners_prune_before_any_trial_completes(name: str) -> None:
    """Resources come from the YAML, not from a first complete trial in this process: a task
    is its own process and would otherwise prune nothing until one of its own trials ended."""
    settings = SearchSettings(
        pruner={"name": name, "min_resource": 1, "reduction_factor": 2}
    ).pruner
    study = _study(build_pruner(settings, max_epochs=8))
    decisions = []
    for value in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2):  # each worse than all before it
        trial = study.ask()
        pruned = False
        for step in range(1, 9):
            trial.report(value, step)
            if pruned := trial.should_prune():
                break
        decisions.append(pruned)
    assert not any(t.state == TrialState.COMPLETE for t in study.trials)
    assert decisions[0] is False  # the first to reach a rung goes on
    assert any(decisions), decisions  # worse ones are stopped (Hyperband: within a bracket)


def test_wilcoxon_pairs_per_image_scores_with_the_best_trial() -> None:
    settings = SearchSettings(
        pruner={"name": "wilcoxon", "p_threshold": 0.1, "n_warmup_epochs": 1}
    ).pruner
    study = _study(build_pruner(settings, max_epochs=10))
    rng = random.Random(0)
    best_images = [0.7 + 0.2 * rng.random() for _ in range(30)]
    best = study.ask()
    best.report(0.8, 1)
    best.set_user_attr(VAL_IMAGES_ATTR, best_images)
    study.tell(best, 0.8)

    def running(images: list[float], epochs: int) -> bool:
        trial = study.ask()
        for step in range(1, epochs + 1):
            trial.report(sum(images) / len(images), step)
        trial.set_user_attr(VAL_IMAGES_ATTR, images)
        return trial.should_prune()

    worse = [v - 0.3 for v in best_images]
    assert running(worse, epochs=2) is True  # worse on every image
    assert running(worse, epochs=1) is False  # still in its warm-up epoch
    close = [v + rng.uniform(-0.05, 0.05) for v in best_images]
    assert running(close, epochs=2) is False  # no significant difference
    assert running(worse[:10], epochs=2) is False  # images that do not pair: never judged


# -- the epoch reporter --------------------------------------------------------------------------


def test_reports_are_idempotent_and_a_requeued_trial_gets_the_whole_curve() -> None:
    study = _study(optuna.pruners.NopPruner())
    first = study.ask()
    reporter = EpochReporter(first, "val_dice")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns about a step reported twice
        reporter(_end(0, 0.3))
        reporter(_end(1, 0.5))
        resumed = EpochReporter(optuna.Trial(study, first._trial_id), "val_dice")
        resumed(_end(0, 0.31, replayed=True))  # a resume replays the earlier epochs
        resumed(_end(1, 0.51, replayed=True))
        resumed(_end(2, 0.6))
    assert study.trials[0].intermediate_values == {1: 0.3, 2: 0.5, 3: 0.6}

    rerun = study.ask()  # a re-queued trial is a new Optuna trial: the replay fills its curve
    reporter = EpochReporter(rerun, "val_dice")
    reporter(_end(0, 0.3, replayed=True))
    reporter(_end(1, 0.5, replayed=True))
    reporter(_end(2, 0.6))
    assert study.trials[1].intermediate_values == {1: 0.3, 2: 0.5, 3: 0.6}


def test_per_image_scores_are_stored_only_for_the_wilcoxon_pruner() -> None:
    study = _study(optuna.pruners.NopPruner())
    images = {"dice": [0.123456, 0.5], "iou": [0.1, 0.4]}
    plain, paired = study.ask(), study.ask()
    EpochReporter(plain, "val_dice")(_end(0, 0.3, val_images=images))
    EpochReporter(paired, "val_iou", per_image="iou")(_end(0, 0.3, val_images=images))
    assert VAL_IMAGES_ATTR not in study.trials[0].user_attrs
    assert study.trials[1].user_attrs[VAL_IMAGES_ATTR] == [0.1, 0.4]


def test_the_last_epoch_is_reported_but_never_pruned() -> None:
    study = _study(optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    EpochReporter(study.ask(), "val_dice")(_end(0, 0.9))
    bad = study.ask()
    EpochReporter(bad, "val_dice")(_end(0, 0.1, last=True))  # trained fully: kept
    assert study.trials[1].intermediate_values == {1: 0.1}
    with pytest.raises(TrialPrunedAt):
        EpochReporter(study.ask(), "val_dice")(_end(0, 0.1))


def test_a_pruned_trial_ends_pruned_with_its_last_value_and_epochs() -> None:
    study = _study(optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    good = study.ask()
    EpochReporter(good, "val_dice")(_end(0, 0.9))
    bad = study.ask()
    reporter = EpochReporter(bad, "val_dice")
    with pytest.raises(TrialPrunedAt) as pruned:
        reporter(_end(0, 0.1))
    assert pruned.value.curve == {1: 0.1} and pruned.value.epochs == 1
    end_pruned(study, bad, reporter, pruned.value)
    frozen = study.trials[1]
    assert frozen.state == TrialState.PRUNED and frozen.value == 0.1
    assert frozen.user_attrs["epochs_run"] == 1


# -- several processes on one storage ------------------------------------------------------------

WORKERS = 6
TRIALS = 24
EPOCHS = 9


def _final_dice(lr: float) -> float:
    """Known final Dice: best at lr = 1e-3, falling off a decade either way."""
    return 0.9 - 0.25 * (math.log10(lr) + 3) ** 2


def _curve(lr: float, epoch: int) -> float:
    return _final_dice(lr) * (1 - math.exp(-(epoch + 1) / 2))


def _worker(storage_url: str, study: str, seed: int, start: Any) -> list[int]:
    """Claim trials in a random order; "train" each with its known curve, reporting every epoch."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(parse_storage_url(storage_url))
    numbers = list(range(TRIALS))
    random.Random(seed).shuffle(numbers)
    start.wait(timeout=300)
    won = []
    for number in numbers:
        claim = claim_trial(storage, TrialTask(storage_url, study, number))
        if isinstance(claim, TaskOutcome):
            continue
        won.append(number)
        reporter = EpochReporter(claim.trial, "val_dice")
        curve = [_curve(claim.params["lr"], epoch) for epoch in range(EPOCHS)]
        try:
            for epoch, value in enumerate(curve):
                time.sleep(0.02)  # an epoch: lets the other workers' reports interleave
                reporter(_end(epoch, value, last=epoch + 1 == EPOCHS))
        except TrialPrunedAt as pruned:
            end_pruned(claim.study, claim.trial, reporter, pruned)
            continue
        claim.trial.set_user_attr(RESULT_ATTR, {"epochs_run": EPOCHS})
        claim.study.tell(claim.trial, max(curve))
    return won


def _sweep(tmp_path: Path, storage: str) -> tuple[StorageURL, str]:
    name = f"p{uuid.uuid4().hex[:8]}"
    text = (
        f"name: {name}\noutput_dir: out\nstorage: {storage}\nmodels: [clipseg]\nlearners: [coop]\n"
        f"datasets: [{{name: d, root: d}}]\ntraining: {{max_epochs: {EPOCHS}}}\n"
        f"search: {{n_trials: {TRIALS}, n_startup_trials: 4, space: {{lr: {{low: 1.0e-5, high: 1.0e-1}}}},"
        " pruner: {name: asha, min_resource: 1, reduction_factor: 3}}\n"
    )
    spec = expand(parse_experiment(text, tmp_path / "p.yaml")).studies[0]
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
    assert sorted(n for won in results for n in won) == list(range(TRIALS)), (
        "a trial lost or run twice"
    )
    trials = optuna.load_study(study_name=study, storage=open_storage(url)).trials
    assert len(trials) == TRIALS
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({trial_attrs(t)["tvls.pid"] for t in trials}) > 1  # really done in parallel
    assert assert_pruned_by_other_tasks(trials) >= 3
    for trial in trials:  # whole curves; a pruned trial's value is its last point
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and steps
        if trial.state == TrialState.PRUNED:
            assert trial.value == trial.intermediate_values[steps[-1]]
            assert trial.user_attrs["epochs_run"] == steps[-1] < EPOCHS
    spent = sum(max(t.intermediate_values) for t in trials)
    assert spent < TRIALS * EPOCHS  # epochs were saved
    best = max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert best > _final_dice(1e-3) - 0.25  # the search still found a good region


@pytest.mark.slow
def test_workers_prune_each_others_trials_on_a_journal_file(tmp_path: Path) -> None:
    _race(*_sweep(tmp_path, f"journal://{tmp_path}/sweep.journal"))


@pytest.mark.slow
def test_workers_prune_each_others_trials_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    _race(*_sweep(tmp_path, postgres_url))


# -- end to end on the tiny models ---------------------------------------------------------------

SWEEP = """\
name: {name}
output_dir: ../runs/{name}
models:
  - {{name: clipseg, pretrained: ../runs/assets/clipseg-tiny, image_size: 96, synthetic: true}}
learners: [coop]
datasets:
  - {{name: synth, root: ../runs/assets/synth, synthetic: true}}
data: {{num_workers: 0}}
training: {{max_epochs: 3, patience: 3, batch_size: 8, effective_batch_size: 8, precision: "32"}}
search: {{n_trials: 1, n_startup_trials: 1, pruner: {pruner}}}
cluster: {{parallelism: 1}}
"""
# With bootstrap_count 1, ASHA stops the first trial that reaches a rung, since a task cannot
# wait for others to get there: a pruned trial on demand, whatever the model learns.
PRUNE_AT_ONCE = "{name: asha, min_resource: 1, bootstrap_count: 1}"


def _experiment(folder: Path, name: str, pruner: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(SWEEP.format(name=name, pruner=pruner))
    return path


def _launch(experiment: Path, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoint:
        env[ENV] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.launch", str(experiment), "--local"],
        cwd=experiment.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _trials(experiment: Path) -> list[FrozenTrial]:
    loaded = load_experiment(experiment)
    spec = expand(loaded).studies[0]
    return optuna.load_study(
        study_name=spec.name, storage=open_storage(sweep_storage(loaded))
    ).trials


@pytest.mark.slow
def test_a_pruned_trial_keeps_its_curve_and_no_checkpoint_and_is_reported(tmp_path: Path) -> None:
    experiment = _experiment(tmp_path / "exp", "pruned", PRUNE_AT_ONCE)
    run = _launch(experiment)
    assert run.returncode == 0, run.stderr[-3000:]
    (trial,) = _trials(experiment)
    assert trial.state == TrialState.PRUNED and trial.intermediate_values.keys() == {1}
    assert_curves([trial])
    # A handful of user attributes, not one per result key.
    assert set(trial.user_attrs) == {"tvls.claim", "tvls.identity_sha256", "epochs_run"}

    status = subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.status", str(experiment), "--json"],
        cwd=experiment.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    totals = json.loads(status.stdout)["totals"]
    assert totals["pruned"] == 1 and totals["remaining"] == 0
    rows = (
        load_experiment(experiment).output_dir / "pruned" / "results" / "trial_states.csv"
    ).read_text()
    header, study_row = rows.splitlines()[:2]
    record = dict(zip(header.split(","), study_row.split(","), strict=True))
    assert record["pruned"] == "1" and record["epochs_trained"] == "1"
    assert record["epochs_saved"] == "2"  # max_epochs 3 (no complete trial yet) - 1

    again = _launch(experiment)
    assert again.returncode == 0 and "The sweep is complete" in again.stderr


@pytest.mark.slow
def test_a_kill_between_marking_the_folder_and_telling_the_study_ends_pruned(
    tmp_path: Path,
) -> None:
    experiment = _experiment(tmp_path / "exp", "marked", PRUNE_AT_ONCE)
    _launch(experiment, failpoint="pruned-marked")  # killed: the launch reports the lost task
    (killed,) = _trials(experiment)
    assert killed.state == TrialState.RUNNING and killed.intermediate_values.keys() == {1}
    run_dir = Path(trial_attrs(killed)["tvls.run_dir"])
    assert (run_dir / "pruned.json").is_file() and not (run_dir / "checkpoints").exists()

    again = _launch(experiment)
    assert again.returncode == 0, again.stderr[-3000:]
    first, rerun = _trials(experiment)
    assert first.state == TrialState.FAIL and rerun.state == TrialState.PRUNED
    assert rerun.intermediate_values == killed.intermediate_values  # from pruned.json
    assert rerun.value == killed.intermediate_values[1] and rerun.params == killed.params
    assert_curves([rerun])
    assert [p.name for p in (run_dir / "logs").iterdir()] == ["version_0"]  # not trained again


@pytest.mark.slow
def test_an_epoch_checkpointed_but_not_reported_is_reported_on_resume(tmp_path: Path) -> None:
    experiment = _experiment(tmp_path / "exp", "unreported", "none")
    _launch(experiment, failpoint="epoch-checkpointed")
    (killed,) = _trials(experiment)
    assert killed.state == TrialState.RUNNING and not killed.intermediate_values

    again = _launch(experiment)
    assert again.returncode == 0, again.stderr[-3000:]
    first, rerun = _trials(experiment)
    assert first.state == TrialState.FAIL and rerun.state == TrialState.COMPLETE
    attrs = trial_attrs(rerun)
    assert attrs["resumed_from_epoch"] == 1  # epoch 0 was not trained again...
    assert sorted(rerun.intermediate_values) == [1, 2, 3]  # ...but it is on the curve
    assert_curves([rerun])


def test_tpe_learns_from_pruned_trials(tmp_path: Path) -> None:
    """A study whose trials were all pruned still steers the sampler: TPE ranks pruned trials
    by how far they got and their last value, so the region that survived longer is sampled
    more. (Had they been ignored, TPE would still sample at random.)"""
    from optuna.distributions import FloatDistribution

    from tunevlseg.tuning.studies import make_sampler

    spec = expand(
        parse_experiment(
            "name: t\noutput_dir: out\nmodels: [clipseg]\nlearners: [coop]\ndatasets: [{name: d, root: d}]\n"
            "search: {n_trials: 60, n_startup_trials: 5}\n",
            tmp_path / "t.yaml",
        )
    ).studies[0]
    study = optuna.create_study(direction="maximize")
    x = FloatDistribution(0.0, 1.0)
    rng = random.Random(0)
    for _ in range(30):
        value = rng.random()
        good = 0.8 <= value <= 0.9  # survived 5 epochs with a good curve; the rest stopped at 1
        steps = dict.fromkeys(range(1, 6), 0.8) if good else {1: 0.1}
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.PRUNED,
                value=steps[max(steps)],
                params={"x": value},
                distributions={"x": x},
                intermediate_values=steps,
            )
        )
    assert not [t for t in study.trials if t.state == TrialState.COMPLETE]
    samples = []
    for number in range(40):
        study.sampler = make_sampler(spec, number)
        trial = study.ask({"x": x})
        samples.append(trial.params["x"])
        study.tell(trial, state=TrialState.FAIL)
    near = sum(0.7 <= s <= 1.0 for s in samples) / len(samples)
    assert near > 0.6, near  # uniform sampling would put 30 % there
