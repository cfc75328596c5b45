"""A storage unsafe for the way a sweep runs is refused before anything is written.

* A journal file on a network file system while the tasks can land on several nodes: Optuna's
  journal lock is not reliable across machines (optuna issue #5138). This machine is one SLURM
  node on a local disk, so the lookups run here for real (``/proc/mounts``, ``sinfo``) and the
  multi-node NFS case gets a fake mount table and node list through the same code.
* PostgreSQL: the sweep's peak connections against what the real server accepts.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tunevlseg.cli import launch as launch_cli
from tunevlseg.cluster import slurm, storage_safety
from tunevlseg.cluster.preflight import run_preflight
from tunevlseg.cluster.storage_safety import (
    Concurrency,
    ServerConnections,
    connection_problems,
    eligible_nodes,
    journal_problems,
    mount_of,
    server_connections,
    sweep_concurrency,
)
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import Experiment, load_experiment
from tunevlseg.config.schema import SlurmSettings
from tunevlseg.tuning.storage import (
    POSTGRES_CONNECTIONS_PER_PROCESS,
    parse_storage_url,
    sweep_storage,
)

TEXT = """\
name: {name}
output_dir: out
models: [{{name: clipseg, pretrained: ./tiny, synthetic: true}}]
learners: [coop]
datasets:
  - {{name: synth, root: data, synthetic: true}}
search: {{n_trials: {trials}}}
{extra}"""


def _experiment(tmp_path: Path, *, trials: int = 4, extra: str = "", name: str = "safe") -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(TEXT.format(name=name, trials=trials, extra=extra))
    return path


def _run(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = launch_cli.main([str(path), *args])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------ file systems


def _findmnt(path: Path) -> tuple[str, str]:
    """util-linux's answer: the mount point and file system type holding ``path``."""
    done = subprocess.run(
        ["findmnt", "-n", "-o", "TARGET,FSTYPE", "--target", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    target, fstype = done.stdout.split()
    return target, fstype


@pytest.mark.parametrize("where", ["tmp", "tmp-new-folder", "proc", "root"])
def test_the_mount_of_a_folder_is_what_findmnt_says_on_this_machine(
    tmp_path: Path, where: str
) -> None:
    path = {
        "tmp": tmp_path,
        "tmp-new-folder": tmp_path / "not" / "yet",  # a journal's folder before the first launch
        "proc": Path("/proc/self"),
        "root": Path("/"),
    }[where]
    mount = mount_of(path)  # the real /proc/mounts
    assert mount is not None
    assert (mount.point, mount.fstype) == _findmnt(tmp_path if where == "tmp-new-folder" else path)


FAKE_MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
filer:/export/shared /tvls-fake/shared nfs4 rw,vers=4.2,hard 0 0
/dev/vdb1 /tvls-fake/shared2 ext4 rw 0 0
10.0.0.5@tcp:/scratch /tvls-fake/lustre lustre rw,flock 0 0
auto.home /tvls-fake/home autofs rw 0 0
filer:/home /tvls-fake/home nfs rw,vers=3 0 0
//nas/lab\\040data /tvls-fake/my\\040data cifs rw 0 0
alice@login:/data /tvls-fake/sshfs fuse.sshfs rw 0 0
tmpfs /tvls-fake/shared/tmp tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "point", "fstype", "network"),
    [
        ("/tvls-fake/shared/sweeps/med", "/tvls-fake/shared", "nfs4", True),
        ("/tvls-fake/shared", "/tvls-fake/shared", "nfs4", True),
        (
            "/tvls-fake/shared2/sweeps",
            "/tvls-fake/shared2",
            "ext4",
            False,
        ),  # a prefix, not a folder
        ("/tvls-fake/shared/tmp/x", "/tvls-fake/shared/tmp", "tmpfs", False),  # the longest wins
        ("/tvls-fake/lustre/u/sweep", "/tvls-fake/lustre", "lustre", True),
        (
            "/tvls-fake/home/alice",
            "/tvls-fake/home",
            "nfs",
            True,
        ),  # the automounted NFS, not autofs
        ("/tvls-fake/my data/journal", "/tvls-fake/my data", "cifs", True),  # \040 is a space
        ("/tvls-fake/sshfs/j", "/tvls-fake/sshfs", "fuse.sshfs", True),
        ("/tvls-fake/elsewhere", "/", "ext4", False),
    ],
)
def test_the_longest_mount_point_decides_the_file_system(
    path: str, point: str, fstype: str, network: bool
) -> None:
    mount = mount_of(Path(path), FAKE_MOUNTS)
    assert mount is not None
    assert (mount.point, mount.fstype, mount.network) == (point, fstype, network)


# ------------------------------------------------------------------------ nodes


def _partitions() -> dict[str, tuple[bool, set[str]]]:
    """``scontrol show partition``: name -> (default?, node names), the other way to ask."""
    done = subprocess.run(
        ["scontrol", "show", "partition", "-o"], capture_output=True, text=True, check=True
    )
    partitions = {}
    for line in done.stdout.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        nodes = set() if fields["Nodes"] == "(null)" else set(slurm.hostnames(fields["Nodes"]))
        partitions[fields["PartitionName"]] = (fields.get("Default") == "YES", nodes)
    return partitions


def test_a_partitions_nodes_come_from_sinfo_as_scontrol_lists_them(slurm_cluster: None) -> None:
    partitions = _partitions()
    [default] = [name for name, (is_default, _) in partitions.items() if is_default]
    assert set(slurm.partition_nodes(None)) == partitions[default][1]
    for name, (_, nodes) in partitions.items():
        assert set(slurm.partition_nodes(name)) == nodes
    every = set().union(*(nodes for _, nodes in partitions.values()))
    assert set(slurm.partition_nodes(",".join(partitions))) == every
    assert slurm.partition_nodes("tvls-no-such-partition") == {}
    # This test cluster: one node in every partition, so no sweep here spans machines.
    assert len(slurm.partition_nodes(None)) == 1


NODES = {
    "n1": frozenset({"a100", "ib"}),
    "n2": frozenset({"a100"}),
    "n3": frozenset({"v100"}),
}


@pytest.mark.parametrize(
    ("settings", "eligible"),
    [
        ({}, {"n1", "n2", "n3"}),
        ({"constraint": "a100"}, {"n1", "n2"}),
        ({"constraint": "a100&ib"}, {"n1"}),
        ({"constraint": "v100|ib"}, {"n1", "n3"}),
        ({"constraint": "[a100*2]"}, {"n1", "n2", "n3"}),  # not simple: every node stays possible
        ({"extra": {"nodelist": "n2"}}, {"n2"}),
        ({"extra": {"nodelist": "n[1-2]"}}, {"n1", "n2"}),
        ({"extra": {"exclude": "n[2-3]"}}, {"n1"}),
        ({"extra": {"nodelist": "/etc/tvls-nodes"}}, {"n1", "n2", "n3"}),  # a file: not read
    ],
)
def test_a_constraint_or_a_node_list_narrows_where_tasks_run(
    slurm_cluster: None, settings: dict, eligible: set[str]
) -> None:
    """Host lists are expanded by the real ``scontrol show hostnames``."""
    assert eligible_nodes(NODES, SlurmSettings(**settings)) == eligible


# ------------------------------------------------------------------------ the journal check


def _nfs_table(folder: Path) -> str:
    return f"/dev/vda1 / ext4 rw 0 0\nfiler:/export {folder.resolve()} nfs4 rw,vers=4.2 0 0\n"


def _journal_problems(
    experiment: Experiment, *, mounts: str, local: bool = False, nodes: dict = NODES
) -> list[str]:
    return journal_problems(
        experiment, sweep_storage(experiment), local=local, mounts=mounts, nodes=nodes
    )


def test_a_journal_on_nfs_with_tasks_on_several_nodes_is_refused_with_one_message(
    tmp_path: Path,
) -> None:
    experiment = load_experiment(_experiment(tmp_path))
    [problem] = _journal_problems(experiment, mounts=_nfs_table(tmp_path))
    journal = tmp_path.resolve() / "out" / "optuna.journal"
    mounted = f"(a network file system mounted at {tmp_path.resolve()})"
    assert problem.startswith(f"the journal {journal} is on nfs4 {mounted}")
    assert "the tasks can run on 3 nodes of the default partition (n1, n2, n3)" in problem
    assert "Use a postgresql:// storage" in problem and "docs/storage.md" in problem
    assert problem.endswith("or accept the risk with cluster.allow_journal_on_network_fs: true")


@pytest.mark.parametrize(
    ("why", "extra", "local", "nodes"),
    [
        ("a local launch", "", True, NODES),
        ("one node", "", False, {"n1": frozenset()}),
        ("pinned by a constraint", "cluster: {slurm: {constraint: ib}}\n", False, NODES),
        ("the user opted in", "cluster: {allow_journal_on_network_fs: true}\n", False, NODES),
    ],
)
def test_a_journal_on_nfs_is_accepted_when_one_machine_writes_or_the_user_accepts_it(
    tmp_path: Path, why: str, extra: str, local: bool, nodes: dict
) -> None:
    experiment = load_experiment(_experiment(tmp_path, extra=extra))
    assert (
        _journal_problems(experiment, local=local, mounts=_nfs_table(tmp_path), nodes=nodes) == []
    ), why


def test_a_journal_on_a_local_disk_or_a_database_is_never_refused(tmp_path: Path) -> None:
    local_disk = "/dev/vda1 / ext4 rw 0 0\n"
    assert _journal_problems(load_experiment(_experiment(tmp_path)), mounts=local_disk) == []
    postgres = load_experiment(_experiment(tmp_path, extra="storage: postgresql://u@db/x\n"))
    assert _journal_problems(postgres, mounts=_nfs_table(tmp_path)) == []


def test_launch_and_dry_run_refuse_a_journal_on_nfs_across_nodes_before_writing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    slurm_cluster: None,
) -> None:
    """The real launch path on the real SLURM, with only the two lookups answering as a
    multi-node cluster with the output folder on NFS would."""
    monkeypatch.setattr(storage_safety, "read_mounts", lambda: _nfs_table(tmp_path))
    monkeypatch.setattr(slurm, "partition_nodes", lambda partition: NODES)
    path = _experiment(tmp_path)
    code, err = _run(path, capsys, "--dry-run")
    assert code == 1 and "1 problem(s): a launch would stop at" in err
    assert "is on nfs4" in err and "cluster.allow_journal_on_network_fs: true" in err
    code, err = _run(path, capsys)
    assert code == 1 and "is on nfs4" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # no journal, no jobs

    allowed = _experiment(tmp_path, extra="cluster: {allow_journal_on_network_fs: true}\n")
    code, err = _run(allowed, capsys, "--dry-run")
    assert code == 0, err


def test_on_this_single_node_cluster_a_journal_launch_passes(
    tmp_path: Path, slurm_cluster: None
) -> None:
    experiment = load_experiment(_experiment(tmp_path))
    assert run_preflight(experiment, local=False).problems == []
    # Even were the output folder on NFS: sinfo (asked for real) lists one node.
    url = sweep_storage(experiment)
    assert journal_problems(experiment, url, local=False, mounts=_nfs_table(tmp_path)) == []


# ------------------------------------------------------------------------ connections


def test_the_suggested_parallelism_is_the_largest_that_fits() -> None:
    url = parse_storage_url("postgresql://tvls@db.example:5433/sweeps")
    server = ServerConnections(max_connections=100, superuser_reserved=3, in_use=10)
    assert server.free == 87
    per = POSTGRES_CONNECTIONS_PER_PROCESS
    assert (
        connection_problems(url, Concurrency(41, 1, 1000, local=False), server) == []
    )  # 41*2 + 4 = 86
    [problem] = connection_problems(url, Concurrency(42, 1, 1000, local=False), server)
    assert problem == (
        "the PostgreSQL server db.example:5433/sweeps cannot take this sweep's connections: 42 "
        f"tasks at once (cluster.parallelism 42 per array x 1 array(s)) x {per} connections each "
        "+ 4 for the launcher and the collector = 88, but the server accepts 87 more (100 "
        "max_connections - 3 superuser_reserved_connections - 10 in use = 87). To fix: lower "
        "cluster.parallelism to 41, or raise the server's max_connections; or put the tasks "
        "behind a storage proxy (cluster.storage_proxy: {}), which holds a few connections for "
        "all of them; or, if the URL names a pooler such as PgBouncer, say so with "
        "cluster.postgres_pooler: true (docs/storage.md: how many tasks a server takes)"
    )
    # Three arrays run side by side, each up to the throttle: 13 * 3 * 2 + 4 = 82 fits, 14 does not.
    [problem] = connection_problems(url, Concurrency(20, 3, 2500, local=False), server)
    assert "lower cluster.parallelism to 13," in problem
    assert connection_problems(url, Concurrency(13, 3, 2500, local=False), server) == []
    assert connection_problems(url, Concurrency(14, 3, 2500, local=False), server) != []
    [problem] = connection_problems(url, Concurrency(50, 1, 1000, local=True), server)
    assert "(parallelism 50 on this machine)" in problem
    assert "lower --parallelism (default: cluster.parallelism) to 41" in problem
    full = ServerConnections(max_connections=100, superuser_reserved=3, in_use=97)
    [problem] = connection_problems(url, Concurrency(1, 1, 10, local=False), full)
    assert "accepts 0 more" in problem and "not even one task fits" in problem


def test_concurrent_tasks_are_arrays_times_parallelism_and_never_more_than_the_trials(
    tmp_path: Path,
) -> None:
    expansion = expand(load_experiment(_experiment(tmp_path, trials=2500)))
    slurm_run = sweep_concurrency(expansion, local=False, parallelism=16, max_array_size=1001)
    assert (slurm_run.arrays, slurm_run.tasks) == (3, 48)
    local_run = sweep_concurrency(expansion, local=True, parallelism=4, max_array_size=1)
    assert (local_run.arrays, local_run.tasks) == (1, 4)
    few = expand(load_experiment(_experiment(tmp_path, trials=3)))
    small = sweep_concurrency(few, local=False, parallelism=100, max_array_size=1001)
    assert small.tasks == 3 and "capped by the 3 trial(s)" in small.describe()


def _show(postgres_url: str, setting: str) -> int:
    import psycopg2

    connection = psycopg2.connect(postgres_url.replace("+psycopg2", ""), connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SHOW {setting}")
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def _studies_of(postgres_url: str, sweep: str) -> int:
    """Studies of the sweep in the server's tables (0 when Optuna never created them)."""
    import psycopg2

    connection = psycopg2.connect(postgres_url.replace("+psycopg2", ""), connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('public.studies') IS NOT NULL")
            if not cursor.fetchone()[0]:
                return 0
            cursor.execute("SELECT count(*) FROM studies WHERE study_name LIKE %s", (f"{sweep}/%",))
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def test_the_servers_limits_are_read_from_the_real_server(postgres_url: str) -> None:
    server = server_connections(parse_storage_url(postgres_url))
    assert server.max_connections == _show(postgres_url, "max_connections")
    assert server.superuser_reserved == _show(postgres_url, "superuser_reserved_connections")
    assert 0 <= server.in_use < server.max_connections
    assert (
        server.free
        == server.max_connections - server.superuser_reserved - server.reserved - server.in_use
    )


def test_a_parallelism_beyond_the_real_servers_limit_is_refused_before_any_write(
    tmp_path: Path,
    postgres_url: str,
    slurm_cluster: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    max_connections = _show(postgres_url, "max_connections")
    reserved = _show(postgres_url, "superuser_reserved_connections")
    too_many = max_connections  # alone, its tasks' connections exceed the server's maximum
    sweep = f"pg{uuid.uuid4().hex[:8]}"

    def write(parallelism: int) -> Path:
        return _experiment(
            tmp_path,
            name=sweep,
            trials=too_many,
            extra=f"storage: {postgres_url}\ncluster:\n  parallelism: {parallelism}\n"
            "  slurm: {max_array_size: 1001}\n",  # fixed: other tests may change SLURM's
        )

    assert run_preflight(load_experiment(write(2)), local=False).problems == []

    checked = run_preflight(load_experiment(write(too_many)), local=False)
    [problem] = checked.problems
    peak = too_many * POSTGRES_CONNECTIONS_PER_PROCESS + 4
    assert (
        f"{too_many} tasks at once (cluster.parallelism {too_many} per array x 1 array(s))"
        in problem
    )
    assert f"= {peak}, but the server accepts" in problem
    assert (
        f"({max_connections} max_connections - {reserved} superuser_reserved_connections" in problem
    )
    suggested = int(re.search(r"lower cluster\.parallelism to (\d+),", problem).group(1))
    assert (
        suggested >= 1
        and suggested * POSTGRES_CONNECTIONS_PER_PROCESS + 4 <= max_connections - reserved
    )

    code, err = _run(write(too_many), capsys, "--dry-run")
    assert code == 1 and f"= {peak}, but the server accepts" in err
    code, err = _run(write(2), capsys, "--dry-run", "--local", "--parallelism", str(too_many))
    assert code == 1 and f"{too_many} tasks at once (parallelism {too_many} on this machine)" in err

    # The launch itself stops at the same words; were the check to let it through, it would
    # stop here instead of running trials.
    from tunevlseg.cluster import launch

    def no_further(*args: object, **kwargs: object) -> None:
        raise AssertionError("the launch went past preflight")

    monkeypatch.setattr(launch, "_prepare", no_further)
    code, err = _run(write(2), capsys, "--local", "--parallelism", str(too_many))
    assert code == 1 and f"= {peak}, but the server accepts" in err
    assert _studies_of(postgres_url, sweep) == 0  # no study created
    assert not (tmp_path / "out").exists()
