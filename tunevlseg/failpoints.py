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
"""Before the first epoch, in the order a task passes them: trial claimed (WAITING -> RUNNING),
owner and folder stamped, parameters sampled, model and data built."""
EPOCH_POINTS = ("epoch-checkpointed", "pruned-marked")
"""During training: an epoch's ``last.ckpt`` written but the epoch not yet reported to the
trial; the run folder marked pruned (``pruned.json``) but the trial not yet told."""


def failpoint(name: str) -> None:
    """SIGKILL this process if ``TVLS_FAILPOINT`` names this instant (as a lost node would)."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
