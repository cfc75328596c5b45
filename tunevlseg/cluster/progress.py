"""The progress display of a local sweep: one bar line, the running trials below it.

The bar line holds the finished trials of the launch out of its total (completed, pruned,
skipped and failed ones all count as done), the time elapsed and an estimate of the time left.
Below it, one line per running trial: its study without the sweep's name (the data set part
cut in the middle when the line would not fit; numbers are never cut), the trial number, the
epoch reached of ``max_epochs`` with the last validation value of the objective, and the time
since its task started. Each trial's end is printed above the bar as one line.

Epochs and values come from the storage: every trial reports its objective after each epoch
(:mod:`tunevlseg.tuning.pruning`), so a thread reads the running trials every
:data:`POLL_SECONDS` (one trial read each; a journal storage reads only the lines added since the
last read). The storage the launch has open can be passed in; without it the display opens the
tasks' storage itself, once. If the storage cannot be read, the lines show the elapsed time only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from tunevlseg.cluster.local import TaskEvent
from tunevlseg.cluster.running import DASH, RunningTrial, clock_text, fit_study, short_study

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from tunevlseg.cluster.worker import TrialTask
    from tunevlseg.config.grid import StudySpec

POLL_SECONDS = 2.0
"""Seconds between two reads of the running trials' curves (one trial read each)."""

MAX_LINES = 12
"""Running trials shown at most; more are summed up in one line."""

_ENDS = {
    "complete": ("done", "green"),
    "pruned": ("pruned", "yellow"),
    "skipped": ("skipped", "dim"),
}
"""How each end of a task is announced: its word and colour (any other end: failed, red)."""

Key = tuple[str, int]


@dataclass
class _Running:
    task: TrialTask
    started: float
    curve: RunningTrial | None = None


class LaunchProgress:
    """What the display shows, shared by the launch's events, the reader thread and the
    redraws (``rich`` redraws from its own thread), so every access holds the lock.

    Args:
        total: Trials the launch runs.
        storage: The sweep's storage, or ``None`` to open the tasks' storage when first read.
        clock: Monotonic seconds (a test passes its own).
        specs: The launch's studies, so a trial that ends before its curve was first read
            still names its objective.
    """

    def __init__(
        self,
        total: int,
        storage: BaseStorage | None = None,
        clock: Callable[[], float] = time.monotonic,
        specs: Iterable[StudySpec] = (),
    ) -> None:
        self.total = total
        self.storage = storage
        self.clock = clock
        self.started = clock()
        self.running: dict[Key, _Running] = {}
        self.ended: dict[str, int] = {}
        self._lock = threading.Lock()
        self._unreadable = False
        self._study_ids: dict[str, int] = {}
        self._trial_ids: dict[Key, int] = {}
        self._specs: dict[str, StudySpec] = {spec.name: spec for spec in specs}

    # -- the launch's events --------------------------------------------------------------

    def start(self, task: TrialTask) -> None:
        with self._lock:
            self.running[(task.study, task.trial_number)] = _Running(task, self.clock())

    def end(self, task: TrialTask, status: str) -> _Running | None:
        """Count the task's end (``complete``, ``pruned``, ``skipped`` or ``failed``)."""
        with self._lock:
            self.ended[status] = self.ended.get(status, 0) + 1
            return self.running.pop((task.study, task.trial_number), None)

    # -- the curves, from the storage ---------------------------------------------------------

    def read_curves(self) -> None:
        """Read each running trial's curve from the storage (the reader thread calls this)."""
        with self._lock:
            keys = list(self.running)
            url = next((entry.task.storage for entry in self.running.values()), None)
        storage = self._open(url)
        if storage is None:
            return
        for key in keys:
            try:
                curve = self._read(storage, key)
            except Exception:  # noqa: BLE001 - a storage hiccup: keep what was shown, try again next time
                continue
            with self._lock:
                if key in self.running and curve is not None:
                    self.running[key].curve = curve

    def _open(self, url: str | None) -> BaseStorage | None:
        if self.storage is None and url and not self._unreadable:
            from tunevlseg.tuning.storage import open_storage, parse_storage_url

            try:
                parsed = parse_storage_url(url)
                if parsed.exists:  # never create one: a display only reads
                    self.storage = open_storage(parsed)
            except Exception:  # noqa: BLE001 - unreadable: the lines show the elapsed time only
                self._unreadable = True
        return self.storage

    def _read(self, storage: BaseStorage, key: Key) -> RunningTrial | None:
        from optuna.trial import TrialState

        study, number = key
        if study not in self._study_ids:
            self._study_ids[study] = storage.get_study_id_from_name(study)
        study_id = self._study_ids[study]
        if key not in self._trial_ids:
            self._trial_ids[key] = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        if study not in self._specs:
            from tunevlseg.config.grid import StudySpec
            from tunevlseg.tuning.studies import SPEC_ATTR

            stored = storage.get_study_user_attrs(study_id)[SPEC_ATTR]
            self._specs[study] = StudySpec.model_validate(stored)
        trial = storage.get_trial(self._trial_ids[key])
        if trial.state == TrialState.WAITING:
            return None  # its task has not claimed it yet: nothing to show but the time
        # A trial that finished since the launcher last looked still shows its last epoch.
        return RunningTrial.of(trial, self._specs[study])

    def objective(self, study: str) -> str | None:
        spec = self._specs.get(study)
        return spec.search.objective if spec is not None else None

    # -- what is shown ------------------------------------------------------------------------

    def eta(self) -> float | None:
        """Seconds left, from the rate trials have been done at (epochs of the running ones
        counting as fractions of a trial; skipped trials take no time and do not count)."""
        with self._lock:
            worked = float(sum(n for status, n in self.ended.items() if status != "skipped"))
            left = float(self.total - sum(self.ended.values()))
            for entry in self.running.values():
                curve = entry.curve
                if curve is not None and curve.epoch and curve.max_epochs:
                    share = min(curve.epoch / curve.max_epochs, 1.0)
                    worked, left = worked + share, left - share
        if left <= 0:
            return 0.0
        if worked <= 0:
            return None
        return (self.clock() - self.started) * left / worked

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """Per running trial: study, ``#n``, ``epoch e/m``, ``<objective> v``, elapsed."""
        now = self.clock()
        with self._lock:
            entries = sorted(self.running.values(), key=lambda e: (e.started, e.task.trial_number))
        rows = []
        for entry in entries:
            curve = entry.curve
            epoch = value = ""
            if curve is not None and curve.epoch is not None:
                epoch = f"epoch {curve.epoch_text}"
                if curve.last_value is not None:
                    value = f"{curve.objective} {curve.value_text}"
            name, number = short_study(entry.task.study), f"#{entry.task.trial_number}"
            rows.append((name, number, epoch, value, clock_text(now - entry.started)))
        return rows

    def lines(self) -> RenderableType:
        return _RunningLines(self)


class _RunningLines:
    """The running trials, one line each, laid out for the width at hand: the numbers keep
    their full width and the study name gives way (cut in the middle)."""

    INDENT = "  "
    GAP = "  "

    def __init__(self, display: LaunchProgress) -> None:
        self.display = display

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows = self.display.rows()
        more = 0
        if len(rows) > MAX_LINES:
            rows, more = rows[: MAX_LINES - 1], len(rows) - MAX_LINES + 1
        yield from lay_out(rows, options.max_width, self.INDENT, self.GAP)
        if more:
            yield Text(f"{self.INDENT}… and {more} more running", style="dim", no_wrap=True)


LEFT_ALIGNED = frozenset({0, 3})
"""Cells of a running line aligned left: the study and ``<objective> <value>``."""

DROP_ORDER = (3, 2, 4)
"""Cells left out, in this order, when even a short study name no longer fits: the value,
then the epoch, then the elapsed time (the trial number always stays)."""

MIN_NAME = 12
"""Characters of the study name kept before cells are left out."""


def lay_out(
    rows: Sequence[tuple[str, ...]], width: int, indent: str = "  ", gap: str = "  "
) -> Iterator[Text]:
    """Rows of ``(study, #n, epoch, value, elapsed)`` as aligned lines of at most ``width``
    characters: the study name takes what the other cells leave and is cut in the middle;
    the other cells are never cut (left out whole, :data:`DROP_ORDER`, on a very narrow screen).
    """
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    shown = [i for i in range(1, len(widths)) if widths[i]]

    def cells_width() -> int:
        return sum(len(gap) + widths[i] for i in shown)

    for i in DROP_ORDER:
        if len(indent) + MIN_NAME + cells_width() <= width:
            break
        if i in shown:
            shown.remove(i)
    name_width = max(1, min(widths[0], width - len(indent) - cells_width()))
    for row in rows:
        line = Text(indent, no_wrap=True, overflow="crop")
        line.append(fit_study(row[0], name_width).ljust(name_width), style="bold")
        for i in shown:
            cell = row[i].ljust(widths[i]) if i in LEFT_ALIGNED else row[i].rjust(widths[i])
            line.append(gap + cell)
        line.rstrip()
        yield line


class _EtaColumn(ProgressColumn):
    """``ETA 0:04:10`` from :meth:`LaunchProgress.eta`; ``ETA –`` until a trial has been done."""

    def __init__(self, display: LaunchProgress) -> None:
        super().__init__()
        self.display = display

    def render(self, task: Task) -> Text:
        eta = self.display.eta()
        return Text(f"ETA {DASH if eta is None else clock_text(eta)}", style="progress.remaining")


class _LaunchBar(Progress):
    """rich's progress bar with the running trials' lines under it."""

    def __init__(self, display: LaunchProgress, *columns: Any, **kwargs: Any) -> None:
        self.display = display  # before rich's constructor, which renders once
        super().__init__(*columns, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self.display.lines()


class ProgressHandler:
    """The launcher's ``on_event``: moves the bar, prints each end, tracks the running trials."""

    def __init__(self, bar: _LaunchBar, bar_id: Any, display: LaunchProgress) -> None:
        self.bar = bar
        self.bar_id = bar_id
        self.display = display

    def __call__(self, event: TaskEvent) -> None:
        if event.kind == "started":
            self.display.start(event.task)
            self.bar.refresh()
            return
        outcome = event.outcome or {}
        status = "failed" if event.kind == "failed" else str(outcome.get("status", "complete"))
        entry = self.display.end(event.task, status)
        self.bar.advance(self.bar_id)
        self.bar.console.print(self.end_line(event, status, entry))

    def end_line(self, event: TaskEvent, status: str, entry: _Running | None) -> Text:
        """``done clipseg-coop/kvasir #3: val_dice 0.8123 (0:02:10)`` and the like.

        The study name gives way (cut in the data set's middle) so the line fits the screen;
        a failure's error text is never cut, and wraps if it must.
        """
        word, style = _ENDS.get(status, ("failed", "red"))
        outcome = event.outcome or {}
        value = outcome.get("value")
        objective = self.display.objective(event.task.study) or "value"
        if status == "failed":
            what = event.error
        elif status == "pruned":
            what = str(outcome.get("detail") or "pruned").removeprefix("pruned ")
            if isinstance(value, int | float):
                what += f", {objective} {value:.4f}"
        elif status == "skipped":
            what = str(outcome.get("detail") or "skipped")
        else:
            what = f"{objective} {value:.4f}" if isinstance(value, int | float) else ""
        took = ""
        if entry is not None and status != "skipped":
            took = f" ({clock_text(self.display.clock() - entry.started)})"
        tail = f" #{event.task.trial_number}: {what}"
        name = short_study(event.task.study)
        room = self.bar.console.width - len(word) - 1 - len(tail) - len(took)
        line = Text.assemble((word, style), " ", (fit_study(name, max(MIN_NAME, room)), "bold"))
        line.append(tail)
        line.append(took, style="dim")
        return line


@contextmanager
def local_progress(
    console: Console,
    total: int,
    storage: BaseStorage | None = None,
    *,
    poll_seconds: float = POLL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    specs: Iterable[StudySpec] = (),
) -> Iterator[ProgressHandler]:
    """Yield the event handler that moves the bar, prints each trial's end and shows the
    running trials; ``poll_seconds`` 0 reads no curve by itself (a test calls
    ``handler.display.read_curves()``)."""
    display = LaunchProgress(total, storage, clock, specs)
    columns = (
        TextColumn("[bold]trials"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        _EtaColumn(display),
    )
    stop = threading.Event()
    reader = None
    if poll_seconds > 0:

        def read_until_stopped() -> None:
            while not stop.wait(poll_seconds):
                # the display must never stop the launch
                with contextlib.suppress(Exception):
                    display.read_curves()

        reader = threading.Thread(target=read_until_stopped, name="tvls-progress", daemon=True)
    with _LaunchBar(display, *columns, console=console, get_time=clock) as bar:
        bar_id = bar.add_task("trials", total=total)
        if reader is not None:
            reader.start()
        try:
            yield ProgressHandler(bar, bar_id, display)
        finally:
            stop.set()
            if reader is not None:
                reader.join(timeout=2)
