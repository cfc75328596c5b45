"""Study storage URLs -> Optuna storages.

* ``journal://PATH``: Optuna's JournalStorage on a file, locked with ``O_CREAT|O_EXCL`` lock files
  (:class:`~optuna.storages.journal.JournalFileOpenLock`), which is safe on NFS v3+. ``PATH``
  is absolute when it starts with ``/`` (``journal:///shared/sweep.log``), else relative to the
  experiment file. The default for every sweep: a shared file system is all a cluster needs.
  Large journals are opened from a snapshot beside them, and a line torn by a writer killed
  mid-append is repaired when met (:mod:`tunevlseg.tuning.journal_snapshot`).
  The plain path of an existing journal file (``runs/demo/optuna.journal``, as Optuna's CLI and
  optuna-dashboard take it) is read as ``journal://`` + its absolute path.
* ``sqlite:///rel.db`` / ``sqlite:////abs.db`` (SQLAlchemy's convention): local runs only,
  because SQLite has no row locks and its file locking breaks on NFS.
* ``postgresql://user@host:port/db``: for large sweeps. The password never goes in the URL (it
  would end up in YAML files, manifests and job scripts); libpq reads ``PGPASSWORD`` or the
  0600 file ``~/.pgpass`` / ``PGPASSFILE`` by itself. A connection attempt gives up after
  :data:`CONNECT_TIMEOUT_S`; opening the storage during an outage fails (OperationalError), so
  a task opens it through :func:`tunevlseg.tuning.retry.with_retries`, which waits it out.
* ``grpc://host:port``: a running Optuna storage proxy (``optuna.storages.run_grpc_proxy_server``
  in front of PostgreSQL) that the user manages; every process of the sweep talks to it and holds
  no database connection. Needs the ``grpc`` extra (``grpcio``).
* ``grpc+file:///abs/storage-proxy.json``: what a SLURM launch with ``cluster.storage_proxy``
  hands its tasks: the proxy the launcher started writes its address into that file once it
  listens, and a task reads it again whenever the proxy does not answer
  (:mod:`tunevlseg.tuning.proxy_client`), so a proxy restarted on another node is found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from tunevlseg.config.loader import Experiment

Scheme = Literal["journal", "sqlite", "postgresql", "grpc"]
CONNECT_TIMEOUT_S = 10
"""Seconds a PostgreSQL connection attempt may take (``?connect_timeout=`` in the URL wins)."""
POSTGRES_CONNECTIONS_PER_PROCESS = 2
"""The most PostgreSQL connections one opened storage holds: one in use, plus the one Optuna
nests while it sets up a new schema (``_init_alembic``). Preflight multiplies it by the tasks
that can run at once (:mod:`tunevlseg.cluster.storage_safety`)."""


class StorageURLError(ValueError):
    """A storage URL that cannot be used."""


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL; ``path`` is set for the file-based schemes."""

    scheme: Scheme
    url: str
    path: Path | None = None
    address_file: Path | None = None
    """``grpc+file://``: the file the launcher's storage proxy writes its address into."""

    @property
    def grpc_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of a ``grpc://host:port`` storage, else None."""
        if self.scheme != "grpc" or self.address_file is not None:
            return None
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None  # parse_storage_url checked
        return parts.hostname, parts.port

    def resolved(self, base_dir: Path) -> StorageURL:
        """The same storage with a relative file path made absolute against ``base_dir``."""
        if self.path is None or self.path.is_absolute():
            return self
        path = (base_dir / self.path).resolve()
        url = f"journal://{path}" if self.scheme == "journal" else f"sqlite:///{path}"
        return StorageURL(self.scheme, url, path)

    @property
    def exists(self) -> bool:
        """False when opening it would create a new file (so a dry run must not open it)."""
        return self.path is None or self.path.exists()

    def __str__(self) -> str:
        return self.url


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _existing_journal(text: str, base_dir: Path | None) -> StorageURL | None:
    """``journal://<absolute path>`` when ``text`` is the path of an existing file, else None.

    What Optuna's CLI and optuna-dashboard accept: ``runs/demo/optuna.journal`` for the journal
    itself. Only an existing file qualifies (a new storage still needs a URL), and an SQLite file
    is refused rather than read as a journal.
    """
    if not text.strip():
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()) / path
    try:
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
    except OSError:
        return None
    path = path.resolve()
    if head == _SQLITE_MAGIC:
        raise StorageURLError(
            f"{text!r} is an SQLite database, not a journal: write sqlite:///{path}"
        )
    return StorageURL("journal", f"journal://{path}", path)


def parse_storage_url(url: str, base_dir: Path | None = None) -> StorageURL:
    """Check a storage URL's form without touching the storage.

    A plain path of an existing file (no ``scheme://``) is taken as that journal file, made
    absolute against ``base_dir`` (default: the working directory): ``runs/demo/optuna.journal``
    reads as ``journal:///<abs>/runs/demo/optuna.journal``.

    Raises:
        StorageURLError: naming what is wrong and the accepted forms.
    """
    forms = (
        "journal:///abs/path.log, journal://rel/path.log, sqlite:///rel.db, "
        "postgresql://user@host/db, grpc://host:port"
    )
    scheme, sep, rest = url.partition("://")
    if not sep:
        journal = _existing_journal(url, base_dir)
        if journal is not None:
            return journal
        raise StorageURLError(f"{url!r} is not a storage URL (accepted: {forms})")
    if scheme == "journal":
        if not rest or rest.endswith("/"):
            raise StorageURLError(f"{url!r} names no file (accepted: {forms})")
        return StorageURL("journal", url, Path(rest))
    if scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise StorageURLError(f"{url!r}: write sqlite:///relative.db or sqlite:////abs.db")
        return StorageURL("sqlite", url, Path(rest[1:]))
    if scheme in ("postgresql", "postgresql+psycopg2", "postgres"):
        parts = urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise StorageURLError(f"{url!r} needs a host and a database: postgresql://user@host/db")
        if parts.password:
            raise StorageURLError(
                "the PostgreSQL URL holds a password; remove it and set PGPASSWORD or a 0600 "
                "~/.pgpass file instead (URLs end up in manifests and job scripts)"
            )
        canonical = url.replace(f"{scheme}://", "postgresql+psycopg2://", 1)
        return StorageURL("postgresql", canonical)
    if scheme == "grpc":
        return _grpc_url(url)
    if scheme == "grpc+file":
        if not rest.startswith("/") or rest.endswith("/"):
            raise StorageURLError(f"{url!r}: write grpc+file:///absolute/path/storage-proxy.json")
        return StorageURL("grpc", url, address_file=Path(rest))
    raise StorageURLError(f"unknown storage scheme {scheme!r} (accepted: {forms})")


def _grpc_url(url: str) -> StorageURL:
    """``grpc://host:port`` and nothing more: the proxy takes no path, user or options."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    extra = parts.path.strip("/") or parts.query or parts.username or parts.fragment
    if not parts.hostname or port is None or extra:
        raise StorageURLError(
            f"{url!r}: a storage proxy's URL is grpc://host:port (the proxy itself holds the "
            "database URL)"
        )
    return StorageURL("grpc", url)


def proxy_task_url(address_file: Path) -> StorageURL:
    """The storage URL a task of a launcher-started proxy gets: the proxy's address file."""
    path = address_file.resolve()
    return StorageURL("grpc", f"grpc+file://{path}", address_file=path)


def default_storage(output_dir: Path) -> StorageURL:
    """A journal file in the sweep's output folder."""
    path = output_dir / "optuna.journal"
    return StorageURL("journal", f"journal://{path}", path)


def open_storage(
    storage: StorageURL, *, connections: int = POSTGRES_CONNECTIONS_PER_PROCESS
) -> BaseStorage:
    """Open (creating if needed) the storage; the caller has validated and resolved it.

    ``connections``: the PostgreSQL connections this process may hold (a storage proxy serves
    many tasks and takes more than a task's :data:`POSTGRES_CONNECTIONS_PER_PROCESS`).
    A ``grpc`` storage is opened lazily: its first call finds the proxy.
    """
    import optuna

    if storage.scheme == "grpc":
        from tunevlseg.tuning.proxy_client import ProxyStorage

        # mypy cannot see the storage methods set on the class by a loop (proxy_client.DELEGATED)
        return ProxyStorage(storage.grpc_address, storage.address_file)  # type: ignore[abstract]

    if storage.scheme == "journal":
        from tunevlseg.tuning.journal_snapshot import open_journal

        assert storage.path is not None
        storage.path.parent.mkdir(parents=True, exist_ok=True)
        return open_journal(storage.path)
    if storage.scheme == "sqlite":
        assert storage.path is not None
        storage.path.parent.mkdir(parents=True, exist_ok=True)
    # Bounded connections per process (POSTGRES_CONNECTIONS_PER_PROCESS): 1,000 array tasks
    # must not open SQLAlchemy's default 5 + 10 each.
    # pool_pre_ping replaces a pooled connection the server dropped (a restart) before use.
    engine_kwargs: dict[str, Any] = (
        {"pool_size": connections - 1, "max_overflow": 1, "pool_pre_ping": True}
        if storage.scheme == "postgresql"
        else {}
    )
    if storage.scheme == "postgresql" and "connect_timeout" not in parse_qs(
        urlsplit(storage.url).query
    ):
        # A host that is down drops the packets: without a timeout one connection attempt
        # hangs for TCP's ~2 minutes, a task's whole retry budget (tunevlseg.tuning.retry).
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return optuna.storages.RDBStorage(storage.url, engine_kwargs=engine_kwargs)


def sweep_storage(experiment: Experiment) -> StorageURL:
    """The sweep's storage, resolved against the experiment file's folder.

    Here, below the cluster and collect layers, so that both (launch, status, the collector)
    find a sweep's storage without importing each other.
    """
    if experiment.spec.storage is None:
        return default_storage(experiment.output_dir)
    return parse_storage_url(experiment.spec.storage, experiment.base_dir).resolved(
        experiment.base_dir
    )
