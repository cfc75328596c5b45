"""Slot utilisation and makespan of the pull-worker arrays against a batch-synchronous baseline.

On the local SLURM cluster (slurm/up.sh: one node, 2 CPUs, so N = 2 task slots at 1 CPU per
task), ``--trials`` trials (default 20) whose "training" sleeps for a duration drawn from a
lognormal distribution (median ``--median`` s, sigma 0.5, clipped to [2, 10] s, fixed seed), so
trials have unequal lengths. Each trial is claimed and told through the project's real path
(``claim_trial`` on a journal storage: WAITING -> RUNNING, owner stamps, TPE sampling; then
``study.tell``); only the training is replaced by the sleep. Trial number i always sleeps
``durations[i]``, in both schemes:

* ``pull arrays`` (the project's scheme): one submitit array of one task per trial with the
  ``%N`` throttle (``array_parallelism``), sbatch parameters from the project's
  ``slurm_setup`` / ``array_parameters``; SLURM starts the next task as soon as a slot frees.
* ``batch-sync`` (baseline): ask k = N trials, submit them (a k-task array), wait for all k to
  end, then the next k: every round lasts as long as its longest trial.

Each task records its process start (from /proc), the start and end of the sleep, and its end.
Reported per scheme: makespan (first submission -> last task end), work utilisation
(sum of sleeps / (N x makespan): the share of slot time spent "training") and slot occupancy
(sum of task process lifetimes / (N x makespan): the share of slot time a task held, which also
counts interpreter start, imports and the claim). The two schemes run one after the other
(``--repeats`` times, alternating which goes first) on the same machine in one run.

Reproduce (needs the SLURM cluster; ~3 min)::

    .venv/bin/python benchmarks/sweep_utilisation.py [--trials 20] [--slots 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SIGMA = 0.5


def durations(n: int, median: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in np.clip(rng.lognormal(np.log(median), SIGMA, n), 2.0, 10.0)]


def _process_start() -> float:
    """This process's start (epoch seconds), from /proc."""
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def trial_task(storage: str, study: str, number: int, seconds: float) -> dict[str, Any]:
    """One array task: the real claim, a sleep instead of training, the real tell."""
    entered = time.time()
    import optuna

    from tunevlseg.cluster.worker import TaskOutcome, TrialTask, claim_trial
    from tunevlseg.tuning.storage import open_storage, parse_storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend = open_storage(parse_storage_url(storage))
    claim = claim_trial(backend, TrialTask(storage, study, number))
    if isinstance(claim, TaskOutcome):
        raise RuntimeError(f"trial {number} not claimed: {claim.detail}")
    began = time.time()
    time.sleep(seconds)
    ended = time.time()
    claim.study.tell(claim.trial, -abs(claim.params["lr"] - 1e-3))
    return {
        "number": number,
        "process_start": _process_start(),
        "entered": entered,
        "began": began,
        "ended": ended,
        "exit": time.time(),
        "node_pid": os.getpid(),
    }


EXPERIMENT = """name: util
output_dir: {out}
storage: journal://{out}/optuna.journal
models: [clipseg]
learners: [coop]
datasets: [{{name: d, root: {out}/d}}]
search: {{n_trials: {n}, n_startup_trials: 4}}
cluster: {{parallelism: {slots}, timeout_min: 10, slurm: {{cpus_per_task: 1, mem_gb: 1, gpus: 0}}}}
"""


def make_study(work: Path, n: int, slots: int, tag: str) -> tuple[str, str, dict[str, Any]]:
    from tunevlseg.cluster.launch import slurm_setup, sweep_storage
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import parse_experiment
    from tunevlseg.tuning.storage import open_storage
    from tunevlseg.tuning.studies import enqueue_missing, ensure_studies

    out = work / tag
    out.mkdir(parents=True)
    experiment = parse_experiment(EXPERIMENT.format(out=out, n=n, slots=slots), out / "util.yaml")
    expansion = expand(experiment)
    spec = expansion.studies[0]
    url = sweep_storage(experiment)
    backend = open_storage(url)
    ensure_studies(backend, [spec])
    enqueue_missing(backend, spec)
    setup = slurm_setup(experiment, expansion, url)
    return url.url, spec.name, setup.arrays


def executor(folder: Path, parameters: dict[str, Any], parallelism: int) -> Any:
    import submitit

    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), python=sys.executable)
    ex.update_parameters(**{**parameters, "array_parallelism": parallelism})
    return ex


def run_pull(work: Path, ds: list[float], slots: int) -> tuple[float, list[dict[str, Any]]]:
    storage, study, params = make_study(work, len(ds), slots, "pull")
    ex = executor(work / "pull-jobs", params, slots)
    t0 = time.time()
    jobs = ex.map_array(
        trial_task, [storage] * len(ds), [study] * len(ds), list(range(len(ds))), ds
    )
    records = [job.result() for job in jobs]
    return t0, records


def run_batch_sync(work: Path, ds: list[float], slots: int) -> tuple[float, list[dict[str, Any]]]:
    storage, study, params = make_study(work, len(ds), slots, "sync")
    ex = executor(work / "sync-jobs", params, slots)
    t0 = time.time()
    records: list[dict[str, Any]] = []
    for first in range(0, len(ds), slots):
        numbers = list(range(first, min(first + slots, len(ds))))
        jobs = ex.map_array(
            trial_task,
            [storage] * len(numbers),
            [study] * len(numbers),
            numbers,
            [ds[i] for i in numbers],
        )
        records += [job.result() for job in jobs]  # wait for the whole batch, then the next
    return t0, records


def report(name: str, t0: float, records: list[dict[str, Any]], slots: int) -> dict[str, float]:
    makespan = max(r["exit"] for r in records) - t0
    work = sum(r["ended"] - r["began"] for r in records)
    held = sum(r["exit"] - r["process_start"] for r in records)
    first_start = min(r["process_start"] for r in records) - t0
    startup = sorted(r["began"] - r["process_start"] for r in records)[len(records) // 2]
    row = {
        "makespan": makespan,
        "work_util": work / (slots * makespan),
        "occupancy": held / (slots * makespan),
        "first_start": first_start,
        "startup": startup,
        "ideal": work / slots,
    }
    print(
        f"  {name:12s} makespan {makespan:7.1f} s  work utilisation {row['work_util']:6.1%}  "
        f"slot occupancy {row['occupancy']:6.1%}  (submit -> first task start {first_start:.1f} s, "
        f"median task start-up before training {startup:.1f} s)",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--median", type=float, default=4.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    ds = durations(args.trials, args.median, args.seed)
    print(f"nproc {os.cpu_count()}, load {os.getloadavg()}")
    print(
        f"{args.trials} trials, durations {', '.join(f'{d:.1f}' for d in ds)} s; sum {sum(ds):.1f} s; "
        f"lower bound on {args.slots} slots {sum(ds) / args.slots:.1f} s"
    )
    rounds = [max(ds[i : i + args.slots]) for i in range(0, len(ds), args.slots)]
    print(f"batch-sync lower bound (sum of each batch's longest trial) {sum(rounds):.1f} s")
    base = Path(os.environ.get("TVLS_BENCH_DIR", tempfile.gettempdir()))
    results: dict[str, list[dict[str, float]]] = {"pull arrays": [], "batch-sync": []}
    try:
        for r in range(args.repeats):
            order = [("pull arrays", run_pull), ("batch-sync", run_batch_sync)]
            if r % 2:
                order.reverse()
            for name, fn in order:
                work = Path(tempfile.mkdtemp(prefix=f"tvls-util-{r}-", dir=base))
                try:
                    t0, records = fn(work, ds, args.slots)
                    results[name].append(report(name, t0, records, args.slots))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        pull = np.median([x["makespan"] for x in results["pull arrays"]])
        sync = np.median([x["makespan"] for x in results["batch-sync"]])
        print(f"makespan pull / batch-sync = {pull / sync:.3f}")
        print(f"load after: {os.getloadavg()}")
    finally:
        pass


if __name__ == "__main__":
    main()
