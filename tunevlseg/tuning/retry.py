"""Retrying storage calls through a brief outage (a database restart, an NFS hiccup).

A trial trains for hours; losing its result because the database was restarted during the
last second would waste the GPU time. Storage calls of a task are retried with exponential
back-off for about two minutes before the error is raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def _transient_errors() -> tuple[type[BaseException], ...]:
    from optuna.exceptions import StorageInternalError  # Optuna's wrapper of failed commits

    errors: list[type[BaseException]] = [OSError, TimeoutError, StorageInternalError]
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError

        errors += [OperationalError, DBAPIError]
    except ImportError:  # no RDB storage in use
        pass
    return tuple(errors)


def with_retries(
    call: Callable[[], T],
    *,
    what: str,
    attempts: int = 8,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
) -> T:
    """``call()``, retried on transient storage errors; the last error is raised."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except _transient_errors() as error:
            if attempt == attempts:
                raise
            log.warning("%s failed (%s); retry %d of %d in %.1f s", what, error, attempt, attempts - 1, delay)
            time.sleep(delay)
            delay = min(max_delay, delay * 2)
    raise AssertionError("unreachable")
