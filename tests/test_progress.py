"""The progress display of a local launch, on an 80-column console.

The launcher's events are played by hand (``TaskEvent``s as :class:`LocalLauncher` sends them);
the running trials' curves come from a real journal storage written as workers leave it
(``_running_sweeps``). The clock is a fake one and curves are read by calling the reader once,
so nothing waits.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from _running_sweeps import Sweep, busy_sweep
from rich.console import Console

from tunevlseg.cluster.launch import sweep_storage
from tunevlseg.cluster.local import TaskEvent
from tunevlseg.cluster.progress import lay_out, local_progress
from tunevlseg.cluster.running import clock_text, fit_study, short_study
from tunevlseg.cluster.worker import TrialTask

LONG = "synthetic-polyps-with-a-rather-long-data-set-name"
WIDTH = 80


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _console() -> Console:
    return Console(width=WIDTH, record=True, file=io.StringIO(), color_system=None)


def _frame(handler: object) -> list[str]:
    """The live display (bar line and running lines) as an 80-column screen shows it now."""
    screen = _console()
    screen.print(handler.bar.get_renderable())  # type: ignore[attr-defined]
    return [line.rstrip() for line in screen.export_text().splitlines() if line.strip()]


def _tasks(sweep: Sweep) -> dict[tuple[int, int], TrialTask]:
    url = str(sweep_storage(sweep.experiment))
    return {
        (s, n): TrialTask(url, spec.name, n) for s, spec in enumerate(sweep.specs) for n in range(3)
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Sweep:
    return busy_sweep(tmp_path, dataset=LONG)


def test_running_trials_get_their_own_lines_that_fit(sweep: Sweep) -> None:
    tasks, clock, console = _tasks(sweep), Clock(), _console()
    running = [(0, 0), (0, 1), (1, 1)]  # the busy sweep's RUNNING trials
    with local_progress(console, 4, poll_seconds=0, clock=clock) as on_event:
        for key in running:
            on_event(TaskEvent("started", tasks[key], "1"))
        clock.now += 75
        on_event.display.read_curves()  # the storage opened from the tasks' URL
        frame = _frame(on_event)
    assert all(len(line) <= WIDTH for line in frame), frame
    bar, *lines = frame
    assert bar.startswith("trials") and "0/4" in bar and "0:01:15" in bar and "ETA" in bar
    assert "running" not in bar  # the trials are not squeezed into the bar's line
    assert len(lines) == len(running)
    for (study, number), line in zip(running, lines, strict=True):
        name = short_study(sweep.specs[study].name)
        assert f" #{number} " in line and line.strip().startswith(name.split("/")[0] + "/")
        assert "…" in line and line.split()[0] == fit_study(name, len(line.split()[0]))
        assert line.endswith(clock_text(75))
    coop_0, coop_1, vpt_1 = lines
    assert "epoch 2/6" in coop_0 and "val_dice 0.4200" in coop_0
    assert "epoch 0/6" in coop_1 and "val_dice" not in coop_1  # no epoch validated yet
    assert "epoch 1/6" in vpt_1 and "val_dice 0.5000" in vpt_1


def test_curves_move_on_at_the_next_read(sweep: Sweep) -> None:
    tasks, clock = _tasks(sweep), Clock()
    with local_progress(
        _console(), 1, storage=sweep.storage, poll_seconds=0, clock=clock
    ) as on_event:
        on_event(TaskEvent("started", tasks[(0, 0)], "1"))
        on_event.display.read_curves()
        before = _frame(on_event)[1]
        sweep.report(sweep.specs[0], 0, 3, 0.47)
        on_event.display.read_curves()
        after = _frame(on_event)[1]
    assert "epoch 2/6" in before and "epoch 3/6" in after and "val_dice 0.4700" in after


def test_without_a_readable_storage_the_lines_show_the_elapsed_time(tmp_path: Path) -> None:
    clock = Clock()
    task = TrialTask(f"journal://{tmp_path}/absent.journal", f"wt/clipseg-coop/{LONG}", 5)
    with local_progress(_console(), 2, poll_seconds=0, clock=clock) as on_event:
        on_event(TaskEvent("started", task, "1"))
        clock.now += 3
        on_event.display.read_curves()
        bar, line = _frame(on_event)
    assert not (tmp_path / "absent.journal").exists()  # a display never creates a storage
    assert " #5 " in line and line.endswith(clock_text(3)) and "epoch" not in line
    assert len(line) <= WIDTH and "ETA –" in bar


def test_pruned_skipped_and_failed_trials_count_as_done(sweep: Sweep) -> None:
    tasks, clock, console = _tasks(sweep), Clock(), _console()
    ends = [
        (
            (0, 0),
            TaskEvent(
                "finished",
                tasks[(0, 0)],
                "1",
                outcome={"status": "complete", "value": 0.61, "detail": ""},
            ),
        ),
        (
            (0, 1),
            TaskEvent(
                "finished",
                tasks[(0, 1)],
                "2",
                outcome={"status": "pruned", "value": 0.31, "detail": "pruned after 2 epochs"},
            ),
        ),
        (
            (0, 2),
            TaskEvent(
                "finished",
                tasks[(0, 2)],
                "3",
                outcome={"status": "skipped", "value": None, "detail": "already finished"},
            ),
        ),
        ((1, 1), TaskEvent("failed", tasks[(1, 1)], "4", error="OSError: [Errno 28] no space")),
    ]
    with local_progress(
        console, len(ends), storage=sweep.storage, poll_seconds=0, clock=clock
    ) as on_event:
        for key, _ in ends:
            on_event(TaskEvent("started", tasks[key], "1"))
        on_event.display.read_curves()
        for done, (_, event) in enumerate(ends, start=1):
            clock.now += 10
            on_event(event)
            bar, *lines = _frame(on_event)
            assert f"{done}/{len(ends)}" in bar
            assert len(lines) == len(ends) - done  # an ended trial leaves the running lines
    printed = console.export_text()
    coop = short_study(sweep.specs[0].name).split("/")[0]
    lines = printed.splitlines()
    assert any(s.startswith(f"done {coop}/") and "#0: val_dice 0.6100" in s for s in lines)
    assert any(
        s.startswith("pruned ") and "#1: after 2 epochs, val_dice 0.3100" in s for s in lines
    )
    assert any(s.startswith("skipped ") and "#2: already finished" in s for s in lines)
    assert "[Errno 28] no space" in printed  # error text is printed as is, never as markup
    ended = [s for s in printed.splitlines() if s.startswith(("done ", "pruned ", "skipped "))]
    assert len(ended) == 3 and all(len(s.rstrip()) <= WIDTH for s in ended), ended
    assert printed.strip().splitlines()[-1].startswith("trials")  # the final bar: all done
    assert f"{len(ends)}/{len(ends)}" in printed.strip().splitlines()[-1]


def test_a_trial_ending_before_its_curve_was_read_names_its_objective(sweep: Sweep) -> None:
    """The launch passes its studies: a quick trial's line says val_dice, not "value"."""
    task, console = _tasks(sweep)[(0, 1)], _console()
    pruned = {"status": "pruned", "value": 0.31, "detail": "pruned after 1 epochs"}
    with local_progress(console, 1, poll_seconds=0, clock=Clock(), specs=sweep.specs) as on_event:
        on_event(TaskEvent("started", task, "1"))
        on_event(TaskEvent("finished", task, "1", outcome=pruned))  # no read_curves() before
    assert "#1: after 1 epochs, val_dice 0.3100" in console.export_text()


def test_the_estimate_follows_the_rate_of_finished_trials(sweep: Sweep) -> None:
    tasks, clock = _tasks(sweep), Clock()
    with local_progress(
        _console(), 3, storage=sweep.storage, poll_seconds=0, clock=clock
    ) as on_event:
        display = on_event.display
        on_event(TaskEvent("started", tasks[(1, 0)], "1"))
        assert display.eta() is None  # nothing done yet: no rate to go by
        clock.now += 60
        on_event(
            TaskEvent("finished", tasks[(1, 0)], "1", outcome={"status": "complete", "value": 0.6})
        )
        slow = display.eta()
        on_event(TaskEvent("finished", tasks[(1, 2)], "2", outcome={"status": "skipped"}))
        skipped = display.eta()
        # One trial per minute: the one left takes about a minute (a skip costs no time).
        assert slow == pytest.approx(2 * 60) and skipped == pytest.approx(60)
        on_event(TaskEvent("started", tasks[(0, 0)], "3"))
        on_event.display.read_curves()  # 2 of 6 epochs done: a third of the last trial
        assert display.eta() < skipped


def test_lay_out_leaves_cells_out_whole_on_a_narrow_screen() -> None:
    rows = [
        (f"clipseg-shared_attention/{LONG}", "#12", "epoch 10/200", "val_dice 0.4123", "1:02:03")
    ]
    for width in (80, 60, 40, 30):
        (line,) = lay_out(rows, width)
        text = line.plain
        assert len(text) <= width and " #12" in text, (width, text)
        for cell in rows[0][2:]:
            assert cell in text or cell not in text.replace("…", "")  # whole or not at all
    assert "val_dice 0.4123" in lay_out(rows, 80).__next__().plain
    assert "1:02:03" in lay_out(rows, 40).__next__().plain  # the elapsed time stays longest
