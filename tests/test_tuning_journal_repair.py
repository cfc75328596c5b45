"""Torn journal lines: a writer killed in the middle of an append must not wedge the sweep.

A writer that dies mid-append leaves a partial line without a newline; the next writer's line
then lands on the same line. Optuna alone silently drops the fused record while it is the last
line, and fails every later open with a bare ``JSONDecodeError`` once anything follows it. The
journal is repaired when it is opened or written: the damaged bytes are dropped (a backup of
the journal is kept) and a complete record fused behind them is kept.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from test_tuning_snapshot import plain_replay  # Optuna's own reader, which a wedged journal fails

from tunevlseg.tuning import journal_snapshot
from tunevlseg.tuning.journal_snapshot import open_journal, read_snapshot, write_snapshot

optuna.logging.set_verbosity(optuna.logging.WARNING)
LOGGER = "tunevlseg.tuning.journal_snapshot"
N_TRIALS = 6


def state(storage: optuna.storages.BaseStorage) -> list[Any]:
    out = []
    for summary in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = storage.get_all_trials(summary._study_id, deepcopy=False)
        out.append(
            (
                summary.study_name,
                [(t.number, t.state, t.values, t.params, t.user_attrs) for t in trials],
            )
        )
    return out


def add_trials(storage: optuna.storages.BaseStorage, study: str, n: int, start: int = 0) -> None:
    handle = optuna.create_study(study_name=study, storage=storage, load_if_exists=True)
    for number in range(start, start + n):
        trial = handle.ask()
        trial.suggest_float("x", -100, 100)
        trial.set_user_attr("test_dice", number / 100)
        handle.tell(trial, number / 10)


def torn_record() -> bytes:
    """The first half of a line a writer was appending when it was killed."""
    line = json.dumps(
        {
            "op_code": 8,
            "worker_id": "dead-writer-1",
            "trial_id": 3,
            "user_attr": {"note": "x" * 80},
        },
        separators=(",", ":"),
    ).encode()
    return line[: len(line) // 2]


def backups(journal: Path) -> list[Path]:
    return sorted(journal.parent.glob(journal.name + ".bak-*"))


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "optuna.journal"
    add_trials(open_journal(path, snapshot_every=10**9), "s/a", N_TRIALS)
    return path


def test_a_torn_tail_is_cut_off_with_a_backup_and_a_warning(
    journal: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = journal.read_bytes()
    expected = state(plain_replay(journal))
    with journal.open("ab") as handle:
        handle.write(torn_record())  # the writer died here

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        storage = open_journal(journal, snapshot_every=10**9)
    assert state(storage) == expected
    assert journal.read_bytes() == good
    [backup] = backups(journal)
    assert backup.read_bytes() == good + torn_record()
    assert str(journal) in caplog.text and f"byte {len(good)}" in caplog.text
    assert str(backup) in caplog.text

    # The sweep goes on: the next record is a line of its own, readable by Optuna alone.
    add_trials(storage, "s/a", 1, start=N_TRIALS)
    assert len(state(plain_replay(journal))[0][1]) == N_TRIALS + 1
    assert state(open_journal(journal, snapshot_every=10**9)) == state(plain_replay(journal))


def test_a_torn_line_fused_with_the_next_record_keeps_that_record(
    journal: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = journal.read_bytes()
    expected = state(plain_replay(journal))
    lines = good.splitlines(keepends=True)
    cut = len(lines) - 4  # the tear is followed by a record on its line, then three more lines
    offset = len(b"".join(lines[:cut]))
    damaged = b"".join(lines[:cut]) + torn_record() + b"".join(lines[cut:])
    journal.write_bytes(damaged)
    with pytest.raises(json.JSONDecodeError):
        plain_replay(journal)  # the wedge: every open failed like this

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        storage = open_journal(journal, snapshot_every=10**9)
    assert state(storage) == expected
    assert journal.read_bytes() == good
    assert [b.read_bytes() for b in backups(journal)] == [damaged]
    assert str(journal) in caplog.text and f"byte {offset}" in caplog.text
    assert "kept 1 complete record" in caplog.text
    assert state(plain_replay(journal)) == expected


def test_a_fused_last_line_is_not_silently_dropped(journal: Path) -> None:
    """Optuna ignores a bad last line: the real record fused behind the tear would be lost."""
    good = journal.read_bytes()
    expected = state(plain_replay(journal))
    lines = good.splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + torn_record() + lines[-1])
    assert state(open_journal(journal, snapshot_every=10**9)) == expected
    assert journal.read_bytes() == good


def test_a_complete_record_without_its_newline_is_kept(journal: Path) -> None:
    good = journal.read_bytes()
    expected = state(plain_replay(journal))
    lines = good.splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1].rstrip(b"\n"))  # killed before the newline
    assert state(open_journal(journal, snapshot_every=10**9)) == expected
    assert journal.read_bytes() == good


def test_a_process_that_opened_the_journal_before_the_tear_writes_a_line_of_its_own(
    journal: Path,
) -> None:
    writer = open_journal(journal, snapshot_every=10**9)  # a worker, training for hours
    with journal.open("ab") as handle:
        handle.write(torn_record())  # meanwhile another worker dies mid-append
    add_trials(writer, "s/a", 2, start=N_TRIALS)
    reference = state(plain_replay(journal))  # Optuna alone reads it: nothing was fused
    assert len(reference[0][1]) == N_TRIALS + 2
    assert state(writer) == reference
    assert len(backups(journal)) == 1


def test_a_snapshot_covering_only_good_bytes_is_kept(journal: Path) -> None:
    open_journal(journal, snapshot_every=1)
    header, _ = read_snapshot(journal)  # type: ignore[misc]
    covered = journal.read_bytes()
    add_trials(open_journal(journal, snapshot_every=10**9), "s/b", 2)
    grown = journal.read_bytes()
    expected = state(plain_replay(journal))
    journal.write_bytes(covered + torn_record() + grown[len(covered) :])  # torn after the snapshot

    storage = open_journal(journal, snapshot_every=10**9)
    assert state(storage) == expected
    assert journal.read_bytes() == grown
    kept = read_snapshot(journal)
    assert kept is not None and kept[0] == header  # it covers bytes the repair did not touch


def test_a_snapshot_covering_the_damaged_bytes_is_not_used(journal: Path) -> None:
    good = journal.read_bytes()
    torn = torn_record()
    with journal.open("ab") as handle:
        handle.write(torn)
    # A snapshot written while the tear was the journal's tail (by Optuna's reader, which skips it).
    write_snapshot(plain_replay(journal), journal, journal.stat().st_size)
    # Then a writer without the repair appends: its first line fuses with the tear.
    scratch = journal.with_name("scratch.journal")
    scratch.write_bytes(good)
    add_trials(plain_replay(scratch), "s/b", 1)
    with journal.open("ab") as handle:
        handle.write(scratch.read_bytes()[len(good) :])
    fused = journal.read_bytes()
    scratch.unlink()

    storage = open_journal(journal, snapshot_every=10**9)
    snapshot = read_snapshot(journal)
    assert snapshot is None or snapshot[0]["journal_bytes"] <= len(good)
    assert state(storage) == state(plain_replay(journal))
    assert [name for name, _ in state(storage)] == ["s/a", "s/b"]
    assert journal.read_bytes() == good + fused[len(good) + len(torn) :]


REC_A = b'{"op_code":8,"worker_id":"w-1","trial_id":0,"user_attr":{"a":1}}'
REC_B = b'{"op_code":6,"worker_id":"w-2","trial_id":0,"state":1,"values":[0.5],"datetime_complete":null}'
TORN_NESTED = b'{"op_code":8,"worker_id":"w-3","trial_id":1,"user_attr":{"x":{"op_code":1,"worker_id":"w"},"y":"ab'


@pytest.mark.parametrize(
    ("damaged", "mended"),
    [
        (
            REC_A + b"\n" + REC_A[:20] + REC_B + b"\n",
            REC_A + b"\n" + REC_B + b"\n",
        ),  # torn, then a record
        (
            REC_A + REC_B + b"\n",
            REC_A + b"\n" + REC_B + b"\n",
        ),  # a record that lost only its newline
        (REC_A[:30] + REC_B[:25] + REC_B + b"\n", REC_B + b"\n"),  # torn twice
        (TORN_NESTED + REC_B + b"\n", REC_B + b"\n"),  # a record-like value inside the torn bytes
        (b"\0" * 4096 + b"\n" + REC_B + b"\n", REC_B + b"\n"),  # zeros a crashed NFS client left
        (REC_B + b"\n" + REC_A[:-3], REC_B + b"\n"),  # a torn tail
    ],
)
def test_mending_drops_the_damaged_bytes_and_keeps_every_complete_record(
    damaged: bytes, mended: bytes
) -> None:
    assert journal_snapshot._mend(damaged, 0)[0] == mended
    assert journal_snapshot._mend(mended, 0) == (mended, [])  # a sound journal is left alone


def test_a_journal_that_cannot_be_repaired_names_the_file_and_the_fix(
    journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-3]) + torn_record() + b"".join(lines[-3:]))

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(journal_snapshot, "_backup", refuse)
    with pytest.raises(journal_snapshot.JournalDamagedError) as caught:
        open_journal(journal, snapshot_every=10**9)
    message = str(caught.value)
    assert str(journal) in message and "byte" in message and "Permission denied" in message


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import optuna
    from tunevlseg.tuning.journal_snapshot import open_journal

    storage = open_journal(Path(sys.argv[1]), snapshot_every=10**9)
    study_id = storage.get_study_id_from_name("s/a")
    for i in range(int(sys.argv[2])):  # bounded: killed long before its end
        storage.set_study_user_attr(study_id, f"blob{i}", str(i % 10) * int(sys.argv[3]))
""")


def kill_mid_append(journal: Path, blob: int) -> bool:
    """Start a writer of ``blob``-byte records and SIGKILL it while its third record is being
    written (the file is growing: the kernel stops the write at the next page); whether the
    journal was left torn (the write may still have finished before the signal landed)."""
    start = journal.stat().st_size
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(journal), "50", str(blob)])
    try:
        target = start + 2 * blob + blob // 2  # half of the third record is on disk
        deadline = time.monotonic() + 120
        while (
            os.stat(journal).st_size < target
            and child.poll() is None
            and time.monotonic() < deadline
        ):
            pass  # no sleep: the kill must land within the write
        assert child.poll() is None, "the writer ended before it was killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with journal.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def test_a_writer_killed_while_appending_leaves_a_journal_that_opens(
    journal: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(journal_snapshot, "LOCK_GRACE_SECONDS", 3)  # the dead writer's lock
    blob = 32 * 1024 * 1024
    torn_rounds = 0
    for round_ in range(4):  # a busy machine may let a write finish before the kill: try again
        torn = kill_mid_append(journal, blob)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            storage = open_journal(journal, snapshot_every=10**9)
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name("s/a"))
        assert attrs["blob0"] == "0" * blob and attrs["blob1"] == "1" * blob  # fully written: kept
        assert all(value == key[-1] * blob for key, value in attrs.items())  # nothing half-kept
        assert journal.read_bytes().endswith(b"\n")
        torn_rounds += torn
        if torn:
            assert str(journal) in caplog.text and len(backups(journal)) == torn_rounds
        add_trials(storage, "s/a", 1, start=N_TRIALS + round_)  # the sweep goes on
        assert len(state(plain_replay(journal))[0][1]) == N_TRIALS + round_ + 1
        if torn:
            break
    assert torn_rounds == 1, "every kill landed after the write: the journal was never torn"
