"""Every file name inside a run folder, in one place (the collector reads only these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_SUFFIX",
    "FOREIGN_PREFIX",
    "LAST_NAME",
    "PREVIOUS_SUFFIX",
    "SUPERSEDED_PREFIX",
    "TORN_SUFFIX",
    "RunPaths",
]

BEST_NAME = "best"
LAST_NAME = "last"
CHECKPOINT_SUFFIX = ".ckpt"
# ``last.ckpt`` is renamed to ``last-prev.ckpt`` just before a new one takes its place, so a
# newest file damaged after all still leaves the epoch before it to resume from.
PREVIOUS_SUFFIX = "-prev"
# An unreadable file is renamed ``<name>.torn`` (kept for inspection, never used again).
TORN_SUFFIX = ".torn"
# Files of a different run (other identity) are moved into ``foreign-<UTC time>/``; those of a
# run that must start over (its best checkpoint is lost) into ``superseded-<UTC time>/``.
FOREIGN_PREFIX = "foreign-"
SUPERSEDED_PREFIX = "superseded-"


@dataclass(frozen=True)
class RunPaths:
    """Layout of one run folder.

    ``checkpoints/last.ckpt`` (every epoch, for resuming), ``checkpoints/last-prev.ckpt`` (the
    epoch before, a fallback should ``last.ckpt`` be unreadable) and ``checkpoints/best.ckpt``
    (best validation objective, for testing); ``logs/version_N/metrics.csv`` (one folder per
    attempt, because Lightning's CSV writer truncates an existing file); ``trained.json`` once
    training has ended (so an interrupted evaluation does not train again); ``result.json`` at
    the end, or ``pruned.json`` instead when a pruner stopped the run (its learning curve; the
    checkpoints are then deleted). Files set aside (see the prefixes and suffixes above) are never
    read again.
    """

    run_dir: Path

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / f"{LAST_NAME}{CHECKPOINT_SUFFIX}"

    @property
    def previous_last_checkpoint(self) -> Path:
        return self.checkpoints_dir / f"{LAST_NAME}{PREVIOUS_SUFFIX}{CHECKPOINT_SUFFIX}"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints_dir / f"{BEST_NAME}{CHECKPOINT_SUFFIX}"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def trained(self) -> Path:
        return self.run_dir / "trained.json"

    @property
    def result(self) -> Path:
        return self.run_dir / "result.json"

    @property
    def pruned(self) -> Path:
        return self.run_dir / "pruned.json"

    def owned(self) -> tuple[Path, ...]:
        """What a run writes (and may set aside); other files are the caller's."""
        return (self.result, self.trained, self.pruned, self.checkpoints_dir, self.logs_dir)

    def aside_dir(self, prefix: str, stamp: str) -> Path:
        """Folder for set-aside files, e.g. ``aside_dir(FOREIGN_PREFIX, "20240101T000000Z")``."""
        return self.run_dir / f"{prefix}{stamp}"
