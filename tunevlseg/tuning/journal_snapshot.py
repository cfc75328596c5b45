"""Journal storages opened from a snapshot, so a big sweep is not replayed from its first line.

Optuna's ``JournalStorage`` rebuilds its state by replaying the whole log every time a process
opens it. A sweep of 1,000 studies x 20 trials writes about 515,000 lines (89 MB): replaying
them takes 18 s on this machine, paid by every array task at its start, by ``tvls-status`` and
by the collector. Loading the same state from a pickle takes about 1.2 s.

Whoever opens the journal and finds it has grown by :data:`SNAPSHOT_EVERY_BYTES` since the last
snapshot (or has none and is that large) writes ``<journal>.snapshot`` after its replay: a JSON
header line, then the pickled replay state. Later openers restore it with Optuna's
``JournalStorage.restore_replay_result`` and replay only the lines after it. Small sweeps (the
demo's journal is 40 kB) never get one.

The header ties a snapshot to its journal and says how far it reaches: the Optuna version, a
digest of the journal's first bytes (which name the first study and the random worker id of
the process that wrote it, so a new sweep in the same place does not match), and the journal's
size before the replay (the journal is append-only; a smaller journal means it was replaced).
A snapshot that does not match, or cannot be read, is ignored and replaced; deleting it is
always safe. A writer writes a temporary file and renames it, so readers never see half a
snapshot; one writer at a time (see :func:`write_snapshot`).

The snapshot is a pickle, like Optuna's own snapshots in Redis: it lives beside the journal in
the sweep's folder and must be as trusted as that folder.

Why not Optuna's ``BaseJournalSnapshot`` backend interface: with it, Optuna pickles the whole
state every 100 trials a process creates, which would make the launcher's enqueueing of
20,000 trials pickle 200 growing states.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

if TYPE_CHECKING:
    from optuna.storages import JournalStorage

SNAPSHOT_FORMAT = 1
SNAPSHOT_EVERY_BYTES = 4 * 1024 * 1024  # at most ~23,000 lines (about 1 s) left to replay
STALE_WRITER_SECONDS = 600
HEAD_BYTES = 4096


def snapshot_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".snapshot")


class _DeferredFileBackend(JournalFileBackend):
    """A journal file backend that reads nothing until told to.

    ``JournalStorage`` replays the log in its constructor; deferring the reads lets the
    snapshot be restored first, so that the replay starts where the snapshot ends.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), JournalFileOpenLock(str(path)))
        self.reading = False

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        if not self.reading:
            return iter(())
        return super().read_logs(log_number_from)


def _head_digest(journal: Path, length: int) -> str:
    with journal.open("rb") as handle:
        return hashlib.sha256(handle.read(length)).hexdigest()


def _header(journal: Path, size: int) -> dict[str, Any]:
    import optuna

    head = min(HEAD_BYTES, size)
    return {
        "format": SNAPSHOT_FORMAT,
        "optuna": optuna.__version__,
        "head_bytes": head,
        "head": _head_digest(journal, head),
        "journal_bytes": size,
    }


def read_snapshot(journal: Path) -> tuple[dict[str, Any], bytes] | None:
    """The snapshot's header and pickled state, when it belongs to ``journal`` as it is now."""
    import optuna

    path = snapshot_path(journal)
    try:
        with path.open("rb") as handle:
            header = json.loads(handle.readline())
            state = handle.read()
        size = journal.stat().st_size
        if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
            return None
        covered, head = int(header["journal_bytes"]), int(header["head_bytes"])
        if header.get("optuna") != optuna.__version__ or not head <= covered <= size:
            return None  # another Optuna's pickle, or a journal smaller than it was: replaced
        if header.get("head") != _head_digest(journal, head):
            return None  # another journal in the same place
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return header, state


def write_snapshot(storage: JournalStorage, journal: Path, covered_bytes: int) -> Path | None:
    """Pickle the storage's replayed state next to the journal.

    One writer at a time: a marker file created with ``O_EXCL`` (atomic on NFS v3+, as the
    journal's own lock) turns away the other processes that opened the grown journal at the
    same moment, such as array tasks starting together; they would write the same state. A
    marker left by a writer that died is ignored after :data:`STALE_WRITER_SECONDS`.

    Args:
        covered_bytes: The journal's size before the storage's last replay; the state holds at
            least the lines in those bytes.

    Returns:
        The snapshot's path, or None when another process is writing one or the folder cannot
        be written (the snapshot is only an optimisation).
    """
    state = getattr(storage, "_replay_result", None)  # what restore_replay_result() takes back
    if state is None:
        return None
    path = snapshot_path(journal)
    marker = path.with_name(f".{path.name}.writing")
    if not _claim(marker):
        return None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as handle:
            handle.write(json.dumps(_header(journal, covered_bytes)).encode() + b"\n")
            pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        return None
    finally:
        tmp.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
    return path


def _claim(marker: Path) -> bool:
    for _ in range(2):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            try:
                if time.time() - marker.stat().st_mtime < STALE_WRITER_SECONDS:
                    return False
                marker.unlink()  # its writer died; take over
            except FileNotFoundError:
                pass  # it has just finished: try again
        except OSError:
            return False
    return False


def _sync(storage: JournalStorage) -> None:
    """Replay the lines after the restored state (all of them without one).

    Through a public call that syncs and copies nothing (``get_all_studies`` would deep-copy
    every study's attributes).
    """
    try:
        storage.get_study_id_from_name("\0 no study has this name")
    except KeyError:
        pass


def _lines_read(storage: JournalStorage) -> int:
    return int(getattr(getattr(storage, "_replay_result", None), "log_number_read", 0))


def open_journal(journal: Path, *, snapshot_every: int | None = None) -> JournalStorage:
    """A ``JournalStorage`` on ``journal``, restored from its snapshot when one matches.

    Args:
        snapshot_every: Write a new snapshot after the replay when the journal has grown by
            this many bytes since the last one (default :data:`SNAPSHOT_EVERY_BYTES`).
    """
    import optuna

    every = SNAPSHOT_EVERY_BYTES if snapshot_every is None else snapshot_every
    backend = _DeferredFileBackend(journal)
    storage = optuna.storages.JournalStorage(backend)
    snapshot = read_snapshot(journal)
    since = 0
    if snapshot is not None:
        header, state = snapshot
        try:
            storage.restore_replay_result(state)  # logs a warning and keeps nothing if unusable
        except Exception:  # a pickle of classes that changed: replay everything instead
            storage = optuna.storages.JournalStorage(backend)
        if _lines_read(storage) > 0:
            since = int(header["journal_bytes"])
    covered = journal.stat().st_size
    backend.reading = True
    _sync(storage)
    if covered - since >= every and covered > 0:
        write_snapshot(storage, journal, covered)
    return storage
