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

Torn lines. A writer killed during an append (OOM, ``scancel``, a node lost) leaves a partial
line without a newline; the next writer's record then lands on the same line. Optuna's reader
silently ignores such a line while it is the last one (losing the real record fused behind the
tear) and fails every later open with a bare ``JSONDecodeError`` once anything follows it: the
sweep is wedged. So the journal is repaired (:meth:`_DeferredFileBackend.mend`) where the damage
shows up at no extra cost: an unterminated last line when the journal is opened or appended to
(one byte read), and a line that does not parse during the replay that parses every line anyway.
A repair runs under the journal's own lock (``<journal>.lock``, the one every writer takes, so
nothing is appended meanwhile), copies the journal to ``<journal>.bak-<UTC time>``, drops only
the damaged bytes, keeps every complete record found on a damaged line (the write that landed
after the tear) and logs a warning naming the journal, the byte offset and what was dropped.
A repair only changes lines that no reader has got past (nobody can read past a damaged line),
so replay states by line number stay valid; a snapshot whose covered bytes reach into the
repaired part is deleted all the same, so a snapshot never vouches for bytes that changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

if TYPE_CHECKING:
    from optuna.storages import JournalStorage

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
SNAPSHOT_EVERY_BYTES = 4 * 1024 * 1024  # at most ~23,000 lines (about 1 s) left to replay
STALE_WRITER_SECONDS = 600
HEAD_BYTES = 4096
LOCK_GRACE_SECONDS = 30
"""A journal lock left by a killed writer is taken over after this long (Optuna's default)."""
RECORD_START = '{"op_code":'
"""How every line Optuna writes begins (``json.dumps`` keeps the dict's key order)."""
COPY_CHUNK = 8 * 1024 * 1024


class JournalDamagedError(RuntimeError):
    """A damaged journal line that could not be repaired here; the message names file and fix."""


@dataclass(frozen=True)
class Repair:
    """What one repair of a journal did (also in the warning it logs)."""

    journal: Path
    backup: Path
    offset: int
    """Where the first changed line starts; the bytes before it are untouched."""
    notes: tuple[str, ...]
    """One per damaged line: its byte offset, what was dropped, how many records were kept."""
    size: int
    """The journal's size right after the repair."""


def _is_log(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("op_code"), int)
        and isinstance(value.get("worker_id"), str)
    )


def _parses(body: bytes) -> bool:
    try:
        return _is_log(json.loads(body))
    except ValueError:
        return False


def _salvage(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The complete records on a damaged line, and the (start, end) spans left to drop.

    A record is kept when it parses as a journal record from one ``{"op_code":`` to the next
    one or to the line's end: torn bytes always leave a brace open (or a string unclosed), so
    they can never pass for a record, while the record written after them parses on its own.
    (Only a user attribute whose value is itself a journal record, cut right after it, could
    pass for one; no attribute tunevlseg writes looks like that.)
    """
    decoder = json.JSONDecoder()
    records: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos < len(text):
        found = None
        start = text.find(RECORD_START, pos)
        while start != -1:
            try:
                value, stop = decoder.raw_decode(text, start)
            except ValueError:
                value, stop = None, -1
            if _is_log(value) and (stop == len(text) or text.startswith(RECORD_START, stop)):
                found = (start, stop)
                break
            start = text.find(RECORD_START, start + 1)
        if found is None:
            spans.append((pos, len(text)))
            break
        if found[0] > pos:
            spans.append((pos, found[0]))
        records.append(text[found[0] : found[1]])
        pos = found[1]
    return records, spans


def _mend(tail: bytes, base: int) -> tuple[bytes, list[str]]:
    """The journal's bytes from offset ``base`` on, with damaged lines mended, and what changed."""
    out: list[bytes] = []
    notes: list[str] = []
    bodies = tail.split(b"\n")
    at = base
    for index, body in enumerate(bodies):
        last = index == len(bodies) - 1
        if last and not body:
            break  # the journal ends with a newline, as it should
        line_at, at = at, at + len(body) + (0 if last else 1)
        if _parses(body):
            out.append(body + b"\n")
            if last:
                notes.append(f"at byte {line_at} added the missing newline of a complete record")
            continue
        # latin-1 maps bytes to characters one to one: offsets stay byte offsets.
        records, spans = _salvage(body.rstrip(b"\r").decode("latin-1"))
        out.extend(record.encode("latin-1") + b"\n" for record in records)
        dropped = sum(end - start for start, end in spans) + (0 if records or last else 1)
        first = body[spans[0][0] : spans[0][0] + 60] if spans else b""
        what = "a partial line" if last else "a line that does not parse"
        note = f"at byte {line_at} dropped {dropped} bytes ({what}, starting {first!r})"
        if records:
            plural = "" if len(records) == 1 else "s"
            note += f" and kept {len(records)} complete record{plural} found on the same line"
        notes.append(note)
    return b"".join(out), notes


def _backup(journal: Path, lock_file: Path) -> Path:
    """Copy the journal aside before a repair changes it.

    In chunks, touching the lock file after each: other processes take a lock over once its
    file has not changed for :data:`LOCK_GRACE_SECONDS`, and copying a big journal to slow
    NFS must not look like a dead writer.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    backup = journal.with_name(f"{journal.name}.bak-{stamp}")
    with journal.open("rb") as source, backup.open("xb") as target:
        while chunk := source.read(COPY_CHUNK):
            target.write(chunk)
            with suppress(OSError):
                os.utime(lock_file)
        target.flush()
        os.fsync(target.fileno())
    return backup


def _last_line_start(handle: Any, size: int) -> int:
    """Where the file's last line starts (after its last newline before ``size``)."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        handle.seek(start)
        found = handle.read(end - start).rfind(b"\n")
        if found != -1:
            return start + found + 1
        end = start
    return 0


def _drop_stale_snapshot(journal: Path, offset: int) -> None:
    """Delete the snapshot if it covers bytes from ``offset`` on, which a repair has changed."""
    path = snapshot_path(journal)
    try:
        with path.open("rb") as handle:
            covered = int(json.loads(handle.readline())["journal_bytes"])
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError):
        covered = offset + 1  # unreadable: it would be ignored anyway
    if covered > offset:
        path.unlink(missing_ok=True)


def snapshot_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".snapshot")


class _DeferredFileBackend(JournalFileBackend):
    """A journal file backend that reads nothing until told to, and repairs torn lines.

    ``JournalStorage`` replays the log in its constructor; deferring the reads lets the
    snapshot be restored first, so that the replay starts where the snapshot ends.

    Reading and appending are this class's own (same file format and lock as Optuna's) so that
    a damaged line is repaired where it is met instead of failing or being skipped.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), JournalFileOpenLock(str(path), grace_period=LOCK_GRACE_SECONDS))
        self.path = path
        self.lock_file = Path(str(path) + ".lock")  # the file JournalFileOpenLock creates
        self.reading = False
        self.repairs: list[Repair] = []
        self.checked_size: int | None = None
        """The journal's size when it was last found sound under the lock after damage."""
        self._mark = (0, 0)  # a line number and the byte offset where that line starts

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        if not self.reading:
            return iter(())
        return self._replay(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Optuna's append, after mending an unterminated last line (one byte read).

        Without this, the record would be fused onto the torn bytes a killed writer left.
        """
        data = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in logs).encode()
        with self._locked():
            try:
                self._mend_tail_locked()
            except JournalDamagedError as error:
                # Cannot repair now (no room for the backup?): start a line of our own, so the
                # record stays whole; the torn bytes become a bad line a later repair drops.
                log.warning("%s; appending on a new line", error)
                data = b"\n" + data
            with open(self._file_path, "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())

    def mend_tail(self) -> None:
        """Repair an unterminated last line: a writer died mid-append (or is appending now)."""
        try:
            with open(self._file_path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size == 0 or os.pread(handle.fileno(), 1, size - 1) == b"\n":
                    return
        except FileNotFoundError:
            return
        with self._locked():
            self._mend_tail_locked()

    def mend(self, offset: int) -> bool:
        """Repair the journal from the line starting at ``offset`` on, under the journal's lock.

        Returns:
            Whether bytes changed (False: the line was being written and is whole now, or
            another process has repaired it).

        Raises:
            JournalDamagedError: the repair could not be made (naming the file and the fix).
        """
        with self._locked():
            return self._mend_locked(offset)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self._lock.acquire()
        except OSError as error:  # e.g. a read-only file system: no lock file can be made
            raise JournalDamagedError(
                f"cannot lock the study journal {self.path}: {error}"
            ) from error
        try:
            yield
        finally:
            self._lock.release()

    def _mend_tail_locked(self) -> None:
        with open(self._file_path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0 or os.pread(handle.fileno(), 1, size - 1) == b"\n":
                return
            start = _last_line_start(handle, size)
        self._mend_locked(start)

    def _mend_locked(self, offset: int) -> bool:
        with open(self._file_path, "r+b") as handle:
            size = os.fstat(handle.fileno()).st_size
            if offset > 0:
                handle.seek(offset - 1)
                if handle.read(1) != b"\n":
                    raise JournalDamagedError(
                        f"the study journal {self.path} changed under this process (byte {offset} "
                        "no longer starts a line: replaced or truncated?); open it again"
                    )
            handle.seek(offset)
            tail = handle.read()
            mended, notes = _mend(tail, offset)
            if mended == tail:
                self.checked_size = size
                return False
            try:
                backup = _backup(self.path, self.lock_file)
                handle.seek(offset)
                handle.write(mended)
                handle.truncate()
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as error:
                raise JournalDamagedError(
                    f"the study journal {self.path} is damaged ({'; '.join(notes)}; probably a "
                    f"writer killed while appending) and could not be repaired here: {error}. To "
                    "repair it: "
                    "stop the sweep's processes, copy the journal aside, delete the damaged bytes "
                    "at that offset up to the line's end (keep a complete record that follows them "
                    "on the same line, starting with '{\"op_code\":') and launch again"
                ) from error
        _drop_stale_snapshot(self.path, offset)
        repair = Repair(self.path, backup, offset, tuple(notes), offset + len(mended))
        self.repairs.append(repair)
        self.checked_size = repair.size
        log.warning(
            "repaired the study journal %s (a writer was probably killed while appending): %s. "
            "The journal as it was is kept in %s",
            self.path,
            "; ".join(notes),
            backup,
        )
        return True

    def _replay(self, first: int) -> Generator[dict[str, Any], None, None]:
        """The records from line ``first`` on, repairing damaged lines met on the way."""
        last_damage = None
        while True:
            damage = yield from self._read_from(first)
            if damage is None:
                return
            number, offset, unterminated = damage
            try:
                changed = self.mend(offset)
            except JournalDamagedError as error:
                if unterminated:  # Optuna's reader skips that line too: read on without it
                    log.warning("%s; reading on without its last line", error)
                    return
                raise
            if not changed and damage == last_damage:
                raise JournalDamagedError(
                    f"the study journal {self.path} reads differently from under its lock at "
                    f"byte {offset} (line {number + 1}); open it again"
                )
            last_damage = damage
            first = max(first, number)  # the lines before it have been handed out already

    def _read_from(
        self, first: int
    ) -> Generator[dict[str, Any], None, tuple[int, int, bool] | None]:
        """Parse the lines from ``first`` on; returns where a damaged line starts, if one is met.

        Only the bytes present when the read starts are read (another process may be appending);
        an unterminated last line among them is either being written right now or torn, which
        only the lock can tell.
        """
        number, offset = self._mark if self._mark[0] <= first else (0, 0)
        with open(self._file_path, "rb") as handle:
            end = os.fstat(handle.fileno()).st_size
            handle.seek(offset)
            for line in handle:
                stop = offset + len(line)
                if stop > end:
                    return None  # grew since the read started: the next read takes it
                if not line.endswith(b"\n"):
                    return number, offset, True
                wanted = number >= first
                if wanted:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        return number, offset, False
                    if not _is_log(record):
                        return number, offset, False
                number, offset = number + 1, stop
                self._mark = (number, offset)
                if wanted:
                    yield record
        return None


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
    with suppress(KeyError):
        storage.get_study_id_from_name("\0 no study has this name")


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
    try:
        backend.mend_tail()  # before the snapshot is read: a repair may delete it
    except JournalDamagedError as error:  # e.g. read-only: Optuna's reader skips that line too
        log.warning("%s; reading it without its last line", error)
    storage = optuna.storages.JournalStorage(backend)
    snapshot = read_snapshot(journal)
    since = 0
    if snapshot is not None:
        header, state = snapshot
        try:
            storage.restore_replay_result(state)  # logs a warning and keeps nothing if unusable
        except Exception:  # noqa: BLE001 - a pickle of classes that changed: replay everything
            storage = optuna.storages.JournalStorage(backend)
        if _lines_read(storage) > 0:
            since = int(header["journal_bytes"])
    covered = journal.stat().st_size
    backend.checked_size = None
    backend.reading = True
    _sync(storage)
    if backend.checked_size is not None:
        # Damage was met (and repaired, here or by another process): the bytes measured before
        # the replay may have changed; the replay went on from a sound journal of this size.
        covered = backend.checked_size
    if covered - since >= every and covered > 0:
        write_snapshot(storage, journal, covered)
    return storage
