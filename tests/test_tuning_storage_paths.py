"""The plain path of an existing journal file is accepted wherever a storage URL is asked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

from tunevlseg.tuning.storage import StorageURLError, open_storage, parse_storage_url


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """A journal written by Optuna itself, at ``runs/demo/optuna.journal`` under tmp_path."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "runs" / "demo" / "optuna.journal"
    path.parent.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    optuna.create_study(study_name="demo/clipseg-coop/synthetic-polyps", storage=storage)
    return path


def test_a_relative_path_resolves_against_the_working_directory(
    journal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    parsed = parse_storage_url("runs/demo/optuna.journal")
    assert (parsed.scheme, parsed.path, parsed.url) == ("journal", journal, f"journal://{journal}")
    assert parsed.url.startswith("journal:///")
    assert parse_storage_url(parsed.url) == parsed  # the URL form reads back the same
    assert parsed.resolved(Path("/elsewhere")) == parsed  # already absolute
    assert parsed.exists
    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(parsed))]
    assert names == ["demo/clipseg-coop/synthetic-polyps"]


def test_an_absolute_path_and_a_base_folder(journal: Path, tmp_path: Path) -> None:
    assert parse_storage_url(str(journal)).path == journal
    assert parse_storage_url("demo/optuna.journal", base_dir=tmp_path / "runs").path == journal
    assert (
        parse_storage_url("./runs/demo/../demo/optuna.journal", base_dir=tmp_path).path == journal
    )


@pytest.mark.parametrize("text", ["runs/sweep.log", "runs/demo", "", "optuna.journal"])
def test_other_plain_text_keeps_the_old_message(
    text: str, journal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing file, a folder or nothing: still "not a storage URL", word for word."""
    monkeypatch.chdir(tmp_path)
    forms = (
        "journal:///abs/path.log, journal://rel/path.log, sqlite:///rel.db, "
        "postgresql://user@host/db, grpc://host:port"
    )
    with pytest.raises(StorageURLError) as refused:
        parse_storage_url(text)
    assert str(refused.value) == f"{text!r} is not a storage URL (accepted: {forms})"


def test_an_sqlite_file_is_not_taken_for_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    sqlite3.connect(path).execute("create table t (x)").connection.close()
    with pytest.raises(
        StorageURLError, match=r"an SQLite database, not a journal: write sqlite:////"
    ):
        parse_storage_url(str(path))


def test_urls_are_unchanged(journal: Path) -> None:
    """A file named like a URL's rest does not change what a URL means."""
    assert parse_storage_url("journal://runs/demo/optuna.journal").path == Path(
        "runs/demo/optuna.journal"
    )
    assert parse_storage_url(f"journal://{journal}").path == journal


def test_in_an_experiment_file_a_plain_path_is_read_from_the_files_folder(
    journal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like every path in an experiment file, relative to the file, not to where one runs."""
    from tunevlseg.config.loader import load_experiment
    from tunevlseg.tuning.storage import sweep_storage

    experiment = tmp_path / "runs" / "sweep.yaml"
    experiment.write_text(
        "name: demo\noutput_dir: out\nstorage: demo/optuna.journal\n"
        "models: [{name: clipseg, pretrained: ./m, synthetic: true}]\nlearners: [coop]\n"
        "datasets: [{name: d, root: d, synthetic: true}]\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    storage = sweep_storage(load_experiment(experiment))
    assert (storage.scheme, storage.path) == ("journal", journal)
