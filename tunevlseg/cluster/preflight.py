"""Everything a launch checks before its first write, read-only, so that ``--dry-run`` runs the
very same checks and prints the very same messages.

A launch stops at the first problem list that is not empty, before it creates a study, writes
a file or submits a job; a dry run prints the plan first (a plan is worth seeing before the data
is in place), then every problem, and exits non-zero when a launch would fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunevlseg.assets import preflight as asset_problems, unseen_class_problems
from tunevlseg.cluster.storage_safety import (
    connection_problems,
    journal_problems,
    max_array_size,
    server_connections,
    sweep_concurrency,
)
from tunevlseg.config.grid import Expansion, expand
from tunevlseg.config.loader import Experiment
from tunevlseg.config.select import Selection, select
from tunevlseg.paths import SweepPaths
from tunevlseg.tuning.storage import StorageURL, sweep_storage

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


@dataclass
class Preflight:
    """What the checks found; ``storage`` is the sweep's storage when it already exists.

    ``expansion`` holds the studies the launch works on (the ``--only`` selection, else every
    study); ``whole`` every study of the experiment file (the same object without a selection).
    """

    expansion: Expansion
    storage_url: StorageURL
    storage: BaseStorage | None
    problems: list[str]
    whole: Expansion | None = None
    selection: Selection | None = None

    @property
    def sweep(self) -> Expansion:
        """Every study of the experiment file, selected or not."""
        return self.whole if self.whole is not None else self.expansion

    @property
    def message(self) -> str:
        return "cannot launch:\n" + "\n".join(f"  {problem}" for problem in self.problems)


def slurm_path_problems(experiment: Experiment) -> list[str]:
    """SLURM rewrites ``%`` patterns and drops ``\\`` in log file names: such a folder breaks jobs.

    Everything else (spaces, quotes, ``;``, ``$(...)``, backticks) is quoted and safe.
    """
    jobs = str(SweepPaths.of(experiment).jobs)
    bad = sorted({c for c in jobs if c in "%\\"})
    if not bad:
        return []
    return [
        (
            f"output_dir {experiment.output_dir} contains {' and '.join(repr(c) for c in bad)}, "
            "which SLURM rewrites in job log file names; choose a folder without them"
        )
    ]


def sqlite_problems(experiment: Experiment, parallelism: int, force: bool) -> list[str]:
    """SQLite has no row locks: two parallel workers can claim the same trial (measured)."""
    if sweep_storage(experiment).scheme == "sqlite" and parallelism > 1 and not force:
        return [
            (
                "sqlite storage cannot take parallel tasks (no row locks, so two tasks can claim "
                "the same trial; its file locks break on NFS): use journal:// (the default) or "
                "postgresql://, set parallelism to 1, or pass --force"
            )
        ]
    return []


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_problems(folder: Path, what: str) -> list[str]:
    """A folder that exists and is writable, or can be created (its nearest parent is)."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        return [f"{what} {folder}: {existing} is a file, not a folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{what} {folder}: {existing} is not writable by this user"]
    return []


def open_existing_storage(url: StorageURL) -> BaseStorage | None:
    """The storage if it already exists, else None; never creates tables or files.

    Raises whatever the driver raises when the server cannot be reached.
    """
    from tunevlseg.tuning.storage import open_storage

    if url.path is not None:
        return open_storage(url) if url.path.exists() else None
    if url.scheme == "grpc":  # a proxy serves an existing database (it creates its tables)
        from tunevlseg.tuning.proxy_client import ProxyStorage

        proxy = open_storage(url)
        assert isinstance(proxy, ProxyStorage)
        proxy.wait_ready(PROXY_ANSWER_S)
        return proxy
    import sqlalchemy

    engine = sqlalchemy.create_engine(url.url, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            has_studies = sqlalchemy.inspect(connection).has_table("studies")
    finally:
        engine.dispose()
    return open_storage(url) if has_studies else None


PROXY_ANSWER_S = 5.0
"""How long preflight waits for a ``grpc://`` storage proxy to accept a connection."""


def grpc_problems(experiment: Experiment, storage_url: StorageURL, *, local: bool) -> list[str]:
    """A gRPC storage (a proxy the user runs, or the launcher's) needs ``grpcio`` installed."""
    import importlib.util

    proxy = experiment.spec.cluster.storage_proxy is not None and not local
    if (storage_url.scheme != "grpc" and not proxy) or importlib.util.find_spec("grpc") is not None:
        return []
    return ["a gRPC storage proxy needs grpcio: pip install 'tunevlseg[grpc]'"]


def run_preflight(
    experiment: Experiment,
    *,
    local: bool,
    force: bool = False,
    parallelism: int | None = None,
    only: Selection | None = None,
) -> Preflight:
    """Every check of a launch, in the order a user would fix them; writes nothing.

    With ``only`` (``--only``), data and models are checked for the selected studies, while a
    changed study definition is looked for in the whole file: the stored sweep stays one sweep.

    Raises:
        SelectionError: ``only`` names a key or value the sweep does not have (before any check).
    """
    from tunevlseg.cluster import slurm
    from tunevlseg.tuning.studies import study_conflicts

    whole = expand(experiment)
    expansion, selection = select(whole, only)
    storage_url = sweep_storage(experiment)
    problems: list[str] = []
    if not local:
        problems += slurm_path_problems(experiment)
    problems += sqlite_problems(
        experiment, parallelism or experiment.spec.cluster.parallelism, force
    )
    problems += writable_problems(experiment.output_dir, "output_dir")
    if storage_url.path is not None:
        problems += writable_problems(storage_url.path.parent, "storage folder")
    problems += asset_problems(expansion.studies)
    problems += unseen_class_problems(experiment, expansion.studies)
    problems += grpc_problems(experiment, storage_url, local=local)
    slurm_answers = not local and slurm.available()
    storage = None
    try:
        # The server's connection counts first, before this process holds any connection.
        # Behind a pooler the server's max_connections is not the limit that applies.
        counted = storage_url.scheme == "postgresql" and not experiment.spec.cluster.postgres_pooler
        server = server_connections(storage_url) if counted else None
        storage = open_existing_storage(storage_url)
        if storage is not None:
            storage.get_all_studies()
    except Exception as error:  # noqa: BLE001 - any driver error: its message is what the user needs
        storage, server = None, None
        problems.append(f"cannot open the study storage {storage_url}: {error}".strip())
    if storage is not None and not force:
        conflict = study_conflicts(storage, whole.studies)
        if conflict:
            problems.append(conflict)
    if server is not None:
        cluster = experiment.spec.cluster
        concurrency = sweep_concurrency(
            expansion,
            local=local,
            parallelism=(parallelism or cluster.parallelism) if local else cluster.parallelism,
            max_array_size=1 if local else max_array_size(experiment, slurm_answers),
        )
        proxy = None if local else cluster.storage_proxy  # a local launch has no proxy job
        problems += connection_problems(
            storage_url, concurrency, server, proxy.connections if proxy is not None else None
        )
    if slurm_answers:
        problems += journal_problems(experiment, storage_url, local=local)
    if not local and not slurm_answers:
        problems.append(
            "SLURM does not answer (sbatch/scontrol missing or slurmctld down); use --local to "
            "run on this machine"
        )
    return Preflight(expansion, storage_url, storage, problems, whole, selection)
