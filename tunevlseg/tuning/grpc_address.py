"""The address file of a sweep's storage proxy: where the proxy listens, once it listens.

A proxy job's node and port are only known once it runs, and a proxy killed or requeued comes
back on another node and port. So the proxy writes ``{"host", "port", "job_id", ...}`` into
``<output_dir>/<sweep>/storage-proxy.json`` (a shared folder, as every sweep file is) when it
listens, and marks it ``stopped`` when it ends by itself; the launcher marks it stopped before it
starts a replacement. Tasks read it before they first connect and again whenever the proxy does
not answer (:mod:`tunevlseg.tuning.proxy_client`). The file is replaced by a rename of a
complete, fsynced file, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path


class ProxyAddressUnavailable(ConnectionError):
    """No proxy listens now (no file yet, or the last one stopped): a transient storage error,
    which :func:`tunevlseg.tuning.retry.with_retries` waits out (it is an ``OSError``)."""


@dataclass(frozen=True)
class ProxyAddress:
    """Where a storage proxy listens, and which SLURM job runs it."""

    host: str
    port: int
    job_id: str | None
    pid: int
    started_at: float
    stopped: bool = False

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


def write_address(path: Path, address: ProxyAddress) -> None:
    """Atomic replace: a temporary file in the same folder, fsynced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as file:
        file.write(json.dumps(asdict(address), sort_keys=True))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def read_address(path: Path) -> ProxyAddress | None:
    """The recorded address, stopped or not; None when there is no (readable) file."""
    try:
        data = json.loads(path.read_text())
        fields = ProxyAddress.__dataclass_fields__
        return ProxyAddress(**{key: data[key] for key in fields if key in data})
    except (OSError, ValueError, TypeError):
        return None


def current_address(path: Path) -> ProxyAddress:
    """The address of the proxy that listens now.

    Raises:
        ProxyAddressUnavailable: no file yet (the proxy job has not started) or the proxy in it
            has stopped (a new one is on its way, or the sweep has ended).
    """
    address = read_address(path)
    if address is None:
        raise ProxyAddressUnavailable(
            f"the storage proxy has not written its address to {path} yet"
        )
    if address.stopped:
        raise ProxyAddressUnavailable(
            f"the storage proxy of {path} (job {address.job_id}) has stopped; waiting for a new one"
        )
    return address


def mark_stopped(path: Path, job_id: str | None = None) -> None:
    """Say that the proxy in ``path`` no longer serves (only that job's, when ``job_id`` is
    given), so tasks wait for the next one instead of calling whatever now holds its port."""
    address = read_address(path)
    if address is None or address.stopped or (job_id is not None and address.job_id != job_id):
        return
    write_address(path, replace(address, stopped=True))
