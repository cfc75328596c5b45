"""Every file and folder name of a sweep's output folder, in one place.

    <output_dir>/
      optuna.journal                  default study storage
      manifest.json                   the last launch: plan, hash, jobs
      jobs/                           submitit's task logs and pickles
      studies/<model-learner>/<dataset>[/<grid key>]/trial-0003/
                                      one trial's checkpoints, trainable weights, result.json
      results/                        tables and plots from the collector
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SweepPaths:
    """The layout of one sweep's output folder."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def study_dir(self, study_folder: str) -> Path:
        return self.root / "studies" / study_folder

    def trial_dir(self, study_folder: str, lineage: int) -> Path:
        """A trial's folder; a re-run of a crashed trial reuses its first attempt's folder."""
        return self.study_dir(study_folder) / f"trial-{lineage:04d}"
