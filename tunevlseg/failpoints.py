"""Named instants at which the fault-injection tests kill a task (``TVLS_FAILPOINT=<name>``).

A sweep must survive a kill at *any* instant, not only mid-epoch; the tests need to hit the
instants between two storage writes, which no outside signal can aim at. Unset (always, outside
tests), a failpoint costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "TVLS_FAILPOINT"

POINTS = ("claimed", "stamped", "sampled", "model-built")
"""In the order a task passes them: trial claimed (WAITING -> RUNNING), owner and folder
stamped, parameters sampled, model and data built (before the first epoch)."""


def failpoint(name: str) -> None:
    """SIGKILL this process if ``TVLS_FAILPOINT`` names this instant (as a lost node would)."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
