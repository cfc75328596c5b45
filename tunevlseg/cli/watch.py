"""``tvls-status FILE --watch [SECONDS]``: the studies table and the running trials, live.

Every ``SECONDS`` (default 10) one refresh reads the sweep again: the trial counts of each
study, ``squeue`` once (only when the sweep's manifest records SLURM arrays) and the RUNNING
trials with their epoch, last validation value, start and owner
(:mod:`tunevlseg.cluster.running`). The storage is opened once and kept, so a journal storage
reads only the lines added since the previous refresh. Between refreshes the display is redrawn
each second from what was read (the elapsed times move on; nothing is read).

The display ends by itself when the sweep is done (nothing running, waiting or remaining,
studies stopped by repeated errors aside), or on Ctrl-C; either way the last frame stays on the
screen, followed by the one-line summary ``tvls-status`` prints, and the exit code is 0.
"""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from tunevlseg.cli import _app
from tunevlseg.cli.status import COLUMNS, QUEUE_COLUMNS, open_existing_storage, queue_view
from tunevlseg.cluster.running import (
    RunningTrial,
    clock_text,
    fit_study,
    fit_width,
    running_trials,
    short_study,
)

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from tunevlseg.config.grid import Expansion
    from tunevlseg.config.loader import Experiment

DEFAULT_SECONDS = 10.0
"""Seconds between two reads of the sweep when ``--watch`` is given without a number."""

LIVE_REDRAWS_PER_SECOND = 1
"""Redraws of the last read (elapsed times move on) between two refreshes; reads nothing."""


def seconds(text: str) -> float:
    """``--watch``'s argument: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the refresh interval must be positive, got {text}")
    return value


@dataclass(frozen=True)
class SweepView:
    """One read of the sweep: what a refresh shows.

    Attributes:
        sweep: The sweep's name.
        rows: Per study, ``StudyProgress.to_dict()`` plus the queue columns when SLURM answers.
        columns: The count columns shown (``COLUMNS``, then ``QUEUE_COLUMNS`` with SLURM).
        totals: The columns summed over studies (and ``n_trials``).
        running: The RUNNING trials, study by study.
        read_at: When it was read (``time.time()``).
    """

    sweep: str
    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    totals: dict[str, int]
    running: list[RunningTrial]
    read_at: float

    @property
    def pending(self) -> int:
        """Trials still to finish in studies that may still run them (not stopped)."""
        return sum(row["remaining"] for row in self.rows if not row.get("stopped"))

    @property
    def done(self) -> bool:
        """Nothing running, waiting or remaining: the display may stop."""
        return (
            self.totals.get("running", 0) == 0
            and self.totals.get("waiting", 0) == 0
            and self.pending == 0
        )

    def summary(self) -> str:
        """The line ``tvls-status`` ends with."""
        remaining, failed = self.totals.get("remaining", 0), self.totals.get("failed", 0)
        state = "complete" if remaining == 0 else f"{remaining} trial(s) remaining"
        if remaining == 0 and failed:
            state = f"finished, {failed} trial(s) failed for good"
        return f"{len(self.rows)} studies: {state}"


class SweepWatch:
    """Reads the sweep for each refresh, keeping the storage open between refreshes.

    ``expansion`` narrows the studies read (default: every study of the experiment); a
    storage that does not exist yet is looked for again at each refresh (a launch creates it).
    """

    def __init__(
        self,
        experiment: Experiment,
        expansion: Expansion | None = None,
        *,
        storage: BaseStorage | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from tunevlseg.config.grid import expand
        from tunevlseg.paths import SweepPaths

        self.experiment = experiment
        self.expansion = expansion if expansion is not None else expand(experiment)
        self.manifest = SweepPaths.of(experiment).manifest
        self.storage = storage
        self.clock = clock

    def _storage(self) -> BaseStorage | None:
        if self.storage is None:
            self.storage = open_existing_storage(self.experiment)
        return self.storage

    def read(self) -> SweepView:
        from tunevlseg.cluster.plan import make_plan

        storage = self._storage()
        plan = make_plan(self.expansion, storage)
        queue = queue_view(self.manifest)
        rows = [study.progress.to_dict() for study in plan.studies]
        columns = COLUMNS + (QUEUE_COLUMNS if queue is not None else ())
        if queue is not None:
            for row in rows:
                counts = queue.get(row["name"], Counter())
                row.update({column: counts[column] for column in QUEUE_COLUMNS})
        totals = {key: sum(row[key] for row in rows) for key in ("n_trials", *columns)}
        busy = [study.spec for study in plan.studies if study.progress.running]
        return SweepView(
            sweep=self.experiment.spec.name,
            rows=rows,
            columns=columns,
            totals=totals,
            running=running_trials(storage, busy),
            read_at=self.clock(),
        )


SHORT_HEADERS = {
    "trials": "n",
    "complete": "compl",
    "running": "run",
    "waiting": "wait",
    "failed": "fail",
    "pruned": "pruned",
    "remaining": "left",
    "queued": "queue",
    "on_nodes": "nodes",
}
"""Column headers on a screen too narrow for the full ones."""

MIN_NAME = 12
"""Characters of a study name kept when a table is fitted to the screen."""

WHERE_WIDTH = 24
"""Characters of a long ``host:pid`` kept on a fitted screen."""

TABLE_STYLE: dict[str, Any] = {
    "box": box.SIMPLE_HEAD,
    "show_edge": False,
    "pad_edge": False,
    "collapse_padding": True,
}
"""Rules under the headers only, two spaces between columns: more room for the names."""

_MEASURE = Console(width=10_000, file=io.StringIO())


def _natural_width(table: Table) -> int:
    return Measurement.get(_MEASURE, _MEASURE.options, table).maximum


TableBuilder = Callable[[dict[str, str], int | None], Table]
"""Makes a table from its headers and the width its study names are cut to (``None``: whole)."""


def _fitted(build: TableBuilder, names: list[str], width: int | None) -> Table:
    """The table ``build(headers, name_width)`` makes, fitted to ``width`` columns: full
    headers if the names keep :data:`MIN_NAME` characters with them, else the short ones; then
    the names cut in the middle by what the table is still too wide."""
    full = {key: key.replace("_", " ") for key in SHORT_HEADERS}
    table = build(full, None)
    if width is None or not names:
        return table
    longest = max(len(name) for name in names)
    natural = _natural_width(table)
    headers = full
    if natural - longest + min(longest, MIN_NAME) > width:
        headers = SHORT_HEADERS
        natural = _natural_width(build(headers, None))
    if natural <= width and headers is full:
        return table
    return build(headers, max(MIN_NAME, longest - max(0, natural - width)))


def studies_table(view: SweepView, max_rows: int | None = None, width: int | None = None) -> Table:
    """The ``tvls-status`` table (study names without the sweep, which the title names).

    With ``max_rows``, finished studies are left out first, then the rest is cut, each with a
    row saying how many studies it leaves out (a sweep of many studies still shows its
    running trials below the table on one screen). With ``width``, the table fits that many
    columns (short headers, names cut in the middle) instead of squeezing its numbers.
    """
    rows, left_out = view.rows, []
    if max_rows is not None and len(rows) > max_rows:
        active = [row for row in rows if row["remaining"] and not row.get("stopped")]
        left_out.append(f"{len(rows) - len(active)} finished or stopped studies")
        rows = active
        if len(rows) > max_rows:
            left_out.append(f"{len(rows) - max_rows + 1} more studies")
            rows = rows[: max(0, max_rows - 1)]
    names = [short_study(row["name"]) for row in rows]

    def build(headers: dict[str, str], name_width: int | None) -> Table:
        table = Table(title=f"Sweep {view.sweep}", title_justify="left", **TABLE_STYLE)
        table.add_column("study", no_wrap=True, overflow="ellipsis")
        for column in ("trials", *view.columns):
            table.add_column(headers[column], justify="right", no_wrap=True)
        table.add_column("best", justify="right", no_wrap=True)
        for name, row in zip(names, rows, strict=True):
            best = "–" if row["best_value"] is None else f"{row['best_value']:.4f}"
            counts = (str(row[column]) for column in view.columns)
            shown = name if name_width is None else fit_study(name, name_width)
            table.add_row(shown, str(row["n_trials"]), *counts, best)
        for text in left_out:
            if not text.startswith("0 "):
                table.add_row(Text(f"… {text} not shown", style="dim"))
        table.add_section()
        totals = (str(view.totals[column]) for column in view.columns)
        table.add_row("total", str(view.totals["n_trials"]), *totals, "")
        return table

    return _fitted(build, names, width)


def running_table(
    running: list[RunningTrial], now: float, width: int | None = None
) -> RenderableType:
    """One row per running trial: study, trial, epoch of max, last value, elapsed, where.

    The value column is headed by the objective (``val_dice``); with ``width``, the study
    names and long ``host:pid`` places are cut in the middle so the numbers stay whole.
    """
    if not running:
        return Text("no trial running", style="dim")
    objectives = {trial.objective for trial in running}
    value_header = next(iter(objectives)) if len(objectives) == 1 else "last value"
    names = [short_study(trial.study) for trial in running]
    places = [trial.where or "–" for trial in running]
    if width is not None:
        places = [fit_width(place, WHERE_WIDTH) for place in places]

    def build(headers: dict[str, str], name_width: int | None) -> Table:
        title = f"Running trials ({len(running)})"
        table = Table(title=title, title_justify="left", **TABLE_STYLE)
        table.add_column("study", no_wrap=True, overflow="ellipsis")
        for header in ("trial", "epoch", value_header, "elapsed"):
            table.add_column(header, justify="right", no_wrap=True)
        table.add_column("where", no_wrap=True, overflow="ellipsis")
        for name, place, trial in zip(names, places, running, strict=True):
            value = trial.value_text
            if len(objectives) > 1 and trial.last_value is not None:
                value = f"{trial.objective} {value}"
            table.add_row(
                name if name_width is None else fit_study(name, name_width),
                f"#{trial.trial}",
                trial.epoch_text,
                value,
                clock_text(trial.elapsed(now)),
                place,
            )
        return table

    return _fitted(build, names, width)


def render(
    view: SweepView,
    now: float,
    *,
    interval: float | None = None,
    height: int | None = None,
    width: int | None = None,
) -> Group:
    """The studies table, the running trials below it, and, while it refreshes, a footer.

    ``interval`` (seconds between reads) adds the footer: the summary, when the sweep was
    read, and how to stop (the last frame has none: the summary follows it on stderr);
    ``height`` and ``width`` (the screen's) fit the frame: the studies table gets the lines
    the running trials leave, and both tables the screen's width.
    """
    max_rows = None
    if height is not None:
        # Title, header and total lines (~6), the running table (its rows + ~4), the footer.
        max_rows = max(3, height - 6 - (len(view.running) + 4 if view.running else 1) - 2)
    parts: list[RenderableType] = [
        studies_table(view, max_rows, width),
        Text(""),
        running_table(view.running, now, width),
    ]
    if interval is not None:
        stamp = datetime.fromtimestamp(view.read_at).strftime("%H:%M:%S")
        footer = Text(view.summary())
        footer.append(f"; read at {stamp}, every {interval:g} s; Ctrl-C to stop", style="dim")
        parts.append(footer)
    return Group(*parts)


@dataclass
class _Shown:
    """What the redraws show: the last read, and whether it is the last frame."""

    view: SweepView
    final: bool


def watch(
    experiment: Experiment,
    interval: float = DEFAULT_SECONDS,
    *,
    expansion: Expansion | None = None,
    console: Console | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    max_refreshes: int | None = None,
    source: SweepWatch | None = None,
) -> int:
    """Show the sweep until it is done or Ctrl-C; returns the exit code (0 either way).

    ``clock``, ``sleep`` and ``max_refreshes`` (reads at most; ``None``: until done) let a
    test run the loop without waiting; ``expansion`` narrows the studies shown.
    """
    console = console if console is not None else _app.data()
    source = source if source is not None else SweepWatch(experiment, expansion, clock=clock)
    try:
        view = source.read()
    except KeyboardInterrupt:
        return _app.EXIT_OK
    shown = _Shown(view, final=view.done)

    def frame() -> RenderableType:
        height = console.size.height if console.is_terminal else None
        return render(
            shown.view,
            clock(),
            interval=None if shown.final else interval,
            height=height,
            width=console.width,
        )

    reads = 1
    live = Live(
        get_renderable=frame,
        console=console,
        refresh_per_second=LIVE_REDRAWS_PER_SECOND,
        transient=False,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with live:
        try:
            while not view.done and (max_refreshes is None or reads < max_refreshes):
                sleep(interval)
                view = source.read()
                reads += 1
                shown.view = view
                live.refresh()
        except KeyboardInterrupt:
            pass
        shown.final = True
    _app.messages().print(view.summary(), markup=False)
    return _app.EXIT_OK
