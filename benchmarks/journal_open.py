"""Seconds to open a big sweep's journal: what every array task, ``tvls-status`` and the collector pay.

Builds the collector benchmark's journal (``--studies`` x ``--trials``, written as workers
write it, see ``collector.py``), then times, each in a fresh process so nothing is cached in
memory:

* ``replay``: Optuna's ``JournalStorage`` on the file, every line replayed (before snapshots);
* ``first open``: ``open_storage`` without a snapshot: the same replay, plus writing the
  snapshot (``tunevlseg.tuning.journal_snapshot``);
* ``snapshot``: ``open_storage`` again: the snapshot restored, nothing after it to replay;
* ``snapshot + tail``: after ``--tail`` more trials were written (as workers write them),
  below the rewrite threshold: the snapshot plus a replay of the new lines.

Each open ends with one read of every study's trials (what a task's claim and the collector
need). ``--layout`` picks how the workers write each trial (``benchmarks/collector.py``'s
``LAYOUTS``): ``flat``, as before learning curves (one line per user attribute), or ``bundled``,
as now (claim and result as one attribute each, plus one line per epoch trained); ``both``
(default) builds one journal of each and prints the size and times per 1,000 trials too.
Usage::

    python benchmarks/journal_open.py [--studies 1000] [--trials 20] [--tail 500]
        [--layout flat|bundled|both] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from collector import (
    LAYOUTS,
    BufferedBackend,
    build_journal,
    make_trials,
    sweep_specs,
    write_like_workers,
)

from tunevlseg.tuning.journal_snapshot import snapshot_path

OPEN = """
import sys, time
t = time.perf_counter()
path = sys.argv[1]
if sys.argv[2] == "replay":
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    storage = optuna.storages.JournalStorage(JournalFileBackend(path, JournalFileOpenLock(path)))
else:
    from pathlib import Path
    from tunevlseg.tuning.storage import StorageURL, open_storage
    storage = open_storage(StorageURL("journal", "journal://" + path, Path(path)))
n = sum(len(storage.get_all_trials(s._study_id, deepcopy=False)) for s in storage.get_all_studies())
print(f"{time.perf_counter() - t:.2f} {n}")
"""


def timed_open(journal: Path, how: str) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", OPEN, str(journal), how], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), int(out[1])


def append_tail(journal: Path, n_trials: int, layout: str = "bundled") -> None:
    """``n_trials`` more trials in a new study, written through a real journal storage."""
    import optuna

    from tunevlseg.tuning.studies import SPEC_ATTR

    buffer = BufferedBackend()
    storage = optuna.storages.JournalStorage(buffer)
    spec = sweep_specs(1, n_trials)[0]
    study = optuna.create_study(storage=storage, study_name="tail/extra", direction="maximize")
    study.set_user_attr(SPEC_ATTR, spec.to_attrs())
    write_like_workers(
        storage, study._study_id, make_trials(spec, n_trials, random.Random(1), False), layout
    )
    buffer.flush(journal)


def measure(workdir: Path, layout: str, args: argparse.Namespace) -> None:
    journal = workdir / f"bench-{layout}.journal"
    journal.unlink(missing_ok=True)
    snapshot_path(journal).unlink(missing_ok=True)
    n = build_journal(journal, args.studies, args.trials, layout=layout)
    lines = curve = 0
    with journal.open("rb") as file:
        for line in file:
            lines += 1
            curve += b'"intermediate_value"' in line
    size = journal.stat().st_size / 1e6
    per = 1000 / n
    print(
        f"[{layout}] journal: {args.studies} studies, {n} trials, {lines} lines, {size:.1f} MB"
        f"  (per 1,000 trials: {lines * per:,.0f} lines, {curve * per:,.0f} of them learning"
        f" curves, {size * per:.2f} MB)"
    )
    seconds, trials = timed_open(journal, "replay")
    print(
        f"[{layout}] replay            {seconds:6.2f} s  ({trials} trials; {seconds * per:.3f} s per 1,000)"
    )
    seconds, trials = timed_open(journal, "open")
    snap = snapshot_path(journal).stat().st_size / 1e6
    print(f"[{layout}] first open        {seconds:6.2f} s  (replay + a {snap:.1f} MB snapshot)")
    seconds, trials = timed_open(journal, "open")
    print(
        f"[{layout}] snapshot          {seconds:6.2f} s  ({trials} trials; {seconds * per:.3f} s per 1,000)"
    )
    append_tail(journal, args.tail, layout)
    seconds, trials = timed_open(journal, "open")
    print(
        f"[{layout}] snapshot + tail   {seconds:6.2f} s  ({trials} trials, {args.tail} written after it)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--tail", type=int, default=500)
    parser.add_argument("--layout", choices=[*LAYOUTS, "both"], default="both")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tvls-bench-journal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for layout in LAYOUTS if args.layout == "both" else (args.layout,):
            measure(workdir, layout, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
