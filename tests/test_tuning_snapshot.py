"""Journal snapshots: a reopened journal has exactly the state a full replay gives, whatever
happened to the journal or the snapshot in between, and only big journals get one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from tunevlseg.tuning import journal_snapshot
from tunevlseg.tuning.journal_snapshot import open_journal, read_snapshot, snapshot_path

optuna.logging.set_verbosity(optuna.logging.WARNING)


def plain_replay(journal: Path) -> optuna.storages.JournalStorage:
    """Optuna's own way: every line from the first."""
    return optuna.storages.JournalStorage(
        JournalFileBackend(str(journal), JournalFileOpenLock(str(journal)))
    )


def state(storage: optuna.storages.BaseStorage) -> list[Any]:
    """Everything a reader sees: studies with their attributes, trials with all their fields."""
    out = []
    for summary in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        trials = storage.get_all_trials(summary._study_id, deepcopy=False)
        out.append(
            (
                summary.study_name,
                summary.user_attrs,
                [
                    (t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs)
                    for t in trials
                ],
            )
        )
    return out


def add_trials(storage: optuna.storages.BaseStorage, study: str, n: int, start: int = 0) -> None:
    """Trials written as workers write them: enqueue, claim, attributes one by one, tell."""
    handle = optuna.create_study(study_name=study, storage=storage, load_if_exists=True)
    for number in range(start, start + n):
        handle.enqueue_trial({"x": float(number)}, skip_if_exists=False)
        trial = handle.ask()
        trial.suggest_float("x", -100, 100)
        trial.set_user_attr("tvls.pid", 1000 + number)
        trial.set_user_attr("test_dice", number / 100)
        handle.tell(trial, number / 10)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "optuna.journal"
    storage = open_journal(path, snapshot_every=10**9)  # no snapshot while building
    for study in ("s/a", "s/b"):
        add_trials(storage, study, 15)
    optuna.load_study(study_name="s/a", storage=storage).set_user_attr("spec", {"n_trials": 20})
    return path


def test_small_journals_get_no_snapshot(journal: Path) -> None:
    open_journal(journal)  # 4 MB default threshold: a 20 kB journal is replayed, not snapshotted
    assert not snapshot_path(journal).exists()


def test_reopening_restores_the_snapshot_and_replays_only_what_came_after(journal: Path) -> None:
    open_journal(journal, snapshot_every=1)
    header, _ = read_snapshot(journal)  # type: ignore[misc]
    assert header["journal_bytes"] == journal.stat().st_size

    writer = open_journal(journal, snapshot_every=10**9)  # restored; writes after the snapshot
    add_trials(writer, "s/a", 3, start=15)
    add_trials(writer, "s/c", 2)
    running = optuna.load_study(study_name="s/c", storage=writer).ask()

    parsed: list[int] = []

    def counting(original: Any) -> Any:
        def read_logs(self: JournalFileBackend, log_number_from: int) -> Any:
            for log in original(self, log_number_from):
                parsed.append(1)
                yield log

        return read_logs

    with pytest.MonkeyPatch.context() as patch:
        for backend in (
            JournalFileBackend,
            journal_snapshot._DeferredFileBackend,
        ):  # Optuna's, ours
            patch.setattr(backend, "read_logs", counting(backend.read_logs))
        reopened = open_journal(journal, snapshot_every=10**9)
        tail = len(parsed)
        parsed.clear()
        reference = plain_replay(journal)
        everything = len(parsed)
    assert 0 < tail < everything / 2
    assert state(reopened) == state(reference)
    # The restored storage keeps working: the running trial can be told from it.
    reopened.set_trial_state_values(running._trial_id, TrialState.COMPLETE, [1.0])
    assert state(plain_replay(journal)) == state(reopened)


def test_a_replaced_or_truncated_journal_ignores_the_old_snapshot(
    journal: Path, tmp_path: Path
) -> None:
    open_journal(journal, snapshot_every=1)
    kept = tmp_path / "kept.snapshot"
    shutil.copy(snapshot_path(journal), kept)

    # A new, larger sweep in the same place: its first line names another worker id.
    old_size = journal.stat().st_size
    journal.unlink()
    fresh = open_journal(journal, snapshot_every=10**9)
    add_trials(fresh, "s/z", 40)
    assert journal.stat().st_size > old_size  # only the head digest tells them apart
    shutil.copy(kept, snapshot_path(journal))
    assert read_snapshot(journal) is None
    assert [name for name, _, _ in state(open_journal(journal, snapshot_every=10**9))] == ["s/z"]

    # The same journal cut short (the snapshot reaches further than the file).
    with journal.open("r+b") as handle:
        handle.truncate(journal.stat().st_size // 2)
    assert read_snapshot(journal) is None


def test_a_damaged_snapshot_is_ignored_and_rewritten(journal: Path) -> None:
    open_journal(journal, snapshot_every=1)
    path = snapshot_path(journal)
    header = path.read_bytes().split(b"\n", 1)[0]
    path.write_bytes(header + b"\nnot a pickle")
    reopened = open_journal(journal, snapshot_every=1)
    assert state(reopened) == state(plain_replay(journal))
    assert open_journal(journal, snapshot_every=10**9) is not None
    assert read_snapshot(journal)[1] != b"not a pickle"  # type: ignore[index]

    path.write_bytes(b"{not json\n")
    assert read_snapshot(journal) is None
    header_only = json.loads(header)
    header_only["optuna"] = "0.0"
    path.write_bytes(json.dumps(header_only).encode() + b"\n")
    assert read_snapshot(journal) is None


def test_an_unwritable_folder_only_costs_the_snapshot(
    journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(journal_snapshot.os, "replace", refuse)
    storage = open_journal(journal, snapshot_every=1)
    assert state(storage) == state(plain_replay(journal))
    assert not snapshot_path(journal).exists()
    assert not list(journal.parent.glob(".*.tmp-*"))


def test_one_writer_at_a_time_and_a_dead_writer_does_not_block(journal: Path) -> None:
    marker = journal.with_name(f".{snapshot_path(journal).name}.writing")
    marker.touch()  # another process is writing the same state right now
    open_journal(journal, snapshot_every=1)
    assert not snapshot_path(journal).exists()
    old = marker.stat().st_mtime - journal_snapshot.STALE_WRITER_SECONDS - 1
    os.utime(marker, (old, old))  # ... or died long ago
    open_journal(journal, snapshot_every=1)
    assert read_snapshot(journal) is not None
    assert not marker.exists()
