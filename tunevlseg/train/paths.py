"""Every file name inside a run folder, in one place (the collector reads only these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BEST_NAME", "CHECKPOINT_SUFFIX", "LAST_NAME", "RunPaths"]

BEST_NAME = "best"
LAST_NAME = "last"
CHECKPOINT_SUFFIX = ".ckpt"


@dataclass(frozen=True)
class RunPaths:
    """Layout of one run folder.

    ``checkpoints/last.ckpt`` (every epoch, for resuming) and ``checkpoints/best.ckpt`` (best
    validation objective, for testing); ``logs/version_N/metrics.csv`` (one folder per attempt,
    because Lightning's CSV writer truncates an existing file); ``trained.json`` once training
    has ended (so an interrupted evaluation does not train again); ``result.json`` at the end.
    """

    run_dir: Path

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / f"{LAST_NAME}{CHECKPOINT_SUFFIX}"

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
