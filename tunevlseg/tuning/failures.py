"""Why a trial failed: its own fault (retrying cannot help) or the infrastructure's.

A configuration error, a broken data file or a bug fails the same way every time: such a trial
is failed once, with its reason, and takes its place in the budget, so a relaunch does not burn
a fresh trial on it. Lost nodes, storage outages, out-of-memory and full disks are the
infrastructure's: such a trial is re-run with the same parameters, up to ``search.max_retries``.
"""

from __future__ import annotations

import errno
import traceback

from tunevlseg.errors import exception_chain

KIND_ATTR = "tvls.failure_kind"
"""``"error"`` (deterministic: counted in the budget, not retried) or ``"infrastructure"``."""
FINAL_ATTR = "tvls.failed_for_good"
"""Set on a FAIL trial that will not be retried: it counts as a finished trial of the budget."""

_INFRASTRUCTURE_ERRNOS = {
    errno.ENOSPC,
    errno.EIO,
    errno.ESTALE,
    errno.EDQUOT,
    errno.ENOMEM,
    errno.ETIMEDOUT,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EAGAIN,
}
_INFRASTRUCTURE_NAMES = {
    "OutOfMemoryError",  # torch.cuda.OutOfMemoryError
    "MemoryError",
    "StorageInternalError",  # optuna: a storage write failed
    "OperationalError",  # sqlalchemy / psycopg2: the database went away
    "InterfaceError",
    "TimeoutError",
    "ConnectionError",
}
_INFRASTRUCTURE_TEXT = (
    "CUDA out of memory",
    "CUDA error",
    "NCCL error",
    "cuDNN error",
    "ECC error",
)


def is_infrastructure(error: BaseException) -> bool:
    """True for failures that another attempt on another node may not meet."""
    for link in exception_chain(error):
        names = {cls.__name__ for cls in type(link).__mro__}
        if names & _INFRASTRUCTURE_NAMES:
            return True
        if isinstance(link, OSError) and link.errno in _INFRASTRUCTURE_ERRNOS:
            return True
        if any(text in str(link) for text in _INFRASTRUCTURE_TEXT):
            return True
    return False


def describe(error: BaseException, limit: int = 2000) -> str:
    """The exception's last line(s): what ``tvls-status`` shows as the failure reason."""
    return "".join(traceback.format_exception_only(error)).strip()[-limit:]
