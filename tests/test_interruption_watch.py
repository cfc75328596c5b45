"""A trial process stops on SIGINT (Ctrl-C, tvls-cancel) even when it started with SIGINT ignored.

A process started in the background by a non-interactive shell (a CI job, a script ending in
`&`) inherits SIGINT as ignored; the task's signal watch used to pass the signal on to that
"ignore", so the trial trained on after `tvls-cancel` and the next launch found it still alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN if sys.argv[1] == "ignored" else signal.default_int_handler)
from tunevlseg.cluster.worker import InterruptionWatch
watch = InterruptionWatch()
watch.install()
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", watch.received, flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("inherited", ["ignored", "default"])
def test_sigint_stops_the_task_whatever_it_inherited(inherited: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, inherited], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGINT)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130
    assert out.strip() == "interrupted SIGINT"
