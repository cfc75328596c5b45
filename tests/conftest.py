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


def restart_slurmctld(max_array_size: int) -> None:
    """Restart slurmctld with another MaxArraySize (``scontrol reconfigure`` does not apply it)."""
    pid_file = Path("/run/slurmctld.pid")
    pid = int(pid_file.read_text())
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    env = {**os.environ, "MAX_ARRAY_SIZE": str(max_array_size), "KEEP_STATE": "1"}
    subprocess.run(["bash", str(ROOT / "slurm" / "up.sh")], env=env, check=True, capture_output=True)


@pytest.fixture
def small_max_array_size(slurm_cluster: None) -> Iterator[int]:
    """MaxArraySize=11 for one test, restored afterwards."""
    from tunevlseg.cluster import slurm

    before = slurm.max_array_size()
    restart_slurmctld(11)
    try:
        yield 11
    finally:
        restart_slurmctld(before)
