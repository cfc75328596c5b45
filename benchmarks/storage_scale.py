"""Storage at scale: 32 to 256 worker processes doing a trial's real storage sequence at once.

For each storage (PostgreSQL direct, PostgreSQL through Optuna's gRPC storage proxy, a journal
file on the local disk) and each worker count W, a fresh study (CoOp space, TPE with the
constant liar, ASHA pruning) gets ``--trials-per-worker`` x W WAITING trials, created as a launch
creates them (``tuning.studies.ensure_studies``, ``enqueue_missing``). Then W worker processes,
each holding its own storage (one PostgreSQL connection, one gRPC channel, or the journal file),
loop like long-lived tasks until no trial is WAITING:

1. read the WAITING trials, pick one at random and claim it with the real
   ``tunevlseg.cluster.worker.claim_trial`` (WAITING -> RUNNING, the claim stamp, parameters
   sampled by the study's sampler, the identity digest); a trial another worker took first is a
   *miss*, and the next one is tried;
2. "train": per epoch, a sleep (``--epoch-seconds``), then the real
   ``tuning.pruning.EpochReporter`` (one report per epoch, the pruner asked); a pruned trial ends
   through ``end_pruned``;
3. record the result bundle and tell, as ``run_task`` does (through ``with_retries``).

Storage calls go through ``tuning.retry.with_retries`` exactly as in a task, opening included
(the retry budget is ``--retry-budget``), so a worker that finds PostgreSQL full waits it out or
gives up as a real task would. Workers are forked from a forkserver that has imported optuna and
tunevlseg once (256 interpreters each importing them would take minutes of CPU on 2 cores); they
never import torch (checked: each worker records whether ``torch`` is in ``sys.modules``).

Measured per configuration, the clock starting when every worker process is ready (before any
opens its storage) and stopping when the last one ends or at ``--time-limit``:

* trials/s: trials finished (COMPLETE or PRUNED in the storage) / wall seconds;
* lost: trials not finished although every worker ended on its own (none should remain), or
  told by a worker but not finished in the storage; *unfinished*: trials left when the time
  limit stopped the run (not a storage fault: the run was cut);
* duplicated: trials claimed by two workers (their own logs), or whose stored claim stamp names
  a pid other than the worker that logged running it;
* PostgreSQL connections: the peak of this run's connections (its ``application_name``) and of
  all client connections of the server, sampled from ``pg_stat_activity`` every 0.25 s;
* claim latency p50/p99 (the winning ``claim_trial`` call), misses, open attempts beyond the
  first (PostgreSQL full), workers that could not open the storage, worker errors;
* memory: RSS (peak) and PSS per worker, and the machine's MemAvailable drop during the run;
* the proxy process's CPU seconds per wall second (1.0 = one core saturated).

PostgreSQL: ``--postgres URL`` (password from PGPASSWORD, default the tests' ``tvls-dev``),
default ``postgresql://tvls@127.0.0.1:5432/tvls`` (``postgres/up.sh``, ``max_connections``
200). The proxy needs ``grpcio`` and ``protobuf``.

Reproduce::

    .venv/bin/python benchmarks/storage_scale.py --workers 8 --time-limit 60       # a quick look
    .venv/bin/python benchmarks/storage_scale.py --workers 32,64,128,256 --time-limit 120
    .venv/bin/python benchmarks/storage_scale.py --kinds journal --workers 64 --epochs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("postgresql", "proxy", "journal")
DEFAULT_POSTGRES = os.environ.get("TVLS_TEST_POSTGRES", "postgresql://tvls@127.0.0.1:5432/tvls")
SAMPLE_EVERY_S = 0.25
READY_TIMEOUT_S = 600.0
CANDIDATES_PER_READ = 8
"""Trials a worker tries to claim from one read of the WAITING list before reading it again."""
MAX_CONSECUTIVE_ERRORS = 3
PRELOAD = [
    "__main__",
    "optuna",
    "sqlalchemy",
    "psycopg2",
    "tunevlseg.cluster.worker",
    "tunevlseg.config.grid",
    "tunevlseg.tuning.pruners",
    "tunevlseg.tuning.pruning",
    "tunevlseg.tuning.studies",
    "tunevlseg.tuning.identity",
    "tunevlseg.tuning.journal_snapshot",
    "tunevlseg.train.run_folder",
]
"""Modules the forkserver imports once; grpc is left out (forking after importing it is
fragile), each proxy worker imports it itself."""


@dataclass(frozen=True)
class Plan:
    """What one configuration's workers need (pickled to each of them)."""

    kind: str
    workers: int
    study: str
    url: str
    """The storage URL a task would get (journal, PostgreSQL); a label for the proxy."""
    log_dir: str
    epochs: int
    epoch_s: float
    retry_budget_s: float
    proxy: tuple[str, int] | None = None


@dataclass(frozen=True)
class EpochEndStandIn:
    """The fields of ``tunevlseg.train.fit.EpochEnd`` that ``EpochReporter`` reads.

    ``fit`` imports torch and lightning; a worker that only talks to the storage must not pay
    for them (256 processes would not fit in memory).
    """

    epoch: int
    metrics: dict[str, float]
    val_images: dict[str, list[float]] = field(default_factory=dict)
    replayed: bool = False
    last: bool = False

    @property
    def completed(self) -> int:
        return self.epoch + 1


# -- the worker --------------------------------------------------------------------------------


class RetryCounter(logging.Handler):
    """Counts the retry warnings of ``tunevlseg.tuning.retry`` and keeps the first one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if not self.first:
            self.first = record.getMessage()[:300]


def _memory() -> dict[str, int]:
    """This process's peak RSS and PSS in KiB (``/proc``; PSS splits shared pages)."""
    values = {}
    for name, key in (("/proc/self/status", "VmHWM"), ("/proc/self/smaps_rollup", "Pss")):
        try:
            for line in Path(name).read_text().splitlines():
                if line.startswith(key + ":"):
                    values[key.lower()] = int(line.split()[1])
                    break
        except OSError:
            pass
    return values


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _curve(lr: float, epoch: int) -> float:
    """A known learning curve: best at lr = 1e-3, so TPE and the pruner have work to do."""
    final = 0.9 - 0.25 * (math.log10(lr) + 3) ** 2
    return final * (1 - math.exp(-(epoch + 1) / 2))


def _open(plan: Plan) -> Any:
    if plan.proxy is not None:
        from optuna.storages import GrpcStorageProxy

        host, port = plan.proxy
        storage = GrpcStorageProxy(host=host, port=port)
        storage.wait_server_ready(timeout=60)
        return storage
    from tunevlseg.tuning.storage import open_storage, parse_storage_url

    return open_storage(parse_storage_url(plan.url))


def _train_and_tell(claim: Any, plan: Plan) -> str:
    """Epochs of sleep with the real reporter and pruner, then the result and the tell."""
    from tunevlseg.tuning.pruning import EpochReporter, TrialPrunedAt, end_pruned
    from tunevlseg.tuning.retry import with_retries
    from tunevlseg.tuning.trial_attrs import RESULT_ATTR

    started = time.monotonic()
    reporter = EpochReporter(claim.trial, "val_dice")
    curve = [_curve(claim.params["lr"], epoch) for epoch in range(plan.epochs)]
    try:
        for epoch, value in enumerate(curve):
            time.sleep(plan.epoch_s)
            reporter(EpochEndStandIn(epoch, {"val_dice": value}, last=epoch + 1 == plan.epochs))
    except TrialPrunedAt as pruned:
        end_pruned(claim.study, claim.trial, reporter, pruned)
        return "pruned"
    bundle = {
        "val_dice": max(curve),
        "epochs_run": plan.epochs,
        "tvls.task_seconds": time.monotonic() - started,
    }
    with_retries(
        lambda: claim.trial.set_user_attr(RESULT_ATTR, bundle), what="recording the result"
    )
    with_retries(
        lambda: claim.study.tell(claim.trial, max(curve), skip_if_finished=True),
        what="telling the result",
    )
    return "complete"


def _worker(plan: Plan, index: int, start: Any) -> None:
    """One long-lived task: claim, train, tell, until no trial is WAITING. Logs every step."""
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.cluster.worker import Claim, TrialTask, claim_trial
    from tunevlseg.tuning.retry import describe, set_retry_budget, with_retries

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    retries = RetryCounter()
    retry_log = logging.getLogger("tunevlseg.tuning.retry")
    retry_log.addHandler(retries)
    retry_log.propagate = False
    set_retry_budget(plan.retry_budget_s)
    log = open(Path(plan.log_dir) / f"{index}.jsonl", "a", buffering=1)  # noqa: SIM115

    def write(event: str, **fields: Any) -> None:
        log.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")

    write("ready", pid=os.getpid())
    start.wait()
    opened_at = time.monotonic()
    attempts = 0

    def open_once() -> Any:
        nonlocal attempts
        attempts += 1
        return _open(plan)

    try:
        storage = with_retries(open_once, what="opening the storage")
        study_id = with_retries(
            lambda: storage.get_study_id_from_name(plan.study), what="finding the study"
        )
    except Exception as error:  # noqa: BLE001 - reported, as a task's log would show it
        write(
            "open_failed",
            attempts=attempts,
            seconds=time.monotonic() - opened_at,
            error=describe(error),
            retries=retries.count,
            first_retry=retries.first,
        )
        return
    write(
        "opened",
        attempts=attempts,
        seconds=time.monotonic() - opened_at,
        cpu=_cpu_self(),
        **_memory(),
    )
    rng = random.Random(index)
    errors = 0
    while errors < MAX_CONSECUTIVE_ERRORS:
        looking = time.monotonic()
        try:
            waiting = with_retries(
                lambda: [
                    t.number
                    for t in storage.get_all_trials(
                        study_id, deepcopy=False, states=(TrialState.WAITING,)
                    )
                ],
                what="reading the waiting trials",
            )
        except Exception as error:  # noqa: BLE001
            errors += 1
            write("error", number=None, error=describe(error))
            continue
        if not waiting:
            break
        rng.shuffle(waiting)
        claim, misses, number = None, 0, None
        try:
            for number in waiting[:CANDIDATES_PER_READ]:
                called = time.monotonic()
                result = claim_trial(storage, TrialTask(plan.url, plan.study, number))
                if isinstance(result, Claim):
                    claim = result
                    write(
                        "claimed",
                        number=number,
                        claim_s=time.monotonic() - called,
                        acquire_s=time.monotonic() - looking,
                        misses=misses,
                    )
                    break
                misses += 1
            if claim is None:
                write("missed", misses=misses)
                continue
            outcome = _train_and_tell(claim, plan)
            write("told", number=number, outcome=outcome, cpu=_cpu_self())
            errors = 0
        except Exception as error:  # noqa: BLE001 - counted; the trial stays RUNNING (lost)
            errors += 1
            write("error", number=number, error=describe(error))
    write(
        "done",
        cpu=_cpu_self(),
        torch_imported="torch" in sys.modules,
        retries=retries.count,
        first_retry=retries.first,
        **_memory(),
    )


# -- the proxy ---------------------------------------------------------------------------------


def _proxy_server(url: str, host: str, port: int, threads: int) -> None:
    """Optuna's gRPC proxy in front of PostgreSQL, with Optuna's in-process cache.

    ``run_grpc_proxy_server``'s documentation asks for ``get_storage`` (the cached storage)
    rather than a bare ``RDBStorage``. The pool has one connection per server thread.
    """
    from concurrent.futures import ThreadPoolExecutor

    import optuna

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    backend = optuna.storages.RDBStorage(
        url, engine_kwargs={"pool_size": threads, "max_overflow": 0, "pool_pre_ping": True}
    )
    optuna.storages.run_grpc_proxy_server(
        optuna.storages.get_storage(backend),
        host=host,
        port=port,
        thread_pool=ThreadPoolExecutor(max_workers=threads),
    )


def _postgres_cpu_seconds() -> float | None:
    """CPU seconds of the local PostgreSQL server so far: its live processes, plus what the
    postmaster has reaped from ended backends (``cutime``/``cstime``). Other clients' work on
    the same server counts too. ``None`` when the server's processes cannot be read."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text[text.find("(") + 1 : text.rfind(")")], text.rsplit(")", 1)[1].split()
        if name != "postgres":
            continue
        found = True
        ticks = int(fields[11]) + int(fields[12])
        parent = Path(f"/proc/{fields[1]}/comm")
        try:
            is_postmaster = parent.read_text().strip() != "postgres"
        except OSError:
            is_postmaster = False
        if is_postmaster:
            ticks += int(fields[13]) + int(fields[14])
        total += ticks / os.sysconf("SC_CLK_TCK")
    return total if found else None


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- one configuration -------------------------------------------------------------------------


def _study(work: Path, url: str, n_trials: int, epochs: int) -> str:
    """A fresh study with n_trials WAITING trials, created as a launch creates them."""
    from tunevlseg.config.grid import expand
    from tunevlseg.config.loader import parse_experiment
    from tunevlseg.tuning.storage import open_storage, parse_storage_url
    from tunevlseg.tuning.studies import enqueue_missing, ensure_studies

    name = f"scale{uuid.uuid4().hex[:8]}"
    text = (
        f"name: {name}\noutput_dir: out\nmodels: [clipseg]\nlearners: [coop]\n"
        f"datasets: [{{name: d, root: d}}]\ntraining: {{max_epochs: {epochs}}}\n"
        f"search: {{n_trials: {n_trials}, n_startup_trials: 10,"
        " pruner: {name: asha, min_resource: 1, reduction_factor: 3}}\n"
    )
    spec = expand(parse_experiment(text, work / "scale.yaml")).studies[0]
    backend = open_storage(parse_storage_url(url))
    ensure_studies(backend, [spec])
    waiting = enqueue_missing(backend, spec)
    if len(waiting) != n_trials:
        raise RuntimeError(f"{len(waiting)} WAITING trials enqueued, expected {n_trials}")
    _dispose(backend)
    return spec.name


def _dispose(storage: Any) -> None:
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


class ConnectionSampler:
    """Peak PostgreSQL client connections: this run's (by application_name) and the server's."""

    def __init__(self, url: str | None, application: str) -> None:
        self.application = application
        self.peak_run = 0
        self.peak_all = 0
        self.run_samples: list[int] = []
        self.max_connections: int | None = None
        self.lost_server = 0
        """Samples that failed: the server restarted or refused the monitor (it is shared)."""
        self._conn: Any = None
        self._dsn = None if url is None else url.replace("+psycopg2", "").split("?")[0]
        if self._dsn is not None:
            self._connect()
            with self._conn.cursor() as cur:
                cur.execute("SHOW max_connections")
                self.max_connections = int(cur.fetchone()[0])

    def _connect(self) -> None:
        import psycopg2

        self._conn = psycopg2.connect(
            self._dsn, connect_timeout=5, application_name="tvls-scale-monitor"
        )
        self._conn.autocommit = True

    def sample(self) -> None:
        if self._dsn is None:
            return
        import psycopg2

        try:
            if self._conn is None:
                self._connect()
            with self._conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FILTER (WHERE application_name = %s), count(*) FILTER "
                    "(WHERE backend_type = 'client backend') FROM pg_stat_activity",
                    (self.application,),
                )
                run, everyone = cur.fetchone()
        except psycopg2.Error:
            self.lost_server += 1
            self._conn = None
            return
        self.peak_run = max(self.peak_run, run)
        self.run_samples.append(run)
        self.peak_all = max(self.peak_all, everyone)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()


def _mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def _read_logs(log_dir: Path) -> dict[int, list[dict[str, Any]]]:
    logs: dict[int, list[dict[str, Any]]] = {}
    for path in log_dir.glob("*.jsonl"):
        records = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                records.append(json.loads(line))
        logs[int(path.stem)] = records
    return logs


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run_config(
    kind: str, workers: int, args: argparse.Namespace, work: Path, ctx: Any
) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from tunevlseg.tuning.retry import with_retries
    from tunevlseg.tuning.storage import open_storage, parse_storage_url
    from tunevlseg.tuning.trial_attrs import trial_attrs

    load = subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    print(f"\n[{kind} W={workers}] before: {load}", flush=True)
    n_trials = args.trials_per_worker * workers
    application = f"tvls_scale_{uuid.uuid4().hex[:8]}"
    if kind == "journal":
        url = f"journal://{work}/{kind}-{workers}.journal"
    else:
        url = f"{args.postgres}{'&' if '?' in args.postgres else '?'}application_name={application}"
    study = _study(work, url, n_trials, args.epochs)
    mem_before = _mem_available_kib()
    proxy_proc, proxy = None, None
    if kind == "proxy":
        proxy = ("127.0.0.1", _free_port())
        proxy_url = parse_storage_url(url).url
        proxy_proc = multiprocessing.get_context("spawn").Process(
            target=_proxy_server, args=(proxy_url, *proxy, args.proxy_threads), daemon=True
        )
        proxy_proc.start()
        from optuna.storages import GrpcStorageProxy

        GrpcStorageProxy(host=proxy[0], port=proxy[1]).wait_server_ready(timeout=120)
    log_dir = work / f"{kind}-{workers}"
    log_dir.mkdir()
    plan = Plan(
        kind,
        workers,
        study,
        url if kind != "proxy" else f"grpc://{proxy[0]}:{proxy[1]}",
        str(log_dir),
        args.epochs,
        args.epoch_seconds,
        args.retry_budget,
        proxy,
    )
    sampler = ConnectionSampler(None if kind == "journal" else args.postgres, application)
    start = ctx.Event()
    procs = [
        ctx.Process(target=_worker, args=(plan, i, start), daemon=True) for i in range(workers)
    ]
    spawn_started = time.monotonic()
    for proc in procs:
        proc.start()
    while sum(1 for p in log_dir.glob("*.jsonl") if p.stat().st_size) < workers:
        if time.monotonic() - spawn_started > READY_TIMEOUT_S:
            raise RuntimeError(f"workers not ready after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
    spawn_s = time.monotonic() - spawn_started
    mem_low = _mem_available_kib()
    proxy_cpu_before = _cpu_seconds(proxy_proc.pid) if proxy_proc else 0.0
    pg_cpu_before = _postgres_cpu_seconds() if kind != "journal" else None
    busy_before = _machine_busy()
    t0 = time.time()
    start.set()
    deadline = time.monotonic() + args.time_limit
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        sampler.sample()
        mem_low = min(mem_low, _mem_available_kib())
        time.sleep(SAMPLE_EVERY_S)
    cut = [p for p in procs if p.is_alive()]
    stopped_at = time.time()
    cut_cpu = 0.0  # what the stopped workers spent: their logs hold only their last record's
    for proc in cut:
        with contextlib.suppress(OSError):
            cut_cpu += _cpu_seconds(proc.pid)
        proc.terminate()
    for proc in procs:
        proc.join(timeout=30)
    busy_after = _machine_busy()
    proxy_cpu = 0.0
    if proxy_proc is not None:
        proxy_cpu = _cpu_seconds(proxy_proc.pid) - proxy_cpu_before
        proxy_proc.terminate()
        proxy_proc.join(timeout=30)
    sampler.close()
    pg_cpu = None
    if pg_cpu_before is not None:
        time.sleep(1.0)  # the backends of the workers that just ended are reaped
        after = _postgres_cpu_seconds()
        pg_cpu = after - pg_cpu_before if after is not None else None

    logs = _read_logs(log_dir)
    ends = [r["t"] for records in logs.values() for r in records if r["event"] == "done"]
    wall = (stopped_at if cut else max(ends, default=stopped_at)) - t0
    backend = with_retries(lambda: open_storage(parse_storage_url(url)), what="opening")
    trials = with_retries(
        lambda: optuna.load_study(study_name=study, storage=backend).get_trials(deepcopy=False),
        what="reading the trials",
    )
    _dispose(backend)
    states = Counter(t.state for t in trials)
    finished = {t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    pids = {
        index: next((r["pid"] for r in records if r["event"] == "ready"), None)
        for index, records in logs.items()
    }
    claimed_by: dict[int, list[int]] = defaultdict(list)
    told: set[int] = set()
    for index, records in logs.items():
        for record in records:
            if record["event"] == "claimed":
                claimed_by[record["number"]].append(pids[index])
            elif record["event"] == "told":
                told.add(record["number"])
    stamp_mismatch = sum(
        1
        for t in trials
        if t.number in claimed_by and trial_attrs(t).get("tvls.pid") not in claimed_by[t.number]
    )
    double_claims = sum(1 for owners in claimed_by.values() if len(owners) > 1)
    unfinished = n_trials - len(finished)
    records = [r for rs in logs.values() for r in rs]
    claims = [r["claim_s"] for r in records if r["event"] == "claimed"]
    dones = [r for r in records if r["event"] == "done"]
    opened = [r for r in records if r["event"] == "opened"]
    errors = [r for r in records if r["event"] in ("error", "open_failed")]
    ended = {index for index, rs in logs.items() if any(r["event"] == "done" for r in rs)}
    worker_cpu = cut_cpu + sum(
        next((r["cpu"] for r in reversed(logs[i]) if "cpu" in r), 0.0) for i in ended
    )
    per_trial = max(1, len(finished))
    # Workers stopped by the time limit wrote no "done": their RSS at opening stands in.
    peak_rss = [r["vmhwm"] for r in dones if "vmhwm" in r]
    peak_rss = peak_rss or [r["vmhwm"] for r in opened if "vmhwm" in r]
    pss = [r["pss"] for r in dones if "pss" in r]
    row = {
        "storage": kind,
        "workers": workers,
        "trials": n_trials,
        "load_before": load,
        "spawn_s": spawn_s,
        "wall_s": wall,
        "cut_by_limit": len(cut),
        "finished": len(finished),
        "trials_per_s": len(finished) / wall if wall > 0 else 0.0,
        "complete": states[TrialState.COMPLETE],
        "pruned": states[TrialState.PRUNED],
        "lost": (unfinished if not cut else 0) + len(told - finished),
        "unfinished_at_limit": unfinished if cut else 0,
        "left_running": states[TrialState.RUNNING],
        "left_waiting": states[TrialState.WAITING],
        "over_budget": max(0, len(trials) - n_trials),
        "duplicated": double_claims + stamp_mismatch,
        "claim_p50_ms": 1000 * (_percentile(claims, 0.5) or 0),
        "claim_p99_ms": 1000 * (_percentile(claims, 0.99) or 0),
        "misses": sum(r.get("misses", 0) for r in records if r["event"] in ("claimed", "missed")),
        "pg_peak_run": sampler.peak_run if kind != "journal" else None,
        "pg_peak_server": sampler.peak_all if kind != "journal" else None,
        "pg_median_run": statistics.median(sampler.run_samples) if sampler.run_samples else None,
        "max_connections": sampler.max_connections,
        "monitor_lost_server": sampler.lost_server,
        "open_retried_workers": sum(1 for r in opened if r["attempts"] > 1),
        "open_s_max": max((r["seconds"] for r in opened), default=0.0),
        "open_failed": sum(1 for r in records if r["event"] == "open_failed"),
        "retry_warnings": sum(r.get("retries", 0) for r in dones),
        "errors": len(errors),
        "first_error": errors[0]["error"] if errors else "",
        "first_retry": next((r["first_retry"] for r in dones if r.get("first_retry")), ""),
        "torch_in_workers": sum(1 for r in dones if r.get("torch_imported")),
        "rss_mib_median": statistics.median(peak_rss) / 1024 if peak_rss else None,
        "rss_mib_max": max(peak_rss) / 1024 if peak_rss else None,
        "pss_mib_median": statistics.median(pss) / 1024 if pss else None,
        "pss_mib_total": sum(pss) / 1024 if pss else None,
        "mem_drop_mib": (mem_before - mem_low) / 1024,
        "proxy_cpu_per_s": proxy_cpu / wall if proxy_proc is not None and wall > 0 else None,
        "worker_cpu_s": worker_cpu,
        "worker_cpu_per_trial_s": worker_cpu / per_trial,
        "pg_cpu_s": pg_cpu,
        "pg_cpu_per_trial_s": pg_cpu / per_trial if pg_cpu is not None else None,
        "proxy_cpu_per_trial_s": proxy_cpu / per_trial if proxy_proc is not None else None,
        "machine_busy": (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1]),
    }
    _print_row(row)
    return row


def _fmt(value: Any, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def _print_row(r: dict[str, Any]) -> None:
    print(
        f"  {r['finished']}/{r['trials']} trials in {r['wall_s']:.1f} s = "
        f"{r['trials_per_s']:.2f}/s "
        f"({r['complete']} complete, {r['pruned']} pruned); lost {r['lost']}, duplicated "
        f"{r['duplicated']}, over budget {r['over_budget']}, unfinished at the limit "
        f"{r['unfinished_at_limit']} ({r['cut_by_limit']} workers stopped; left RUNNING "
        f"{r['left_running']}, WAITING {r['left_waiting']})\n"
        f"  claim p50 {r['claim_p50_ms']:.0f} ms, p99 {r['claim_p99_ms']:.0f} ms, misses "
        f"{r['misses']}; PostgreSQL connections peak: run {_fmt(r['pg_peak_run'])}, server "
        f"{_fmt(r['pg_peak_server'])} of {_fmt(r['max_connections'])}; run median "
        f"{_fmt(r['pg_median_run'])}"
        + (
            f" (the monitor lost the server in {r['monitor_lost_server']} samples: a restart?)"
            if r["monitor_lost_server"]
            else ""
        )
        + "\n"
        f"  open: {r['open_retried_workers']} workers retried (longest {r['open_s_max']:.1f} s), "
        f"{r['open_failed']} gave up; retry warnings {r['retry_warnings']}; errors {r['errors']}"
        + (f" (first: {r['first_error']})" if r["errors"] else "")
        + (f"\n  first retry warning: {r['first_retry']}" if r["first_retry"] else "")
        + f"\n  per worker: RSS peak median {_fmt(r['rss_mib_median'], '.0f')} MiB "
        f"(max {_fmt(r['rss_mib_max'], '.0f')}), PSS median {_fmt(r['pss_mib_median'], '.0f')} MiB "
        f"(all workers {_fmt(r['pss_mib_total'], '.0f')} MiB); "
        f"MemAvailable drop {r['mem_drop_mib']:.0f} MiB; torch imported in "
        f"{r['torch_in_workers']} workers; workers ready in {r['spawn_s']:.1f} s"
        + f"\n  CPU: workers {r['worker_cpu_s']:.0f} s ({r['worker_cpu_per_trial_s']:.2f} s "
        f"per finished trial), PostgreSQL server {_fmt(r['pg_cpu_s'], '.0f')} s "
        f"({_fmt(r['pg_cpu_per_trial_s'], '.3f')} s per trial); machine busy "
        f"{100 * r['machine_busy']:.0f} %"
        + (
            ""
            if r["proxy_cpu_per_s"] is None
            else f"\n  proxy CPU {r['proxy_cpu_per_s']:.2f} s per wall s, "
            f"{r['proxy_cpu_per_trial_s']:.3f} s per trial"
        ),
        flush=True,
    )


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| storage | W | trials | finished | wall s | trials/s | lost | dup | claim p50 / p99 ms "
        "| PG conns run / server | open retried / failed | errors | RSS MiB | load before |\n"
        "| --- |" + " ---: |" * 12 + " --- |"
    )
    lines = [head]
    for r in rows:
        conns = "–" if r["pg_peak_run"] is None else f"{r['pg_peak_run']} / {r['pg_peak_server']}"
        load = r["load_before"].split("load average:")[-1].strip()
        lines.append(
            f"| {r['storage']} | {r['workers']} | {r['trials']} | {r['finished']} "
            f"| {r['wall_s']:.1f} "
            f"| {r['trials_per_s']:.2f} | {r['lost']} | {r['duplicated']} "
            f"| {r['claim_p50_ms']:.0f} / {r['claim_p99_ms']:.0f} | {conns} "
            f"| {r['open_retried_workers']} / {r['open_failed']} | {r['errors']} "
            f"| {_fmt(r['rss_mib_median'], '.0f')} | {load} |"
        )
    return "\n".join(lines)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        message = f"{text!r} is not a comma-separated list of integers"
        raise argparse.ArgumentTypeError(message) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts are positive")
    return counts


def _kinds(text: str) -> list[str]:
    kinds = text.split(",")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        known = ", ".join(KINDS)
        raise argparse.ArgumentTypeError(f"unknown storage {unknown[0]!r} (known: {known})")
    return kinds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=_counts, default=[32, 64, 128, 256], help="e.g. 32,64,128,256")
    p.add_argument("--kinds", type=_kinds, default=list(KINDS), help="postgresql,proxy,journal")
    p.add_argument("--trials-per-worker", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument(
        "--epoch-seconds", type=float, default=0.2, help="the sleep that stands for an epoch"
    )
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per configuration")
    p.add_argument(
        "--retry-budget",
        type=float,
        default=None,
        help="workers' storage retry budget in seconds (default: the time limit)",
    )
    p.add_argument(
        "--proxy-threads",
        type=int,
        default=10,
        help="gRPC server threads (= its PostgreSQL connections)",
    )
    p.add_argument("--postgres", default=DEFAULT_POSTGRES)
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args = p.parse_args()
    for name in ("trials_per_worker", "epochs", "proxy_threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.epoch_seconds < 0 or args.time_limit <= 0:
        p.error("--epoch-seconds must be >= 0 and --time-limit > 0")
    if args.retry_budget is None:
        args.retry_budget = args.time_limit
    if "proxy" in args.kinds:
        try:
            import grpc  # noqa: F401
        except ImportError:
            p.error(
                "the proxy needs grpcio and protobuf: "
                ".venv/bin/python -m pip install grpcio protobuf"
            )
    os.environ.setdefault("PGPASSWORD", "tvls-dev")  # the tests' password (postgres/up.sh)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    print(
        f"nproc {os.cpu_count()}, MemAvailable {_mem_available_kib() / 2**20:.1f} GiB, "
        f"optuna {optuna.__version__}; {args.epochs} epochs x {args.epoch_seconds} s, "
        f"{args.trials_per_worker} trials per worker, limit {args.time_limit:.0f} s, "
        f"retry budget {args.retry_budget:.0f} s",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="tvls-scale-"))
    rows = []
    try:
        for kind in args.kinds:
            for workers in args.workers:
                rows.append(run_config(kind, workers, args, work, ctx))
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + _markdown(rows))
    after = subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    print(f"\nafter: {after}")


if __name__ == "__main__":
    main()
