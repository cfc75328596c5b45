"""Seconds the collector needs for a large sweep stored in a journal file.

Builds a journal with ``--studies`` studies (default 1,000) of ``--trials`` trials each (default
20) through Optuna's storage API: each study gets the resolved spec a launch stores, and each trial
is written through the same storage operations as in a real sweep (enqueue, claim, owner stamps,
parameters, result attributes, tell; about 24 journal lines per trial, see
``write_like_workers``). About 5 % of the trials are failed, 2 % pruned, and the last study's last trials
are running or waiting (a partial sweep). Then it times the collector on that journal, as
``tvls-collect`` runs it: opening the storage, reading every study, building every table and
writing every format and plot.

Usage::

    python benchmarks/collector.py [--studies 1000] [--trials 20] [--workdir DIR]
        [--formats md,latex,csv,html] [--no-plots] [--profile]

Prints the build time, then three collector runs (wall and CPU seconds, and seconds per stage):
without hyperparameter importances (``--no-importance``) and with them, both on the bare journal
(a full replay, which also writes the journal's snapshot, see
:mod:`tunevlseg.tuning.journal_snapshot`), then with the snapshot the run before left, as a
sweep's tasks and ``tvls-status`` leave it for the collector. The first run of a process also
pays matplotlib's start-up (about 1 s).
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend

from tunevlseg.config.grid import StudySpec, expand
from tunevlseg.config.loader import parse_experiment
from tunevlseg.config.spaces import ParamSpace
from tunevlseg.tuning.journal_snapshot import snapshot_path
from tunevlseg.tuning.storage import StorageURL
from tunevlseg.tuning.studies import SPEC_ATTR, SPEC_HASH_ATTR, spec_hash

LEARNERS = ["coop", "cocoop", "vpt", "maple", "shared_separate", "shared_attention"]
CATEGORIES = ["Non-Radiology", "Radiology", "Open Domain", "Other"]


def sweep_specs(n_studies: int, n_trials: int) -> list[StudySpec]:
    """``n_studies`` studies of the paper's 8 model-learner combinations over many data sets."""
    n_datasets = math.ceil(n_studies / 8)
    datasets = "\n".join(
        f"  - {{name: set{i:03d}, category: {CATEGORIES[i % 4]}, root: d{i}}}"
        for i in range(n_datasets)
    )
    text = (
        "name: bench\noutput_dir: out\nmodels: [clipseg, cris]\n"
        f"learners: [{', '.join(LEARNERS)}]\ndatasets:\n{datasets}\n"
        f"search: {{n_trials: {n_trials}}}\ncluster: {{slurm: {{gpus: 1}}}}\n"
    )
    experiment = parse_experiment(text, Path(tempfile.gettempdir()) / "bench.yaml")
    return expand(experiment).studies[:n_studies]


def _distribution(space: ParamSpace) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if space.kind == "choice":
        return CategoricalDistribution(list(space.choices))
    if space.kind == "int":
        return IntDistribution(int(space.low or 0), int(space.high or 0), log=space.log)
    return FloatDistribution(float(space.low or 0), float(space.high or 0), log=space.log)


def _sample(space: ParamSpace, rng: random.Random) -> Any:
    if space.kind == "choice":
        return rng.choice(space.choices)
    low, high = float(space.low or 0), float(space.high or 0)
    if space.kind == "int":
        return rng.randint(int(low), int(high))
    if space.log:
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def make_trials(spec: StudySpec, n_trials: int, rng: random.Random, partial: bool) -> list[Any]:
    """Finished trials with a worker's user attributes (the last study may be partial)."""
    from optuna.trial import TrialState, create_trial

    spaces = {k: v for k, v in spec.param_space.items() if not v.is_fixed}
    distributions = {name: _distribution(space) for name, space in spaces.items()}
    trials = []
    for number in range(n_trials):
        params = {name: _sample(space, rng) for name, space in spaces.items()}
        roll = rng.random()
        state = (
            TrialState.FAIL
            if roll < 0.05
            else TrialState.PRUNED
            if roll < 0.07
            else TrialState.COMPLETE
        )
        if partial and number >= n_trials - 2:
            state = TrialState.RUNNING if number == n_trials - 2 else TrialState.WAITING
        depth = params.get("prompt_depth", 6)
        val = min(1.0, 0.5 + 0.02 * depth + rng.uniform(0, 0.2))
        attrs: dict[str, Any] = {  # the owner stamps of tunevlseg.cluster.worker.claim_trial
            "tvls.host": f"gpu{number % 16:03d}",
            "tvls.pid": 10_000 + number,
            "tvls.lineage": number,
            "tvls.run_dir": f"/scratch/sweeps/bench/studies/{spec.folder}/trial-{number:04d}",
            "tvls.slurm_job_id": str(1000 + number),
            "tvls.slurm_array_task_id": str(number),
            "tvls.slurm_restart_count": 0,
            "tvls.started_at": 1.7e9 + number * 600,
        }
        if state == TrialState.COMPLETE:
            attrs.update(
                test_dice=val - rng.uniform(0, 0.05),
                test_iou=val - 0.1,
                val_dice=val,
                val_iou=val - 0.1,
                epochs_run=rng.randint(10, 200),
                best_epoch=rng.randint(0, 10),
                wall_time_s=rng.uniform(600, 3600),
                trainable_params=1000 * depth,
                total_params=150_000_000,
                resumed_from_epoch=None,
                **{"tvls.task_seconds": rng.uniform(700, 3700)},
            )
        trials.append(
            create_trial(
                state=state,
                value=val if state == TrialState.COMPLETE else None,
                params=params if state != TrialState.WAITING else {},
                distributions=distributions if state != TrialState.WAITING else {},
                user_attrs=attrs,
            )
        )
    return trials


class BufferedBackend(BaseJournalBackend):
    """A journal backend that keeps the log in memory until ``flush`` writes it in one append.

    Writing through the file backend takes the file lock and appends once per operation (about
    60 s for 20,000 trials); the same operations buffered and appended in one call give the same
    journal in a few seconds.
    """

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.logs.extend(logs)

    def flush(self, path: Path) -> None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        JournalFileBackend(str(path), JournalFileOpenLock(str(path))).append_logs(self.logs)


LAYOUTS = ("flat", "bundled")
"""How a worker writes a trial: ``flat`` (before learning curves: one user attribute per key,
no intermediate values) or ``bundled`` (now: the claim and the result as one attribute each,
see :mod:`tunevlseg.tuning.trial_attrs`, and one intermediate value per epoch trained)."""


def write_like_workers(
    storage: Any, study_id: int, trials: list[Any], layout: str = "bundled"
) -> None:
    """Store ``trials`` through the operations a sweep performs, one journal line each.

    The launcher enqueues a WAITING trial; its task claims it (RUNNING), stamps its owner,
    samples each parameter, (``bundled``) reports each epoch's objective, records the result,
    and tells the state and value. ``study.add_trials`` would store a trial in one line instead,
    which makes a journal much shorter than a real sweep's and its replay much faster.
    """
    from optuna.trial import TrialState, create_trial

    from tunevlseg.tuning.trial_attrs import CLAIM_ATTR, RESULT_ATTR

    for trial in trials:
        trial_id = storage.create_new_trial(study_id, create_trial(state=TrialState.WAITING))
        if trial.state == TrialState.WAITING:
            continue
        storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        owner = {
            k: v
            for k, v in trial.user_attrs.items()
            if k.startswith("tvls.") and k != "tvls.task_seconds"
        }
        result = {k: v for k, v in trial.user_attrs.items() if k not in owner}
        if layout == "flat":
            for key, value in owner.items():
                storage.set_trial_user_attr(trial_id, key, value)
        else:
            storage.set_trial_user_attr(trial_id, CLAIM_ATTR, owner)
        for name, value in trial.params.items():
            distribution = trial.distributions[name]
            storage.set_trial_param(
                trial_id, name, distribution.to_internal_repr(value), distribution
            )
        if layout == "flat":
            for key, value in result.items():
                storage.set_trial_user_attr(trial_id, key, value)
        else:
            storage.set_trial_user_attr(trial_id, "tvls.identity_sha256", "0" * 64)
            for step in range(1, _epochs(trial) + 1):
                storage.set_trial_intermediate_value(trial_id, step, trial.value or 0.5)
            if result:
                storage.set_trial_user_attr(trial_id, RESULT_ATTR, result)
        if trial.state != TrialState.RUNNING:
            values = None if trial.value is None else [trial.value]
            if trial.state == TrialState.PRUNED and layout == "bundled":
                values = [trial.value or 0.5]
            storage.set_trial_state_values(trial_id, trial.state, values)


def _epochs(trial: Any) -> int:
    """Epochs a trial reports: its ``epochs_run``, a few for a pruned one, none if it failed."""
    from optuna.trial import TrialState

    if trial.state == TrialState.PRUNED:
        return 3
    return int(trial.user_attrs.get("epochs_run", 0))


def build_journal(
    path: Path, n_studies: int, n_trials: int, seed: int = 0, layout: str = "bundled"
) -> int:
    """Write the benchmark sweep into a new journal file; returns the number of trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    buffer = BufferedBackend()
    storage = optuna.storages.JournalStorage(buffer)
    rng = random.Random(seed)
    specs = sweep_specs(n_studies, n_trials)
    total = 0
    for index, spec in enumerate(specs):
        study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize")
        study.set_user_attr(SPEC_ATTR, spec.to_attrs())
        study.set_user_attr(SPEC_HASH_ATTR, spec_hash(spec))
        trials = make_trials(spec, n_trials, rng, partial=index == len(specs) - 1)
        write_like_workers(storage, study._study_id, trials, layout)
        total += len(trials)
    buffer.flush(path)
    return total


def time_collector(
    path: Path, out: Path, formats: tuple[str, ...], plots: bool, importance: bool = True
) -> tuple[float, float, dict[str, float], int]:
    """(wall seconds, CPU seconds, wall seconds per stage, studies) of one collector run."""
    from tunevlseg.collect.report import write_sweep_reports

    started, cpu = time.perf_counter(), time.process_time()
    report = write_sweep_reports(
        StorageURL("journal", f"journal://{path}", path),
        "bench",
        out,
        formats=formats,
        plots=plots,
        importance=importance,
    )
    return (
        time.perf_counter() - started,
        time.process_time() - cpu,
        report.timings,
        report.n_studies,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workdir", type=Path, help="keep the journal and outputs here")
    parser.add_argument("--formats", default="md,latex,csv,html")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tvls-bench-collector-"))
    workdir.mkdir(parents=True, exist_ok=True)
    journal = workdir / "bench.journal"
    if journal.exists():
        journal.unlink()
    try:
        started = time.perf_counter()
        n = build_journal(journal, args.studies, args.trials)
        build = time.perf_counter() - started
        size = journal.stat().st_size / 1e6
        print(f"build: {args.studies} studies, {n} trials, {size:.1f} MB journal in {build:.1f} s")
        formats = tuple(f for f in args.formats.split(",") if f)
        plots = not args.no_plots
        runs = [  # (label, importance, keep the journal's snapshot from the run before)
            ("cold (no snapshot), no importance", False, False),
            ("cold (no snapshot), with importance", True, False),
            ("with the snapshot left by the run before, with importance", True, True),
        ]
        for label, importance, keep_snapshot in runs:
            if not keep_snapshot:
                snapshot_path(journal).unlink(missing_ok=True)
            if args.profile:
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                profiler.enable()
            wall, cpu, stages, studies = time_collector(
                journal, workdir / "results", formats, plots, importance
            )
            if args.profile:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            detail = ", ".join(f"{stage} {value:.2f}" for stage, value in stages.items())
            print(
                f"collect {label}: {studies} studies in {wall:.2f} s wall, {cpu:.2f} s CPU ({detail})"
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
