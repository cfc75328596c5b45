"""Retrying storage calls through an outage (a database restart, an NFS hiccup).

A trial trains for hours; losing its result because the database was restarted during the
last second would waste the GPU time. Storage calls of a task are retried with exponential
back-off for a time budget (three minutes by default; a restart of PostgreSQL or a fail-over
takes one to two) before the last error is raised. The back-off is capped at
:data:`MAX_DELAY_S`, so a server that is back is used within seconds, not after a long sleep.

The budget, first found wins:

1. ``with_retries(..., budget_s=S)``;
2. :func:`set_retry_budget` (a task calls it with the experiment's ``cluster.storage_retry_s``);
3. the environment variable ``TVLS_STORAGE_RETRY_S`` (seconds; the launcher passes it to tasks);
4. :data:`DEFAULT_BUDGET_S` (180 s).

The warnings name the root cause. Optuna wraps every failed commit in ``StorageInternalError``
whose text blames "invalid data in the commit, e.g. exceeding max length" whatever happened;
the real reason (psycopg2's "connection refused", "the database system is starting up") is at
the end of the exception's ``__cause__``/``__context__`` chain. When the budget is spent, the
last error is raised again with a note saying what was retried for how long, and why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from tunevlseg.errors import exception_chain

T = TypeVar("T")
log = logging.getLogger(__name__)

BUDGET_ENV = "TVLS_STORAGE_RETRY_S"
DEFAULT_BUDGET_S = 180.0
MAX_DELAY_S = 15.0
_budget_s: float | None = None  # set by set_retry_budget()


def set_retry_budget(seconds: float) -> None:
    """Retry storage calls of this process for ``seconds`` (``cluster.storage_retry_s``)."""
    global _budget_s
    if not seconds > 0:
        raise ValueError(f"a retry budget is a positive number of seconds, not {seconds!r}")
    _budget_s = float(seconds)


def retry_budget() -> float:
    """Seconds to retry a storage call for: :func:`set_retry_budget`, else the environment."""
    if _budget_s is not None:
        return _budget_s
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if value > 0:
            return value
        log.warning("ignoring %s=%r (not a positive number of seconds)", BUDGET_ENV, raw)
    return DEFAULT_BUDGET_S


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s chain: the driver's error under Optuna's wrapper."""
    *_, innermost = exception_chain(error)
    return innermost


def describe(error: BaseException) -> str:
    """One line: the root cause with its type (and the type it was raised as)."""
    root = root_cause(error)
    kind = type(root)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__.split('.')[0]}.{kind.__qualname__}"
    )
    text = " ".join(str(root).split()) or "(no message)"
    if len(text) > 300:
        text = text[:297] + "..."
    outer = "" if root is error else f" (raised as {type(error).__name__})"
    return f"{name}: {text}{outer}"


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
    budget_s: float | None = None,
    first_delay: float = 0.5,
    max_delay: float = MAX_DELAY_S,
) -> T:
    """``call()``, retried on transient storage errors for ``budget_s`` seconds.

    Args:
        what: What the call does, for the log ("telling the result").
        budget_s: Seconds to keep trying (default: :func:`retry_budget`); the waits between
            attempts double from ``first_delay`` up to ``max_delay``, the last one is cut
            short to try once more when the budget ends.

    Raises:
        The last error, with a note saying how long it was retried and its root cause.
    """
    budget = retry_budget() if budget_s is None else budget_s
    started = time.monotonic()
    delay = first_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except _transient_errors() as error:
            spent = time.monotonic() - started
            left = budget - spent
            if left <= 0:
                error.add_note(
                    f"gave up on {what} after retrying for {spent:.0f} s ({attempt} attempts; "
                    f"the budget is cluster.storage_retry_s / {BUDGET_ENV} = {budget:.0f} s); "
                    f"cause: {describe(error)}"
                )
                log.error("%s failed for %.0f s, giving up: %s", what, spent, describe(error))
                raise
            pause = min(delay, left)
            log.warning(
                "%s failed: %s; retrying in %.1f s (attempt %d, %.0f of %.0f s spent)",
                what,
                describe(error),
                pause,
                attempt,
                spent,
                budget,
            )
            time.sleep(pause)
            delay = min(max_delay, delay * 2)
