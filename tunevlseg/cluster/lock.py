"""One launch of a sweep at a time: a lock file in the sweep's folder.

Two ``tvls-launch`` of one file at the same moment would both read "trial 3 is waiting" and
both submit it, both append to the manifest (one entry lost), and one would see the studies
the other is half-way through creating. The launch therefore holds an exclusive ``flock`` on
``<output_dir>/<sweep>/launch.lock`` from its first write to its last. The kernel releases it
when the process dies, so a killed launch never leaves a stale lock behind; on NFS, Linux
maps ``flock`` to the server's byte-range locks, so launches from two login nodes exclude each
other too. The holder writes who it is into the file, for the message the other one prints.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path


class SweepBusyError(Exception):
    """Another launch holds the sweep's lock and did not release it in time."""


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
    except OSError:
        return "another process"


@contextmanager
def sweep_lock(
    path: Path,
    *,
    wait_s: float,
    on_wait: Callable[[str], None] = lambda holder: None,
    poll_s: float = 0.2,
) -> Iterator[None]:
    """Hold the sweep's launch lock; wait up to ``wait_s`` for the current holder.

    ``on_wait`` is told the holder once, when the lock is busy (to say why nothing happens).

    Raises:
        SweepBusyError: naming the holder (host, pid, since when) and what to do.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    on_wait(_holder(fd))
                    told = True
                if time.monotonic() >= deadline:
                    raise SweepBusyError(
                        f"another launch of this sweep is running ({_holder(fd)}; lock {path}); "
                        "wait for it to end, or stop it, then launch again"
                    ) from None
                time.sleep(poll_s)
        since = datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
