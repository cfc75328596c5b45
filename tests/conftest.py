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


def restart_slurmctld(max_array_size: int, accounting: bool = True) -> None:
    """Restart slurmctld with other settings (``scontrol reconfigure`` does not apply them)."""
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
    }
    subprocess.run(["bash", str(ROOT / "slurm" / "up.sh")], env=env, check=True, capture_output=True)


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


POSTGRES_URL = os.environ.get("TVLS_TEST_POSTGRES", "postgresql://tvls@127.0.0.1:5432/tvls")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL server of postgres/up.sh; the password comes from PGPASSWORD."""
    os.environ.setdefault("PGPASSWORD", "tvls-dev")
    try:
        import psycopg2

        psycopg2.connect(POSTGRES_URL.replace("+psycopg2", ""), connect_timeout=5).close()
        ok = True
    except Exception:
        ok = False
    _need("PostgreSQL", ok)
    return POSTGRES_URL
