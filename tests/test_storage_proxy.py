"""The gRPC storage proxy without SLURM: tasks' client finding a restarted proxy through the
address file, the configuration rules, and the checks before a launch (real PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunevlseg.cluster.proxy import make_server
from tunevlseg.cluster.storage_safety import Concurrency, ServerConnections, connection_problems
from tunevlseg.config.loader import ConfigError, load_experiment
from tunevlseg.tuning.grpc_address import (
    ProxyAddress,
    ProxyAddressUnavailable,
    mark_stopped,
    read_address,
    write_address,
)
from tunevlseg.tuning.proxy_client import ProxyStorage, ProxyUnavailable
from tunevlseg.tuning.retry import with_retries
from tunevlseg.tuning.storage import open_storage, parse_storage_url, proxy_task_url

pytest.importorskip("grpc")


class Proxy:
    """An in-process proxy over the test database, started and stopped at will."""

    def __init__(self, postgres_url: str) -> None:
        self.storage = optuna.storages.get_storage(open_storage(parse_storage_url(postgres_url)))
        self.server = None
        self.port = 0

    def start(self) -> int:
        self.server, self.port = make_server(self.storage, 0, threads=2)
        self.server.start()
        return self.port

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop(0).wait()


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[Proxy]:
    running = Proxy(postgres_url)
    running.start()
    yield running
    running.stop()


def _address(port: int, job: str = "1") -> ProxyAddress:
    return ProxyAddress("127.0.0.1", port, job, 0, 0.0)


def test_a_task_finds_a_proxy_restarted_on_another_port(proxy: Proxy, tmp_path: Path) -> None:
    address_file = tmp_path / "storage-proxy.json"
    write_address(address_file, _address(proxy.port))
    storage = open_storage(proxy_task_url(address_file))
    study = optuna.create_study(study_name=f"proxy-{uuid.uuid4().hex}", storage=storage)
    study.enqueue_trial({})  # WAITING, as the launcher leaves a task's trial
    trial_id = study.trials[0]._trial_id
    first = storage.target

    proxy.stop()  # the proxy job killed; a new one comes up elsewhere and says where
    write_address(address_file, _address(proxy.start(), job="2"))
    assert proxy.port != int(first.rsplit(":", 1)[1])

    claimed = with_retries(
        lambda: storage.set_trial_state_values(trial_id, TrialState.RUNNING),
        what="claiming",
        budget_s=30,
    )
    assert claimed
    assert storage.target == f"127.0.0.1:{proxy.port}"
    assert storage.get_trial(trial_id).state == TrialState.RUNNING


def test_a_stopped_or_missing_proxy_is_an_outage_to_wait_out(proxy: Proxy, tmp_path: Path) -> None:
    address_file = tmp_path / "storage-proxy.json"
    waiting = ProxyStorage(None, address_file)
    with pytest.raises(ProxyAddressUnavailable, match="has not written its address"):
        waiting.get_all_studies()
    write_address(address_file, _address(proxy.port, job="7"))
    mark_stopped(address_file, job_id="8")  # another job's stop leaves this address alone
    assert read_address(address_file) == _address(proxy.port, job="7")
    mark_stopped(address_file)
    with pytest.raises(ConnectionError, match="job 7\\) has stopped"):
        waiting.get_all_studies()


def test_a_proxy_nobody_runs_is_a_transient_error(tmp_path: Path) -> None:
    storage = open_storage(parse_storage_url("grpc://127.0.0.1:9"))
    with pytest.raises(ProxyUnavailable, match="UNAVAILABLE") as caught:
        storage.get_all_studies()
    assert isinstance(caught.value, OSError)  # what with_retries waits out


# --------------------------------------------------------------------------- configuration

SWEEP = """\
name: px
output_dir: out
storage: {storage}
models: [{{name: clipseg, pretrained: ./tiny, synthetic: true}}]
learners: [coop]
datasets: [{{name: d, root: data, synthetic: true}}]
search: {{n_trials: 1}}
cluster:
{cluster}
"""


def _write(tmp_path: Path, storage: str, cluster: str) -> Path:
    path = tmp_path / "px.yaml"
    path.write_text(SWEEP.format(storage=storage, cluster=cluster))
    return path


@pytest.mark.parametrize(
    ("storage", "cluster", "line", "words"),
    [
        ("journal://x.log", "  storage_proxy: {}", 9, "a storage proxy needs storage: postgresql"),
        ("grpc://h:5", "  storage_proxy: {port: 5}", 9, "the storage already is a proxy you run"),
        ("journal://x.log", "  postgres_pooler: true", 9, "a pooler sits in front of PostgreSQL"),
        ("grpc+file:///a/p.json", "  parallelism: 1", 3, "what the launcher gives the tasks"),
        ("grpc://h", "  parallelism: 1", 3, "grpc://host:port"),
        ("postgresql://u@h/db", "  storage_proxy: {connections: 1}", 9, "greater than or equal"),
    ],
)
def test_storage_proxy_settings_are_checked_with_their_line(
    tmp_path: Path, storage: str, cluster: str, line: int, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(_write(tmp_path, storage, cluster))
    assert f"px.yaml:{line}" in str(caught.value) and words in str(caught.value)


def test_behind_a_proxy_the_check_counts_the_proxys_connections() -> None:
    url = parse_storage_url("postgresql://u@db/x")
    server = ServerConnections(max_connections=100, superuser_reserved=3, in_use=0)
    many = Concurrency(500, 1, 5000, local=False)
    [refused] = connection_problems(url, many, server)
    assert "cluster.storage_proxy" in refused and "cluster.postgres_pooler" in refused
    assert connection_problems(url, many, server, proxy_connections=8) == []
    [proxy_too_big] = connection_problems(url, many, server, proxy_connections=96)
    assert "the storage proxy's 96 (cluster.storage_proxy.connections) + 4" in proxy_too_big
    assert "= 100, but the server accepts 97 more" in proxy_too_big


def _launch(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.launch", str(path), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_grpc_storage_nobody_serves_stops_the_launch_before_any_write(tmp_path: Path) -> None:
    path = _write(tmp_path, "grpc://127.0.0.1:9", "  parallelism: 1")
    done = _launch(path, "--local")
    assert done.returncode == 1, done.stderr
    assert "cannot open the study storage grpc://127.0.0.1:9: no storage proxy" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["px.yaml"]


def test_a_proxy_needs_a_reachable_database_before_anything_is_submitted(tmp_path: Path) -> None:
    path = _write(tmp_path, "postgresql://tvls@127.0.0.1:9/none", "  storage_proxy: {}")
    done = _launch(path)
    assert done.returncode == 1, done.stderr
    assert "cannot open the study storage postgresql+psycopg2://tvls@127.0.0.1:9/" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["px.yaml"]  # no manifest, no job


def test_a_pooler_is_not_held_to_the_servers_max_connections(
    postgres_url: str, tmp_path: Path
) -> None:
    from tunevlseg.cluster.preflight import run_preflight

    cluster = "  parallelism: 5000\n  slurm: {max_array_size: 100000}"
    counted = load_experiment(_write(tmp_path, postgres_url, cluster))
    spec = "search: {n_trials: 1}"
    text = counted.path.read_text().replace(spec, "search: {n_trials: 5000}")
    counted.path.write_text(text)
    refused = run_preflight(load_experiment(counted.path), local=False)
    assert any("cannot take this sweep's connections" in p for p in refused.problems)
    counted.path.write_text(text + "  postgres_pooler: true\n")
    pooled = run_preflight(load_experiment(counted.path), local=False)
    assert not any("connections" in p for p in pooled.problems), pooled.problems
