"""Trials per second through the real claim path, with 4, 8 and 16 worker processes per storage.

For each storage (journal file, SQLite, PostgreSQL) and each worker count, a fresh study (CoOp
search space, TPE with ``n_startup_trials: 4``) gets ``--trials`` WAITING trials, as a launch
enqueues them. Then W spawned worker processes, started together behind a barrier (their
interpreter start-up, imports and storage opening are not timed), each run:
``tunevlseg.cluster.worker.claim_trial`` (read, WAITING -> RUNNING, owner stamps, TPE sampling
with the constant liar) and ``study.tell`` of a cheap value in place of training.

Two ways of handing out trial numbers:

* ``tasks``: each trial number goes to exactly one worker (number % W), as array tasks get
  theirs: the throughput figure;
* ``race``: every worker tries every trial in its own random order (the worst-case contention
  of requeued or duplicated tasks), as tests/test_tuning_concurrency.py does; run with the
  largest worker count only.

Reported: trials/s (trials / wall time from the barrier to the last worker's end), and lost /
duplicated trials (numbers no worker finished / finished by more than one), trials beyond the
budget, and trials not COMPLETE in the storage afterwards: all must be 0.

PostgreSQL: ``--postgres URL`` (password in PGPASSWORD), default
``postgresql://tvls@127.0.0.1:5432/tvls`` (postgres/up.sh); skipped with ``--no-postgres``.

Reproduce::

    PGPASSWORD=tvls-dev .venv/bin/python benchmarks/storage.py [--trials 48] [--no-postgres]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any


def _worker(url: str, study: str, numbers: list[int], barrier: Any, out: Any) -> None:
    import optuna

    from tunevlseg.cluster.worker import TaskOutcome, TrialTask, claim_trial
    from tunevlseg.tuning.storage import open_storage, parse_storage_url

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(parse_storage_url(url))
    storage.get_all_studies()  # connect before the clock starts
    won, errors = [], []
    barrier.wait()
    for number in numbers:
        try:
            claim = claim_trial(storage, TrialTask(url, study, number))
        except Exception as error:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(error).__name__}: {error}"[:200])
            continue
        if isinstance(claim, TaskOutcome):
            continue
        value = -abs(claim.params["prompt_depth"] - 4) - abs(claim.params["lr"] - 1e-3)
        won.append(number)  # claimed: if another worker also claimed it, that is a duplicate
        try:
            claim.study.tell(claim.trial, value)
        except Exception as error:  # noqa: BLE001 - e.g. "Cannot tell a COMPLETE trial"
            errors.append(f"trial {number}: {type(error).__name__}: {error}"[:200])
    out.put((os.getpid(), time.time(), won, errors))


def _study(work: Path, storage: str, n_trials: int) -> tuple[Any, str]:
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import parse_experiment
    from tunevlseg.tuning.storage import open_storage, parse_storage_url
    from tunevlseg.tuning.studies import enqueue_missing, ensure_studies

    name = f"b{uuid.uuid4().hex[:8]}"
    text = (
        f"name: {name}\noutput_dir: out\nstorage: {storage}\nmodels: [clipseg]\nlearners: [coop]\n"
        f"datasets: [{{name: d, root: d}}]\nsearch: {{n_trials: {n_trials}, n_startup_trials: 4}}\n"
    )
    spec = expand(parse_experiment(text, work / "b.yaml")).studies[0]
    url = parse_storage_url(storage).resolved(work)
    backend = open_storage(url)
    ensure_studies(backend, [spec])
    assert enqueue_missing(backend, spec) == list(range(n_trials))
    return url, spec.name


def run_one(
    kind: str, storage: str, workers: int, n_trials: int, mode: str, work: Path
) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.tuning.storage import open_storage

    url, study = _study(work, storage, n_trials)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    out = ctx.Queue()
    if mode == "tasks":
        shares = [list(range(i, n_trials, workers)) for i in range(workers)]
    else:
        shares = []
        for seed in range(workers):
            numbers = list(range(n_trials))
            random.Random(seed).shuffle(numbers)
            shares.append(numbers)
    procs = [
        ctx.Process(target=_worker, args=(url.url, study, shares[i], barrier, out))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    barrier.wait()
    start = time.time()
    results = [out.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
    wall = max(end for _, end, _, _ in results) - start
    finished = Counter(n for _, _, won, _ in results for n in won)
    errors = [e for *_, errs in results for e in errs]
    trials = optuna.load_study(study_name=study, storage=open_storage(url)).trials
    row = {
        "storage": kind,
        "workers": workers,
        "mode": mode,
        "trials": n_trials,
        "wall_s": wall,
        "trials_per_s": n_trials / wall,
        "lost": sum(1 for n in range(n_trials) if n not in finished),
        "duplicated": sum(1 for c in finished.values() if c > 1),
        "over_budget": max(0, len(trials) - n_trials),
        "not_complete": sum(1 for t in trials if t.state != TrialState.COMPLETE),
        "errors": len(errors),
        "workers_that_won": sum(1 for *_, won, _ in results if won),
    }
    if errors:
        row["first_error"] = errors[0]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--workers", default="4,8,16")
    p.add_argument("--modes", default="tasks,race")
    p.add_argument("--kinds", default="journal,sqlite,postgresql")
    p.add_argument(
        "--postgres",
        default=os.environ.get("TVLS_TEST_POSTGRES", "postgresql://tvls@127.0.0.1:5432/tvls"),
    )
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"nproc {os.cpu_count()}, load {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="tvls-storage-"))
    kinds = [k for k in args.kinds.split(",") if not (k == "postgresql" and args.no_postgres)]
    print(
        f"{'storage':10s} {'mode':5s} {'W':>3s} {'trials':>6s} {'wall s':>7s} {'trials/s':>8s} "
        f"{'lost':>4s} {'dup':>4s} {'over':>4s} {'!done':>5s} {'errs':>4s} {'winners':>7s}"
    )
    try:
        for mode in args.modes.split(","):
            counts = [int(w) for w in args.workers.split(",")]
            for workers in counts if mode == "tasks" else counts[-1:]:  # race: the largest only
                for kind in kinds:
                    storage = {
                        "journal": f"journal://{work}/{kind}-{mode}-{workers}.journal",
                        "sqlite": f"sqlite:///{work}/{kind}-{mode}-{workers}.db",
                        "postgresql": args.postgres,
                    }[kind]
                    r = run_one(kind, storage, workers, args.trials, mode, work)
                    print(
                        f"{r['storage']:10s} {mode:5s} {workers:3d} {r['trials']:6d} {r['wall_s']:7.2f} "
                        f"{r['trials_per_s']:8.1f} {r['lost']:4d} {r['duplicated']:4d} "
                        f"{r['over_budget']:4d} {r['not_complete']:5d} {r['errors']:4d} "
                        f"{r['workers_that_won']:7d}"
                        + (f"  first error: {r['first_error']}" if r["errors"] else ""),
                        flush=True,
                    )
        print(f"load after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
