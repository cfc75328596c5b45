"""Is the sweep's storage safe for the way its tasks will run? Two read-only preflight checks.

* **A journal file on a network file system, written from several nodes.** Optuna's journal
  appends a record under a lock file (``O_CREAT|O_EXCL``). On one machine that holds; across the
  clients of a network file system it relies on the server and on each client's cache, and
  records have been lost or fused with another writer's on one line (optuna issue #5138, on a
  SLURM cluster). A SLURM launch whose tasks can land on more than one node is refused while
  its journal is on NFS, Lustre, GPFS, BeeGFS, CephFS, SMB and the like, unless
  ``cluster.allow_journal_on_network_fs`` says the user accepts it. A local launch, a
  one-node partition, or tasks pinned to one node (``cluster.slurm.extra.nodelist``, or a
  ``constraint`` only one node satisfies) are not affected.
* **PostgreSQL connections.** Each task holds up to
  :data:`~tunevlseg.tuning.storage.POSTGRES_CONNECTIONS_PER_PROCESS` connections, and so do the
  launcher and the collector. The sweep's peak must fit in what the server accepts besides the
  connections it already serves; a server that runs out refuses tasks with "too many clients"
  (optuna issues #1347, #1115), one failed trial each. Behind a storage proxy
  (``cluster.storage_proxy``) the tasks hold none: the proxy's connections count instead. Behind
  a pooler (``cluster.postgres_pooler``) the server's limit is not the one that applies, and
  the check is left out.

Every lookup (the mount table, a partition's nodes, the server's connection counts) is a small
function of its own, so tests call it for real and hand the checks other values. See
``docs/storage.md`` for which storage is safe where.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from tunevlseg.cluster import slurm
from tunevlseg.tuning.storage import CONNECT_TIMEOUT_S, POSTGRES_CONNECTIONS_PER_PROCESS, StorageURL

if TYPE_CHECKING:
    from tunevlseg.config.grid import Expansion
    from tunevlseg.config.loader import Experiment
    from tunevlseg.config.schema import SlurmSettings

# ------------------------------------------------------------------------ file systems

NETWORK_FILE_SYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "cifs",
        "smb3",
        "smbfs",
        "smb2",
        "glusterfs",
        "afs",
        "panfs",
        "wekafs",
        "pvfs2",
        "orangefs",
        "ocfs2",
        "gfs2",
    }
)
"""Kernel file system types (``/proc/mounts``' third field) whose files other machines share."""
NETWORK_FUSE_SUBTYPES = frozenset(
    {
        "sshfs",
        "glusterfs",
        "ceph-fuse",
        "ceph",
        "s3fs",
        "gcsfuse",
        "juicefs",
        "rclone",
        "quobyte",
        "lizardfs",
        "moosefs",
        "mfs",
        "beegfs",
    }
)
"""The same for FUSE mounts, listed as ``fuse.<subtype>``."""
MOUNTS_FILE = Path("/proc/mounts")


@dataclass(frozen=True)
class Mount:
    """One line of the mount table."""

    source: str
    point: str
    fstype: str

    @property
    def network(self) -> bool:
        return is_network_file_system(self.fstype)


def is_network_file_system(fstype: str) -> bool:
    """True for file systems that other machines share (``nfs4``, ``lustre``, ``fuse.sshfs``)."""
    kind = fstype.lower()
    if kind.startswith("fuse."):
        return kind.removeprefix("fuse.") in NETWORK_FUSE_SUBTYPES
    return kind in NETWORK_FILE_SYSTEMS


def _unescape(field: str) -> str:
    """The kernel writes a space, tab, newline or backslash in a path as an octal escape."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    """``/proc/mounts`` (or ``/etc/mtab``) text -> mounts, in the table's order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts.append(Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2]))
    return mounts


def read_mounts() -> str | None:
    """This machine's mount table, or None where there is none to read (not Linux)."""
    try:
        return MOUNTS_FILE.read_text()
    except OSError:
        return None


def mount_of(path: Path, mounts: str | None = None) -> Mount | None:
    """The mount that holds ``path``: the longest mount point that is ``path`` or one of its
    folders; of two equal mount points the later, which hides the earlier (an automounter's
    ``autofs`` entry, then the NFS mount over it).

    ``mounts`` is a mount table's text (default: this machine's). ``path`` need not exist: its
    existing part has its symbolic links resolved, the rest is taken as written.
    """
    text = read_mounts() if mounts is None else mounts
    if text is None:
        return None
    target = PurePosixPath(Path(path).expanduser().resolve())
    best: Mount | None = None
    best_depth = -1
    for mount in parse_mounts(text):
        point = PurePosixPath(mount.point)
        if (point == target or point in target.parents) and len(point.parts) >= best_depth:
            best, best_depth = mount, len(point.parts)
    return best


# ------------------------------------------------------------------------ nodes


_FEATURE = r"[A-Za-z0-9_.:+-]+"


def _constraint_test(constraint: str | None) -> Callable[[frozenset[str]], bool] | None:
    """A test of a node's features for the simple constraints (``a``, ``a&b``, ``a|b``), or
    None when the constraint narrows nothing we can tell (none given; counts, brackets, ``!``)."""
    if not constraint:
        return None
    text = constraint.strip()
    if re.fullmatch(rf"{_FEATURE}(&{_FEATURE})*", text):
        wanted = frozenset(text.split("&"))
        return lambda features: wanted <= features
    if re.fullmatch(rf"{_FEATURE}(\|{_FEATURE})+", text):
        anyof = frozenset(text.split("|"))
        return lambda features: bool(anyof & features)
    return None


def _host_list(value: object, expand: Callable[[str], list[str]]) -> set[str] | None:
    """An sbatch host list (``node[1-4]``) as names; None for none or a file of names."""
    if not isinstance(value, str) or not value.strip() or "/" in value:
        return None
    return set(expand(value.strip()))


def eligible_nodes(
    nodes: Mapping[str, frozenset[str]],
    settings: SlurmSettings,
    expand: Callable[[str], list[str]] = slurm.hostnames,
) -> set[str]:
    """The nodes of ``nodes`` (name -> features, :func:`tunevlseg.cluster.slurm.partition_nodes`)
    that a task may run on under the experiment's SLURM settings: ``extra.nodelist`` keeps the
    listed ones, ``extra.exclude`` drops some, a simple ``constraint`` keeps the nodes having
    its features. Anything else (GPU types, reservations) is taken to allow every node."""
    names = set(nodes)
    listed = _host_list(settings.extra.get("nodelist"), expand)
    if listed is not None:
        names &= listed
    excluded = _host_list(settings.extra.get("exclude"), expand)
    if excluded is not None:
        names -= excluded
    test = _constraint_test(settings.constraint)
    if test is not None:
        names = {name for name in names if test(nodes[name])}
    return names


def _examples(names: set[str], shown: int = 3) -> str:
    ordered = sorted(names)
    more = f", ... ({len(ordered)} in all)" if len(ordered) > shown else ""
    return ", ".join(ordered[:shown]) + more


def journal_problems(
    experiment: Experiment,
    storage_url: StorageURL,
    *,
    local: bool,
    mounts: str | None = None,
    nodes: Mapping[str, frozenset[str]] | None = None,
) -> list[str]:
    """A journal on a network file system while the tasks can run on several nodes.

    ``mounts`` (a mount table's text) and ``nodes`` (name -> features) default to this
    machine's ``/proc/mounts`` and ``sinfo``'s answer; SLURM is only asked when the journal is
    on a network file system. Call it for SLURM launches with SLURM answering.
    """
    cluster = experiment.spec.cluster
    if local or storage_url.scheme != "journal" or cluster.allow_journal_on_network_fs:
        return []
    assert storage_url.path is not None
    mount = mount_of(storage_url.path.parent, mounts)
    if mount is None or not mount.network:
        return []
    partition = cluster.slurm.partition
    where = f"partition {partition}" if partition else "the default partition"
    try:
        table = slurm.partition_nodes(partition) if nodes is None else nodes
        names = eligible_nodes(table, cluster.slurm)
    except slurm.SlurmError as error:
        return [
            (
                f"the journal {storage_url.path} is on {mount.fstype}, a network file system, and "
                f"the nodes of {where} could not be listed ({error}), so the tasks may run on "
                "several machines; use a postgresql:// storage (docs/storage.md; with "
                "cluster.storage_proxy for many tasks) or set "
                "cluster.allow_journal_on_network_fs: true"
            )
        ]
    if len(names) <= 1:
        return []
    return [
        (
            f"the journal {storage_url.path} is on {mount.fstype} (a network file system mounted "
            f"at {mount.point}), and the tasks can run on {len(names)} nodes of {where} "
            f"({_examples(names)}): Optuna's journal lock file is not reliable across machines, "
            "so two tasks' records can be lost or fused into one line (docs/storage.md). Use a "
            "postgresql:// storage (behind a storage proxy, cluster.storage_proxy, when the tasks "
            "outnumber the server's connections), keep the tasks on one node (cluster.slurm.extra: {nodelist: "
            "NODE}), or accept the risk with cluster.allow_journal_on_network_fs: true"
        )
    ]


# ------------------------------------------------------------------------ connections

OWN_PROCESSES = 2
"""Storages the sweep holds open besides its tasks': a SLURM launch's launcher and collector
job; a local launch's launcher and its progress display (its report comes after the tasks)."""
SERVER_QUERY = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())
"""
"""``SHOW max_connections`` and the reserved slots (``reserved_connections`` exists from
PostgreSQL 16 on), and the client connections open now, this one left out. Background
processes (autovacuum, WAL writer) appear in ``pg_stat_activity`` but do not take a slot."""
STATEMENT_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class ServerConnections:
    """What a PostgreSQL server accepts and serves now."""

    max_connections: int
    superuser_reserved: int
    in_use: int
    reserved: int = 0

    @property
    def free(self) -> int:
        """Connections an ordinary role can still open."""
        return self.max_connections - self.superuser_reserved - self.reserved - self.in_use

    def describe(self) -> str:
        reserved = f" - {self.reserved} reserved_connections" if self.reserved else ""
        return (
            f"{self.max_connections} max_connections - {self.superuser_reserved} "
            f"superuser_reserved_connections{reserved} - {self.in_use} in use = {self.free}"
        )


def server_connections(url: StorageURL) -> ServerConnections:
    """Ask the server of a ``postgresql://`` storage, read-only, through the storage's driver.

    One connection, closed before returning (no pool); one read-only transaction with a
    statement timeout, set in SQL rather than as startup options, which poolers may refuse.
    A server that does not answer fails after the URL's ``connect_timeout`` or
    :data:`~tunevlseg.tuning.storage.CONNECT_TIMEOUT_S`.
    """
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    connect_args: dict[str, object] = {}
    if "connect_timeout" not in parse_qs(urlsplit(url.url).query):
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    engine = sqlalchemy.create_engine(url.url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SET TRANSACTION READ ONLY"))
            connection.execute(
                sqlalchemy.text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            )
            row = connection.execute(sqlalchemy.text(SERVER_QUERY)).one()
            connection.rollback()
    finally:
        engine.dispose()
    return ServerConnections(
        max_connections=int(row[0]),
        superuser_reserved=int(row[1]),
        reserved=int(row[2]),
        in_use=int(row[3]),
    )


@dataclass(frozen=True)
class Concurrency:
    """The most tasks of one launch that can run at once."""

    parallelism: int
    arrays: int
    budget: int
    local: bool

    @property
    def tasks(self) -> int:
        return min(self.parallelism * self.arrays, self.budget)

    def describe(self) -> str:
        if self.local:
            how = f"parallelism {self.parallelism} on this machine"
        else:
            how = f"cluster.parallelism {self.parallelism} per array x {self.arrays} array(s)"
        if self.tasks < self.parallelism * self.arrays:
            how += f", capped by the {self.budget} trial(s) of the launched studies"
        return how


def sweep_concurrency(
    expansion: Expansion, *, local: bool, parallelism: int, max_array_size: int
) -> Concurrency:
    """Local: ``parallelism`` processes. SLURM: every array of the plan runs up to
    ``parallelism`` tasks at once (its ``%N`` throttle), side by side; a plan of more than
    ``max_array_size`` tasks is several arrays. Never more than the launched studies' budget."""
    budget = sum(spec.n_trials for spec in expansion.studies)
    arrays = 1 if local else max(1, math.ceil(budget / max(1, max_array_size)))
    return Concurrency(parallelism, arrays, budget, local)


def peak_connections(concurrency: Concurrency, proxy_connections: int | None = None) -> int:
    """The tasks' connections (or, behind a storage proxy, the proxy's) + the launcher's and
    the collector's (or the local progress display's)."""
    per = POSTGRES_CONNECTIONS_PER_PROCESS
    tasks = concurrency.tasks * per if proxy_connections is None else proxy_connections
    return tasks + OWN_PROCESSES * per


def _server_name(url: StorageURL) -> str:
    parts = urlsplit(url.url)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def connection_problems(
    url: StorageURL,
    concurrency: Concurrency,
    server: ServerConnections,
    proxy_connections: int | None = None,
) -> list[str]:
    """The sweep's peak connections against what ``server`` accepts besides its current ones.

    ``proxy_connections``: the tasks go through a storage proxy holding that many.
    """
    per = POSTGRES_CONNECTIONS_PER_PROCESS
    own = OWN_PROCESSES * per
    peak = peak_connections(concurrency, proxy_connections)
    if peak <= server.free:
        return []
    if proxy_connections is not None:
        return [
            (
                f"the PostgreSQL server {_server_name(url)} cannot take this sweep's connections: "
                f"the storage proxy's {proxy_connections} (cluster.storage_proxy.connections) + "
                f"{own} for the launcher and the collector = {peak}, but the server accepts "
                f"{max(0, server.free)} more ({server.describe()}). To fix: lower "
                "cluster.storage_proxy.connections (at least 2), close other clients or raise the "
                "server's max_connections"
            )
        ]
    setting = (
        "--parallelism (default: cluster.parallelism)"
        if concurrency.local
        else "cluster.parallelism"
    )
    others = (
        "the launcher and its progress display"
        if concurrency.local
        else "the launcher and the collector"
    )
    fits = (server.free - own) // (per * concurrency.arrays)
    if fits >= 1:
        fix = f"lower {setting} to {fits}, or raise the server's max_connections"
    else:
        fix = "not even one task fits: close other clients or raise the server's max_connections"
    if not concurrency.local:
        fix += (
            "; or put the tasks behind a storage proxy (cluster.storage_proxy: {}), which holds "
            "a few connections for all of them; or, if the URL names a pooler such as "
            "PgBouncer, say so with cluster.postgres_pooler: true"
        )
    return [
        (
            f"the PostgreSQL server {_server_name(url)} cannot take this sweep's connections: "
            f"{concurrency.tasks} tasks at once ({concurrency.describe()}) x {per} connections "
            f"each + {own} for {others} = {peak}, but the server accepts "
            f"{max(0, server.free)} more ({server.describe()}). To fix: {fix} (docs/storage.md: "
            "how many tasks a server takes)"
        )
    ]


def max_array_size(experiment: Experiment, slurm_answers: bool) -> int:
    """The array size a SLURM launch will use (the experiment's, else SLURM's MaxArraySize)."""
    configured = experiment.spec.cluster.slurm.max_array_size
    if configured is not None:
        return configured
    if slurm_answers:
        try:
            return slurm.max_array_size()
        except slurm.SlurmError:
            pass
    return slurm.DEFAULT_MAX_ARRAY_SIZE
