"""Shared fixtures: the real services (SLURM) the integration tests need.

A test that needs a daemon skips when it is absent on a developer's machine, and fails
instead when ``TVLS_REQUIRE_SERVICES=1`` (CI), so a broken service can never pass as "skipped".
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _need(service: str, ok: bool) -> None:
    if ok:
        return
    if os.environ.get("TVLS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{service} is required (TVLS_REQUIRE_SERVICES=1) but not running")
    pytest.skip(f"{service} is not running here (start it with slurm/up.sh)")


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The real single-node SLURM cluster of slurm/up.sh."""
    from tunevlseg.cluster import slurm

    _need("SLURM", slurm.available())


def current_min_job_age() -> int:
    """The running slurmctld's ``MinJobAge`` in seconds (``scontrol`` prints "300 sec")."""
    from tunevlseg.cluster import slurm

    value = (slurm.config_value("MinJobAge") or "").split()
    return int(value[0]) if value and value[0].isdigit() else 300


def restart_slurmctld(
    max_array_size: int, accounting: bool = True, min_job_age: int | None = None
) -> None:
    """Restart slurmctld with other settings (``scontrol reconfigure`` does not apply them).

    ``min_job_age`` None keeps the running value, so a restart for one setting never silently
    resets another fixture's (the cluster is shared by concurrent test sessions).
    """
    if min_job_age is None:
        min_job_age = current_min_job_age()
    pid_file = Path("/run/slurmctld.pid")
    pid = int(pid_file.read_text())
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    env = {
        **os.environ,
        "MAX_ARRAY_SIZE": str(max_array_size),
        "WITH_DBD": "1" if accounting else "0",
        "KEEP_STATE": "1",
        "MIN_JOB_AGE": str(min_job_age),
    }
    subprocess.run(
        ["bash", str(ROOT / "slurm" / "up.sh")], env=env, check=True, capture_output=True
    )


@pytest.fixture
def small_cluster_without_accounting(slurm_cluster: None) -> Iterator[int]:
    """MaxArraySize=11 and no accounting (sacct fails), as on some clusters; restored after."""
    from tunevlseg.cluster import slurm

    before = slurm.max_array_size()
    restart_slurmctld(11, accounting=False)
    try:
        yield 11
    finally:
        restart_slurmctld(before, accounting=True)


@pytest.fixture
def short_min_job_age(slurm_cluster: None) -> Iterator[int]:
    """MinJobAge=5 s, so ended jobs are purged (squeue: "Invalid job id") within about a minute.

    The other settings are kept as they are, and every one is restored after the test: the
    other sessions sharing the cluster must not see their ended jobs vanish for long.
    """
    from tunevlseg.cluster import slurm

    before = (slurm.max_array_size(), slurm.has_accounting(), current_min_job_age())
    restart_slurmctld(before[0], accounting=before[1], min_job_age=5)
    try:
        yield 5
    finally:
        restart_slurmctld(before[0], accounting=before[1], min_job_age=before[2])


POSTGRES_URL = os.environ.get("TVLS_TEST_POSTGRES", "postgresql://tvls@127.0.0.1:5432/tvls")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL server of postgres/up.sh; the password comes from PGPASSWORD."""
    os.environ.setdefault("PGPASSWORD", "tvls-dev")
    try:
        import psycopg2

        psycopg2.connect(POSTGRES_URL.replace("+psycopg2", ""), connect_timeout=5).close()
        ok = True
    except Exception:  # noqa: BLE001 - any failure to connect means: no usable server
        ok = False
    _need("PostgreSQL", ok)
    return POSTGRES_URL


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module's tests: tiny models gain nothing from a second one on a
    busy 2-core machine, and fits compared bit for bit need the sums in one order."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
