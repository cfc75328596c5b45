"""Storage URLs turn into Optuna storages; malformed ones are refused before anything is opened."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tunevlseg.tuning.storage import (
    StorageURLError,
    default_storage,
    open_storage,
    parse_storage_url,
)


@pytest.mark.parametrize(
    ("url", "scheme", "path"),
    [
        ("journal:///shared/sweep.log", "journal", "/shared/sweep.log"),
        ("journal://runs/sweep.log", "journal", "runs/sweep.log"),
        ("sqlite:///runs/s.db", "sqlite", "runs/s.db"),
        ("sqlite:////abs/s.db", "sqlite", "/abs/s.db"),
    ],
)
def test_file_urls(url: str, scheme: str, path: str) -> None:
    parsed = parse_storage_url(url)
    assert parsed.scheme == scheme
    assert str(parsed.path) == path


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("runs/sweep.log", "not a storage URL"),
        ("journal://", "names no file"),
        ("sqlite://x.db", "sqlite:///relative.db"),
        ("postgresql://db", "needs a host and a database"),
        ("postgresql://me:pw@db/sweeps", "PGPASSWORD"),
        ("redis://localhost", "unknown storage scheme"),
    ],
)
def test_malformed_urls(url: str, fragment: str) -> None:
    with pytest.raises(StorageURLError, match=fragment):
        parse_storage_url(url)


def test_postgres_url_uses_psycopg2_without_password() -> None:
    parsed = parse_storage_url("postgresql://tvls@db.example:5432/sweeps")
    assert parsed.url == "postgresql+psycopg2://tvls@db.example:5432/sweeps"
    assert parsed.path is None


def test_relative_paths_resolve_against_the_experiment_folder(tmp_path: Path) -> None:
    parsed = parse_storage_url("journal://runs/s.log").resolved(tmp_path)
    assert parsed.path == tmp_path / "runs/s.log"
    assert parse_storage_url(parsed.url).path == parsed.path


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_file_storages_hold_studies_across_opens(tmp_path: Path, kind: str) -> None:
    url = (
        default_storage(tmp_path)
        if kind == "journal"
        else parse_storage_url(f"sqlite:///{tmp_path}/s.db")  # tmp_path is absolute
    )
    assert not url.exists
    study = optuna.create_study(study_name="a/b", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert url.exists
    again = optuna.load_study(study_name="a/b", storage=open_storage(url))
    assert len(again.trials) == 3
