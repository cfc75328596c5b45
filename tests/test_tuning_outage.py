"""The storage during failures: unreachable at launch (an error before anything is written),
and PostgreSQL outages of minutes while a task starts or tells its result (retried within the
time budget, the result is kept); the retry loop itself on a fake clock."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState

from tunevlseg.cluster.worker import Claim, TrialTask, claim_trial
from tunevlseg.config.grid import expand
from tunevlseg.config.loader import parse_experiment
from tunevlseg.tuning import retry
from tunevlseg.tuning.retry import with_retries
from tunevlseg.tuning.storage import open_storage, parse_storage_url
from tunevlseg.tuning.studies import enqueue_missing, ensure_studies

TEXT = """\
name: {name}
output_dir: out
storage: {storage}
models: [{{name: clipseg, pretrained: ./tiny, synthetic: true}}]
learners: [coop]
datasets: [{{name: d, root: data, synthetic: true}}]
search: {{n_trials: 1}}
"""


def test_unreachable_storage_stops_the_launch_before_any_write(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(TEXT.format(name="down", storage="postgresql://tvls@127.0.0.1:9/none"))
    done = subprocess.run(
        [sys.executable, "-m", "tunevlseg.cli.launch", str(path), "--local"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert (
        "cannot open the study storage postgresql+psycopg2://tvls@127.0.0.1:9/none" in done.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.yaml"]  # no data, model or output


class FakeTime:
    """A clock that only moves when slept on: the retry loop's minutes take no time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def refused() -> Exception:
    """What Optuna raises while PostgreSQL is down: its generic text, the cause chained below."""
    import psycopg2
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    driver = psycopg2.OperationalError(
        'connection to server at "127.0.0.1", port 5432 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?\n"
    )
    try:
        try:
            raise OperationalError("SELECT 1", {}, driver) from driver
        except OperationalError as wrapped:
            raise StorageInternalError(
                "An exception is raised during the commit. This typically happens due to invalid "
                "data in the commit, e.g. exceeding max length. "
            ) from wrapped
    except StorageInternalError as error:
        return error


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(retry, "time", fake)
    monkeypatch.delenv("TVLS_STORAGE_RETRY_S", raising=False)
    monkeypatch.setattr(retry, "_budget_s", None, raising=False)  # no set_retry_budget() yet
    return fake


def test_retries_last_the_default_budget_and_warn_with_the_root_cause(
    clock: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    def down() -> None:
        raise refused()

    with (
        caplog.at_level(logging.WARNING, logger=retry.__name__),
        pytest.raises(StorageInternalError) as caught,
    ):
        with_retries(down, what="telling the result")
    assert 180 <= clock.now < 180 + 1  # three minutes, not Optuna's ~62 s
    assert max(clock.sleeps) == 15  # capped back-off: a restarted server is seen within 15 s
    assert "Connection refused" in caplog.text and "max length" not in caplog.text
    assert "telling the result" in caplog.text
    text = "".join(traceback.format_exception_only(caught.value))
    assert "gave up on telling the result after retrying for 180 s" in text
    assert "Connection refused" in text


def test_an_outage_shorter_than_the_budget_is_outlasted(clock: FakeTime) -> None:
    def back_after_150_s() -> str:
        if clock.now < 150:
            raise refused()
        return "told"

    assert with_retries(back_after_150_s, what="opening the storage") == "told"
    assert 150 <= clock.now < 150 + 15


def test_the_budget_comes_from_the_argument_the_setting_or_the_environment(
    clock: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down() -> None:
        raise OSError("Stale file handle")

    def gives_up_after() -> float:
        start = clock.now
        with pytest.raises(OSError, match="Stale file handle"):
            with_retries(down, what="reading the trial")
        return clock.now - start

    monkeypatch.setenv("TVLS_STORAGE_RETRY_S", "40")
    assert gives_up_after() == 40
    retry.set_retry_budget(25)  # what a task does with the experiment's cluster.storage_retry_s
    assert gives_up_after() == 25
    start = clock.now
    with pytest.raises(OSError, match="Stale file handle"):
        with_retries(down, what="reading the trial", budget_s=12)
    assert clock.now - start == 12
    with pytest.raises(ValueError, match="a retry budget is a positive number"):
        retry.set_retry_budget(0)


def test_errors_that_are_not_outages_are_not_retried(clock: FakeTime) -> None:
    def wrong() -> None:
        raise KeyError("no such study")

    with pytest.raises(KeyError):
        with_retries(wrong, what="reading the trial")
    assert clock.sleeps == []


def test_a_connection_attempt_to_a_silent_host_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A database host that is down (not only its server) drops the packets: without a timeout
    one connection attempt hangs for TCP's two minutes, the whole retry budget in one try."""
    seen: list[dict[str, object]] = []

    class Capture:
        def __init__(self, url: str, engine_kwargs: dict[str, object]) -> None:
            seen.append(engine_kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Capture)
    open_storage(parse_storage_url("postgresql://tvls@db.example:5432/tvls"))
    assert 0 < seen[-1]["connect_args"]["connect_timeout"] <= 15  # type: ignore[index]
    open_storage(parse_storage_url("postgresql://tvls@db.example:5432/tvls?connect_timeout=3"))
    assert "connect_timeout" not in seen[-1].get("connect_args", {})  # type: ignore[operator]


def _pg(action: str) -> None:
    version = subprocess.run(
        ["bash", "-c", "ls /usr/lib/postgresql | sort -V | tail -1"], capture_output=True, text=True
    ).stdout.strip()
    if (
        action == "start"
        and subprocess.run(
            ["pg_ctlcluster", version, "main", "status"], capture_output=True
        ).returncode
        == 0
    ):
        return  # already running (the timer of an outage started it)
    subprocess.run(
        ["pg_ctlcluster", version, "main", action, *(["-m", "fast"] if action == "stop" else [])],
        check=True,
    )


@contextmanager
def outage(seconds: float) -> Iterator[None]:
    """PostgreSQL stopped now and started again ``seconds`` later, whatever the test does."""
    _pg("stop")
    restart = threading.Timer(seconds, _pg, args=("start",))
    restart.start()
    try:
        yield
    finally:
        restart.cancel()  # the test ended early: start it now
        restart.join()
        _pg("start")


def _study(tmp_path: Path, postgres_url: str) -> tuple[object, TrialTask]:
    import uuid

    experiment = parse_experiment(
        TEXT.format(name=f"o{uuid.uuid4().hex[:8]}", storage=postgres_url), tmp_path / "o.yaml"
    )
    spec = expand(experiment).studies[0]
    url = parse_storage_url(postgres_url)
    storage = open_storage(url)
    ensure_studies(storage, [spec])
    enqueue_missing(storage, spec)
    return url, TrialTask(url.url, spec.name, 0)


@pytest.mark.slow
def test_a_90_s_postgres_outage_during_tell_is_retried(tmp_path: Path, postgres_url: str) -> None:
    url, task = _study(tmp_path, postgres_url)
    claim = claim_trial(open_storage(url), task)
    assert isinstance(claim, Claim)
    started = time.monotonic()
    with outage(90):  # the database goes away while the trial "trains", for a minute and a half
        with_retries(lambda: claim.study.tell(claim.trial, 0.75), what="telling the result")
    assert time.monotonic() - started >= 90
    trial = optuna.load_study(study_name=task.study, storage=open_storage(url)).trials[0]
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.75)


@pytest.mark.slow
def test_a_150_s_postgres_outage_at_task_start_is_retried(
    tmp_path: Path, postgres_url: str
) -> None:
    """A task starting during a database restart: opening the storage waits for it (as run_task)."""
    url, task = _study(tmp_path, postgres_url)
    started = time.monotonic()
    with outage(150):
        storage = with_retries(
            lambda: open_storage(parse_storage_url(task.storage)), what="opening the storage"
        )
        claim = claim_trial(storage, task)
    assert time.monotonic() - started >= 150
    assert isinstance(claim, Claim)
    with_retries(lambda: claim.study.tell(claim.trial, 0.5), what="telling the result")
    trial = optuna.load_study(study_name=task.study, storage=open_storage(url)).trials[0]
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.5)
