"""Every file and folder name of a sweep's output folder, in one place.

    <output_dir>/
      optuna.journal                  default study storage (study names carry the sweep)
      <sweep>/                        everything of one sweep: several sweeps may share output_dir
        manifest.json                 what each launch planned and submitted
        launch.lock                   held while a launch prepares and submits (one at a time)
        storage-proxy.json            where the sweep's storage proxy job listens (if any)
        jobs/                         submitit's task logs and pickles
        jobs/requeue/                 container tasks ask the host to requeue them here
        studies/<model-learner>/<dataset>[/<grid key>]/trial-0003/
                                      one trial's checkpoints, trainable weights, result.json
        results/                      tables and plots from the collector

Each sweep has its own folder because a trial folder is found again by its name alone: two
sweeps sharing ``studies/`` would resume, or reuse, each other's trials.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunevlseg.config.loader import Experiment


@dataclass(frozen=True)
class SweepPaths:
    """The layout of one sweep below its ``output_dir``."""

    root: Path
    sweep: str

    @classmethod
    def of(cls, experiment: Experiment) -> SweepPaths:
        return cls(experiment.output_dir, experiment.spec.name)

    @property
    def sweep_dir(self) -> Path:
        return self.root / self.sweep

    @property
    def manifest(self) -> Path:
        return self.sweep_dir / "manifest.json"

    @property
    def launch_lock(self) -> Path:
        return self.sweep_dir / "launch.lock"

    @property
    def storage_proxy(self) -> Path:
        """The address file of the sweep's storage proxy job (``cluster/proxy.py``)."""
        return self.sweep_dir / "storage-proxy.json"

    @property
    def jobs(self) -> Path:
        return self.sweep_dir / "jobs"

    @property
    def requeue(self) -> Path:
        """Markers of container tasks to requeue from the host (see ``cluster/requeue.py``)."""
        return self.jobs / "requeue"

    @property
    def results(self) -> Path:
        return self.sweep_dir / "results"

    def study_dir(self, study_folder: str) -> Path:
        """``study_folder``: the study name without its sweep prefix (``StudySpec.folder``)."""
        return self.sweep_dir / "studies" / study_folder

    def trial_dir(self, study_folder: str, lineage: int) -> Path:
        """A trial's folder; a re-run of a crashed trial reuses its first attempt's folder."""
        return self.study_dir(study_folder) / f"trial-{lineage:04d}"
