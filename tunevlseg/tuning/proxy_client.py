"""A task's storage behind a gRPC storage proxy, found again when the proxy moves.

Optuna's :class:`~optuna.storages.GrpcStorageProxy` talks to one ``host:port`` for its whole
life and raises ``grpc.RpcError`` when the proxy is gone. :class:`ProxyStorage` is the same
storage, plus two things a task running for hours needs:

* **Found again.** With an address file (a launcher-started proxy), every new connection reads
  the file; when a call fails because the proxy does not answer, the connection is dropped, so
  the next call reads the file again and reaches a proxy restarted on another node or port.
* **Retried like any outage.** A proxy that does not answer (or whose database does not) is
  raised as :class:`ProxyUnavailable`, a ``ConnectionError``: the errors
  :func:`tunevlseg.tuning.retry.with_retries` waits out for ``cluster.storage_retry_s``. The
  gRPC error is chained below it, so the retry warnings name it.

The channel sends keep-alive pings while a call waits, so a call to a proxy whose node died
without closing the connection fails within a minute instead of hanging.
"""

from __future__ import annotations

import abc
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage, GrpcStorageProxy

from tunevlseg.tuning.grpc_address import current_address

if TYPE_CHECKING:
    import grpc

KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]
"""Client pings every 20 s while a call waits; no answer in 20 s fails the call (UNAVAILABLE)."""
SERVER_OPTIONS = [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]
"""The proxy accepts those pings (gRPC's default answers pings under 5 min apart with GOAWAY)."""


class ProxyUnavailable(ConnectionError):
    """The storage proxy (or the database behind it) did not serve a call; retried by tasks."""


def _transient_codes() -> frozenset[grpc.StatusCode]:
    """Codes of a proxy that is down, restarting, overloaded, or whose database is (a servicer
    error, such as PostgreSQL refusing connections, reaches the client as UNKNOWN)."""
    import grpc

    code = grpc.StatusCode
    return frozenset(
        {
            code.UNAVAILABLE,
            code.DEADLINE_EXCEEDED,
            code.UNKNOWN,
            code.INTERNAL,
            code.RESOURCE_EXHAUSTED,
            code.ABORTED,
            code.CANCELLED,
        }
    )


class _KeepaliveGrpcStorageProxy(GrpcStorageProxy):
    """Optuna's client with keep-alive pings on its channel (Optuna's ``_setup``, one option
    more: Optuna offers no way to pass channel options)."""

    def _setup(self) -> None:
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        options = [("grpc.max_receive_message_length", -1), *KEEPALIVE_OPTIONS]
        self._channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=options)
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)


class ProxyStorage(BaseStorage):
    """Every storage call through the proxy at ``address`` or named in ``address_file``."""

    def __init__(self, address: tuple[str, int] | None, address_file: Path | None) -> None:
        if (address is None) == (address_file is None):
            raise ValueError("give the proxy's address or its address file, not both or neither")
        self._address = address
        self._address_file = address_file
        self._client: GrpcStorageProxy | None = None
        self._lock = threading.Lock()
        self.target: str | None = None
        """``host:port`` of the proxy last connected to (for messages and tests)."""

    def _connect(self) -> GrpcStorageProxy:
        with self._lock:
            if self._client is None:
                if self._address_file is not None:
                    found = current_address(self._address_file)
                    host, port = found.host, found.port
                else:
                    assert self._address is not None
                    host, port = self._address
                with warnings.catch_warnings():  # "experimental" at every reconnection
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self._client = _KeepaliveGrpcStorageProxy(host=host, port=port)
                self.target = f"{host}:{port}"
            return self._client

    def _drop(self, client: GrpcStorageProxy) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``name`` on the current proxy; a proxy that does not answer -> ProxyUnavailable."""
        import grpc

        client = self._connect()
        try:
            return getattr(client, name)(*args, **kwargs)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            if code not in _transient_codes():
                raise
            if code != grpc.StatusCode.UNKNOWN:  # UNKNOWN: the proxy answered, its database not
                self._drop(client)
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise ProxyUnavailable(
                f"the storage proxy at {self.target} failed {name}: {code.name if code else '?'} "
                f"{details}"
            ) from error

    def wait_ready(self, timeout_s: float) -> None:
        """Until the proxy accepts connections; ``ConnectionError`` after ``timeout_s``."""
        client = self._connect()
        try:
            client.wait_server_ready(timeout=timeout_s)
        except ConnectionError as error:
            self._drop(client)
            raise ProxyUnavailable(
                f"no storage proxy answers at {self.target} (waited {timeout_s:.0f} s)"
            ) from error

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self._address, "address_file": self._address_file}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["address"], state["address_file"])  # type: ignore[misc]


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: ProxyStorage, *args: Any, **kwargs: Any) -> Any:
        return self.call(name, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = getattr(BaseStorage, name).__doc__
    return method


DELEGATED = sorted(
    name
    for name, value in vars(GrpcStorageProxy).items()
    if callable(value) and not name.startswith("_") and hasattr(BaseStorage, name)
)
"""The storage methods Optuna's client implements (every abstract one and a few more); the rest
of :class:`~optuna.storages.BaseStorage` is built on them."""
for _name in DELEGATED:
    setattr(ProxyStorage, _name, _delegate(_name))
abc.update_abstractmethods(ProxyStorage)  # type: ignore[type-abstract]  # filled in just above
