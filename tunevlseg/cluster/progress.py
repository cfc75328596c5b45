"""The progress display of a local sweep: a bar of finished trials and one line per end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunevlseg.cluster.local import TaskEvent


@contextmanager
def local_progress(console: Console, total: int) -> Iterator[Callable[[TaskEvent], None]]:
    """Yield the event handler that moves the bar and prints each trial's end."""
    columns = (
        TextColumn("[bold]trials"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    running: set[str] = set()
    with Progress(*columns, console=console) as bar:
        bar_id = bar.add_task("", total=total)

        def on_event(event: TaskEvent) -> None:
            label = f"{event.task.study} #{event.task.trial_number}"
            if event.kind == "started":
                running.add(label)
            else:
                running.discard(label)
                bar.advance(bar_id)
                if event.kind == "failed":
                    bar.console.print(f"[red]failed[/red] {label}: {event.error}")
                else:
                    outcome = event.outcome or {}
                    value = outcome.get("value")
                    shown = f"{value:.4f}" if isinstance(value, float) else outcome.get("detail", "")
                    bar.console.print(f"[green]done[/green] {label}: {shown}")
            bar.update(bar_id, description=f"running: {', '.join(sorted(running))}")

        yield on_event
