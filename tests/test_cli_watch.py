"""``tvls-status --watch`` and the running trials in ``tvls-status --json``.

The sweeps are written straight into a journal storage (``_running_sweeps``): trials RUNNING
with a claim and a learning curve, as workers leave them. The watch loop runs with a fake
clock and a fake sleep, which is also where the "other processes" change the storage between
two refreshes; nothing waits.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from _running_sweeps import Sweep, busy_sweep, make_sweep
from optuna.trial import TrialState
from rich.console import Console

from tunevlseg.cli.status import build_parser, main
from tunevlseg.cli.watch import SweepWatch, render, studies_table, watch
from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.running import clock_text, short_study
from tunevlseg.tuning.storage import open_storage

NOW = 1_800_000_000.0
"""The fake clock's time (seconds since the epoch); the busy sweep's claims are before it."""


def _console(width: int = 120) -> Console:
    return Console(width=width, record=True, file=io.StringIO(), color_system=None)


def _text(renderable: object, width: int = 120) -> str:
    console = _console(width)
    console.print(renderable)
    return console.export_text()


def _cells(line: str) -> list[str]:
    """A table line's cells (no cell of these tables holds a space)."""
    return line.split()


def _row(text: str, *cells: str) -> str:
    """The one line of ``text`` holding every cell."""
    lines = [line for line in text.splitlines() if all(cell in line for cell in cells)]
    assert len(lines) == 1, (cells, text)
    return lines[0]


@pytest.fixture
def busy(tmp_path: Path) -> Sweep:
    return busy_sweep(tmp_path, now=NOW)


# -- --json -----------------------------------------------------------------------------------


def test_json_lists_the_running_trials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = busy_sweep(tmp_path)  # started_at relative to the real clock
    first, second = (spec.name for spec in sweep.specs)
    assert main([str(sweep.path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"sweep", "studies", "totals"} <= set(report)  # the keys scripts already read
    running = {(t["study"], t["trial"]): t for t in report["running_trials"]}
    assert list(running) == [(first, 0), (first, 1), (second, 1)]
    assert len(running) == report["totals"]["running"]

    reported = running[(first, 0)]
    assert (reported["epoch"], reported["max_epochs"]) == (2, 6)
    assert reported["objective"] == "val_dice" and reported["last_value"] == pytest.approx(0.42)
    assert reported["where"] == "node7:4242"
    assert 125 <= reported["elapsed_s"] < 125 + 60

    before_first_epoch = running[(first, 1)]
    assert before_first_epoch["epoch"] == 0 and before_first_epoch["last_value"] is None
    assert before_first_epoch["where"] == "812_3"
    assert running[(second, 1)]["epoch"] == 1 and running[(second, 1)]["where"] == "node8:99"


def test_json_of_a_sweep_without_storage_has_no_running_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = make_sweep(tmp_path)
    path = sweep.path.with_name("other.yaml")
    path.write_text(
        sweep.path.read_text().replace("name: wt", "name: fresh").replace("runs/wt", "runs/fresh")
    )
    assert main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["running_trials"] == []


# -- the command line -------------------------------------------------------------------------


def test_watch_takes_an_optional_interval(busy: Sweep, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args([str(busy.path)]).watch is None
    assert parser.parse_args([str(busy.path), "--watch"]).watch == 10
    assert parser.parse_args([str(busy.path), "--watch", "2.5"]).watch == 2.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args([str(busy.path), "--watch", bad])
        assert stopped.value.code == 2
        assert "--watch" in capsys.readouterr().err


def test_watch_with_json_is_a_usage_error(busy: Sweep, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(busy.path), "--watch", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "--watch" in lines[0] and "--json" in lines[0], captured.err


def test_watch_of_a_finished_sweep_shows_it_once_and_exits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = busy_sweep(tmp_path)
    sweep.finish_everything()
    assert main([str(sweep.path), "--watch", "3600"]) == 0  # would sleep an hour if it looped
    captured = capsys.readouterr()
    assert "Sweep wt" in captured.out and "no trial running" in captured.out
    assert "Ctrl-C" not in captured.out  # the last frame says nothing about refreshing
    assert "2 studies: complete" in captured.err


# -- what one refresh shows -------------------------------------------------------------------


def test_the_running_table_has_one_row_per_running_trial(busy: Sweep) -> None:
    view = SweepWatch(busy.experiment, clock=lambda: NOW).read()
    first, second = (short_study(spec.name) for spec in busy.specs)
    assert [(t.study, t.trial) for t in view.running] == [
        (busy.specs[0].name, 0),
        (busy.specs[0].name, 1),
        (busy.specs[1].name, 1),
    ]
    text = _text(render(view, NOW, interval=10))
    studies, _, running = text.partition("Running trials (3)")
    assert running, text
    assert "Sweep wt" in studies and busy.specs[0].name not in text  # the sweep is the title
    row = _row(running, first, "#0")
    for cell in ("2/6", "0.4200", clock_text(125), "node7:4242"):
        assert cell in row, row
    row = _row(running, first, "#1")
    for cell in ("0/6", "–", clock_text(30), "812_3"):
        assert cell in row, row
    row = _row(running, second, "#1")
    for cell in ("1/6", "0.5000", clock_text(61), "node8:99"):
        assert cell in row, row
    assert "val_dice" in _row(running, "study", "trial", "epoch")  # heads the value column
    assert "every 10 s" in text and "Ctrl-C" in text


def test_at_80_columns_the_numbers_stay_whole(tmp_path: Path) -> None:
    sweep = busy_sweep(tmp_path, now=NOW, dataset="synthetic-polyps-with-a-long-name")
    view = SweepWatch(sweep.experiment).read()
    text = _text(render(view, NOW, interval=10, width=80), width=80)
    assert all(len(line.rstrip()) <= 80 for line in text.splitlines()), text
    studies, _, running = text.partition("Running trials (3)")
    for row in view.rows:
        cells = _cells(
            _row(
                studies,
                f" {row['n_trials']} ",
                f" {row['remaining']} ",
                short_study(row["name"]).split("/")[0] + "/",
            )
        )
        assert cells[1:8] == [str(row[key]) for key in ("n_trials", *view.columns)]
    for trial in view.running:
        learner = short_study(trial.study).split("/")[0] + "/"  # the model and learner stay whole
        line = _row(running, f" #{trial.trial} ", learner, trial.where or "–")
        for cell in (trial.epoch_text, trial.value_text, clock_text(trial.elapsed(NOW))):
            assert f" {cell} " in line + " ", line
        assert "…" in line  # the long study name gave way, cut in the middle
        assert line.split()[0].endswith(short_study(trial.study)[-6:])


def test_the_studies_table_counts_like_status(
    busy: Sweep, capsys: pytest.CaptureFixture[str]
) -> None:
    view = SweepWatch(busy.experiment).read()
    assert main([str(busy.path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert view.totals == report["totals"]
    text = _text(render(view, time.time(), interval=10))
    studies = text.partition("Running trials")[0]
    for study in report["studies"]:
        counts = [str(study[key]) for key in ("n_trials", "complete", "running", "waiting")]
        assert _cells(_row(studies, short_study(study["name"]) + " "))[1:5] == counts
    assert view.summary() in text and not view.done


def test_a_tall_sweep_leaves_finished_studies_out_first(busy: Sweep) -> None:
    busy.finish(busy.specs[1], 1, TrialState.COMPLETE, 0.7)  # the second study is now done
    view = SweepWatch(busy.experiment).read()
    text = _text(studies_table(view, max_rows=1))
    assert short_study(busy.specs[0].name) in text
    assert short_study(busy.specs[1].name) + " " not in text
    assert "1 finished or stopped studies not shown" in text
    assert _cells(_row(text, "total"))[1] == str(view.totals["n_trials"])  # totals stay whole
    # A screen tall enough shows every study.
    text = _text(render(view, NOW, height=200))
    assert short_study(busy.specs[1].name) + " " in text and "not shown" not in text


def test_one_storage_is_read_again_at_each_refresh(busy: Sweep) -> None:
    """The storage is opened once; what another process writes shows at the next refresh."""
    source = SweepWatch(busy.experiment)
    first = source.read()
    storage = source.storage
    elsewhere = open_storage(sweep_storage(busy.experiment))  # another process's handle
    trial_id = busy.storage.get_trial_id_from_study_id_trial_number(
        elsewhere.get_study_id_from_name(busy.specs[0].name), 0
    )
    elsewhere.set_trial_intermediate_value(trial_id, 3, 0.55)
    second = source.read()
    assert source.storage is storage
    assert first.running[0].epoch == 2
    assert (second.running[0].epoch, second.running[0].last_value) == (3, pytest.approx(0.55))


# -- the loop ---------------------------------------------------------------------------------


class FakeTime:
    """A clock and a sleep: sleeping moves the clock, and runs what happens meanwhile."""

    def __init__(self, meanwhile: list | None = None) -> None:  # type: ignore[type-arg]
        self.now = NOW
        self.sleeps: list[float] = []
        self.meanwhile = list(meanwhile or [])

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.meanwhile:
            self.meanwhile.pop(0)()


def test_watch_ends_by_itself_when_the_sweep_is_done(busy: Sweep) -> None:
    first, _ = busy.specs
    steps = [
        lambda: busy.report(first, 0, 3, 0.5),  # still running after one refresh
        lambda: (
            busy.finish(first, 0, TrialState.COMPLETE, 0.6),
            busy.finish(first, 1, TrialState.PRUNED, 0.3),
        ),
        busy.finish_everything,
    ]
    fake = FakeTime(steps)
    console = _console()
    code = watch(
        busy.experiment, 5, console=console, clock=fake.clock, sleep=fake.sleep, max_refreshes=50
    )
    assert code == 0
    assert fake.sleeps == [5, 5, 5]  # it stopped once the sweep was done, far before 50 reads
    final = console.export_text()
    assert "no trial running" in final and "Ctrl-C" not in final
    totals = dict(
        zip(
            ["trials", "complete", "running", "waiting", "failed", "pruned", "remaining"],
            _cells(_row(final, "total"))[1:8],
            strict=True,
        )
    )
    assert totals["running"] == totals["waiting"] == totals["remaining"] == "0"
    assert int(totals["complete"]) + int(totals["pruned"]) == int(totals["trials"])


def test_watch_keeps_refreshing_while_trials_run(busy: Sweep) -> None:
    fake = FakeTime()
    console = _console()
    assert (
        watch(
            busy.experiment, 7, console=console, clock=fake.clock, sleep=fake.sleep, max_refreshes=4
        )
        == 0
    )
    assert fake.sleeps == [7, 7, 7]
    final = console.export_text()
    # The elapsed times moved on with the clock: three intervals since the first read.
    assert clock_text(125 + 21) in _row(final, short_study(busy.specs[0].name), "#0")


def test_ctrl_c_leaves_the_last_frame_and_exits_0(
    busy: Sweep, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    console = _console()
    assert watch(busy.experiment, 5, console=console, clock=lambda: NOW, sleep=interrupted) == 0
    final = console.export_text()
    assert "Running trials (3)" in final and "node7:4242" in final
    err = capsys.readouterr().err
    assert "interrupted" not in err and "Traceback" not in err
    assert "4 trial(s) remaining" in err


def test_a_sweep_not_launched_yet_is_watched_until_its_storage_appears(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    journal = sweep_storage(sweep.experiment).path
    assert journal is not None
    moved = journal.with_name("elsewhere.journal")
    journal.rename(moved)  # as if no launch had created it yet
    fake = FakeTime([lambda: moved.rename(journal), sweep.finish_everything])
    console = _console()
    assert (
        watch(
            sweep.experiment,
            1,
            console=console,
            clock=fake.clock,
            sleep=fake.sleep,
            max_refreshes=10,
        )
        == 0
    )
    assert fake.sleeps == [1, 1]
    assert "no trial running" in console.export_text()
